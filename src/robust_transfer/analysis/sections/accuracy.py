"""Accuracy: mean test accuracy and interval per source, one table per setting."""

from __future__ import annotations

from robust_transfer.analysis.document import Section
from robust_transfer.analysis.result import AnalysisResult
from robust_transfer.analysis.sections.common import setting_text, table_section


def build(result: AnalysisResult, draw: bool) -> list[Section]:
    """The accuracy tables."""
    what = f"Test accuracy (%), mean ± half the {result.options.percent} interval (seeds)"
    return [table_section("Accuracy", result.tables.get("accuracy", {}),
                          lambda key: f"{what} — {setting_text(key)}")]
