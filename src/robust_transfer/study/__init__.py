"""Studies: a YAML spec -> runs -> a resumable results store, on one machine or a Ray cluster.

Entry points:

* :func:`load_spec` parses and checks a spec; ``spec.runs()`` expands it (stable run ids).
* :func:`run_study` runs what is not finished yet and returns a :class:`StudySummary`.
* :func:`plan_study` is the dry run: run counts, what is missing, estimated cost.
* :func:`load_results`, :func:`study_status`, :func:`spec_text`, :func:`export_results`
  read a study directory (the analysis starts here).
"""

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
