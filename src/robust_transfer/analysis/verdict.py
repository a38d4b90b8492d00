"""The verdict: robust minus natural at a glance, as a heatmap and two sentences.

For each target, :func:`verdict_figure` draws one panel per robust source: rows are the
unfrozen-block settings, columns the numbers of training images n, each cell the mean
paired difference in accuracy (points) coloured on a diverging scale, with its value
written in it and outlined when its interval excludes 0. :func:`verdict_sentences`
words the same data as two sentences, ``few images: ...`` and ``few epochs: ...``, that
cover every unfrozen setting and say where the natural source wins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from robust_transfer.analysis.budgets import epochs_text
from robust_transfer.analysis.efficiency import CENSORED, NOT_REACHED
from robust_transfer.analysis.frames import unfrozen_key, unfrozen_text
from robust_transfer.analysis.palette import source_colors
from robust_transfer.analysis.stats import BY_BUDGET

BETTER, WORSE, UNCLEAR, ONE_SEED = "better", "worse", "no clear difference", "one seed"


@dataclass(frozen=True)
class VerdictView:
    """Which slice the verdict shows.

    Attributes:
        epochs: epoch budget of the image comparison (text; ``"0"`` = pooled budgets).
        n_label: per target, the n of the epoch comparison.
        budget: per target, the epoch budget of the epoch comparison (text).
        unfrozen: the unfrozen setting of single-setting figures (``None``: the fewest).
    """

    epochs: str | None
    n_label: dict[str, str]
    budget: dict[str, str]
    unfrozen: str | None = None


def choose_view(delta_summary: pd.DataFrame, epoch_summary: pd.DataFrame,
                epochs: int | str | None = None, n_label: str | None = None,
                unfrozen: str | None = None) -> VerdictView:
    """The default slices: the largest (or given) budget; the largest n with two seeds.

    Args:
        delta_summary: paired differences per cell (:func:`~.stats.summarize_deltas`).
        epoch_summary: accuracy per (cell, epoch) (:func:`~.stats.summarize_epoch_curves`).
        epochs: budget to show (must be present; checked by the caller).
        n_label: n for the epoch comparison; default per target the largest n whose
            curves have at least two seeds for every source, else the largest n.
        unfrozen: the unfrozen setting of single-setting figures.
    """
    budgets = sorted({str(v) for v in delta_summary["epochs"]}, key=float)
    chosen = str(epochs) if epochs is not None and str(epochs) in budgets else \
        (budgets[-1] if budgets else None)
    n_by_target, budget_by_target = {}, {}
    for target, part in epoch_summary.groupby("target"):
        budget = _largest_budget(part["budget"], epochs)
        part = part[part["budget"] == budget]
        budget_by_target[target] = budget
        n_by_target[target] = (n_label if n_label is not None and n_label in set(part["n_label"])
                                else _n_with_seeds(part))
    return VerdictView(chosen, n_by_target, budget_by_target, unfrozen)


def _largest_budget(values: pd.Series, wanted: int | str | None) -> str:
    present = sorted(set(values), key=lambda b: -1.0 if b == BY_BUDGET else float(b))
    return str(wanted) if wanted is not None and str(wanted) in present else present[-1]


def _n_with_seeds(part: pd.DataFrame) -> str:
    seeds = part.groupby(["n", "n_label"])["n_seeds"].min().reset_index().sort_values("n")
    enough = seeds[seeds["n_seeds"] >= 2]
    return str((enough if len(enough) else seeds)["n_label"].iloc[-1])


def verdict_cells(delta_summary: pd.DataFrame, view: VerdictView) -> pd.DataFrame:
    """The heatmap's cells: the paired-difference summary at the view's budget."""
    if view.epochs is None or delta_summary.empty:
        return delta_summary.iloc[0:0]
    return delta_summary[delta_summary["epochs"].astype(str) == view.epochs].reset_index(drop=True)


# --- sentences ---------------------------------------------------------------------------
def _pts(value: float) -> str:
    return f"{100 * value:+.1f}"


def _with(unfrozen: str) -> str:
    if unfrozen == "0":
        return "with the head only"
    text = unfrozen_text(unfrozen)
    return f"with {text if text.startswith('all') else 'the ' + text} unfrozen"


def _seeds_text(n_seeds: pd.Series) -> str:
    lo, hi = int(n_seeds.min()), int(n_seeds.max())
    text = f"{lo} seed{'s' if lo != 1 else ''}" if lo == hi else f"{lo}-{hi} seeds"
    return text + " per cell"


def _lead(cells: pd.DataFrame, names: dict[str, str], base: str) -> str:
    """One unfrozen setting's cells in words: who is clearly ahead where, and by how much."""
    better, worse = cells[cells["verdict"] == BETTER], cells[cells["verdict"] == WORSE]
    total, parts = len(cells), []
    if (cells["verdict"] == ONE_SEED).all():
        return (f"every cell has one seed, so no interval: robust minus {base} is "
                f"{_pts(cells['mean'].min())} to {_pts(cells['mean'].max())} points")
    for rows, who in ((better, "a robust source"), (worse, f"the {base} source")):
        if rows.empty:
            continue
        top = rows.loc[rows["mean"].abs().idxmax()]
        parts.append(f"{who} is clearly ahead in {len(rows)} of {total} cells (largest: "
                     f"{names[top['source']]}, {_pts(top['mean'])} points at n = {top['n_label']})")
    if better.empty and worse.empty:
        spread = cells["mean"]
        parts.append(f"no cell shows a clear difference ({_pts(spread.min())} to "
                     f"{_pts(spread.max())} points)")
    else:
        if better.empty:
            parts.append("a robust source in none")
        if worse.empty:
            parts.append(f"the {base} source in none")
    one = int((cells["verdict"] == ONE_SEED).sum())
    if one:
        parts.append(f"{one} cell{'s have' if one != 1 else ' has'} one seed and no interval")
    return ", ".join(parts)


def lead_sentences(cells: pd.DataFrame, epoch_delta_summary: pd.DataFrame,
                   epoch_factor_summary: pd.DataFrame, sources: pd.DataFrame, view: VerdictView,
                   percent: str = "95%") -> tuple[str, str]:
    """The report's two plain sentences, ``("few images: ...", "few epochs: ...")``."""
    return (few_images_sentence(cells, sources, view, percent),
            few_epochs_sentence(epoch_delta_summary, epoch_factor_summary, sources, view,
                                percent))


def few_images_sentence(cells: pd.DataFrame, sources: pd.DataFrame, view: VerdictView,
                        percent: str = "95%") -> str:
    """"few images: ..." over every target and unfrozen setting at the view's budget;
    ``percent`` names the interval level."""
    if cells.empty:
        return ("few images: nothing to compare (no robust source has runs paired with the "
                "natural source's).")
    names, base = _names(sources)
    clauses = []
    targets = sorted(cells["target"].unique())
    for target in targets:
        part = cells[cells["target"] == target]
        settings = sorted(part["unfrozen_blocks"].unique(), key=unfrozen_key)
        lead = "; ".join(f"{_with(u)}, {_lead(part[part['unfrozen_blocks'] == u], names, base)}"
                         for u in settings)
        clauses.append(f"on {target}, {lead}" if len(targets) > 1 else lead)
    ns = sorted(cells["n"].unique())
    scope = (f"robust minus {base} accuracy at n = {cells.sort_values('n')['n_label'].iloc[0]}-"
             f"{cells.sort_values('n')['n_label'].iloc[-1]}" if len(ns) > 1 else
             f"robust minus {base} accuracy at n = {cells['n_label'].iloc[0]}")
    return (f"few images: {'; '.join(clauses)} ({scope}, {epochs_text(view.epochs)}, "
            f"{_seeds_text(cells['n_seeds'])}; clearly = the {percent} interval excludes 0).")


def early_epoch(budget: str, epochs_present: list[int]) -> int:
    """The "few epochs" point: the evaluated epoch nearest a fifth of the budget."""
    goal = max(1.0, (max(epochs_present) if budget == BY_BUDGET else float(budget)) / 5)
    return int(min(epochs_present, key=lambda e: (abs(e - goal), e)))


def few_epochs_sentence(epoch_delta_summary: pd.DataFrame, epoch_factor_summary: pd.DataFrame,
                        sources: pd.DataFrame, view: VerdictView, percent: str = "95%") -> str:
    """"few epochs: ..." at the view's n: the early lead and the epochs-needed factor."""
    if epoch_delta_summary.empty:
        return ("few epochs: not measured (the runs have no per-epoch test accuracy and a "
                "single epoch budget).")
    names, base = _names(sources)
    clauses = []
    targets = sorted(epoch_delta_summary["target"].unique())
    for target in targets:
        budget, n_label = view.budget.get(target), view.n_label.get(target)
        part = epoch_delta_summary[(epoch_delta_summary["target"] == target)
                                   & (epoch_delta_summary["budget"] == budget)
                                   & (epoch_delta_summary["n_label"] == n_label)]
        if budget is None or part.empty:
            continue
        factors = epoch_factor_summary[(epoch_factor_summary["target"] == target)
                                       & (epoch_factor_summary["budget"] == budget)
                                       & (epoch_factor_summary["n_label"] == n_label)]
        early = early_epoch(budget, sorted(part["epoch"].unique()))
        where = (f"n = {n_label}, {'final accuracy per epoch budget' if budget == BY_BUDGET else f'{budget}-epoch runs'}, "
                 f"{_seeds_text(part['n_seeds'])}")
        settings = sorted(part["unfrozen_blocks"].unique(), key=unfrozen_key)
        text = "; ".join(_epoch_clause(part[part["unfrozen_blocks"] == u], factors, u, early,
                                       names, base, percent) for u in settings)
        clauses.append((f"on {target}, " if len(targets) > 1 else "") + text + f" ({where})")
    if not clauses:
        return "few epochs: no paired per-epoch curves at the chosen n."
    return f"few epochs: {'; '.join(clauses)}."


def _epoch_clause(part: pd.DataFrame, factors: pd.DataFrame, unfrozen: str, early: int,
                  names: dict[str, str], base: str, percent: str) -> str:
    at = part[part["epoch"] == early]
    better, worse = at[at["verdict"] == BETTER], at[at["verdict"] == WORSE]
    k, lo, hi = len(at), _pts(at["mean"].min()), _pts(at["mean"].max())
    span = lo if lo == hi else f"{lo} to {hi}"
    lead = f"{_with(unfrozen)}, after {early} epoch{'s' if early != 1 else ''} "
    if k and len(better) == k:
        lead += f"every robust source is clearly ahead ({span} points)"
    elif k and len(worse) == k:
        lead += f"the {base} source is clearly ahead of every robust source ({span} points)"
    elif k and (at["mean"] > 0).all():
        lead += (f"robust sources are ahead by {span} points ({_clearly(len(better), k)})")
    elif k and (at["mean"] < 0).all():
        lead += f"the {base} source is ahead by {span} points ({_clearly(len(worse), k)})"
    else:
        lead += (f"robust minus {base} is {span} points ({len(better)} of {k} robust sources "
                 f"clearly ahead, {len(worse)} clearly behind)")
    rows = factors[factors["unfrozen_blocks"] == unfrozen]
    return lead + _factor_words(rows, names, base, percent)


def _clearly(count: int, total: int) -> str:
    if count == 0:
        return "no interval excludes 0"
    return f"{count} of {total} clearly"


def _factor_words(rows: pd.DataFrame, names: dict[str, str], base: str, percent: str) -> str:
    fewer, more, unclear, other = [], [], [], []
    for _, r in rows.iterrows():
        name = names[r["source"]]
        if r["verdict"] == "fewer":
            fewer.append(f"{name} needs {r['factor']:.1f}x fewer epochs ({percent} CI "
                         f"{r['lo']:.1f}-{r['hi']:.1f})")
        elif r["verdict"] == "more":
            more.append(f"{name} needs {1 / r['factor']:.1f}x more epochs ({percent} CI "
                        f"{1 / r['hi']:.1f}-{1 / r['lo']:.1f})")
        elif r["verdict"] == CENSORED:
            other.append(f"{name} is ahead from the first epoch")
        elif r["verdict"] == NOT_REACHED:
            other.append(f"{name} never reaches it")
        else:
            unclear.append(name)
    parts = []
    if fewer or more:
        parts.append(_and(fewer + more) + f" to match the {base} source's accuracy")
    if unclear:
        parts.append(f"for {_and(unclear)} the epochs-needed factor is not clear")
    parts += other
    return (": " + "; ".join(parts)) if parts else ""


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _names(sources: pd.DataFrame) -> tuple[dict[str, str], str]:
    names = dict(zip(sources["source"], sources["name"], strict=True))
    base = str(sources.loc[sources["is_baseline"], "name"].iloc[0])
    return names, base


# --- figure -----------------------------------------------------------------------------
def verdict_figure(cells: pd.DataFrame, target: str, sources: pd.DataFrame,
                   epochs: str | None, percent: str = "95%") -> Figure | None:
    """The verdict heatmap of one target: one panel per robust source, n x unfrozen blocks.

    Args:
        cells: :func:`verdict_cells` output.
        target: the target dataset.
        sources: :func:`~.frames.source_table` output (order, names, the baseline).
        epochs: the budget shown (for the title).
        percent: the interval level the outlines stand for (for the title).
    """
    part = cells[cells["target"] == target]
    if part.empty:
        return None
    names, base = _names(sources)
    shown = [s for s in sources["source"] if s in set(part["source"])]
    colors = source_colors(sources["source"], sources.loc[sources["is_baseline"], "source"].iloc[0])
    ns = part[["n", "n_label"]].drop_duplicates("n").sort_values("n")
    settings = sorted(part["unfrozen_blocks"].unique(), key=unfrozen_key)
    limit = max(1.0, float(np.nanmax(np.abs(100 * cells["mean"].to_numpy(float)))))
    cols = min(len(shown), 4)
    rows = math.ceil(len(shown) / cols)
    fig = Figure(figsize=(11, 0.9 + rows * (0.55 + 0.42 * len(settings))), dpi=100)
    axes = fig.subplots(rows, cols, squeeze=False)
    image = None
    for k, ax in enumerate(axes.flat):
        if k >= len(shown):
            ax.set_visible(False)
            continue
        image = _panel(ax, part[part["source"] == shown[k]], ns, settings, limit)
        ax.set_title(names[shown[k]], fontsize=10, color=colors[shown[k]], fontweight="bold")
        if k % cols == 0:
            ax.set_yticks(range(len(settings)), [unfrozen_text(u) for u in settings], fontsize=9)
        else:
            ax.set_yticks([])
    fig.suptitle(f"{target}: robust minus {base} test accuracy (points), "
                 f"{epochs_text(epochs)}; outlined: {percent} interval excludes 0", fontsize=10.5)
    height = fig.get_figheight()
    fig.subplots_adjust(left=0.11, right=0.9, top=1 - 0.55 / height, bottom=0.42 / height,
                        wspace=0.06, hspace=0.55)
    cax = fig.add_axes((0.915, 0.42 / height, 0.012, 1 - 0.97 / height))
    if image is not None:
        fig.colorbar(image, cax=cax).ax.tick_params(labelsize=8)
    return fig


def _panel(ax, part: pd.DataFrame, ns: pd.DataFrame, settings: list[str], limit: float):
    grid = np.full((len(settings), len(ns)), np.nan)
    col = {n: j for j, n in enumerate(ns["n"])}
    for unfrozen, n, mean, verdict, seeds in zip(part["unfrozen_blocks"], part["n"], part["mean"],
                                                 part["verdict"], part["n_seeds"], strict=True):
        i, j = settings.index(unfrozen), col[n]
        grid[i, j] = 100 * mean
        clear = verdict in (BETTER, WORSE)
        text = f"{100 * mean:+.1f}" + ("" if seeds >= 2 else "\n1 seed")
        ax.text(j, i, text, ha="center", va="center", fontsize=9 if seeds >= 2 else 7,
                fontweight="bold" if clear else "normal",
                color="white" if abs(100 * mean) > 0.6 * limit else "#111111")
        if clear:
            ax.add_patch(Rectangle((j - 0.46, i - 0.44), 0.92, 0.88, fill=False, lw=1.8,
                                   edgecolor="#111111"))
    image = ax.imshow(grid, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto",
                      origin="lower")
    ax.set_xticks(range(len(ns)), [f"n={v}" for v in ns["n_label"]], fontsize=8.5)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    return image
