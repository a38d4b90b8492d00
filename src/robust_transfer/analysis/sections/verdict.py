"""The lead: the two verdict sentences and a heatmap per target."""

from __future__ import annotations

from functools import partial

from robust_transfer.analysis import verdict
from robust_transfer.analysis.document import Figure, Paragraph, Section
from robust_transfer.analysis.result import AnalysisResult
from robust_transfer.analysis.sections.common import base_name


def build(result: AnalysisResult, draw: bool) -> list[Section]:
    """The sentences, then (when drawing) one heatmap per target."""
    blocks: list = [Paragraph(s, "lead") for s in result.sentences]
    if draw:
        blocks += figures(result)
    return [Section(None, tuple(blocks))]


def figures(result: AnalysisResult) -> list[Figure]:
    """One verdict heatmap per target."""
    base = base_name(result)
    return [Figure(f"verdict_{target}", f"Verdict on {target}: robust minus {base} test "
                   "accuracy (points, mean over seeds of the paired difference) for each robust "
                   f"source, n and unfrozen setting; blue: the robust source is ahead, red: {base}"
                   f" is; outlined cells' {result.options.percent} interval excludes 0.",
                   partial(verdict.verdict_figure, result.verdict_cells, target, result.sources,
                           result.view.epochs, result.options.percent))
            for target in sorted(result.runs["target"].unique())]
