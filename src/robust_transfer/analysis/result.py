"""What :func:`~robust_transfer.analysis.report.analyze` returns (its own module, so the
report writer and the renderer both import it and not each other)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from robust_transfer.analysis.efficiency import Factors
from robust_transfer.analysis.explain import Explanations
from robust_transfer.analysis.frames import Coverage
from robust_transfer.analysis.intervals import CIOptions
from robust_transfer.analysis.robustness import RobustnessSection
from robust_transfer.analysis.tables import Tables
from robust_transfer.analysis.tuning import TuningSection
from robust_transfer.analysis.verdict import VerdictView


@dataclass(frozen=True)
class AnalysisResult:
    """Everything :func:`analyze` computed (fractions, not percent, in the frames).

    Built once by :func:`~.report.compute`; :func:`~.report.analyze` and
    :func:`~.report.write_report` return copies with the report's inputs and written
    paths added (:func:`dataclasses.replace`), never changing one in place.

    Attributes:
        runs: the finished runs analysed (contract columns, normalised dtypes).
        sources: one row per source: ``source, eps, norm, name, is_baseline``.
        baseline: the label every other source is compared with.
        coverage: finished / total runs.
        options: the interval settings used.
        summary: mean accuracy and interval per (source, target, unfrozen, epochs, n).
        deltas: per-seed paired differences from the baseline.
        delta_summary: mean difference, interval and verdict per cell.
        curves: accuracy per (run, epoch) (see :func:`~.stats.epoch_curves`).
        epoch_summary: mean accuracy and interval per (cell, epoch).
        epoch_delta_summary: mean paired difference per (cell, epoch).
        image_factors: how many times fewer images (:class:`~.Factors`).
        epoch_factors: how many times fewer epochs.
        headlines: the findings in words, most important first.
        tables: text tables by kind (``accuracy``, ``delta``, ``image_factors``,
            ``epoch_factors``), each ``{(unfrozen, epochs or budget): DataFrame}``.
        recipe: recipe columns that differ between runs.
        view: the slices the verdict and the epoch figures show.
        verdict_cells: robust minus baseline per (target, source, unfrozen, n) at the view's
            budget (the verdict heatmap).
        sentences: ``("few images: ...", "few epochs: ...")``.
        notes: how the input was read (codes, the epoch-budget policy).
        block_baseline: the unfrozen setting other settings are compared with.
        block_summary: paired ``block_baseline`` minus other settings, per cell.
        source_info: the sources' metadata (architecture, accuracies), when known.
        explanations: influence and saliency outputs shown in the report.
        spec_text: the study specification, if given.
        robustness: clean and robust accuracy after transfer, with the robust-minus-
            baseline gap sentences (:func:`~.robustness.robustness_section`); ``None``
            when no run measured robust accuracy.
        tuning: learning rates chosen on validation and the deltas at them
            (:func:`~.tuning.tuning_section`); ``None`` when no run has a validation
            accuracy.
        figures: ``{figure key: {"png": path, "svg": path}}`` of written figures.
        captions: ``{figure key: caption}``.
        html_path: the HTML report, if written.
        markdown_path: the Markdown report, if written.
    """

    runs: pd.DataFrame
    sources: pd.DataFrame
    baseline: str
    coverage: Coverage
    options: CIOptions
    summary: pd.DataFrame
    deltas: pd.DataFrame
    delta_summary: pd.DataFrame
    curves: pd.DataFrame
    epoch_summary: pd.DataFrame
    epoch_delta_summary: pd.DataFrame
    image_factors: Factors
    epoch_factors: Factors
    headlines: list[str]
    tables: dict[str, Tables]
    recipe: dict[str, list[str]]
    view: VerdictView
    verdict_cells: pd.DataFrame
    sentences: tuple[str, str]
    notes: list[str] = field(default_factory=list)
    block_baseline: str | None = None
    block_summary: pd.DataFrame = field(default_factory=pd.DataFrame)
    source_info: pd.DataFrame | None = None
    explanations: Explanations | None = None
    spec_text: str | None = None
    robustness: RobustnessSection | None = None
    tuning: TuningSection | None = None
    figures: dict[str, dict[str, Path]] = field(default_factory=dict)
    captions: dict[str, str] = field(default_factory=dict)
    html_path: Path | None = None
    markdown_path: Path | None = None
