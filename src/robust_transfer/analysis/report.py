"""``analyze``: from the runs and epochs frames to tables, figures and a report.

The one entry point most callers need. It never prints: everything it finds is in the
returned :class:`AnalysisResult` (built once by :func:`compute`, frozen; the written
paths come in a copy), and the files it writes are listed there. The report's text,
tables and figures are the sections' (:mod:`~robust_transfer.analysis.sections`). The report
directory is built in a temporary folder beside it and moved into place at the end, so
a failure leaves the previous report (or nothing), never half of a new one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from robust_transfer.analysis import (
    efficiency,
    findings,
    robustness,
    stats,
    tables,
    tuning,
    verdict,
)
from robust_transfer.analysis.budgets import POOLED, apply_policy
from robust_transfer.analysis.document import to_html, to_markdown_document
from robust_transfer.analysis.drawing import save_figures
from robust_transfer.analysis.explain import find_outputs, load_explanations
from robust_transfer.analysis.frames import (
    load_study,
    prepare_epochs,
    prepare_runs,
    recipe_variation,
    resolve_baseline,
    source_table,
    unfrozen_key,
    unfrozen_label,
)
from robust_transfer.analysis.inputs import NOTES_ATTR, read_epochs_csv, read_runs_csv
from robust_transfer.analysis.result import AnalysisResult
from robust_transfer.analysis.sections import build_document
from robust_transfer.errors import ConfigError, RobustTransferError

HTML_NAME, MARKDOWN_NAME, FIGURE_DIR, TABLE_DIR = "report.html", "report.md", "figures", "tables"
__all__ = ["AnalysisResult", "analyze", "analyze_csv", "analyze_study", "compute",
           "verdict_sentences", "write_report"]


def analyze(runs: pd.DataFrame, epochs: pd.DataFrame | None = None,
            out_dir: str | Path | None = None, spec_text: str | None = None,
            baseline: str | None = None, *, options: stats.CIOptions | None = None,
            total_runs: int | None = None, reference: findings.Reference | None = None,
            figures: bool = True, title: str = "robust-transfer analysis",
            epoch_policy: str = "final", block_baseline: str | None = None,
            influence: Sequence[str | Path] = (), saliency: Sequence[str | Path] = (),
            source_info: pd.DataFrame | None = None, notes: Sequence[str] = ()) -> AnalysisResult:
    """Analyse finished fine-tuning runs and, with ``out_dir``, write the report.

    Args:
        runs: one row per finished run (contract in :mod:`robust_transfer.analysis`).
        epochs: one row per (run_id, epoch), or ``None``.
        out_dir: where ``report.html``, ``report.md``, ``figures/`` and ``tables/`` go;
            ``None`` computes only. Existing entries of those names are replaced.
        spec_text: the study specification, shown verbatim in the report.
        baseline: source label to compare with; default the eps-0 / ``natural`` source.
        options: interval settings (default: t-interval, 95%).
        total_runs: runs the study defines, so the report can say how many are missing.
        reference: the setting the headlines and the epoch figures quote (unfrozen
            blocks, epoch budget, n); each given value must match some runs.
        figures: draw figures (needs ``out_dir``).
        title: the report's title.
        epoch_policy: which epoch of each run counts: ``final`` or ``best`` (optimistic).
        block_baseline: the unfrozen setting others are compared with; default the fewest.
        influence: influence output folders to show (``robust-transfer influence --out``).
        saliency: saliency output folders to show.
        source_info: the sources' metadata table
            (:func:`~robust_transfer.study.results.source_metadata`).
        notes: sentences on how the input was read, shown in the report.

    Returns:
        The frames, tables, sentences and written paths.

    Raises:
        RobustTransferError: no finished runs, no baseline, malformed frames, or a
            ``reference`` value that matches no runs.
    """
    options = options or stats.CIOptions()
    result = compute(runs, epochs, baseline, options, total_runs, reference,
                     epoch_policy=epoch_policy, block_baseline=block_baseline, notes=notes)
    explanations = load_explanations([Path(p) for p in influence], [Path(p) for p in saliency],
                                     result.baseline, options.level)
    result = replace(result, spec_text=spec_text, source_info=source_info,
                     explanations=explanations)
    if out_dir is None:
        return result
    return write_report(result, Path(out_dir), figures=figures, title=title)


def analyze_study(study_dir: str | Path, out_dir: str | Path | None = None,
                  **kwargs: Any) -> AnalysisResult:
    """:func:`analyze` a study directory (read with :func:`~.frames.load_study`).

    Influence and saliency outputs inside the study directory are shown in the report,
    besides any named with ``influence=`` / ``saliency=``.

    Args:
        study_dir: the study's directory.
        out_dir: report directory; default ``study_dir/analysis``.
        **kwargs: passed to :func:`analyze` (``baseline``, ``options``, ...); a
            ``spec_text`` given here wins over the study's own.
    """
    study = load_study(study_dir)
    found_inf, found_sal = find_outputs(study_dir)
    kwargs["influence"] = _union(found_inf, kwargs.get("influence") or ())
    kwargs["saliency"] = _union(found_sal, kwargs.get("saliency") or ())
    for key, value in (("spec_text", study.spec_text), ("total_runs", study.total_runs),
                       ("source_info", study.source_info)):
        if kwargs.get(key) is None:
            kwargs[key] = value
    out = Path(study_dir) / "analysis" if out_dir is None else out_dir
    return analyze(study.runs, study.epochs, out, **kwargs)


def _union(found: list[Path], given: Sequence[str | Path]) -> list[Path]:
    paths = {Path(p).resolve(): Path(p) for p in [*found, *given]}
    return list(paths.values())


def analyze_csv(csv_path: str | Path, out_dir: str | Path | None = None, *,
                epochs_csv: str | Path | None = None, n_all: Mapping[str, int] | None = None,
                **kwargs: Any) -> AnalysisResult:
    """:func:`analyze` results of other code (see :mod:`~robust_transfer.analysis.inputs`).

    Args:
        csv_path: the runs CSV (one row per run).
        out_dir: report directory; default ``<csv name without suffix>-analysis`` beside it.
        epochs_csv: per-epoch rows (``run_id, epoch, test_acc``) of those runs.
        n_all: images that ``n = all`` stands for, per target.
        **kwargs: passed to :func:`analyze`.
    """
    runs = read_runs_csv(csv_path, n_all)
    epochs = None if epochs_csv is None else read_epochs_csv(epochs_csv, runs)
    kwargs["notes"] = [*runs.attrs.get(NOTES_ATTR, []), *(kwargs.get("notes") or [])]
    path = Path(csv_path)
    out = path.with_name(f"{path.stem}-analysis") if out_dir is None else out_dir
    return analyze(runs, epochs, out, **kwargs)


def compute(runs: pd.DataFrame, epochs: pd.DataFrame | None, baseline: str | None,
            options: stats.CIOptions, total_runs: int | None = None,
            reference: findings.Reference | None = None, *, epoch_policy: str = "final",
            block_baseline: str | None = None, notes: Sequence[str] = ()) -> AnalysisResult:
    """The numbers of :func:`analyze`, without writing anything."""
    every_rate, coverage = prepare_runs(runs, total_runs, by_rate=True)
    if every_rate.empty:
        raise RobustTransferError(f"no finished runs to analyse ({coverage.sentence()}); "
                                  "run the study or wait for runs to finish")
    # the robustness and tuning sections read final-epoch accuracies (of one rate, of all)
    final, shared_lr = tuning.shared_rate_runs(every_rate)
    baseline = resolve_baseline(final, baseline)
    epoch_rows = prepare_epochs(epochs, final)
    counted, policy_notes = apply_policy(final, epoch_rows, epoch_policy)  # what the rest reads
    if shared_lr is not None:
        policy_notes.insert(0, _rate_note(every_rate, counted, shared_lr))
    reference = check_reference(counted, reference)
    sources = source_table(counted, baseline)
    curves = stats.epoch_curves(counted, epoch_rows)
    frames = _frames(counted, curves, baseline, options)
    images = efficiency.image_factors(counted, baseline, options)
    epochs_f = efficiency.epoch_factors(curves, baseline, options)
    recipe = recipe_variation(counted)
    targets = sorted(counted["target"].unique())
    view = verdict.choose_view(frames["delta_summary"], frames["epoch_summary"],
                               reference.epochs, reference.n_label, reference.unfrozen_blocks)
    reference = findings.Reference(reference.unfrozen_blocks, reference.epochs,
                                   reference.n_label or _one(view.n_label))
    present = set(map(tuple, counted[["target", "source"]].drop_duplicates().to_numpy()))
    lines = findings.headlines(images, epochs_f, sources, targets, coverage, options,
                               reference, recipe, present)
    block_ref = _block_reference(counted, block_baseline)
    block_summary = stats.summarize_deltas(stats.block_deltas(counted, block_ref),
                                           options=options) \
        if block_ref is not None else pd.DataFrame()
    cells = verdict.verdict_cells(frames["delta_summary"], view)
    sentences = verdict.lead_sentences(cells, frames["epoch_delta_summary"],
                                       epochs_f.summary, sources, view, options.percent)
    return AnalysisResult(
        runs=counted, sources=sources, baseline=baseline, coverage=coverage, options=options,
        curves=curves, image_factors=images, epoch_factors=epochs_f, headlines=lines,
        tables=_tables(frames, images, epochs_f, sources, block_summary), recipe=recipe,
        view=view, verdict_cells=cells, sentences=sentences, notes=[*notes, *policy_notes],
        block_baseline=block_ref, block_summary=block_summary,
        robustness=robustness.robustness_section(final, baseline, sources, options),
        tuning=tuning.tuning_section(every_rate, baseline, options), **frames)


def _rate_note(every_rate: pd.DataFrame, runs: pd.DataFrame, shared_lr: float) -> str:
    rates = sorted(pd.to_numeric(every_rate["lr"], errors="coerce").dropna().unique())
    tuned = ("the 'Tuned on validation' section uses them all" if "val_acc" in every_rate
             and every_rate["val_acc"].notna().any() else
             "the others are not used (no validation accuracy to choose a rate by)")
    return (f"Runs were trained at {len(rates)} learning rates ({', '.join(f'{r:g}' for r in rates)}): "
            f"every table and figure outside 'Tuned on validation' uses the shared rate "
            f"{shared_lr:g} (the largest, as the paper's one rate; {len(runs)} of "
            f"{len(every_rate)} runs); {tuned}.")


def _one(values: dict[str, str]) -> str | None:
    return next(iter(values.values())) if len(set(values.values())) == 1 else None


def verdict_sentences(result: AnalysisResult) -> tuple[str, str]:
    """The report's two plain sentences, ``("few images: ...", "few epochs: ...")``.

    The README's summary of the demo is generated from these.
    """
    return result.sentences


def check_reference(runs: pd.DataFrame, reference: findings.Reference | None
                    ) -> findings.Reference:
    """The reference with its unfrozen code normalised; every given value must match runs.

    Raises:
        ConfigError: a value that no run has, naming the values present.
    """
    ref = reference or findings.Reference()
    unfrozen = None if ref.unfrozen_blocks is None else unfrozen_label(ref.unfrozen_blocks)
    checks = (("unfrozen blocks", unfrozen, runs["unfrozen_blocks"], "--unfrozen"),
              ("epoch budget", None if ref.epochs is None else str(ref.epochs),
               runs["epoch_budget"].astype(str), "--epochs"),
              ("n", ref.n_label, runs["n_label"], "--n"))
    for what, value, present, flag in checks:
        values = sorted(set(present), key=_natural_key)
        if value is not None and value not in values:
            raise ConfigError(f"{flag} {value}: no run has {what} {value}; present: "
                              f"{', '.join(values)}")
    epochs = ref.epochs
    if epochs is not None and (runs["epochs"] == POOLED).all():
        epochs = POOLED  # budgets are pooled: the one setting is the pooled one
    return findings.Reference(unfrozen, epochs, ref.n_label)


def _natural_key(text: str) -> tuple[float, str]:
    try:
        return float(text), text
    except ValueError:
        return float("inf"), text


def _block_reference(runs: pd.DataFrame, wanted: str | None) -> str | None:
    settings = sorted(runs["unfrozen_blocks"].unique(), key=unfrozen_key)
    if len(settings) < 2:
        return None
    if wanted is None:
        return settings[0]
    label = unfrozen_label(wanted)
    if label not in settings:
        raise ConfigError(f"--block-baseline {wanted}: no run has {label} unfrozen blocks; "
                          f"present: {', '.join(settings)}")
    return label


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
            epochs: efficiency.Factors, sources: pd.DataFrame,
            block_summary: pd.DataFrame) -> dict[str, tables.Tables]:
    return {
        "accuracy": tables.accuracy_tables(frames["summary"], sources),
        "delta": tables.delta_tables(frames["delta_summary"], sources),
        "blocks": tables.delta_tables(block_summary, sources) if len(block_summary) else {},
        "image_factors": tables.image_factor_tables(images.by_x, sources),
        "epoch_factors": tables.epoch_factor_tables(epochs.summary, sources),
    }


def long_tables(result: AnalysisResult) -> dict[str, pd.DataFrame]:
    """Every table of the report as a long numeric frame, keyed by its file stem."""
    frames = {
        "accuracy": result.summary, "delta": result.delta_summary,
        "verdict": result.verdict_cells, "blocks": result.block_summary,
        "image_factors_by_n": result.image_factors.by_x,
        "image_factors": result.image_factors.summary,
        "epoch_accuracy": result.epoch_summary, "epoch_delta": result.epoch_delta_summary,
        "epoch_factors": result.epoch_factors.summary, "sources": result.sources,
    }
    if result.source_info is not None:
        frames["source_metadata"] = result.source_info
    if result.explanations is not None and len(result.explanations.paired):
        frames["class_match_paired"] = result.explanations.paired
    if result.robustness is not None:
        frames["robustness"] = result.robustness.table
        frames["robustness_gaps"] = result.robustness.gaps
    if result.tuning is not None and len(result.tuning.chosen):
        frames["tuning_chosen_lr"] = result.tuning.chosen
        frames["tuning_deltas"] = result.tuning.deltas
    return frames


def export_tables(result: AnalysisResult, directory: Path) -> dict[str, dict[str, Path]]:
    """Write :func:`long_tables` as CSV (and Parquet when pyarrow is installed)."""
    try:
        import pyarrow  # noqa: F401
        formats: tuple[str, ...] = ("csv", "parquet")
    except ImportError:
        formats = ("csv",)
    directory.mkdir(parents=True, exist_ok=True)
    written: dict[str, dict[str, Path]] = {}
    for stem, frame in long_tables(result).items():
        written[stem] = {}
        for fmt in formats:
            path = directory / f"{stem}.{fmt}"
            if fmt == "csv":
                frame.to_csv(path, index=False)
            else:
                frame.astype({c: str for c in frame.columns if frame[c].dtype == object}
                             ).to_parquet(path, index=False)
            written[stem][fmt] = path
    return written


def write_report(result: AnalysisResult, out_dir: Path, figures: bool = True,
                 title: str = "robust-transfer analysis") -> AnalysisResult:
    """Write figures, tables, ``report.html`` and ``report.md`` into ``out_dir``.

    Everything is written into a temporary folder beside ``out_dir`` first and moved into
    place at the end.

    Returns:
        ``result`` with the written paths, the figures' files and their captions.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    doc = build_document(result, title, draw=figures)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        written = save_figures(doc, tmp / FIGURE_DIR) if figures else {}
        export_tables(result, tmp / TABLE_DIR)
        (tmp / HTML_NAME).write_text(to_html(doc, written), encoding="utf-8")
        (tmp / MARKDOWN_NAME).write_text(to_markdown_document(doc, written, FIGURE_DIR),
                                         encoding="utf-8")
        _move_into(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return replace(result, html_path=out_dir / HTML_NAME, markdown_path=out_dir / MARKDOWN_NAME,
                   captions={f.key: f.caption for f in doc.figures()} if figures else {},
                   figures={key: {fmt: out_dir / FIGURE_DIR / p.name for fmt, p in v.items()}
                            for key, v in written.items()})


def _move_into(tmp: Path, out_dir: Path) -> None:
    """Move the finished entries into ``out_dir``, replacing those of the same names."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for entry in sorted(tmp.iterdir()):
        target = out_dir / entry.name
        if entry.is_dir():
            old = None
            if target.exists():
                old = out_dir / f".{entry.name}.old-{os.getpid()}"
                target.rename(old)
            entry.rename(target)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(entry, target)
