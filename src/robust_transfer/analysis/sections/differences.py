"""Differences from the baseline: paired accuracy differences with intervals."""

from __future__ import annotations

from robust_transfer.analysis.document import Section
from robust_transfer.analysis.result import AnalysisResult
from robust_transfer.analysis.sections.common import base_name, setting_text, table_section


def build(result: AnalysisResult, draw: bool) -> list[Section]:
    """The difference tables."""
    what = (f"Accuracy minus {base_name(result)} (points), paired by seed, "
            f"[{result.options.percent} interval] (seeds)")
    return [table_section("Differences from the baseline", result.tables.get("delta", {}),
                          lambda key: f"{what} — {setting_text(key)}")]
