"""The report as one document model, rendered to self-contained HTML and to Markdown.

A :class:`Document` is a title and a list of :class:`Section` s; a section is a heading and
blocks (:class:`Paragraph`, :class:`Bullets`, :class:`Table`, :class:`Figure`,
:class:`Code`, :class:`Pairs`). The section modules (:mod:`~robust_transfer.analysis.sections`)
build it from the analysis; :func:`to_html` and :func:`to_markdown` are its only readers.
The HTML embeds its figures as base64 PNG data URIs and its style inline, so it opens
anywhere with no other file; the Markdown links the PNGs in ``figures/``.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from robust_transfer.analysis.tables import to_markdown

if TYPE_CHECKING:
    from matplotlib.figure import Figure as MplFigure

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1150px;
margin:1.2em auto;padding:0 1em;color:#1d1d1d;line-height:1.45}
h1{font-size:1.45em;margin:.2em 0 .4em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;
margin-top:1.8em}p.verdict{font-size:1.02em;margin:.35em 0}ul.headlines li{margin:.35em 0}
.meta{color:#555}table{border-collapse:collapse;font-size:.82em;margin:.6em 0 1.4em}
th,td{border:1px solid #d5d5d5;padding:.2em .55em;text-align:right}th{background:#f4f4f4}
figure{margin:.6em 0}figure img{width:100%;border:1px solid #eee}
figcaption{color:#444;font-size:.9em}pre{background:#f7f7f7;padding:.8em;overflow-x:auto}
"""


@dataclass(frozen=True)
class Paragraph:
    """A paragraph. ``style``: ``""``, ``"lead"`` (bold up to its first colon: the verdict),
    ``"strong"`` (a finding in bold) or ``"meta"`` (a note on what is not shown, HTML only)."""

    text: str
    style: str = ""


@dataclass(frozen=True)
class Bullets:
    """A bulleted list; ``headlines`` spaces the items as findings."""

    items: tuple[str, ...]
    headlines: bool = False


@dataclass(frozen=True)
class Table:
    """A text table, under its own ``title`` (a third-level heading) when given."""

    frame: pd.DataFrame
    title: str | None = None


@dataclass(frozen=True)
class Figure:
    """A figure and its caption: drawn by ``draw`` (which may return ``None``: nothing to
    plot), or copied from a PNG (``png``); with neither, a caption saying there was no
    data to plot. ``formats``: the files a drawn figure is written as."""

    key: str
    caption: str
    draw: Callable[[], MplFigure | None] | None = None
    png: Path | None = None
    formats: tuple[str, ...] = ("png",)


@dataclass(frozen=True)
class Code:
    """Verbatim text (the study specification)."""

    text: str
    language: str = "yaml"


@dataclass(frozen=True)
class Pairs:
    """Name-value rows (the environment)."""

    items: tuple[tuple[str, str], ...]


Block = Paragraph | Bullets | Table | Figure | Code | Pairs


@dataclass(frozen=True)
class Section:
    """A heading (``None``: the lead, under the title) and its blocks."""

    heading: str | None
    blocks: tuple[Block, ...] = ()


@dataclass(frozen=True)
class Document:
    """The whole report."""

    title: str
    sections: tuple[Section, ...] = field(default_factory=tuple)

    def figures(self) -> list[Figure]:
        """Every figure block, in document order."""
        return [b for s in self.sections for b in s.blocks if isinstance(b, Figure)]


FigurePaths = Mapping[str, Mapping[str, Path]]


# --- HTML --------------------------------------------------------------------------------
def to_html(doc: Document, figures: FigurePaths) -> str:
    """The document as one HTML page; ``figures`` maps a figure's key to its files."""
    esc = html.escape
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>"
             f"{esc(doc.title)}</title><style>{CSS}</style></head><body><h1>{esc(doc.title)}</h1>"]
    for section in doc.sections:
        if section.heading is not None:
            parts.append(f"<h2>{esc(section.heading)}</h2>")
        parts += [_html_block(b, figures) for b in section.blocks]
    parts.append("</body></html>")
    return "\n".join(p for p in parts if p)


def _html_block(block: Block, figures: FigurePaths) -> str:
    esc = html.escape
    if isinstance(block, Paragraph):
        if block.style == "lead":
            head, _, rest = block.text.partition(":")
            return f"<p class='verdict'><b>{esc(head)}:</b>{esc(rest)}</p>"
        cls = {"strong": " class='verdict'", "meta": " class='meta'"}.get(block.style, "")
        return f"<p{cls}>{esc(block.text)}</p>"
    if isinstance(block, Bullets):
        cls = " class='headlines'" if block.headlines else ""
        return "\n".join([f"<ul{cls}>", *(f"<li>{esc(s)}</li>" for s in block.items), "</ul>"])
    if isinstance(block, Table):
        title = f"<h3>{esc(block.title)}</h3>\n" if block.title is not None else ""
        return title + block.frame.to_html(escape=True, border=0, index=False)
    if isinstance(block, Figure):
        paths = figures.get(block.key)
        if paths is None:
            return f"<p class='meta'>{esc(block.caption)} (no data to plot)</p>"
        data = base64.b64encode(Path(paths["png"]).read_bytes()).decode("ascii")
        return (f"<figure><img src='data:image/png;base64,{data}' alt='{esc(block.key)}'>"
                f"<figcaption>{esc(block.caption)}</figcaption></figure>")
    if isinstance(block, Code):
        return f"<pre>{esc(block.text)}</pre>"
    return "\n".join(["<table>", *(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>"
                                   for k, v in block.items), "</table>"])


# --- Markdown ----------------------------------------------------------------------------
def to_markdown_document(doc: Document, figures: FigurePaths, figure_dir: str) -> str:
    """The document as Markdown; figures are linked from ``figure_dir``."""
    parts = [f"# {doc.title}", ""]
    for section in doc.sections:
        if section.heading is not None:
            parts += [f"## {section.heading}", ""]
        for block in section.blocks:
            parts += _md_block(block, figures, figure_dir)
    return "\n".join(parts)


def _md_block(block: Block, figures: FigurePaths, figure_dir: str) -> list[str]:
    if isinstance(block, Paragraph):
        if block.style == "lead":
            head, _, rest = block.text.partition(":")
            return [f"**{head}:**{rest}", ""]
        if block.style == "meta":
            return []  # the Markdown lists what it shows; the notes are for the HTML reader
        return [f"**{block.text}**\n" if block.style == "strong" else f"{block.text}\n"]
    if isinstance(block, Bullets):
        return [*(f"- {s}" for s in block.items), ""]
    if isinstance(block, Table):
        title = [f"### {block.title}", ""] if block.title is not None else []
        return [*title, to_markdown(block.frame), ""]
    if isinstance(block, Figure):
        if block.key in figures:  # the file's name is the key made safe (io.safe_filename)
            name = Path(figures[block.key]["png"]).name
            return [f"![{block.key}]({figure_dir}/{name})", "", f"*{block.caption}*", ""]
        return [f"*{block.caption} (no data to plot)*", ""]
    if isinstance(block, Code):
        return [f"```{block.language}", block.text.rstrip(), "```", ""]
    return [*(f"- {k}: {v}" for k, v in block.items), ""]
