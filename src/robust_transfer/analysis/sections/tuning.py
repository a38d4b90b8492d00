"""Tuned on validation: the learning rate each source chose and the deltas at it."""

from __future__ import annotations

import pandas as pd

from robust_transfer.analysis.document import Bullets, Paragraph, Section, Table
from robust_transfer.analysis.frames import unfrozen_key
from robust_transfer.analysis.result import AnalysisResult
from robust_transfer.analysis.sections.common import (
    base_name,
    interval_text,
    names,
    setting_columns,
)

HEADING = "Tuned on validation"


def build(result: AnalysisResult, draw: bool) -> list[Section]:
    """How rates were chosen, the tables, then the sentences where tuning changes a verdict."""
    section = result.tuning
    if section is None:
        return []
    blocks: list = [Paragraph(s) for s in lines(result)]
    blocks += [Table(frame, title) for title, frame in frames(result)]
    if section.sentences:
        blocks.append(Bullets(tuple(section.sentences)))
    return [Section(HEADING, tuple(blocks))]


def _interval(result: AnalysisResult) -> str:
    """"95% t-interval", or "90% bootstrap interval (2000 resamples)"."""
    o = result.options
    kind = "t-interval" if o.method == "t" else f"{o.method} interval ({o.n_boot} resamples)"
    return f"{o.percent} {kind}"


def lines(result: AnalysisResult) -> list[str]:
    """The section's text: how rates were chosen, then notes (no verdicts)."""
    section = result.tuning
    if section is None:
        return []
    held = (f"{section.val_images} training images held out of every run"
            if section.val_images else "images held out of the training set")
    rates = ", ".join(f"{r:g}" for r in section.rates)
    out = [f"The learning rate was chosen on validation accuracy, never on test accuracy: "
           f"for each source, target, n and unfrozen setting, the rate (of {rates or 'none'})"
           f" with the highest mean validation accuracy over seeds on {held}; ties go to the "
           "smaller rate."]
    if len(section.deltas):
        out.append(f"Deltas: {base_name(result)} subtracted, test accuracy in points, paired "
                   f"by seed, {_interval(result)} over seeds, final epoch; 'shared' is every "
                   f"source at lr {section.shared_lr:g} (the rate every other section uses), "
                   f"'tuned' each source and {base_name(result)} at its own chosen rate.")
    return [*out, *section.notes]


def frames(result: AnalysisResult) -> list[tuple[str, pd.DataFrame]]:
    """The chosen rates (one column per source) and the deltas, as text tables."""
    section = result.tuning
    if section is None or section.chosen.empty:
        return []
    shown, several = names(result), section.chosen["epochs"].nunique() > 1
    chosen = section.chosen.assign(_u=[unfrozen_key(str(u)) for u in
                                       section.chosen["unfrozen_blocks"]])
    chosen["cell"] = [f"{lr:g} ({100 * v:.1f}%)" for lr, v in
                      zip(chosen["lr"], chosen["val_acc"], strict=True)]
    keys = ["target", "n", "_u", "unfrozen_blocks", "epochs"]
    wide = chosen.pivot_table(index=keys, columns="source", values="cell", aggfunc="first")
    wide = wide.reset_index().sort_values(keys)
    sources = [s for s in result.sources["source"] if s in wide.columns]
    pick = pd.DataFrame({**setting_columns(wide.assign(n_label=wide["n"].astype(str)), several),
                         **{shown.get(s, s): list(wide[s].fillna("")) for s in sources}})
    out = [(f"Learning rate each source chose (its mean validation accuracy), of "
            f"{', '.join(f'{r:g}' for r in section.rates)}", pick)]
    d = section.deltas
    if len(d):
        order = list(result.sources["source"])
        d = d.assign(_u=[unfrozen_key(str(u)) for u in d["unfrozen_blocks"]],
                     _order=[order.index(s) if s in order else 99 for s in d["source"]])
        d = d.sort_values(["target", "n", "_u", "epochs", "_order"])
        deltas = pd.DataFrame({
            **setting_columns(d.assign(n_label=d["n"].astype(str)), several),
            "source": [shown.get(s, s) for s in d["source"]],
            f"shared lr {section.shared_lr:g}": [interval_text(*v, signed=True) for v in zip(
                d["shared_delta"], d["shared_lo"], d["shared_hi"], strict=True)],
            "tuned": [interval_text(*v, signed=True) for v in zip(
                d["tuned_delta"], d["tuned_lo"], d["tuned_hi"], strict=True)],
            "tuned lr (source vs base)": [f"{a:g} vs {b:g}" for a, b in
                                          zip(d["lr"], d["baseline_lr"], strict=True)],
            "seeds": list(d["seeds"].astype(int))})
        out.append((f"Accuracy minus {base_name(result)} (points) at the shared rate and at "
                    f"each source's own rate chosen on validation [{_interval(result)}]", deltas))
    return out
