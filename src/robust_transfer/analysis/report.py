"""``analyze``: from the runs and epochs frames to tables, figures and a report.

The one entry point most callers need. It never prints: everything it finds is in the
returned :class:`AnalysisResult`, and the files it writes are listed there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from robust_transfer.analysis import efficiency, findings, plots, render, stats, tables
from robust_transfer.analysis.frames import (
    Coverage,
    load_study,
    prepare_epochs,
    prepare_runs,
    read_runs_csv,
    recipe_variation,
    resolve_baseline,
    source_table,
)
from robust_transfer.errors import RobustTransferError

HTML_NAME, MARKDOWN_NAME, FIGURE_DIR = "report.html", "report.md", "figures"


@dataclass
class AnalysisResult:
    """Everything :func:`analyze` computed (fractions, not percent, in the frames).

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
        image_factors: how many times fewer images (:class:`~.efficiency.Factors`).
        epoch_factors: how many times fewer epochs.
        headlines: the findings in words, most important first.
        tables: text tables by kind (``accuracy``, ``delta``, ``image_factors``,
            ``epoch_factors``), each ``{(unfrozen, epochs or budget): DataFrame}``.
        recipe: recipe columns that differ between runs.
        spec_text: the study specification, if given.
        figures: ``{figure key: {"png": path, "svg": path}}`` of written figures.
        captions: ``{figure key: caption}``.
        html_path: the HTML report, if written.
        markdown_path: the Markdown report, if written.
    """

    runs: pd.DataFrame
    sources: pd.DataFrame
    baseline: str
    coverage: Coverage
    options: stats.CIOptions
    summary: pd.DataFrame
    deltas: pd.DataFrame
    delta_summary: pd.DataFrame
    curves: pd.DataFrame
    epoch_summary: pd.DataFrame
    epoch_delta_summary: pd.DataFrame
    image_factors: efficiency.Factors
    epoch_factors: efficiency.Factors
    headlines: list[str]
    tables: dict[str, tables.Tables]
    recipe: dict[str, list[str]]
    spec_text: str | None = None
    figures: dict[str, dict[str, Path]] = field(default_factory=dict)
    captions: dict[str, str] = field(default_factory=dict)
    html_path: Path | None = None
    markdown_path: Path | None = None


def analyze(runs: pd.DataFrame, epochs: pd.DataFrame | None = None,
            out_dir: str | Path | None = None, spec_text: str | None = None,
            baseline: str | None = None, *, options: stats.CIOptions | None = None,
            total_runs: int | None = None, reference: findings.Reference | None = None,
            figures: bool = True, title: str = "robust-transfer analysis") -> AnalysisResult:
    """Analyse finished fine-tuning runs and, with ``out_dir``, write the report.

    Args:
        runs: one row per finished run (contract in :mod:`robust_transfer.analysis`).
        epochs: one row per (run_id, epoch), or ``None``.
        out_dir: where ``report.html``, ``report.md`` and ``figures/`` go; ``None``
            computes only. Existing files of those names are replaced.
        spec_text: the study specification, shown verbatim in the report.
        baseline: source label to compare with; default the eps-0 / ``natural`` source.
        options: interval settings (default: t-interval, 95%).
        total_runs: runs the study defines, so the report can say how many are missing.
        reference: the setting the headlines quote (default per :class:`~.findings.Reference`).
        figures: draw figures (needs ``out_dir``).
        title: the report's title.

    Returns:
        The frames, tables, headlines and written paths.

    Raises:
        RobustTransferError: no finished runs, no baseline, or malformed frames.
    """
    options = options or stats.CIOptions()
    result = compute(runs, epochs, baseline, options, total_runs, reference)
    result.spec_text = spec_text
    if out_dir is not None:
        write_report(result, Path(out_dir), figures=figures, title=title)
    return result


def analyze_study(study_dir: str | Path, out_dir: str | Path | None = None,
                  **kwargs: object) -> AnalysisResult:
    """:func:`analyze` a study directory (read with :func:`~.frames.load_study`).

    Args:
        study_dir: the study's directory.
        out_dir: report directory; default ``study_dir/analysis``.
        **kwargs: passed to :func:`analyze` (``baseline``, ``options``, ...); a
            ``spec_text`` given here wins over the study's own.
    """
    study = load_study(study_dir)
    if kwargs.get("spec_text") is None:
        kwargs["spec_text"] = study.spec_text
    if kwargs.get("total_runs") is None:
        kwargs["total_runs"] = study.total_runs
    out = Path(study_dir) / "analysis" if out_dir is None else out_dir
    return analyze(study.runs, study.epochs, out, **kwargs)


def analyze_csv(csv_path: str | Path, out_dir: str | Path | None = None,
                **kwargs: object) -> AnalysisResult:
    """:func:`analyze` results imported from a CSV (see :func:`~.frames.read_runs_csv`).

    Args:
        csv_path: the CSV file.
        out_dir: report directory; default ``<csv name without suffix>-analysis`` beside it.
        **kwargs: passed to :func:`analyze`.
    """
    runs = read_runs_csv(csv_path)
    path = Path(csv_path)
    out = path.with_name(f"{path.stem}-analysis") if out_dir is None else out_dir
    return analyze(runs, None, out, **kwargs)


def compute(runs: pd.DataFrame, epochs: pd.DataFrame | None, baseline: str | None,
            options: stats.CIOptions, total_runs: int | None = None,
            reference: findings.Reference | None = None) -> AnalysisResult:
    """The numbers of :func:`analyze`, without writing anything."""
    runs, coverage = prepare_runs(runs, total_runs)
    if runs.empty:
        raise RobustTransferError(f"no finished runs to analyse ({coverage.sentence()}); "
                                  "run the study or wait for runs to finish")
    baseline = resolve_baseline(runs, baseline)
    findings.check_reference(runs, reference)
    sources = source_table(runs, baseline)
    curves = stats.epoch_curves(runs, prepare_epochs(epochs, runs))
    frames = _frames(runs, curves, baseline, options)
    images = efficiency.image_factors(runs, baseline, options)
    epochs_f = efficiency.epoch_factors(curves, baseline, options)
    recipe = recipe_variation(runs)
    targets = sorted(runs["target"].unique())
    lines = findings.headlines(images, epochs_f, sources, targets, coverage, options,
                               reference, recipe)
    return AnalysisResult(
        runs=runs, sources=sources, baseline=baseline, coverage=coverage, options=options,
        curves=curves, image_factors=images, epoch_factors=epochs_f, headlines=lines,
        tables=_tables(frames, images, epochs_f, sources), recipe=recipe, **frames)


def _frames(runs: pd.DataFrame, curves: pd.DataFrame, baseline: str,
            options: stats.CIOptions) -> dict[str, pd.DataFrame]:
    deltas = stats.paired_deltas(runs, baseline)
    epoch_keys = [*stats.CURVE_KEYS, "epoch"]
    return {
        "summary": stats.summarize_runs(runs, options),
        "deltas": deltas,
        "delta_summary": stats.summarize_deltas(deltas, options=options),
        "epoch_summary": stats.summarize_epoch_curves(curves, options),
        "epoch_delta_summary": stats.summarize_deltas(
            stats.epoch_deltas(curves, baseline), epoch_keys, options),
    }


def _tables(frames: dict[str, pd.DataFrame], images: efficiency.Factors,
            epochs: efficiency.Factors, sources: pd.DataFrame) -> dict[str, tables.Tables]:
    return {
        "accuracy": tables.accuracy_tables(frames["summary"], sources),
        "delta": tables.delta_tables(frames["delta_summary"], sources),
        "image_factors": tables.image_factor_tables(images.by_x, sources),
        "epoch_factors": tables.epoch_factor_tables(epochs.summary, sources),
    }


def make_figures(result: AnalysisResult, directory: Path,
                 epochs: int | None = None) -> list[plots.FigureSpec]:
    """Draw Fig. 1a/1b/2a/2b and save each as PNG and SVG under ``directory``."""
    specs = plots.figures_vs_n(result.summary, result.delta_summary, result.sources, epochs)
    specs += plots.figures_vs_epochs(result.epoch_summary, result.epoch_delta_summary,
                                     result.sources, epochs)
    for spec in specs:
        result.captions[spec.key] = spec.caption
        if spec.figure is not None:
            result.figures[spec.key] = plots.save_figure(spec.figure, directory, spec.key)
    return specs


def write_report(result: AnalysisResult, out_dir: Path, figures: bool = True,
                 title: str = "robust-transfer analysis") -> None:
    """Write figures, ``report.html`` and ``report.md`` into ``out_dir`` (sets the paths)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if figures:
        make_figures(result, out_dir / FIGURE_DIR)
    result.html_path = out_dir / HTML_NAME
    result.html_path.write_text(render.html_report(result, title), encoding="utf-8")
    result.markdown_path = out_dir / MARKDOWN_NAME
    result.markdown_path.write_text(render.markdown_report(result, title, FIGURE_DIR),
                                    encoding="utf-8")
