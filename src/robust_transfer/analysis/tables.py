"""Paper-shaped tables: rows target and n, columns sources, one table per setting.

Each function returns ``{(unfrozen_blocks, epochs): DataFrame}`` with text cells (the
long-form numeric frames of :class:`~robust_transfer.analysis.report.AnalysisResult`
are the thing to compute with; these are for reading). Accuracies and differences are
in percentage points; intervals are the frames' ``lo``/``hi``.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from robust_transfer.analysis.efficiency import CENSORED, MIXED, NOT_REACHED
from robust_transfer.analysis.frames import unfrozen_key

Tables = dict[tuple[str, str], pd.DataFrame]


def _one_seed(frame: pd.DataFrame) -> list[bool]:
    return list((frame["n_seeds"] < 2) | frame["lo"].isna())


def _mean_lo_hi_one(frame: pd.DataFrame) -> zip:
    return zip(frame["mean"], frame["lo"], frame["hi"], _one_seed(frame), strict=True)


def accuracy_cells(frame: pd.DataFrame) -> list[str]:
    """"85.2 ± 1.3 (3)" (mean ± half the interval, in %; seeds), or "85.2 (1 seed)"."""
    return [f"{100 * m:.1f} (1 seed)" if one else f"{100 * m:.1f} ± {50 * (hi - lo):.1f} ({k})"
            for (m, lo, hi, one), k in zip(_mean_lo_hi_one(frame), frame["n_seeds"].astype(int),
                                           strict=True)]


def delta_cells(frame: pd.DataFrame) -> list[str]:
    """"+3.2 [+1.1, +5.3] (3)" in points (seeds in brackets); the interval says whether it
    excludes zero."""
    return [f"{100 * m:+.1f} (1 seed)" if one else
            f"{100 * m:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] ({k})"
            for (m, lo, hi, one), k in zip(_mean_lo_hi_one(frame), frame["n_seeds"].astype(int),
                                           strict=True)]


def factor_cells(frame: pd.DataFrame) -> list[str]:
    """"3.0x [2.4, 3.9]", "≥2.0x" (censored), "not reached", "3.0x (1 seed)"."""
    bounds = frame["censored_bound"] if "censored_bound" in frame else frame["factor"]
    return [_factor_cell(v, f, lo, hi, b) for v, f, lo, hi, b in
            zip(frame["verdict"], frame["factor"], frame["lo"], frame["hi"], bounds, strict=True)]


def _factor_cell(verdict: str, factor: float, lo: float, hi: float, bound: float) -> str:
    if verdict == CENSORED:
        # a bound of 1 says nothing: the source is ahead already at the smallest x
        return f"≥{bound:.1f}x" if bound > 1.05 else "ahead at the smallest"
    if verdict in (NOT_REACHED, MIXED):
        return verdict
    if factor != factor:  # NaN: no seed gave a factor
        return "no factor"
    if verdict == "one seed":
        return f"{factor:.1f}x (1 seed)"
    return f"{factor:.1f}x [{lo:.1f}, {hi:.1f}]"


def paper_tables(frame: pd.DataFrame, cell: Callable[[pd.DataFrame], list[str]],
                 sources: pd.DataFrame,
                 split: tuple[str, str] = ("unfrozen_blocks", "epochs"),
                 rows: tuple[str, str] = ("n", "n_label")) -> Tables:
    """Pivot a long frame into one text table per ``split`` setting.

    Args:
        frame: long frame with ``target``, ``source``, the ``split`` and ``rows`` columns.
        cell: formats the rows of ``frame`` as cell texts.
        sources: :func:`~.frames.source_table` output; fixes column order and names.
        split: the two columns that select a table.
        rows: the numeric column ordering rows, and the label shown for it.

    Returns:
        ``{(split values as text): table}``, indexed by target and the ``rows[1]`` labels
        (the index level is named ``rows[0]``, e.g. ``n``).
    """
    if frame.empty:
        return {}
    frame = frame.assign(_cell=cell(frame))
    names = dict(zip(sources["source"], sources["name"], strict=True))
    order = [names[s] for s in sources["source"] if s in set(frame["source"])]
    tables = {}
    for key, part in frame.groupby(list(split), sort=False):
        table = part.pivot_table(index=["target", *rows], columns="source", values="_cell",
                                 aggfunc="first").rename(columns=names)
        table = table.reindex(columns=[c for c in order if c in table.columns]).fillna("")
        table = table.sort_index().droplevel(rows[0]).rename_axis(["target", rows[0]])
        table.columns.name = None
        table = table.reset_index()  # flat columns: no empty index-name row when rendered
        tables[(str(key[0]), str(key[1]))] = table
    return dict(sorted(tables.items(), key=lambda kv: _setting_key(kv[0])))


def _setting_key(key: tuple[str, str]) -> tuple[float, float]:
    try:
        second = float(key[1])
    except ValueError:
        second = -1.0
    return unfrozen_key(key[0]), second


def accuracy_tables(summary: pd.DataFrame, sources: pd.DataFrame) -> Tables:
    """Mean test accuracy ± interval, per (unfrozen blocks, epoch budget)."""
    return paper_tables(summary, accuracy_cells, sources)


def delta_tables(delta_summary: pd.DataFrame, sources: pd.DataFrame) -> Tables:
    """Paired source-minus-baseline accuracy with intervals, per setting."""
    return paper_tables(delta_summary, delta_cells, sources)


def image_factor_tables(by_x: pd.DataFrame, sources: pd.DataFrame) -> Tables:
    """How many times fewer images, at each n of the baseline, per setting."""
    return paper_tables(by_x, factor_cells, sources)


def epoch_factor_tables(summary: pd.DataFrame, sources: pd.DataFrame) -> Tables:
    """How many times fewer epochs (geometric mean over epochs), per (unfrozen, budget)."""
    return paper_tables(summary, factor_cells, sources, split=("unfrozen_blocks", "budget"))


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of a (possibly multi-indexed) frame."""
    flat = table.reset_index() if table.index.name or table.index.nlevels > 1 else table
    header = [str(c) for c in flat.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for values in flat.astype(str).itertuples(index=False):
        lines.append("| " + " | ".join(v.replace("|", "\\|") for v in values) + " |")
    return "\n".join(lines)
