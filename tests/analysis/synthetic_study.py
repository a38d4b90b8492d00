"""Synthetic studies with known answers (a test fixture, also used by the analysis benchmark).

Final accuracy is linear in log2 n: ``acc = a + slope * log2(n * image_factor)``, so a
source with ``image_factor=3`` reaches any accuracy with exactly 3x fewer images. Within
a run, accuracy rises linearly in log2 epoch until it plateaus at the final accuracy:
``acc(e) = final - epoch_slope * max(0, log2(budget / (e * epoch_factor)))``. Seed noise
is shared by all sources of one seed (same subset), run noise is independent.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class SyntheticSource:
    """A source model of the synthetic study (factors relative to a factor of 1)."""

    eps: float = 0.0
    norm: str = "none"
    image_factor: float = 1.0
    epoch_factor: float = 1.0


DEFAULT_SOURCES = {
    "natural": SyntheticSource(),
    "l2-eps0.5": SyntheticSource(0.5, "l2", 2.0, 1.5),
    "l2-eps3": SyntheticSource(3.0, "l2", 3.0, 2.0),
    "linf-eps4": SyntheticSource(4 / 255, "linf", 1.5, 1.2),
}


@dataclass
class SyntheticStudy:
    """Grid and noise of a synthetic study (see the module docstring for the model)."""

    sources: dict[str, SyntheticSource] = field(default_factory=lambda: dict(DEFAULT_SOURCES))
    targets: tuple[str, ...] = ("digits",)
    ns: tuple[int, ...] = (100, 200, 400, 800, 1600)
    unfrozen: tuple[str, ...] = ("0", "3")
    budgets: tuple[int, ...] = (8,)
    seeds: tuple[int, ...] = (0, 1, 2)
    intercept: float = -0.05
    slope: float = 0.07
    epoch_slope: float = 0.08
    seed_noise: float = 0.01
    run_noise: float = 0.005
    rng_seed: int = 0


def _final_acc(study: SyntheticStudy, src: SyntheticSource, n: int, unfrozen: str,
               noise: float) -> float:
    bonus = 0.0 if unfrozen == "0" else 0.02
    acc = study.intercept + bonus + study.slope * np.log2(n * src.image_factor) + noise
    return float(np.clip(acc, 0.02, 0.995))


def _epoch_curve(study: SyntheticStudy, src: SyntheticSource, final: float,
                 budget: int) -> np.ndarray:
    e = np.arange(1, budget + 1)
    gap = np.maximum(0.0, np.log2(budget / (e * src.epoch_factor)))
    return np.clip(final - study.epoch_slope * gap, 0.02, 0.995)


def make_study(study: SyntheticStudy | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The runs and epochs frames of a synthetic study (see :mod:`robust_transfer.analysis`)."""
    study = study or SyntheticStudy()
    rng = np.random.default_rng(study.rng_seed)
    runs, curves = [], []
    for target in study.targets:
        for seed in study.seeds:
            shared = rng.normal(0, study.seed_noise)
            _add_seed(study, target, seed, shared, rng, runs, curves)
    return pd.DataFrame(runs), _epochs_frame(curves)


def _add_seed(study: SyntheticStudy, target: str, seed: int, shared: float,
              rng: np.random.Generator, runs: list, curves: list) -> None:
    for label, src in study.sources.items():
        for n in study.ns:
            for unfrozen in study.unfrozen:
                for budget in study.budgets:
                    noise = shared + rng.normal(0, study.run_noise)
                    final = _final_acc(study, src, n, unfrozen, noise)
                    curve = _epoch_curve(study, src, final, budget)
                    run_id = f"{label}-{target}-n{n}-u{unfrozen}-e{budget}-s{seed}"
                    runs.append(_run_row(run_id, label, src, target, n, unfrozen, budget,
                                         seed, float(curve[-1])))
                    curves.append((run_id, curve))


def _run_row(run_id: str, label: str, src: SyntheticSource, target: str, n: int,
             unfrozen: str, budget: int, seed: int, acc: float) -> dict:
    return {"run_id": run_id, "source": label, "source_eps": src.eps, "source_norm": src.norm,
            "target": target, "n": n, "n_label": str(n), "unfrozen_blocks": unfrozen,
            "epochs": budget, "seed": seed, "test_acc": acc, "status": "finished",
            "lr": 0.1, "batch_size": 128}


def _epochs_frame(curves: list[tuple[str, np.ndarray]]) -> pd.DataFrame:
    lengths = [len(c) for _, c in curves]
    acc = np.concatenate([c for _, c in curves]) if curves else np.zeros(0)
    epoch = np.concatenate([np.arange(1, k + 1) for k in lengths]) if curves else np.zeros(0)
    return pd.DataFrame({"run_id": np.repeat([r for r, _ in curves], lengths),
                         "epoch": epoch.astype(int), "train_loss": 1.0 / np.maximum(epoch, 1),
                         "train_acc": np.minimum(acc + 0.05, 1.0), "test_loss": 1.0 - acc,
                         "test_acc": acc})
