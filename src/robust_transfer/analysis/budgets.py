"""Which epoch of each run counts: the epoch-budget policy.

Other people's logs often train small n longer than large n (the paper: 100 epochs up to
n = 1,600, 50 or 30 above). Split by budget, no table or curve over n would span every n.
So each run contributes one accuracy, chosen by a policy, and when every run's cell has a
single budget but budgets differ between cells, the budgets are pooled into one setting
(:data:`POOLED`) whose text says so:

- ``final``: the accuracy after the run's last epoch (the paper's summary table);
- ``best``: the best evaluated epoch's test accuracy. Choosing an epoch on the test set is
  optimistic (it is selection on the data the accuracy is reported on); the report says so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from robust_transfer.errors import ConfigError

if TYPE_CHECKING:  # kept free of pandas at import time: the CLI reads the policy names
    import pandas as pd

EPOCH_POLICIES = ("final", "best")
POOLED = 0  # the epochs value of pooled runs: no real budget is 0 epochs
RUN_KEYS = ["source", "target", "n", "unfrozen_blocks", "seed"]


def apply_policy(runs: pd.DataFrame, epochs: pd.DataFrame, policy: str) -> tuple[pd.DataFrame,
                                                                                  list[str]]:
    """One accuracy per run by ``policy``, and budgets pooled where they differ with n.

    Args:
        runs: prepared runs (their ``test_acc`` is the final epoch's).
        epochs: prepared per-epoch rows (may be empty).
        policy: ``final`` or ``best``.

    Returns:
        The runs with ``epoch_budget`` (the run's own budget) and, when pooled,
        ``epochs == POOLED``; and sentences for the report saying what was done.

    Raises:
        ConfigError: unknown policy, or ``best`` without per-epoch rows.
    """
    if policy not in EPOCH_POLICIES:
        raise ConfigError(f"unknown epoch policy '{policy}'; valid: {', '.join(EPOCH_POLICIES)}")
    runs = runs.assign(epoch_budget=runs["epochs"])
    notes = []
    if policy == "best":
        if epochs.empty:
            raise ConfigError("epoch policy 'best' needs per-epoch rows (the store's, or "
                              "--epochs-csv); use 'final'")
        best = epochs.groupby("run_id")["test_acc"].max()
        has = runs["run_id"].isin(best.index)
        runs.loc[has, "test_acc"] = runs.loc[has, "run_id"].map(best)
        notes.append("Each run counts with its best evaluated epoch's test accuracy. This is "
                     "optimistic: the epoch is chosen on the test images the accuracy is "
                     f"reported on ({int((~has).sum())} runs without per-epoch rows count "
                     "with their final epoch).")
    else:
        notes.append("Each run counts with its final epoch's test accuracy.")
    if _budgets_vary_with_n(runs):
        runs["epochs"] = POOLED
        notes.append("Epoch budgets differ between cells (" + budget_ranges(runs) + "); "
                     "they are pooled, so tables and figures span every n.")
    return runs, notes


def _budgets_vary_with_n(runs: pd.DataFrame) -> bool:
    if runs["epochs"].nunique() < 2:
        return False
    return bool((runs.groupby(RUN_KEYS)["epochs"].nunique() == 1).all())


def budget_ranges(runs: pd.DataFrame) -> str:
    """"100 epochs for n = 100-1600, 50 for n = 3200-25600" (per budget, the n it covers)."""
    parts = []
    for budget, part in runs.groupby("epoch_budget"):
        ns = sorted(part["n"].unique())
        span = f"n = {ns[0]}" if len(ns) == 1 else f"n = {ns[0]}-{ns[-1]}"
        parts.append((ns[0], f"{budget} epochs for {span}"))
    return ", ".join(text for _, text in sorted(parts))  # in order of n


def epochs_text(value: object) -> str:
    """"15 epochs", or for pooled budgets "each run's own epoch budget"."""
    if str(value) == str(POOLED):
        return "each run's own epoch budget"
    return f"{value} epochs"
