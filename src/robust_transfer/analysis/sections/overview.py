"""What was analysed (coverage, sources, seeds, intervals, notes) and the sources table."""

from __future__ import annotations

import math

import pandas as pd

from robust_transfer.analysis.document import Bullets, Section, Table
from robust_transfer.analysis.frames import display_name
from robust_transfer.analysis.result import AnalysisResult
from robust_transfer.analysis.sections.common import base_name, method_name
from robust_transfer.analysis.stats import BY_BUDGET


def build(result: AnalysisResult, draw: bool) -> list[Section]:
    """Two sections: what was analysed, and the sources."""
    return [Section("What was analysed", (Bullets(tuple(overview(result))),)),
            Section("Sources", (Table(sources_frame(result)),))]


def overview(result: AnalysisResult) -> list[str]:
    """Sentences on what was analysed: coverage, sources, baseline, seeds, intervals, policy."""
    seeds = result.summary["n_seeds"]
    lines = [
        f"Coverage: {result.coverage.sentence()}.",
        f"Baseline: {base_name(result)} (label '{result.baseline}'); sources: "
        + ", ".join(f"{n} ('{s}')" for s, n in zip(result.sources["source"],
                                                  result.sources["name"], strict=True)) + ".",
        f"Targets: {', '.join(sorted(result.runs['target'].unique()))}; seeds per cell: "
        + (f"{int(seeds.min())}." if seeds.min() == seeds.max() else
           f"{int(seeds.min())}-{int(seeds.max())}."),
        f"Intervals: {result.options.percent} {method_name(result)} over seeds.",
        f"Accuracy against epochs: {_curve_kind(result)}.",
        *result.notes,
    ]
    for col, values in result.recipe.items():
        lines.append(f"Runs differ in {col}: {', '.join(values)}.")
    return lines


def _curve_kind(result: AnalysisResult) -> str:
    budgets = set(result.curves["budget"])
    if not budgets:
        return ("none (no per-epoch rows and a single epoch budget), so no epoch figures or "
                "epoch factors")
    if budgets == {BY_BUDGET}:
        return "final accuracy of each epoch budget (no per-epoch rows were given)"
    return "each run's per-epoch test accuracy"


def sources_frame(result: AnalysisResult) -> pd.DataFrame:
    """The sources table: name, architecture, norm, eps, clean and robust accuracy."""
    table = result.sources[["source", "name", "norm", "eps"]].copy()
    if result.source_info is not None and len(result.source_info):
        info = result.source_info.drop(columns=["norm", "eps"]).set_index("source")
        table = table.join(info, on="source")
    table["eps"] = [display_name("x", e, n).replace("L2 eps ", "").replace("Linf eps ", "")
                    if isinstance(e, float) and not math.isnan(e) and e > 0 else
                    ("0" if e == 0 else "?") for e, n in zip(table["eps"], table["norm"],
                                                             strict=True)]
    for col in ("clean_acc", "robust_acc"):
        if col in table:
            table[col] = [f"{100 * v:.1f}%" if v == v else "" for v in table[col]]
    return table.rename(columns={"clean_acc": "clean acc", "robust_acc": "robust acc",
                                 "robust_eval": "robust acc under"}).fillna("")
