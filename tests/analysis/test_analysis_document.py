"""The report as one document: sections in order, one model for HTML and Markdown, figures
drawn the same in worker processes as here."""

from __future__ import annotations

import re
import types
from dataclasses import FrozenInstanceError

import pytest
from matplotlib.figure import Figure as MplFigure
from synthetic_study import make_study

from robust_transfer.analysis import CIOptions, analyze, sections
from robust_transfer.analysis.document import (
    Document,
    Figure,
    Paragraph,
    Section,
    to_html,
    to_markdown_document,
)
from robust_transfer.analysis.drawing import save_figures
from robust_transfer.analysis.sections import build_document


@pytest.fixture(scope="module")
def result():
    runs, epochs = make_study()
    return analyze(runs, epochs)


def test_html_and_markdown_render_the_same_sections_in_order(result):
    doc = build_document(result, "t")
    md = to_markdown_document(doc, {}, "figures")
    html = to_html(doc, {})
    md_heads = re.findall(r"^## (.+)$", md, flags=re.M)
    html_heads = re.findall(r"<h2>(.+?)</h2>", html)
    assert md_heads == html_heads == [s.heading for s in doc.sections if s.heading]
    assert md_heads[:4] == ["Headline findings", "What was analysed", "Sources", "Figures"]
    assert md_heads[-2:] == ["Method", "Environment"]


def test_a_new_section_is_one_module_and_one_entry(result, monkeypatch):
    extra = types.SimpleNamespace(build=lambda res, draw: [
        Section("Cost", (Paragraph(f"{len(res.runs)} runs cost nothing."),))])
    monkeypatch.setattr(sections, "SECTIONS", (*sections.SECTIONS[:2], extra,
                                               *sections.SECTIONS[2:]))
    doc = build_document(result, "t")
    assert doc.sections[2].heading == "Cost"  # the lead, the headlines, then the new one
    assert f"{len(result.runs)} runs cost nothing." in to_markdown_document(doc, {}, "f")
    assert f"<p>{len(result.runs)} runs cost nothing.</p>" in to_html(doc, {})


def test_the_result_is_built_once_and_never_changed(result):
    with pytest.raises(FrozenInstanceError):
        result.headlines = []  # type: ignore[misc]


def test_every_caption_and_sentence_names_the_interval_level_asked_for():
    runs, epochs = make_study()
    result = analyze(runs, epochs, options=CIOptions(level=0.8))
    md = to_markdown_document(build_document(result, "t"), {}, "figures")
    assert "80%" in md and "95%" not in md
    assert "clearly = the 80% interval excludes 0" in result.sentences[0]


def _line(color: str) -> MplFigure:
    fig = MplFigure(figsize=(2, 1.5), dpi=100)
    fig.subplots().plot([0, 1, 2], [0, 2, 1], color=color)
    return fig


def test_figures_drawn_in_workers_are_the_files_drawn_here(tmp_path):
    colors = ["red", "green", "blue", "black", "orange"]
    doc = Document("t", (Section("Figures", tuple(
        Figure(f"f{i}", "caption", lambda c=c: _line(c), formats=("png", "svg"))
        for i, c in enumerate(colors)) + (Figure("empty", "nothing", lambda: None),)),))
    here = save_figures(doc, tmp_path / "here", workers=1)
    there = save_figures(doc, tmp_path / "there", workers=2)
    assert list(here) == list(there) == [f"f{i}" for i in range(5)]  # none for "empty"
    for key, paths in here.items():
        assert paths["png"].read_bytes() == there[key]["png"].read_bytes()
        assert _svg(paths["svg"]) == _svg(there[key]["svg"])
        assert there[key]["svg"].parent == tmp_path / "there"


def _svg(path) -> str:
    """The SVG without its element ids (matplotlib salts them at random per save)."""
    return re.sub(r"[0-9a-f]{8,}", "", path.read_text())
