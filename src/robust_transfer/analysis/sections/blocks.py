"""Unfrozen blocks compared: accuracy with the block baseline minus each other setting."""

from __future__ import annotations

from robust_transfer.analysis.budgets import epochs_text
from robust_transfer.analysis.document import Section
from robust_transfer.analysis.frames import unfrozen_text
from robust_transfer.analysis.result import AnalysisResult
from robust_transfer.analysis.sections.common import table_section


def build(result: AnalysisResult, draw: bool) -> list[Section]:
    """The block tables; nothing when the runs have one unfrozen setting."""
    tables = result.tables.get("blocks", {})
    if not tables:
        return []
    ref, pct = unfrozen_text(result.block_baseline or ""), result.options.percent
    return [table_section("Unfrozen blocks compared", tables, lambda key: (
        f"Accuracy with {ref} minus with {unfrozen_text(key[0])} (points), paired by seed, "
        f"[{pct} interval] (seeds) — {epochs_text(key[1])}"))]
