"""The linear datamodeling score (LDS; Park et al. 2023, TRAK): how well scores predict retraining.

Draw ``S`` random subsets (a ``fraction`` of the run's ``n`` training images each),
fine-tune the run's source again on each with the run's own recipe, and record every test
image's margin (the true class's logit minus the log-sum-exp of the others: TRAK's
default output). An attribution method predicts a subset's margin as the sum of its
members' scores; LDS is the Spearman correlation, over the subsets, of predicted and
actual margins, one value per test image, averaged over test images (with a t-interval
over test images).

Our scores are ``I = -g_test^T H^-1 g_z`` of the test *loss* (negative = helpful). The
loss is ``softplus(-margin)``, a decreasing function of the margin, so its gradient is a
positive multiple (per test image) of minus the margin's: the predicted margin of a
subset is ``-sum I`` up to a per-image scale, which a Spearman correlation over subsets
does not see.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from robust_transfer.data import ImageArrays, InputPolicy, balanced_subset
from robust_transfer.errors import ConfigError
from robust_transfer.registry import Registry

if TYPE_CHECKING:
    from robust_transfer.models.arch import TransferModel
    from robust_transfer.study.spec import RunConfig

Tensor = torch.Tensor
# (fine-tuned model, its training images, test images) -> scores [m, n]
ScoreFn = Callable[["TransferModel", ImageArrays, ImageArrays], np.ndarray]


@dataclass(frozen=True)
class LDSConfig:
    """How LDS is measured.

    Attributes:
        subsets: retrained subsets (TRAK and kronfluence report 50 or more).
        fraction: share of the run's training images in each subset, in (0, 1).
        seed: draws the subsets.
        test_n: test images scored (class-balanced); ``None``: all.
        level: coverage of the interval over test images.
    """

    subsets: int = 50
    fraction: float = 0.5
    seed: int = 0
    test_n: int | None = None
    level: float = 0.95

    def __post_init__(self) -> None:
        check_fraction(self.fraction)
        if self.subsets < 3:
            raise ConfigError(f"LDS needs at least 3 subsets to rank, got {self.subsets}")
        if not 0 < self.level < 1:
            raise ConfigError(f"level must lie in (0, 1), got {self.level}")


def check_fraction(fraction: float) -> float:
    """``fraction`` if it lies in the open interval (0, 1), else a :class:`ConfigError`."""
    if not 0 < fraction < 1:
        raise ConfigError(f"the LDS subset fraction must lie in (0, 1) (0.5: random halves), "
                          f"got {fraction}")
    return fraction


@dataclass
class LDSResult:
    """One method's LDS on one run.

    Attributes:
        per_test: ``[m]`` Spearman over subsets per test image (NaN where a margin or a
            prediction is the same on every subset).
        mean, low, high: the mean over test images and its interval.
        n_test: test images with a defined correlation.
        n_subsets: subsets retrained.
    """

    per_test: np.ndarray
    mean: float
    low: float
    high: float
    n_test: int
    n_subsets: int


def subset_masks(n: int, count: int, fraction: float, seed: int = 0) -> np.ndarray:
    """``[count, n]`` bool: each row a random subset of ``round(fraction * n)`` images (>= 1)."""
    check_fraction(fraction)
    size = min(n - 1, max(1, round(fraction * n))) if n > 1 else 1
    rng = np.random.default_rng(seed)
    masks = np.zeros((count, n), dtype=bool)
    for row in masks:
        row[rng.choice(n, size, replace=False)] = True
    return masks


def margins(logits: Tensor | np.ndarray, labels: Tensor | np.ndarray) -> np.ndarray:
    """The true class's logit minus the log-sum-exp of the other logits, per row."""
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    true = z.gather(1, y[:, None]).squeeze(1)
    others = z.scatter(1, y[:, None], float("-inf"))
    return (true - torch.logsumexp(others, dim=1)).numpy()


def linear_datamodeling_score(scores: np.ndarray, masks: np.ndarray, actual: np.ndarray,
                              level: float = 0.95) -> LDSResult:
    """LDS of ``scores`` against retrained margins.

    Args:
        scores: ``[m, n]`` influence, ``I(train i, test t)`` (negative = helpful).
        masks: ``[S, n]`` the subsets retrained on.
        actual: ``[S, m]`` each retrained model's test margins.
        level: interval coverage.

    Returns:
        An :class:`LDSResult`.
    """
    from scipy import stats as sps

    scores, masks, actual = np.asarray(scores, np.float64), np.asarray(masks), np.asarray(actual)
    if masks.shape[1] != scores.shape[1] or actual.shape != (masks.shape[0], scores.shape[0]):
        raise ConfigError(f"shapes do not fit: scores {scores.shape}, masks {masks.shape}, "
                          f"margins {actual.shape}")
    predicted = -(masks.astype(np.float64) @ scores.T)  # [S, m]: helpful members raise the margin
    per_test = _column_spearman(predicted, actual)
    valid = per_test[np.isfinite(per_test)]
    k = len(valid)
    mean = float(valid.mean()) if k else float("nan")
    half = (float(sps.t.ppf((1 + level) / 2, k - 1) * valid.std(ddof=1) / np.sqrt(k))
            if k > 1 else float("nan"))
    return LDSResult(per_test, mean, mean - half, mean + half, k, len(masks))


def _column_spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of each column of ``a`` with the same column of ``b``."""
    from scipy.stats import rankdata

    ra, rb = rankdata(a, axis=0), rankdata(b, axis=0)
    ra, rb = ra - ra.mean(0), rb - rb.mean(0)
    denom = np.sqrt((ra ** 2).sum(0) * (rb ** 2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (ra * rb).sum(0) / np.where(denom > 0, denom, 1), np.nan)


@torch.no_grad()
def logits_on(model: TransferModel, test: ImageArrays, batch_size: int = 256) -> Tensor:
    """The model's logits on ``test``, in eval mode, never augmented."""
    from robust_transfer.models.modes import eval_mode

    policy = InputPolicy(channels=model.channels, size=model.input_size, augment=False)
    device = next(model.parameters()).device
    with eval_mode(model):
        return torch.cat([model(policy.prepare(test.images[s:s + batch_size]).to(device)).cpu()
                          for s in range(0, len(test), batch_size)])


# --- the methods compared --------------------------------------------------------------
def held(result: Any) -> np.ndarray:
    """The held ``[m, n]`` scores of an influence result (LDS sums them over subsets).

    Raises:
        ConfigError: the result streamed its scores (kept only rankings).
    """
    if result.scores is None:
        raise ConfigError("LDS needs every test-by-train score, but this influence result "
                          "streamed them; use scores 'full'")
    return np.asarray(result.scores)


METHODS: Registry[ScoreFn] = Registry("LDS attribution method")


@METHODS.register("exact-head")
def _exact_head(model: TransferModel, train: ImageArrays, test: ImageArrays) -> np.ndarray:
    """Exact last-layer influence (:mod:`.core`, damping 1e-3)."""
    from robust_transfer.influence.core import InfluenceConfig, influence_for_model

    cfg = InfluenceConfig(train_targets=False, scores="full")
    return held(influence_for_model(model, train, test, config=cfg))


@METHODS.register("exact-head-heuristic-damping")
def _exact_head_heuristic(model: TransferModel, train: ImageArrays, test: ImageArrays) -> np.ndarray:
    """Exact last-layer influence damped as kronfluence damps: 0.1 x the Hessian's mean eigenvalue.

    Separates what the damping does from what the Kronecker factors do.
    """
    from robust_transfer.influence.core import (
        InfluenceConfig,
        extract_features,
        influence_for_model,
    )
    from robust_transfer.influence.hessian import augment, head_probs

    policy = InputPolicy(channels=model.channels, size=model.input_size, augment=False)
    x = extract_features(model, train.images, policy)
    head = model.head
    p = head_probs(x, head.weight.detach().cpu(), head.bias.detach().cpu())
    # trace of H = mean over images of tr(diag(p) - p p^T) * |x~|^2, over C (d + 1) eigenvalues
    trace = float(((1 - (p ** 2).sum(1)) * (augment(x) ** 2).sum(1)).mean())
    damping = 0.1 * trace / (p.shape[1] * (x.shape[1] + 1))
    cfg = InfluenceConfig(damping=damping, train_targets=False, scores="full")
    return held(influence_for_model(model, train, test, config=cfg))


def _head_form(form: str) -> ScoreFn:
    def score(model: TransferModel, train: ImageArrays, test: ImageArrays) -> np.ndarray:
        from robust_transfer.influence.core import InfluenceConfig, influence_for_model

        cfg = InfluenceConfig(form=form, train_targets=False, scores="full")
        return held(influence_for_model(model, train, test, config=cfg))

    score.__doc__ = f"last-layer influence, form {form} (:mod:`.forms`)"
    return score


def _kronfluence(strategy: str, scope: str) -> ScoreFn:
    def score(model: TransferModel, train: ImageArrays, test: ImageArrays) -> np.ndarray:
        from robust_transfer.influence.blocks import BlocksConfig, block_influence_for_model

        cfg = BlocksConfig(strategy=strategy, train_targets=False)
        return held(block_influence_for_model(model, train, test, cfg, scope))

    score.__doc__ = f"kronfluence {strategy.upper()} over the {scope}"
    return score


METHODS.register("kfac-head-kronfluence", _kronfluence("kfac", "head"))
METHODS.register("ekfac-head-kronfluence", _kronfluence("ekfac", "head"))
METHODS.register("ekfac-blocks", _kronfluence("ekfac", "blocks"))
BLOCK_METHODS = frozenset({"ekfac-blocks"})  # need unfrozen blocks


def _register_head_forms() -> None:
    """The Kronecker-factored head forms of :mod:`.forms`, where that module has them."""
    from robust_transfer.influence.forms import FORMS

    for form in ("kfac", "ekfac"):
        if form in FORMS:
            METHODS.register(f"{form}-head", _head_form(form))


_register_head_forms()


@dataclass
class RunLDS:
    """LDS of several methods on one run.

    Attributes:
        results: method -> :class:`LDSResult`.
        skipped: method -> why it was not measured (e.g. a head-only run through blocks).
        test_acc: the run's test accuracy (the model the scores explain).
        seconds: per step (``finetune``, ``scores/<method>``, ``retrain``).
        subset_test_acc: mean test accuracy of the retrained models.
    """

    results: dict[str, LDSResult]
    skipped: dict[str, str]
    test_acc: float
    subset_test_acc: float
    seconds: dict[str, float] = field(default_factory=dict)


def lds_for_run(run: RunConfig, source: TransferModel, methods: list[str] | None = None,
                config: LDSConfig | None = None, data_root: str | None = None,
                callback: Callable[[str, dict[str, Any]], None] | None = None) -> RunLDS:
    """Fine-tune ``run``, score it with each method, retrain on subsets, and measure LDS.

    Args:
        run: a study run's config (source, target, n, unfrozen blocks, epochs, seed, recipe).
        source: its source model (not modified).
        methods: names in :data:`METHODS` (default: all); block methods are skipped, and
            say why, on head-only runs.
        config: see :class:`LDSConfig`.
        data_root: dataset folder.
        callback: ``callback("step", {"done", "total", "what"})`` per retrained subset.

    Returns:
        A :class:`RunLDS`.
    """
    from robust_transfer.engine.transfer import finetune
    from robust_transfer.study.resolve import load_split

    cfg = config or LDSConfig()
    names = methods or METHODS.names()
    for name in names:
        METHODS.get(name)  # unknown names list the valid ones, before any work
    train, test = load_split(run.target, "train", data_root), load_split(run.target, "test", data_root)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    full = finetune(source, train, test, n=run.n, unfrozen=run.unfrozen_blocks, epochs=run.epochs,
                    seed=run.seed, recipe=run.recipe, device="cpu")
    seconds["finetune"] = time.perf_counter() - t0
    train_sub = train.subset(full.train_indices)
    test_sub = test.subset(balanced_subset(test.labels.numpy(), cfg.test_n, cfg.seed,
                                           f"{run.target}:test"))
    scores, skipped = {}, {}
    for name in names:
        if name in BLOCK_METHODS and full.model.frozen_depth >= len(full.model.stages()):
            skipped[name] = "head-only run: no fine-tuned blocks to score through"
            continue
        t0 = time.perf_counter()
        scores[name] = METHODS.get(name)(full.model, train_sub, test_sub)
        seconds[f"scores/{name}"] = time.perf_counter() - t0
    masks = subset_masks(len(train_sub), cfg.subsets, cfg.fraction, cfg.seed)
    t0 = time.perf_counter()
    actual, accs = retrain_margins(source, run, train_sub, test_sub, masks, callback)
    seconds["retrain"] = time.perf_counter() - t0
    results = {n: linear_datamodeling_score(s, masks, actual, cfg.level) for n, s in scores.items()}
    return RunLDS(results, skipped, full.test_acc, float(np.mean(accs)), seconds)


def retrain_margins(source: TransferModel, run: RunConfig, train: ImageArrays, test: ImageArrays,
                    masks: np.ndarray, callback: Callable[[str, dict[str, Any]], None] | None = None
                    ) -> tuple[np.ndarray, list[float]]:
    """Fine-tune ``source`` with ``run``'s recipe on each subset; test margins ``[S, m]``.

    Every retrain uses the run's seed (head initialisation and batch order), so the
    subsets are the only thing that varies. The test accuracy is evaluated only at the
    last epoch (``eval_every`` does not change the training).
    """
    from robust_transfer.engine.transfer import finetune

    recipe = dataclasses.replace(run.recipe, eval_every=run.epochs)
    out, accs = np.empty((len(masks), len(test))), []
    for s, mask in enumerate(masks):
        part = train.subset(np.flatnonzero(mask))
        result = finetune(source, part, test, n=None, unfrozen=run.unfrozen_blocks,
                          epochs=run.epochs, seed=run.seed, recipe=recipe, device="cpu")
        out[s] = margins(logits_on(result.model, test), test.labels)
        accs.append(result.test_acc)
        if callback is not None:
            callback("step", {"done": s + 1, "total": len(masks), "what": "retrained subsets"})
    return out, accs


def lds_table(runs: Mapping[str, RunLDS]) -> list[dict[str, Any]]:
    """One row per (run, method): the LDS and its interval, for printing or JSON."""
    rows = []
    for label, r in runs.items():
        for method, res in r.results.items():
            rows.append({"run": label, "method": method, "lds": res.mean, "low": res.low,
                         "high": res.high, "n_test": res.n_test, "subsets": res.n_subsets})
        rows += [{"run": label, "method": m, "skipped": why} for m, why in r.skipped.items()]
    return rows
