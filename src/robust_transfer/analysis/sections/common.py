"""What several sections say alike: source names, intervals as text, setting columns."""

from __future__ import annotations

import math
from collections.abc import Callable

import pandas as pd

from robust_transfer.analysis.budgets import epochs_text
from robust_transfer.analysis.document import Paragraph, Section, Table
from robust_transfer.analysis.frames import unfrozen_text
from robust_transfer.analysis.result import AnalysisResult
from robust_transfer.analysis.stats import BY_BUDGET
from robust_transfer.analysis.tables import Tables


def base_name(result: AnalysisResult) -> str:
    """Display name of the baseline source."""
    return str(result.sources.loc[result.sources["is_baseline"], "name"].iloc[0])


def names(result: AnalysisResult) -> dict[str, str]:
    """Source label -> display name."""
    return dict(zip(result.sources["source"], result.sources["name"], strict=True))


def method_name(result: AnalysisResult) -> str:
    """"Student t-interval" or "bootstrap interval (2000 resamples)"."""
    if result.options.method == "t":
        return "Student t-interval"
    return f"{result.options.method} interval ({result.options.n_boot} resamples)"


def interval_text(mean: float, lo: float, hi: float, signed: bool = False) -> str:
    """"85.2 [83.1, 87.0]" in %, or the mean alone when there is no interval."""
    sign = "+" if signed else ""
    if math.isnan(lo) or math.isnan(hi):
        return f"{100 * mean:{sign}.1f}"
    return f"{100 * mean:{sign}.1f} [{100 * lo:{sign}.1f}, {100 * hi:{sign}.1f}]"


def setting_columns(frame: pd.DataFrame, several_budgets: bool) -> dict[str, list[str]]:
    """The target, n, unfrozen (and epochs) columns of a text table."""
    cols = {"target": list(frame["target"].astype(str)),
            "n": list(frame["n_label"] if "n_label" in frame else frame["n"].astype(str)),
            "unfrozen": [unfrozen_text(str(u)) for u in frame["unfrozen_blocks"]]}
    if several_budgets:
        cols["epochs"] = list(frame["epochs"].astype(str))
    return cols


def setting_text(key: tuple[str, str], per_budget: bool = False) -> str:
    """The setting a paper table shows: "head only, 10 epochs", "last block, 5-epoch runs"."""
    unfrozen, second = key
    if second == BY_BUDGET:
        return f"{unfrozen_text(unfrozen)}, final accuracy per epoch budget"
    if per_budget:
        return f"{unfrozen_text(unfrozen)}, {second}-epoch runs"
    return f"{unfrozen_text(unfrozen)}, {epochs_text(second)}"


def table_section(heading: str, tables: Tables, title: Callable[[tuple[str, str]], str],
                  ) -> Section:
    """A section of paper tables, one per setting, each under ``title(setting)``."""
    if not tables:
        return Section(heading, (Paragraph("Nothing to show (no paired data).", "meta"),))
    return Section(heading, tuple(Table(t, title(key)) for key, t in tables.items()))
