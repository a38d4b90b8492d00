"""The paper's figures: accuracy and paired difference against n (Fig. 1) and epochs (Fig. 2).

Each figure is a grid: one row per target, one column per unfrozen-blocks setting, one
line per source with its interval as a band. A source keeps its colour in every figure
(:func:`source_colors`). Figures are built on :class:`matplotlib.figure.Figure` directly,
so nothing touches pyplot's global state or the interactive backend (rendering is Agg).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from robust_transfer.analysis.budgets import epochs_text
from robust_transfer.analysis.frames import unfrozen_key, unfrozen_text
from robust_transfer.analysis.palette import source_colors
from robust_transfer.analysis.stats import BY_BUDGET
from robust_transfer.analysis.verdict import VerdictView
from robust_transfer.io import safe_filename
from robust_transfer.outputs import save_figure

FIG_WIDTH = 11.0  # inches at 100 dpi: the report's full column width (1,100 px)

FORMATS = ("png", "svg")


@dataclass(frozen=True)
class FigureSpec:
    """What a figure shows, for captions and file names, and how to draw it.

    Attributes:
        key: file stem, e.g. ``"fig1a_accuracy_vs_n"``.
        caption: one sentence naming the slice of the data shown.
        draw: draws the figure (``None`` when there is nothing to plot); called only when
            the figure is wanted, possibly in another process.
    """

    key: str
    caption: str
    draw: Callable[[], Figure | None]

    @property
    def figure(self) -> Figure | None:
        """The figure, drawn now."""
        return self.draw()


def colors_of(sources: pd.DataFrame) -> dict[str, str]:
    """:func:`~.palette.source_colors` of a :func:`~.frames.source_table` (baseline black)."""
    base = sources.loc[sources["is_baseline"], "source"]
    return source_colors(sources["source"], base.iloc[0] if len(base) else None)


def grid_figure(frame: pd.DataFrame, x: str, sources: pd.DataFrame, ylabel: str,
                title: str, log_x: bool = False, zero_line: bool = False) -> Figure | None:
    """Rows = targets, columns = unfrozen settings, a line and a thin band per source.

    Args:
        frame: long frame with ``target, unfrozen_blocks, source``, ``x`` and
            ``mean, lo, hi`` (fractions; plotted in %).
        x: the x column.
        sources: :func:`~.frames.source_table` output (order, names).
        ylabel: y-axis label (one line).
        title: the figure's title.
        log_x: log-scale x axis.
        zero_line: draw y = 0 (for differences).
    """
    if frame.empty:
        return None
    targets = sorted(frame["target"].unique())
    settings = sorted(frame["unfrozen_blocks"].unique(), key=unfrozen_key)
    fig = Figure(figsize=(FIG_WIDTH, 1.2 + 2.7 * len(targets)), dpi=100)
    # targets measured at the same x share the x axis: tick labels only on the bottom row
    same_x = frame.groupby("target")[x].apply(lambda v: tuple(sorted(set(v)))).nunique() == 1
    axes = fig.subplots(len(targets), len(settings), squeeze=False, sharey="row",
                        sharex="col" if same_x else False)
    _draw_lines(axes, frame.sort_values(x), x, sources, targets, settings)
    _decorate(axes, targets, settings, x, ylabel, log_x, zero_line)
    if x == "n":
        for target, part in frame.groupby("target"):
            for ax in axes[targets.index(target)]:
                _n_ticks(ax, part)
    _legend(fig, sources, colors_of(sources), set(frame["source"]))
    height = fig.get_figheight()
    fig.suptitle(title, y=1 - 0.1 / height, fontsize=11)
    fig.subplots_adjust(left=0.07, right=0.99, bottom=0.55 / height, top=1 - 0.85 / height,
                        hspace=0.45, wspace=0.08)
    return fig


def _n_ticks(ax, part: pd.DataFrame) -> None:
    ticks = part[["n", "n_label"]].drop_duplicates("n").sort_values("n")
    step = 1 if len(ticks) <= 7 else 2  # every other label when crowded, keep the last
    keep = ticks.iloc[::-1].iloc[::step].iloc[::-1]
    ax.set_xticks(keep["n"].to_numpy(float), list(keep["n_label"]), rotation=0)
    ax.minorticks_off()


def _draw_lines(axes: np.ndarray, frame: pd.DataFrame, x: str, sources: pd.DataFrame,
                targets: list[str], settings: list[str]) -> None:
    colors = colors_of(sources)
    rank = {s: i for i, s in enumerate(sources["source"])}
    xs = frame[x].to_numpy(float)
    mean, lo, hi = (100 * frame[c].to_numpy(float) for c in ("mean", "lo", "hi"))
    lines = frame.groupby(["target", "unfrozen_blocks", "source"], sort=False).indices
    for (target, unfrozen, source), idx in sorted(lines.items(), key=lambda kv: rank[kv[0][2]]):
        ax = axes[targets.index(target)][settings.index(unfrozen)]
        ax.plot(xs[idx], mean[idx], color=colors[source], marker="o", ms=3, lw=1.5,
                zorder=3)
        band = idx[~np.isnan(lo[idx])]
        if len(band):  # light bands: overlapping ones stay readable
            ax.fill_between(xs[band], lo[band], hi[band], color=colors[source], alpha=0.1, lw=0)


def _decorate(axes: np.ndarray, targets: list[str], settings: list[str], x: str,
              ylabel: str, log_x: bool, zero_line: bool) -> None:
    for i, row in enumerate(axes):
        for j, ax in enumerate(row):
            if log_x:
                ax.set_xscale("log")
            if zero_line:
                ax.axhline(0, color="#888888", lw=0.8, ls="--")
            ax.grid(alpha=0.3, lw=0.5)
            ax.tick_params(labelsize=9)
            prefix = f"{targets[i]}, " if len(targets) > 1 else ""
            ax.set_title(prefix + unfrozen_text(settings[j]), fontsize=10)
            if j == 0:
                ax.set_ylabel(ylabel, fontsize=9.5)
            if i == len(axes) - 1:
                ax.set_xlabel("training images n" if x == "n" else "epoch", fontsize=9.5)


def _legend(fig: Figure, sources: pd.DataFrame, colors: dict[str, str], shown: set) -> None:
    rows = sources[sources["source"].isin(shown)]
    handles = [Line2D([], [], color=colors[s], marker="o", ms=4, lw=1.5) for s in rows["source"]]
    fig.legend(handles, list(rows["name"]), loc="upper center", ncol=min(len(rows), 6),
               fontsize=9.5, frameon=False, bbox_to_anchor=(0.5, 1 - 0.38 / fig.get_figheight()))


def largest_budget(values: pd.Series, wanted: int | str | None = None) -> str | None:
    """``wanted`` (as text) if present, else the largest numeric budget, else any."""
    present = sorted({str(v) for v in values}, key=lambda b: -1.0 if b == BY_BUDGET else float(b))
    if wanted is not None and str(wanted) in present:
        return str(wanted)
    return present[-1] if present else None


def figures_vs_n(summary: pd.DataFrame, delta_summary: pd.DataFrame, sources: pd.DataFrame,
                 epochs: int | str | None = None, level: str = "95%") -> list[FigureSpec]:
    """Fig. 1a (accuracy vs n) and Fig. 1b (difference vs n) at one epoch budget; ``level``
    names the interval of the bands."""
    budget = largest_budget(summary["epochs"], epochs)
    acc = summary[summary["epochs"].astype(str) == budget]
    delta = delta_summary[delta_summary["epochs"].astype(str) == budget]
    base = sources.loc[sources["is_baseline"], "name"].iloc[0]
    when = epochs_text(budget)
    return [
        FigureSpec("fig1a_accuracy_vs_n", f"Fig. 1a: test accuracy against the number of "
                   f"training images ({when}), mean over seeds with {level} interval bands.",
                   partial(grid_figure, acc, "n", sources, "test accuracy (%)",
                           f"Accuracy vs training images ({when})", log_x=True)),
        FigureSpec("fig1b_delta_vs_n", f"Fig. 1b: accuracy minus the {base} source's, paired by "
                   f"seed ({when}); above zero the source transfers better.",
                   partial(grid_figure, delta, "n", sources, f"minus {base} (points)",
                           f"Difference from {base} vs training images", log_x=True,
                           zero_line=True)),
    ]


def _at_view(frame: pd.DataFrame, view: VerdictView) -> pd.DataFrame:
    keep = [(frame["target"] == t) & (frame["budget"] == view.budget.get(t))
            & (frame["n_label"] == view.n_label.get(t)) for t in frame["target"].unique()]
    return frame[np.logical_or.reduce(keep)] if keep else frame


def figures_vs_epochs(epoch_summary: pd.DataFrame, epoch_delta_summary: pd.DataFrame,
                      sources: pd.DataFrame, view: VerdictView) -> list[FigureSpec]:
    """Fig. 2a (accuracy vs epoch) and Fig. 2b (difference vs epoch) at the view's n and budget."""
    acc, delta = _at_view(epoch_summary, view), _at_view(epoch_delta_summary, view)
    budgets = sorted(set(view.budget.values()))
    what = ("final accuracy per epoch budget" if budgets == [BY_BUDGET] else
            ", ".join(f"{b}-epoch runs" for b in budgets))
    n_text = ", ".join(f"{t}: n = {n}" for t, n in sorted(view.n_label.items()))
    base = sources.loc[sources["is_baseline"], "name"].iloc[0]
    seeds = "" if acc.empty else \
        f", {int(acc['n_seeds'].min())}-{int(acc['n_seeds'].max())} seeds per point"
    return [
        FigureSpec("fig2a_accuracy_vs_epochs", f"Fig. 2a: test accuracy against epochs "
                   f"({what}; {n_text}{seeds}).",
                   partial(grid_figure, acc, "epoch", sources, "test accuracy (%)",
                           f"Accuracy vs epochs ({what}; {n_text})")),
        FigureSpec("fig2b_delta_vs_epochs", f"Fig. 2b: accuracy minus the {base} source's, "
                   f"paired by seed and epoch ({what}; {n_text}).",
                   partial(grid_figure, delta, "epoch", sources, f"minus {base} (points)",
                           f"Difference from {base} vs epochs ({n_text})", zero_line=True)),
    ]


def eps_sweep_figures(summary: pd.DataFrame, sources: pd.DataFrame,
                      epochs: int | str | None = None,
                      unfrozen: str | None = None) -> list[FigureSpec]:
    """Accuracy against source eps, one line per n (the view for choosing eps).

    One panel per (target, norm) at one unfrozen setting (``unfrozen``, default the
    fewest); the eps-0 source is drawn at eps 0 in every norm's panels. Needs at least
    two eps values of one norm.
    """
    budget = largest_budget(summary["epochs"], epochs)
    part = summary[summary["epochs"].astype(str) == budget]
    settings = sorted(part["unfrozen_blocks"].unique(), key=unfrozen_key)
    chosen = unfrozen if unfrozen in settings else (settings[0] if settings else None)
    part = part[part["unfrozen_blocks"] == chosen]
    info = sources.set_index("source")
    part = part.assign(eps=part["source"].map(info["eps"]), norm=part["source"].map(info["norm"]))
    norms = [m for m in ("l2", "linf") if part.loc[part["norm"] == m, "eps"].nunique() >= 1
             and (part.loc[part["norm"].isin([m, "none"]), "eps"].nunique() >= 2)]
    if not norms or chosen is None:
        return [FigureSpec("fig3_accuracy_vs_eps", "Accuracy against source eps: needs sources "
                           "of at least two eps values of one norm.", _nothing)]
    return [FigureSpec("fig3_accuracy_vs_eps", f"Fig. 3: test accuracy against the source's "
                       f"eps, one line per n ({unfrozen_text(chosen)}, {epochs_text(budget)}; "
                       "other settings: analyze --unfrozen K); eps 0 is the natural source. "
                       "Choose eps where the line for your n peaks.",
                       partial(_eps_sweep_figure, part, norms, chosen, budget))]


def _nothing() -> None:
    return None


def _eps_sweep_figure(part: pd.DataFrame, norms: list[str], chosen: str,
                      budget: str | None) -> Figure:
    panels = [(t, m, chosen) for t in sorted(part["target"].unique()) for m in norms]
    cols = min(len(panels), 4)
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(FIG_WIDTH, 1.0 + 2.6 * rows), dpi=100)
    axes = fig.subplots(rows, cols, squeeze=False)
    ns = sorted(part["n"].unique())
    cmap = matplotlib.colormaps["viridis"]
    for ax, (target, norm, unfrozen) in zip(axes.flat, panels, strict=False):
        sel = part[(part["target"] == target) & (part["unfrozen_blocks"] == unfrozen)
                   & part["norm"].isin([norm, "none"])]
        for n, line in sel.groupby("n"):
            line = line.sort_values("eps")
            color = cmap(ns.index(n) / max(len(ns) - 1, 1))
            ax.plot(line["eps"] * (255 if norm == "linf" else 1), 100 * line["mean"],
                    marker="o", ms=3, lw=1.4, color=color, label=f"n={line['n_label'].iloc[0]}")
        ax.set_title(f"{target}, {unfrozen_text(unfrozen)}", fontsize=10)
        ax.set_xlabel("source L2 eps" if norm == "l2" else "source Linf eps (x/255)",
                      fontsize=9.5)
        ax.grid(alpha=0.3, lw=0.5)
        ax.tick_params(labelsize=9)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for r in range(rows):
        axes[r, 0].set_ylabel("test accuracy (%)", fontsize=9.5)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 8), fontsize=9.5,
               frameon=False, bbox_to_anchor=(0.5, 1 - 0.3 / fig.get_figheight()))
    height = fig.get_figheight()
    fig.suptitle(f"Accuracy vs source eps, one line per n ({unfrozen_text(chosen)}, "
                 f"{epochs_text(budget)})",
                 y=1 - 0.08 / height, fontsize=11)
    fig.subplots_adjust(left=0.07, right=0.99, bottom=0.55 / height, top=1 - 0.8 / height,
                        hspace=0.5, wspace=0.2)
    return fig


def save_figures(figure: Figure, directory: str | Path, stem: str,
                 formats: tuple[str, ...] = FORMATS) -> dict[str, Path]:
    """Write ``figure`` as ``directory/stem.<fmt>`` for each format; returns the paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for fmt in formats:
        # PNG at a fast zlib level (a third less time for 3% more bytes); SVG without a date,
        # so reports are reproducible; the full figure, not a tight crop
        extra = ({"pil_kwargs": {"compress_level": 1}} if fmt == "png"
                 else {"metadata": {"Date": None}} if fmt == "svg" else {})
        paths[fmt] = save_figure(figure, directory / f"{safe_filename(stem)}.{fmt}", dpi=100,
                                 bbox_inches=None, **extra)
    return paths
