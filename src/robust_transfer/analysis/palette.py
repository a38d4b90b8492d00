"""One colour per source, shared by every figure of the project (analysis, influence, saliency).

The baseline (natural) source is near-black; the others take :data:`PALETTE` in the order
they are listed (the analysis lists them by norm, then eps). Kept free of matplotlib and
pandas, so any plotting module can import it.
"""

from __future__ import annotations

from collections.abc import Iterable

BASELINE_COLOR = "#222222"
# Okabe-Ito, then tab10's remaining hues: distinguishable with common colour blindness
PALETTE = ("#E69F00", "#56B4E9", "#009E73", "#D55E00", "#0072B2", "#CC79A7", "#F0E442",
           "#8C564B", "#7F7F7F", "#BCBD22", "#17BECF", "#9467BD")
NATURAL_NAMES = frozenset({"natural", "standard", "nat", "baseline"})


def source_colors(labels: Iterable[str], baseline: str | None = None) -> dict[str, str]:
    """Colour per source label: ``baseline`` near-black, the others from :data:`PALETTE`.

    Args:
        labels: source labels in display order (the baseline may be among them).
        baseline: the baseline's label; default: a label in :data:`NATURAL_NAMES`.

    Returns:
        ``{label: "#rrggbb"}``; the same labels in the same order always get the same colours.
    """
    labels = list(dict.fromkeys(labels))
    if baseline is None:
        baseline = next((s for s in labels if s.lower() in NATURAL_NAMES), None)
    others = [s for s in labels if s != baseline]
    colors = {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(others)}
    if baseline is not None:
        colors[baseline] = BASELINE_COLOR
    return colors
