"""Analysis: from finished runs to tables, figures, data-efficiency factors and a report.

Entry points: :func:`analyze` (frames in, :class:`AnalysisResult` out, report written
when given a directory), :func:`analyze_study` (a study directory) and
:func:`analyze_csv` (results of other code). Nothing here prints.

Frame contract (what the study store gives the analysis)
--------------------------------------------------------
``robust_transfer.study.results.read_study(study_dir)`` is the analysis' one reader of a
study: the finished runs (typed, with their evaluation recipe), their per-epoch rows, the
run total, the spec text and the sources' metadata (read through
``robust_transfer.models.metadata``); :func:`load_study` is it with the attacks in words.
The analysis itself runs no SQL and opens no checkpoint file.

The report is built by :mod:`~robust_transfer.analysis.sections` (one module per
section, listed in order in ``SECTIONS``) as one
:class:`~robust_transfer.analysis.document.Document`, rendered to HTML and Markdown.

``runs``: one row per finished fine-tuning run.

=================  =======  ==========================================================
column             dtype    meaning
=================  =======  ==========================================================
run_id             str      unique id, the key into ``epochs``
source             str      source label, e.g. ``"natural"``, ``"l2-eps0.5"``
source_eps         float    attack radius the source was trained with (0 = natural)
source_norm        str      ``"l2"``, ``"linf"`` or ``"none"``
target             str      target dataset, e.g. ``"digits"``
n                  int      training images actually used (also for "all")
n_label            str      the requested n: the number, or ``"all"``
unfrozen_blocks    str      ``"0"`` (head only), ``"1"``, ``"3"``, ..., ``"all"``
epochs             int      epoch budget of the run
seed               int      seed (fixes the image subset and the initialisation)
test_acc           float    final test accuracy in [0, 1]
status             str      optional; rows other than ``"finished"`` are ignored
lr, batch_size...  any      optional recipe columns; ones that differ are reported
=================  =======  ==========================================================

A (source, target, n, unfrozen_blocks, epochs, seed) must occur at most once.

``epochs``: one row per (run_id, epoch): ``run_id`` (str), ``epoch`` (int, 1-based),
``train_loss``, ``train_acc``, ``test_loss``, ``test_acc`` (floats; test columns NaN on
epochs that were not evaluated). Only ``run_id``, ``epoch`` and ``test_acc`` are read.

CSV import (:mod:`~robust_transfer.analysis.inputs`): :func:`read_runs_csv` (columns
``source, target, n, unfrozen_blocks, epochs, seed, test_acc``, optional ``eps``,
``norm``, ``run_id``) and :func:`read_epochs_csv`; the codes real logs use (n or unfrozen
``-1``/``all``, Linf eps in 1/255 units) are read with their meaning written into the
report, and bad input raises :class:`~robust_transfer.errors.ConfigError` naming it.

Baseline: the source with eps 0, else the one labelled ``natural``, else the label
passed as ``baseline=``; without one, a :class:`~robust_transfer.errors.RobustTransferError`
says which labels could be marked.
"""

from __future__ import annotations

from robust_transfer.lazy import lazy_exports

# name -> submodule; loaded on first use (PEP 562), so that importing one light submodule
# (the CLI reads interval names from ``intervals``) does not load pandas, scipy, matplotlib
_EXPORTS = {
    "AnalysisResult": "report", "analyze": "report", "analyze_csv": "report",
    "analyze_study": "report", "CI_METHODS": "intervals", "CIOptions": "intervals",
    "ci_table": "stats", "paired_deltas": "stats", "summarize_deltas": "stats",
    "summarize_runs": "stats", "Factors": "efficiency", "epoch_factors": "efficiency",
    "image_factors": "efficiency", "Reference": "findings", "Coverage": "frames",
    "StudyResults": "frames", "load_study": "frames", "prepare_epochs": "frames",
    "prepare_runs": "frames", "read_runs_csv": "inputs", "read_epochs_csv": "inputs",
    "resolve_baseline": "frames", "verdict_sentences": "report", "EPOCH_POLICIES": "budgets",
    "PALETTE": "palette", "source_colors": "palette", "Explanations": "explain",
}
__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, {k: f".{v}" for k, v in _EXPORTS.items()}, globals())
