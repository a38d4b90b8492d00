"""Headline sentences: the answer in words, and no number that looks surer than it is.

Each (target, source) gets one sentence about images and one about epochs, quoted at a
reference setting (:class:`Reference`), plus a tally over all settings. When the data
cannot support a number (one seed, interval containing 1, goal never reached, no
baseline runs) the sentence says so instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from robust_transfer.analysis.budgets import epochs_text
from robust_transfer.analysis.efficiency import CENSORED, NOT_REACHED, Factors
from robust_transfer.analysis.frames import Coverage, unfrozen_key, unfrozen_text
from robust_transfer.analysis.stats import BY_BUDGET, CIOptions


@dataclass(frozen=True)
class Reference:
    """The setting headline sentences quote; ``None`` picks a default per target.

    Attributes:
        unfrozen_blocks: default: the fewest unfrozen blocks present.
        epochs: epoch budget; default: the largest present.
        n_label: number of images for the epoch sentence; default: the largest n.
    """

    unfrozen_blocks: str | None = None
    epochs: int | None = None
    n_label: str | None = None


@dataclass(frozen=True)
class _Context:
    who: str
    base: str
    target: str
    unit: str
    xname: str
    where: str
    pct: str


def _factor_text(value: float) -> str:
    return f"{value:.1f}" if value < 9.95 else f"{value:.0f}"


def _ratio(factor: float, unit: str) -> str:
    if factor >= 1:
        return f"{_factor_text(factor)}x fewer {unit}"
    return f"{_factor_text(1 / factor)}x more {unit}"


def factor_sentence(row: pd.Series, ctx: _Context) -> str:
    """The sentence for one factor-summary row (see :class:`~.efficiency.Factors`)."""
    verdict, f, lo, hi = row["verdict"], row["factor"], row["lo"], row["hi"]
    c = ctx
    if verdict == "fewer":
        text = (f"{c.who} reaches the {c.base} source's accuracy on {c.target} with "
                f"{_factor_text(f)}x fewer {c.unit} ({c.pct} CI {_factor_text(lo)}-{_factor_text(hi)}; {c.where}).")
    elif verdict == "more":
        text = (f"{c.who} needs {_factor_text(1 / f)}x more {c.unit} than the {c.base} source to reach "
                f"its accuracy on {c.target} ({c.pct} CI {_factor_text(1 / hi)}-{_factor_text(1 / lo)}; "
                f"{c.where}).")
    elif verdict == "no clear difference":
        text = (f"{c.who} shows no clear difference from the {c.base} source in {c.unit} needed on "
                f"{c.target}: factor {_factor_text(f)}x, {c.pct} CI {_factor_text(lo)}-{_factor_text(hi)} includes 1 "
                f"({c.where}).")
    elif verdict == "one seed" and f == f:
        text = (f"{c.who} on {c.target}: only one seed, so no interval; the single estimate is "
                f"{_ratio(f, c.unit)} than the {c.base} source ({c.where}); run more seeds "
                "before relying on it.")
    elif verdict == "one seed":
        text = (f"{c.who} on {c.target}: only one seed, and no {c.unit} factor can be measured "
                f"from it ({c.where}).")
    else:
        text = _unmeasured_sentence(row, c)
    return text + _unreached_note(row, c)


_FIRST = {"n": "at its smallest n", "epoch": "after its first epoch"}
_FINER = {"n": "runs with smaller n", "epoch": "evaluations within the first epoch"}
_PLURAL = {"n": "n values", "epoch": "epochs"}


def _unmeasured_sentence(row: pd.Series, c: _Context) -> str:
    if row["verdict"] == CENSORED and not row["censored_bound"] > 1.05:
        return (f"{c.who} already beats the {c.base} source's accuracy on {c.target} "
                f"{_FIRST[c.xname]}, so no factor can be measured: that would need "
                f"{_FINER[c.xname]} ({c.where}).")
    if row["verdict"] == CENSORED:
        return (f"{c.who} already beats the {c.base} source's accuracy on {c.target} "
                f"{_FIRST[c.xname]}: at least {_factor_text(row['censored_bound'])}x fewer {c.unit}, "
                f"but the exact factor would need {_FINER[c.xname]} ({c.where}).")
    if row["verdict"] == NOT_REACHED:
        return (f"{c.who} never reaches the {c.base} source's accuracy on {c.target} within the "
                f"{_PLURAL[c.xname]} measured ({c.where}).")
    return (f"{c.who} vs the {c.base} source on {c.target}: no factor can be measured (some seeds "
            f"are above the goal {_FIRST[c.xname]}, others never reach it; {c.where}).")


def _unreached_note(row: pd.Series, c: _Context) -> str:
    k = int(row["points_not_reached"])
    if k == 0 or row["verdict"] == NOT_REACHED:
        return ""
    return (f" At {k} of {int(row['points'])} {_PLURAL[c.xname]} it does not reach the "
            f"{c.base} source's accuracy at all.")


def _where(unfrozen: str, budget: str, extra: str, row: pd.Series | None, xname: str) -> str:
    budget_text = "final accuracy per epoch budget" if budget == BY_BUDGET else \
        epochs_text(budget)
    parts = [unfrozen_text(unfrozen), budget_text, *([extra] if extra else [])]
    if row is not None and row["verdict"] in ("fewer", "more", "no clear difference", "one seed"):
        lo, hi, k = int(row["x_min"]), int(row["x_max"]), int(row["n_seeds"])
        span = (f"n = {lo}" if lo == hi else f"n = {lo}-{hi}") if xname == "n" else \
            (f"epoch {lo}" if lo == hi else f"epochs {lo}-{hi}")
        parts.append(f"geometric mean over {span}, {k} seed{'s' if k != 1 else ''}")
    return ", ".join(parts)


def tally(summary: pd.DataFrame, source: str, target: str, unit: str) -> str:
    """"Across 12 settings: fewer images in 9, more in 0, unclear or unmeasured in 3."."""
    rows = summary[(summary["source"] == source) & (summary["target"] == target)]
    if len(rows) < 2:
        return ""
    fewer = int((rows["verdict"] == "fewer").sum())
    more = int((rows["verdict"] == "more").sum())
    return (f" Across {len(rows)} settings: fewer {unit} in {fewer}, more in {more}, "
            f"unclear or unmeasured in {len(rows) - fewer - more}.")


def _pick(values: pd.Series, wanted: object, key=None, largest: bool = False) -> object:
    present = list(values.unique())
    if wanted is not None and wanted in present:
        return wanted
    if not present:
        return None
    return sorted(present, key=key)[-1 if largest else 0]


def _image_line(summary: pd.DataFrame, target: str, source: str, ctx: dict,
                ref: Reference) -> str:
    ctx = dict(ctx)
    missing = ctx.pop("missing")
    rows = summary[(summary["target"] == target)]
    unfrozen = _pick(rows["unfrozen_blocks"], ref.unfrozen_blocks, unfrozen_key)
    rows = rows[rows["unfrozen_blocks"] == unfrozen]
    epochs = _pick(rows["epochs"], ref.epochs, largest=True)
    row = rows[(rows["epochs"] == epochs) & (rows["source"] == source)]
    if row.empty:
        return f"{ctx['who']} on {target}: {missing}."
    row = row.iloc[0]
    where = _where(str(unfrozen), str(epochs), "", row, "n")
    text = factor_sentence(row, _Context(unit="images", xname="n", where=where, target=target,
                                         **ctx))
    return text + tally(summary, source, target, "images")


def _epoch_line(summary: pd.DataFrame, target: str, source: str, ctx: dict,
                ref: Reference) -> str | None:
    rows = summary[(summary["target"] == target) & (summary["source"] == source)]
    if rows.empty:
        return None
    unfrozen = _pick(rows["unfrozen_blocks"], ref.unfrozen_blocks, unfrozen_key)
    rows = rows[rows["unfrozen_blocks"] == unfrozen]
    wanted = None if ref.epochs is None else str(ref.epochs)
    budget = _pick(rows["budget"], wanted, _budget_key, largest=True)
    rows = rows[rows["budget"] == budget]
    n_label = ref.n_label if ref.n_label in set(rows["n_label"]) else \
        rows.sort_values("n")["n_label"].iloc[-1]
    row = rows[rows["n_label"] == n_label].iloc[0]
    where = _where(str(unfrozen), str(budget), f"n={n_label}", row, "epoch")
    text = factor_sentence(row, _Context(unit="epochs", xname="epoch", where=where,
                                         target=target, **ctx))
    return text + tally(summary, source, target, "epochs")


def _budget_key(budget: str) -> float:
    return float(budget) if budget != BY_BUDGET else -1.0


def headlines(images: Factors, epochs: Factors, sources: pd.DataFrame, targets: list[str],
              coverage: Coverage, options: CIOptions, reference: Reference | None = None,
              recipe: dict[str, list[str]] | None = None,
              present: set[tuple[str, str]] | None = None) -> list[str]:
    """Headline findings, most important first.

    Args:
        images: :func:`~.efficiency.image_factors` output.
        epochs: :func:`~.efficiency.epoch_factors` output.
        sources: :func:`~.frames.source_table` output (baseline first).
        targets: target datasets to report on.
        coverage: how much of the study is finished.
        options: interval settings (for the level's wording).
        reference: the setting to quote; defaults per :class:`Reference`.
        recipe: recipe columns that vary between runs (a caution line).
        present: the (target, source) pairs that have runs, to say which side is missing.
    """
    ref = reference or Reference()
    lines = _caveats(coverage, recipe)
    base = sources.loc[sources["is_baseline"], "name"].iloc[0]
    base_label = sources.loc[sources["is_baseline"], "source"].iloc[0]
    for target in targets:
        for _, src in sources[~sources["is_baseline"]].iterrows():
            ctx = {"who": src["name"], "base": base, "pct": options.percent}
            missing = _missing(present, target, src["source"], base_label, base)
            lines.append(_image_line(images.summary, target, src["source"],
                                     {**ctx, "missing": missing}, ref))
            epoch_line = _epoch_line(epochs.summary, target, src["source"], ctx, ref)
            if epoch_line:
                lines.append(epoch_line)
    if len(sources) < 2:
        lines.append(f"Only one source ({base}) has finished runs: nothing to compare yet.")
    return lines


def _missing(present: set[tuple[str, str]] | None, target: str, source: str, base_label: str,
             base: str) -> str:
    if present is not None and (target, source) not in present:
        return "no runs of this source on this target"
    if present is not None and (target, base_label) not in present:
        return f"no runs of the {base} source on this target to compare with"
    return (f"no runs paired with the {base} source's (same n, unfrozen blocks, epochs and "
            "seed)")


def _caveats(coverage: Coverage, recipe: dict[str, list[str]] | None) -> list[str]:
    lines = []
    if coverage.missing:
        lines.append(f"Partial study: {coverage.sentence()}; the findings below use the "
                     "finished runs only and may change.")
    for col, values in (recipe or {}).items():
        lines.append(f"Caution: runs differ in {col} ({', '.join(values)}), so comparisons "
                     "may mix training recipes.")
    return lines
