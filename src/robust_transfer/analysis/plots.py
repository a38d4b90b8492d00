"""The paper's figures: accuracy and paired difference against n (Fig. 1) and epochs (Fig. 2).

Each figure is a grid: one row per target, one column per unfrozen-blocks setting, one
line per source with its interval as a band. A source keeps its colour in every figure
(:func:`source_colors`). Figures are built on :class:`matplotlib.figure.Figure` directly,
so nothing touches pyplot's global state or the interactive backend (rendering is Agg).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from robust_transfer.analysis.frames import unfrozen_key, unfrozen_text
from robust_transfer.analysis.stats import BY_BUDGET

BASELINE_COLOR = "#222222"
# Okabe-Ito, then tab10's remaining hues: distinguishable with common colour blindness
PALETTE = ["#E69F00", "#56B4E9", "#009E73", "#D55E00", "#0072B2", "#CC79A7", "#F0E442",
           "#8C564B", "#7F7F7F", "#BCBD22", "#17BECF", "#9467BD"]
FORMATS = ("png", "svg")


@dataclass
class FigureSpec:
    """What a figure shows, for captions and file names.

    Attributes:
        key: file stem, e.g. ``"fig1a_accuracy_vs_n"``.
        caption: one sentence naming the slice of the data shown.
        figure: the figure, or ``None`` when there was nothing to plot.
    """

    key: str
    caption: str
    figure: Figure | None


def source_colors(sources: pd.DataFrame) -> dict[str, str]:
    """Colour per source label: the baseline near-black, the others from :data:`PALETTE`."""
    others = [s for s, b in zip(sources["source"], sources["is_baseline"], strict=True) if not b]
    colors = {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(others)}
    colors.update({s: BASELINE_COLOR for s in sources.loc[sources["is_baseline"], "source"]})
    return colors


def grid_figure(frame: pd.DataFrame, x: str, sources: pd.DataFrame, ylabel: str,
                title: str, log_x: bool = False, zero_line: bool = False) -> Figure | None:
    """Rows = targets, columns = unfrozen settings, a line and band per source.

    Args:
        frame: long frame with ``target, unfrozen_blocks, source``, ``x`` and
            ``mean, lo, hi`` (fractions; plotted in %).
        x: the x column.
        sources: :func:`~.frames.source_table` output (order, names).
        ylabel: y-axis label.
        title: the figure's title.
        log_x: log-scale x axis.
        zero_line: draw y = 0 (for differences).
    """
    if frame.empty:
        return None
    targets = sorted(frame["target"].unique())
    settings = sorted(frame["unfrozen_blocks"].unique(), key=unfrozen_key)
    fig = Figure(figsize=(0.8 + 3.1 * len(settings), 1.7 + 2.4 * len(targets)), dpi=100)
    axes = fig.subplots(len(targets), len(settings), squeeze=False)
    _draw_lines(axes, frame.sort_values(x), x, sources, targets, settings)
    _decorate(fig, axes, targets, settings, x, ylabel, log_x, zero_line)
    if x == "n":
        for target, part in frame.groupby("target"):
            for ax in axes[targets.index(target)]:
                _n_ticks(ax, part)
    _legend(fig, sources, source_colors(sources), set(frame["source"]))
    height = fig.get_figheight()
    fig.suptitle(title, y=1 - 0.08 / height, fontsize=11)
    fig.subplots_adjust(left=0.8 / fig.get_figwidth(), right=0.98, bottom=0.75 / height,
                        top=1 - 0.95 / height, hspace=0.55, wspace=0.25)
    return fig


def _n_ticks(ax, part: pd.DataFrame) -> None:
    ticks = part[["n", "n_label"]].drop_duplicates("n").sort_values("n")
    step = 1 if len(ticks) <= 6 else 2  # every other label when crowded, keep the last
    keep = ticks.iloc[::-1].iloc[::step].iloc[::-1]
    ax.set_xticks(keep["n"].to_numpy(float), list(keep["n_label"]), rotation=45)
    ax.minorticks_off()


def _draw_lines(axes: np.ndarray, frame: pd.DataFrame, x: str, sources: pd.DataFrame,
                targets: list[str], settings: list[str]) -> None:
    colors = source_colors(sources)
    rank = {s: i for i, s in enumerate(sources["source"])}
    xs = frame[x].to_numpy(float)
    mean, lo, hi = (100 * frame[c].to_numpy(float) for c in ("mean", "lo", "hi"))
    lines = frame.groupby(["target", "unfrozen_blocks", "source"], sort=False).indices
    for (target, unfrozen, source), idx in sorted(lines.items(), key=lambda kv: rank[kv[0][2]]):
        ax = axes[targets.index(target)][settings.index(unfrozen)]
        ax.plot(xs[idx], mean[idx], color=colors[source], marker="o", ms=2.5, lw=1.4)
        band = idx[~np.isnan(lo[idx])]
        if len(band):
            ax.fill_between(xs[band], lo[band], hi[band], color=colors[source], alpha=0.18, lw=0)


def _decorate(fig: Figure, axes: np.ndarray, targets: list[str], settings: list[str], x: str,
              ylabel: str, log_x: bool, zero_line: bool) -> None:
    for i, row in enumerate(axes):
        for j, ax in enumerate(row):
            if log_x:
                ax.set_xscale("log")
            if zero_line:
                ax.axhline(0, color="#888888", lw=0.8, ls="--")
            ax.grid(alpha=0.3, lw=0.5)
            ax.tick_params(labelsize=7)
            if i == 0:
                ax.set_title(unfrozen_text(settings[j]), fontsize=9)
            if j == 0:
                ax.set_ylabel(f"{targets[i]}\n{ylabel}", fontsize=8)
            if i == len(axes) - 1:
                ax.set_xlabel("training images n" if x == "n" else "epoch", fontsize=8)


def _legend(fig: Figure, sources: pd.DataFrame, colors: dict[str, str], shown: set) -> None:
    rows = sources[sources["source"].isin(shown)]
    handles = [Line2D([], [], color=colors[s], marker="o", ms=3) for s in rows["source"]]
    fig.legend(handles, list(rows["name"]), loc="upper center", ncol=min(len(rows), 6),
               fontsize=8, frameon=False, bbox_to_anchor=(0.5, 1 - 0.32 / fig.get_figheight()))


def largest_budget(values: pd.Series, wanted: int | str | None = None) -> str | None:
    """``wanted`` (as text) if present, else the largest numeric budget, else any."""
    present = sorted({str(v) for v in values}, key=lambda b: -1.0 if b == BY_BUDGET else float(b))
    if wanted is not None and str(wanted) in present:
        return str(wanted)
    return present[-1] if present else None


def _largest_n(frame: pd.DataFrame, n_label: str | None) -> pd.DataFrame:
    if n_label is not None and n_label in set(frame["n_label"]):
        return frame[frame["n_label"] == n_label]
    biggest = frame.groupby("target")["n"].transform("max")
    return frame[frame["n"] == biggest]


def figures_vs_n(summary: pd.DataFrame, delta_summary: pd.DataFrame, sources: pd.DataFrame,
                 epochs: int | None = None) -> list[FigureSpec]:
    """Fig. 1a (accuracy vs n) and Fig. 1b (difference vs n) at one epoch budget."""
    budget = largest_budget(summary["epochs"], epochs)
    acc = summary[summary["epochs"].astype(str) == budget]
    delta = delta_summary[delta_summary["epochs"].astype(str) == budget]
    base = sources.loc[sources["is_baseline"], "name"].iloc[0]
    return [
        FigureSpec("fig1a_accuracy_vs_n", f"Fig. 1a: test accuracy against the number of "
                   f"training images ({budget} epochs), with interval bands.",
                   grid_figure(acc, "n", sources, "test accuracy (%)",
                               f"Accuracy vs training images ({budget} epochs)", log_x=True)),
        FigureSpec("fig1b_delta_vs_n", f"Fig. 1b: accuracy minus the {base} source's, paired by "
                   f"seed ({budget} epochs); above zero the source transfers better.",
                   grid_figure(delta, "n", sources, f"minus {base} (points)",
                               f"Difference from {base} vs training images", log_x=True,
                               zero_line=True)),
    ]


def figures_vs_epochs(epoch_summary: pd.DataFrame, epoch_delta_summary: pd.DataFrame,
                      sources: pd.DataFrame, budget: int | None = None,
                      n_label: str | None = None) -> list[FigureSpec]:
    """Fig. 2a (accuracy vs epoch) and Fig. 2b (difference vs epoch) at one n and budget."""
    chosen = largest_budget(epoch_summary["budget"], budget)
    acc = _largest_n(epoch_summary[epoch_summary["budget"] == chosen], n_label)
    delta = _largest_n(epoch_delta_summary[epoch_delta_summary["budget"] == chosen], n_label)
    what = "final accuracy per epoch budget" if chosen == BY_BUDGET else f"{chosen}-epoch runs"
    n_text = n_label if n_label in set(acc["n_label"]) else "the largest n per target"
    base = sources.loc[sources["is_baseline"], "name"].iloc[0]
    return [
        FigureSpec("fig2a_accuracy_vs_epochs", f"Fig. 2a: test accuracy against epochs "
                   f"({what}, n = {n_text}).",
                   grid_figure(acc, "epoch", sources, "test accuracy (%)",
                               f"Accuracy vs epochs ({what})")),
        FigureSpec("fig2b_delta_vs_epochs", f"Fig. 2b: accuracy minus the {base} source's, "
                   f"paired by seed and epoch ({what}, n = {n_text}).",
                   grid_figure(delta, "epoch", sources, f"minus {base} (points)",
                               f"Difference from {base} vs epochs", zero_line=True)),
    ]


def save_figure(figure: Figure, directory: str | Path, stem: str,
                formats: tuple[str, ...] = FORMATS) -> dict[str, Path]:
    """Write ``figure`` as ``directory/stem.<fmt>`` for each format; returns the paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for fmt in formats:
        paths[fmt] = directory / f"{stem}.{fmt}"
        figure.savefig(paths[fmt], format=fmt, dpi=100 if fmt == "png" else None,
                       metadata={"Date": None} if fmt == "svg" else None)
    return paths
