"""Data efficiency: how many times fewer training images and epochs than the baseline."""

from __future__ import annotations

from robust_transfer.analysis.document import Section
from robust_transfer.analysis.result import AnalysisResult
from robust_transfer.analysis.sections.common import base_name, setting_text, table_section


def build(result: AnalysisResult, draw: bool) -> list[Section]:
    """Two sections: image factors at each n, epoch factors per epoch budget."""
    pct, base = result.options.percent, base_name(result)
    images = f"Times fewer training images than {base} at each n [{pct} interval]"
    epochs = f"Times fewer epochs than {base}, geometric mean over epochs [{pct} interval]"
    return [table_section("Data efficiency: images", result.tables.get("image_factors", {}),
                          lambda key: f"{images} — {setting_text(key)}"),
            table_section("Data efficiency: epochs", result.tables.get("epoch_factors", {}),
                          lambda key: f"{epochs} — {setting_text(key, per_budget=True)}")]
