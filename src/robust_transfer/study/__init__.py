"""Studies: a YAML spec -> runs -> a resumable results store, on one machine or a Ray cluster.

Entry points:

* :func:`load_spec` parses and checks a spec; ``spec.runs()`` expands it (stable run ids).
* :func:`run_study` runs what is not finished yet and returns a :class:`StudySummary`.
* :func:`plan_study` is the dry run: run counts, what is missing, estimated cost.
* :func:`load_results`, :func:`study_status`, :func:`spec_text`, :func:`export_results`
  read a study directory (the analysis starts here).

The names load on first use (PEP 562): reading a store (``study status``) imports
neither torch nor the runner.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from robust_transfer.lazy import lazy_exports

_EXPORTS = {
    "CostEstimate": "estimate", "StudyPlan": "estimate", "plan_study": "estimate",
    "Missing": "resolve", "MissingInputsError": "resolve", "resolve_study": "resolve",
    "StudyProgress": "runner", "StudySummary": "runner", "run_study": "runner",
    "RunConfig": "spec", "StudySpec": "spec", "load_spec": "spec",
    "RunOutcome": "store", "StudyStatus": "store", "StudyStore": "store",
    "export_results": "store", "load_results": "store", "spec_text": "store",
    "study_status": "store",
}

if TYPE_CHECKING:
    from robust_transfer.study.estimate import CostEstimate, StudyPlan, plan_study
    from robust_transfer.study.resolve import Missing, MissingInputsError, resolve_study
    from robust_transfer.study.runner import StudyProgress, StudySummary, run_study
    from robust_transfer.study.spec import RunConfig, StudySpec, load_spec
    from robust_transfer.study.store import (
        RunOutcome,
        StudyStatus,
        StudyStore,
        export_results,
        load_results,
        spec_text,
        study_status,
    )

__all__ = [
    "CostEstimate", "Missing", "MissingInputsError", "RunConfig", "RunOutcome",
    "StudyPlan", "StudyProgress", "StudySpec", "StudyStatus", "StudyStore", "StudySummary",
    "export_results",
    "load_results", "load_spec", "plan_study", "resolve_study", "run_study", "spec_text",
    "study_status",
]


__getattr__, __dir__ = lazy_exports(__name__, {k: f".{v}" for k, v in _EXPORTS.items()}, globals())
