"""Robustness after transfer: clean and robust accuracy of the fine-tuned models."""

from __future__ import annotations

from functools import partial

import pandas as pd

from robust_transfer.analysis import robustness
from robust_transfer.analysis.document import Figure, Paragraph, Section, Table
from robust_transfer.analysis.frames import unfrozen_key
from robust_transfer.analysis.result import AnalysisResult
from robust_transfer.analysis.sections.common import (
    base_name,
    interval_text,
    names,
    setting_columns,
)

HEADING = "Robustness after transfer"
PREFIX = "robust_"


def build(result: AnalysisResult, draw: bool) -> list[Section]:
    """What was measured, the gap sentences, the tables and (when drawing) a figure per target."""
    section = result.robustness
    if section is None:
        return []
    blocks: list = [Paragraph(s) for s in lines(result)]
    blocks += [Paragraph(s, "strong") for s in section.sentences]
    blocks += [Table(frame, title) for title, frame in frames(result)]
    if draw:
        blocks += figures(result)
    return [Section(HEADING, tuple(blocks))]


def lines(result: AnalysisResult) -> list[str]:
    """The section's text: what was measured, notes (no gap sentences)."""
    section = result.robustness
    if section is None:
        return []
    rate = result.runs["lr"].dropna().unique() if "lr" in result.runs else []
    rate_text = f", all at lr {float(rate[0]):g}" if len(rate) == 1 else ""
    return [f"Robust accuracy: each fine-tuned model's test accuracy under "
            f"{' / '.join(section.attacks)}, measured once after its final epoch; clean "
            f"accuracy is the same runs' final test accuracy{rate_text}. Tables give the mean "
            f"[{result.options.percent} interval] over seeds in %; the sentences give each "
            f"robust source's robust accuracy minus {base_name(result)}'s, paired by seed, in "
            "points.", *section.notes]


def frames(result: AnalysisResult) -> list[tuple[str, pd.DataFrame]]:
    """The robustness table as text, one ``(title, frame)`` per attack."""
    section = result.robustness
    if section is None or section.table.empty:
        return []
    table, shown = section.table, names(result)
    order = {s: i for i, s in enumerate(result.sources["source"])}
    several = "epochs" in table and table["epochs"].nunique() > 1
    out = []
    attacks = table["attack"] if "attack" in table else pd.Series("", index=table.index)
    for attack in sorted(attacks.unique()):
        t = table[attacks == attack].copy()
        t["_order"] = [order.get(s, len(order)) for s in t["source"]]
        t["_u"] = [unfrozen_key(str(u)) for u in t["unfrozen_blocks"]]
        t = t.sort_values(["target", "n", "_u", "epochs" if several else "_u", "_order"])
        frame = pd.DataFrame({
            **setting_columns(t, several),
            "source": [shown.get(s, s) for s in t["source"]],
            "clean (%)": [interval_text(*v) for v in
                          zip(t["clean"], t["clean_lo"], t["clean_hi"], strict=True)],
            "robust (%)": [interval_text(*v) for v in
                           zip(t["robust"], t["robust_lo"], t["robust_hi"], strict=True)],
            "seeds": list(t["seeds"].astype(int))})
        title = (f"Clean and robust test accuracy (%) after fine-tuning, mean "
                 f"[{result.options.percent} interval] over seeds — robust: "
                 f"{attack or 'attack not recorded'}")
        out.append((title, frame))
    return out


def figures(result: AnalysisResult) -> list[Figure]:
    """Clean and robust accuracy against source eps, one figure per target."""
    section = result.robustness
    if section is None:
        return []
    attack = section.attacks[0] if len(section.attacks) == 1 else "the most common attack"
    return [Figure(f"{PREFIX}{target}", f"Robustness after transfer on {target}: clean (solid) "
                   "and robust (dashed) test accuracy of the fine-tuned models against the "
                   "source's training eps (L2 and Linf sources on one axis), a line per n; "
                   f"robust under {attack}; mean over seeds, final epoch.",
                   partial(robustness.robustness_figure, section.table, target))
            for target in sorted(section.table["target"].unique())]
