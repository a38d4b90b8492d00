"""Data-efficiency factors: how many times fewer images (or epochs) a source needs.

For one seed, the baseline's accuracy at each of its points x (n training images, or
epoch e) is a goal. The other source's curve of the same seed, linear in log x between
its measured points, first reaches that goal at x'; the factor is x / x'. A factor of 3
means the same accuracy with a third of the images (epochs). Nothing is extrapolated:

- ``censored``: the other source's first point already beats the goal, so the factor
  is at least x / x_min (reported as a lower bound);
- ``not reached``: the other source never reaches the goal within its points.

Intervals come from the seeds: each seed (robust and baseline runs on the same subset)
gives a factor; the point estimate is their geometric mean and the interval is the
chosen :class:`~robust_transfer.analysis.stats.CIOptions` interval of the log factors,
exponentiated. A setting's summary averages each seed's log factor over the x where
every seed reached the goal, then takes the interval over seeds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from robust_transfer.analysis.stats import CIOptions, ci_table

OK, CENSORED, NOT_REACHED, MIXED = "ok", "censored", "not reached", "mixed"
IMAGE_GROUP = ["target", "unfrozen_blocks", "epochs"]
EPOCH_GROUP = ["target", "unfrozen_blocks", "budget", "n", "n_label"]


@dataclass
class Factors:
    """Factors at three levels of aggregation.

    Attributes:
        per_seed: one row per (setting, source, seed, x): ``factor`` and ``status``.
        by_x: one row per (setting, source, x): ``factor, lo, hi, n_seeds, status,
            verdict`` (verdict: "fewer", "more", "no clear difference", "one seed", or
            the status when not every seed gave a factor).
        summary: one row per (setting, source): geometric mean over the x where all
            seeds reached the goal, interval, ``x_min``/``x_max`` of those x, point
            counts and ``verdict``.
        x: the x column, ``"n"`` or ``"epoch"``.
    """

    per_seed: pd.DataFrame
    by_x: pd.DataFrame
    summary: pd.DataFrame
    x: str


def crossing_points(x: np.ndarray, y: np.ndarray,
                    goals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where a piecewise-linear curve first reaches each goal.

    Args:
        x: increasing positions (already on the scale to interpolate on), shape ``[m]``.
        y: curve values at ``x``, shape ``[m]``.
        goals: values to reach, shape ``[k]``.

    Returns:
        ``(x_cross, status)``, both shape ``[k]``: status is "ok", "censored" (``y[0]``
        already exceeds the goal; ``x_cross = x[0]``) or "not reached" (``x_cross`` NaN).
    """
    reached = y[None, :] >= goals[:, None]
    first = reached.argmax(axis=1)
    hit = reached.any(axis=1)
    k = np.clip(first, 1, max(len(x) - 1, 1)) if len(x) > 1 else np.zeros_like(first)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_cross = x[k - 1] + (goals - y[k - 1]) * (x[k] - x[k - 1]) / (y[k] - y[k - 1])
    x_cross = np.where(first == 0, x[0], x_cross)
    x_cross = np.where(hit, x_cross, np.nan)
    censored = hit & (first == 0) & (y[0] > goals)
    status = np.where(censored, CENSORED, np.where(hit, OK, NOT_REACHED))
    return x_cross, status


def _seed_factors(xb: np.ndarray, yb: np.ndarray, xo: np.ndarray,
                  yo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x_cross, status = crossing_points(np.log(xo), yo, yb)
    factor = xb / np.exp(x_cross)  # censored: x_cross = log x_min, so a lower bound
    return factor, status


def per_seed_factors(curves: pd.DataFrame, baseline: str, group: list[str],
                     x: str) -> pd.DataFrame:
    """Factors of every non-baseline source against the baseline, seed by seed.

    Args:
        curves: long frame with ``group`` columns, ``source, seed``, ``x`` and ``test_acc``.
        baseline: the baseline source label.
        group: columns fixing a setting (the curve runs over ``x`` within it).
        x: the column of positive positions (``"n"`` or ``"epoch"``).

    Returns:
        ``group + [seed, source, x, factor, status]``, one row per baseline point.
    """
    frame = curves.sort_values(x, kind="stable").reset_index(drop=True)
    xs, ys = frame[x].to_numpy(float), frame["test_acc"].to_numpy(float)
    members: dict[tuple, dict[str, np.ndarray]] = {}
    for key, idx in frame.groupby([*group, "seed", "source"], sort=True).indices.items():
        members.setdefault(key[:-1], {})[key[-1]] = idx
    prefixes, parts = [], []
    for prefix, by_source in members.items():
        base = by_source.get(baseline)
        for source, idx in by_source.items():
            if base is None or source == baseline:
                continue
            factor, status = _seed_factors(xs[base], ys[base], xs[idx], ys[idx])
            prefixes.append((*prefix, source))
            parts.append((xs[base], factor, status))
    return _assemble(prefixes, parts, [*group, "seed", "source"], x, frame[x].dtype)


def _assemble(prefixes: list[tuple], parts: list[tuple], key_cols: list[str], x: str,
              x_dtype: np.dtype) -> pd.DataFrame:
    if not parts:
        return pd.DataFrame(columns=[*key_cols, x, "factor", "status"])
    lengths = [len(p[0]) for p in parts]
    keys = pd.DataFrame(prefixes, columns=key_cols)
    frame = keys.loc[np.repeat(np.arange(len(keys)), lengths)].reset_index(drop=True)
    frame[x] = np.concatenate([p[0] for p in parts]).astype(x_dtype)
    frame["factor"] = np.concatenate([p[1] for p in parts])
    frame["status"] = np.concatenate([p[2] for p in parts])
    return frame


def _status_counts(frame: pd.DataFrame, keys: list[str], prefix: str = "n_") -> pd.DataFrame:
    flags = pd.DataFrame({f"{prefix}{s.replace(' ', '_')}": frame["status"] == s
                          for s in (OK, CENSORED, NOT_REACHED)})
    flags[keys] = frame[keys]
    return flags.groupby(keys, sort=True).sum().reset_index()


def _combined_status(ok: pd.Series, censored: pd.Series, never: pd.Series) -> np.ndarray:
    return np.select([(censored == 0) & (never == 0), never == 0, censored == 0],
                     [OK, CENSORED, NOT_REACHED], default=MIXED)


def factor_verdicts(status: pd.Series, lo: pd.Series, hi: pd.Series,
                    n_seeds: pd.Series) -> np.ndarray:
    """"fewer", "more", "no clear difference", "one seed", or the non-ok status."""
    return np.select([status != OK, n_seeds < 2, lo > 1, hi < 1],
                     [status, "one seed", "fewer", "more"], default="no clear difference")


def factors_by_x(per_seed: pd.DataFrame, group: list[str], x: str,
                 options: CIOptions | None = None) -> pd.DataFrame:
    """Aggregate per-seed factors over seeds at each x (see :class:`Factors`)."""
    keys = [*group, "source", x]
    logs = per_seed.assign(log_factor=np.log(per_seed["factor"].astype(float)))
    counts = _status_counts(logs, keys)
    counts["n_seeds"] = counts[["n_ok", "n_censored", "n_not_reached"]].sum(axis=1)
    geo = logs.groupby(keys, sort=True)["log_factor"].mean().reset_index(name="log_gm")
    ci = ci_table(logs[logs["status"] == OK], keys, "log_factor", options)[[*keys, "lo", "hi"]]
    table = counts.merge(geo, on=keys).merge(ci, on=keys, how="left")
    table["status"] = _combined_status(table["n_ok"], table["n_censored"], table["n_not_reached"])
    reported = table["status"].isin([OK, CENSORED])
    table["factor"] = np.where(reported, np.exp(table["log_gm"]), np.nan)
    is_ok = table["status"] == OK
    table["lo"] = np.where(is_ok, np.exp(table["lo"].astype(float)), np.nan)
    table["hi"] = np.where(is_ok, np.exp(table["hi"].astype(float)), np.nan)
    table["verdict"] = factor_verdicts(table["status"], table["lo"], table["hi"], table["n_seeds"])
    return table.drop(columns="log_gm")


def summarize_factors(per_seed: pd.DataFrame, by_x: pd.DataFrame, group: list[str], x: str,
                      options: CIOptions | None = None) -> pd.DataFrame:
    """One row per (setting, source): the factor averaged (geometrically) over x."""
    keys = [*group, "source"]
    ok_x = by_x.loc[by_x["status"] == OK, [*keys, x]]
    rows = per_seed.merge(ok_x, on=[*keys, x])
    rows = rows.assign(log_factor=np.log(rows["factor"].astype(float)))
    seed_means = rows.groupby([*keys, "seed"], sort=True)["log_factor"].mean().reset_index()
    ci = ci_table(seed_means, keys, "log_factor", options)
    span = rows.groupby(keys, sort=True)[x].agg(x_min="min", x_max="max").reset_index()
    counts = _points(by_x, keys)
    table = counts.merge(ci, on=keys, how="left").merge(span, on=keys, how="left")
    for col in ("mean", "lo", "hi"):
        table[col] = np.exp(table[col].astype(float))
    table = table.rename(columns={"mean": "factor"}).drop(columns="std")
    table["n_seeds"] = table["n_seeds"].fillna(0).astype(int)
    # no ok point: censored or not reached as its points are; points that are neither were
    # mixed (seeds on both sides of the goal), so with no other kind the setting is mixed
    unmeasured = _combined_status(table["points_ok"], table["points_censored"],
                                  table["points_not_reached"])
    only_mixed = (table["points_censored"] == 0) & (table["points_not_reached"] == 0)
    status = np.where(table["points_ok"] > 0, OK, np.where(only_mixed, MIXED, unmeasured))
    table["verdict"] = factor_verdicts(pd.Series(status), table["lo"], table["hi"],
                                       table["n_seeds"])
    return table


def _points(by_x: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    counts = by_x.assign(points_ok=by_x["status"] == OK,
                         points_censored=by_x["status"] == CENSORED,
                         points_not_reached=by_x["status"] == NOT_REACHED,
                         censored_bound=by_x["factor"].where(by_x["status"] == CENSORED))
    return counts.groupby(keys, sort=True).agg(
        points=("status", "size"), points_ok=("points_ok", "sum"),
        points_censored=("points_censored", "sum"),
        points_not_reached=("points_not_reached", "sum"),
        censored_bound=("censored_bound", "max")).reset_index()


def compute_factors(curves: pd.DataFrame, baseline: str, group: list[str], x: str,
                    options: CIOptions | None = None) -> Factors:
    """Per-seed, per-x and summary factors of every source against ``baseline``."""
    per_seed = per_seed_factors(curves, baseline, group, x)
    by_x = factors_by_x(per_seed, group, x, options)
    summary = summarize_factors(per_seed, by_x, group, x, options)
    return Factors(per_seed=per_seed, by_x=by_x, summary=summary, x=x)


def image_factors(runs: pd.DataFrame, baseline: str, options: CIOptions | None = None) -> Factors:
    """How many times fewer training images each source needs to match the baseline.

    Settings are (target, unfrozen_blocks, epochs); x is ``n``, interpolated on log n.
    ``by_x`` also carries ``n_label``.
    """
    factors = compute_factors(runs, baseline, IMAGE_GROUP, "n", options)
    labels = runs[["target", "n", "n_label"]].drop_duplicates(["target", "n"])
    factors.by_x = factors.by_x.merge(labels, on=["target", "n"], how="left")
    return factors


def epoch_factors(curves: pd.DataFrame, baseline: str,
                  options: CIOptions | None = None) -> Factors:
    """How many times fewer epochs each source needs to match the baseline.

    Uses the accuracy-versus-epoch curves of :func:`~robust_transfer.analysis.stats.epoch_curves`;
    settings are (target, unfrozen_blocks, budget, n); x is ``epoch``, on log epochs.
    """
    return compute_factors(curves, baseline, EPOCH_GROUP, "epoch", options)
