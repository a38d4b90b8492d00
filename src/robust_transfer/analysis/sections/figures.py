"""The paper's figures: accuracy and difference against n (Fig. 1) and epochs (Fig. 2),
and accuracy against the source's eps (Fig. 3)."""

from __future__ import annotations

from robust_transfer.analysis import plots
from robust_transfer.analysis.document import Figure, Paragraph, Section
from robust_transfer.analysis.result import AnalysisResult

VECTOR = ("fig1", "fig2")  # the paper's figures are also written as SVG


def build(result: AnalysisResult, draw: bool) -> list[Section]:
    """Figs. 1-3, or a note that figures were not drawn."""
    if not draw:
        return [Section("Figures", (Paragraph("Figures were not drawn.", "meta"),))]
    specs = plots.figures_vs_n(result.summary, result.delta_summary, result.sources,
                               result.view.epochs, level=result.options.percent)
    specs += plots.figures_vs_epochs(result.epoch_summary, result.epoch_delta_summary,
                                     result.sources, result.view)
    specs += plots.eps_sweep_figures(result.summary, result.sources, result.view.epochs,
                                     result.view.unfrozen)
    return [Section("Figures", tuple(as_block(s) for s in specs))]


def as_block(spec: plots.FigureSpec) -> Figure:
    """A drawn figure spec as a document figure (PNG, and SVG for Figs. 1 and 2)."""
    formats = plots.FORMATS if spec.key.startswith(VECTOR) else ("png",)
    return Figure(spec.key, spec.caption, spec.draw, formats=formats)
