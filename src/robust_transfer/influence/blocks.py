"""Influence through the fine-tuned blocks: EK-FAC over the head and the unfrozen blocks.

Last-layer influence (:mod:`.core`) treats a run as a linear head on fixed features. A
run that unfroze ``k`` blocks trained those blocks too; this module scores training
images through every :class:`~torch.nn.Conv2d` and :class:`~torch.nn.Linear` module of
the head and the unfrozen stages with kronfluence (Grosse et al. 2023; the field's
library), whose EK-FAC (George et al. 2018) approximates the Gauss-Newton Hessian of the
trained parameters by Kronecker factors per module with refitted eigenvalues.

Scores follow :mod:`.core`'s sign: ``I(z, z_test) = -g_test^T H^-1 g_z``, negative means
helpful (kronfluence reports ``+g_test^T H^-1 g_z``; we negate). Both the training loss
and the measurement are the summed cross-entropy, so per-example gradients are those of
each image's own loss, as in :mod:`.core`. BatchNorm's affine parameters in unfrozen
blocks are not tracked (kronfluence supports Linear and Conv2d only).

kronfluence writes its factors and scores into a temporary folder that is removed
afterwards; nothing lands in the working directory.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from robust_transfer.data import ImageArrays, InputPolicy
from robust_transfer.errors import ConfigError
from robust_transfer.influence.core import InfluenceResult

if TYPE_CHECKING:
    from robust_transfer.models.arch import TransferModel

Tensor = torch.Tensor

SCOPES = ("head", "blocks")
STRATEGIES = ("ekfac", "kfac")  # kronfluence's names for the two Kronecker forms


class NoUnfrozenBlocksError(ConfigError):
    """``--through blocks`` asked of a model whose blocks were all frozen (head-only)."""


@dataclass(frozen=True)
class BlocksConfig:
    """How to compute influence through the fine-tuned blocks with kronfluence.

    Attributes:
        strategy: ``ekfac`` (eigenvalue-corrected) or ``kfac``.
        damping: added to the curvature before inverting; ``None``: kronfluence's
            heuristic, 0.1 x the mean eigenvalue of each module's factors.
        empirical_fisher: fit the factors on the observed labels' gradients instead of
            labels sampled from the model (the true Fisher, which equals the Gauss-Newton
            Hessian for softmax cross-entropy; kronfluence's default).
        batch_size: images per kronfluence batch.
        seed: seeds the sampled labels of the true Fisher.
        train_targets: also score every training image as a target (train-by-train
            scores, self-influence).
    """

    strategy: str = "ekfac"
    damping: float | None = None
    empirical_fisher: bool = False
    batch_size: int = 64
    seed: int = 0
    train_targets: bool = True

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"unknown kronfluence strategy '{self.strategy}'; valid: "
                              f"{', '.join(STRATEGIES)}")
        if self.damping is not None and not (self.damping > 0 and np.isfinite(self.damping)):
            raise ConfigError(f"damping must be a finite number > 0 (or left out for "
                              f"kronfluence's heuristic), got {self.damping}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")

    @property
    def solver(self) -> str:
        """The method as the summaries name it."""
        return f"kronfluence-{self.strategy}"

    @property
    def precision(self) -> str:
        """kronfluence's default: factors and gradients in float32, eigenvectors in float64."""
        return "float32"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "solver": self.solver}


def require_kronfluence() -> None:
    """Import kronfluence, or say how to install it.

    Raises:
        ConfigError: kronfluence (the ``explain`` extra) is not installed.
    """
    try:
        import kronfluence  # noqa: F401
    except ImportError as err:
        raise ConfigError(f"influence through the blocks needs kronfluence (pip install "
                          f"'robust-transfer[explain]'): {err}") from None


def unfrozen_stages(model: TransferModel) -> list[nn.Module]:
    """The stages (and neck) the model trained besides its head; empty for head-only."""
    stages = model.stages()
    depth = model.frozen_depth
    return [*stages[depth:], *(model.neck() if depth < len(stages) else [])]


def tracked_modules(model: TransferModel, scope: str = "blocks") -> list[str]:
    """Names (as in ``model.named_modules()``) of the Conv2d and Linear modules to track.

    Args:
        model: a fine-tuned :class:`~robust_transfer.models.arch.TransferModel`.
        scope: ``head`` (the head only) or ``blocks`` (the head and every unfrozen stage).

    Raises:
        ConfigError: an unknown scope.
        NoUnfrozenBlocksError: scope ``blocks`` on a model that unfroze no block.
    """
    if scope not in SCOPES:
        raise ConfigError(f"unknown influence scope '{scope}'; valid: {', '.join(SCOPES)}")
    parts: list[nn.Module] = [model.head]
    if scope == "blocks":
        stages = unfrozen_stages(model)
        if not stages:
            raise NoUnfrozenBlocksError(
                "--through blocks needs a model that fine-tuned blocks (unfrozen >= 1), but this "
                "one trained its head only; use --through head")
        parts = [*stages, model.head]
    wanted = {id(m) for part in parts for m in part.modules() if isinstance(m, nn.Conv2d | nn.Linear)}
    return [name for name, m in model.named_modules() if id(m) in wanted]


def _task(modules: list[str], generator: torch.Generator):
    """A kronfluence ``Task``: summed cross-entropy as train loss and as measurement."""
    from kronfluence.task import Task  # kronfluence (with accelerate) loads only when used

    class CrossEntropyTask(Task):
        def compute_train_loss(self, batch: Any, model: nn.Module, sample: bool = False) -> Tensor:
            x, y = batch
            logits = model(x)
            if sample:  # the true Fisher: labels drawn from the model's own predictions
                with torch.no_grad():
                    probs = F.softmax(logits.detach().double(), dim=-1).cpu()
                    y = torch.multinomial(probs, 1, generator=generator).flatten().to(x.device)
            return F.cross_entropy(logits, y, reduction="sum")

        def compute_measurement(self, batch: Any, model: nn.Module) -> Tensor:
            x, y = batch
            return F.cross_entropy(model(x), y, reduction="sum")

        def get_influence_tracked_modules(self) -> list[str]:
            return modules

    return CrossEntropyTask()


def compute_block_influence(model: TransferModel, train_x: Tensor, train_y: Tensor, test_x: Tensor,
                            test_y: Tensor, config: BlocksConfig | None = None,
                            scope: str = "blocks") -> InfluenceResult:
    """EK-FAC influence of each training image on each test image through ``scope``.

    Args:
        model: the fine-tuned model (not modified: kronfluence wraps a copy).
        train_x, test_x: float model inputs ``[N, C, H, W]`` in [0, 1].
        train_y, test_y: their labels.
        config: see :class:`BlocksConfig`.
        scope: ``blocks`` (head and unfrozen stages) or ``head``.

    Returns:
        An :class:`~robust_transfer.influence.core.InfluenceResult` (``config`` is the
        :class:`BlocksConfig`; ``info`` names the tracked modules).

    Raises:
        NoUnfrozenBlocksError: scope ``blocks`` and a head-only model.
    """
    require_kronfluence()
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments

    cfg = config or BlocksConfig()
    modules = tracked_modules(model, scope)
    t0 = time.perf_counter()
    device = next(model.parameters()).device
    task = _task(modules, torch.Generator().manual_seed(cfg.seed))
    wrapped = prepare_model(copy.deepcopy(model), task)
    train_ds = torch.utils.data.TensorDataset(train_x.to(device), train_y.to(device).long())
    queries = [test_x, train_x] if cfg.train_targets else [test_x]
    query_ds = torch.utils.data.TensorDataset(torch.cat(queries).to(device),
                                              torch.cat([test_y, train_y][:len(queries)]).to(device).long())
    factor_args = FactorArguments(strategy=cfg.strategy, use_empirical_fisher=cfg.empirical_fisher)
    score_args = ScoreArguments(damping_factor=cfg.damping)
    with tempfile.TemporaryDirectory(prefix="kronfluence-") as tmp, warnings.catch_warnings(), \
            _frozen_gc():
        warnings.simplefilter("ignore", FutureWarning)  # torch.cuda.amp deprecation inside kronfluence
        analyzer = Analyzer("influence", wrapped, task, cpu=device.type == "cpu", output_dir=tmp,
                            disable_tqdm=True)
        analyzer.fit_all_factors("factors", train_ds, per_device_batch_size=cfg.batch_size,
                                 factor_args=factor_args, overwrite_output_dir=True)
        t_factors = time.perf_counter() - t0
        analyzer.compute_pairwise_scores(
            "scores", "factors", query_ds, train_ds,
            per_device_query_batch_size=query_batch(len(query_ds), _parameters(model, modules),
                                                    cfg.batch_size),
            per_device_train_batch_size=cfg.batch_size, score_args=score_args,
            overwrite_output_dir=True)
        raw = analyzer.load_pairwise_scores("scores")["all_modules"]
    scores = -raw.detach().to(torch.float64).cpu().numpy()  # kronfluence's sign is ours negated
    m = len(test_y)
    train_scores = scores[m:] if cfg.train_targets else None
    return InfluenceResult(
        scores=np.ascontiguousarray(scores[:m]), train_scores=train_scores,
        self_influence=None if train_scores is None else np.diag(train_scores).copy(),
        train_labels=train_y.cpu().numpy().copy(), test_labels=test_y.cpu().numpy().copy(),
        config=cfg, timings={"factors_s": t_factors, "total_s": time.perf_counter() - t0},
        info={"scope": scope, "form": cfg.strategy, "tracked_modules": modules, "scores": "full",
              "plan": {"form": cfg.strategy, "exact": False,
                       "reason": f"kronfluence {cfg.strategy.upper()} over the {scope}"},
              "parameters": _parameters(model, modules), "library": "kronfluence"})


@contextlib.contextmanager
def _frozen_gc() -> Iterator[None]:
    """Objects alive now are left out of garbage collections until the block ends.

    kronfluence calls ``gc.collect()`` after every step (16 times per call); each full
    collection walks every object of the process, 0.6 s in a process holding a dataset,
    most of the time on small problems. Freezing the objects that exist already keeps
    those collections to what kronfluence itself allocated.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


QUERY_BYTES = 512 * 2**20  # preconditioned query gradients held at once (float32)


def query_batch(queries: int, parameters: int, least: int) -> int:
    """Query images per kronfluence batch: as many as :data:`QUERY_BYTES` of gradients allow.

    kronfluence passes over every training image once per query batch, so fewer, larger
    query batches cost less (549 queries, 100 training images, 58,000 parameters: 9
    batches of 64 took 1.3x the time of one batch, on one thread under load).
    """
    return max(1, min(queries, max(least, QUERY_BYTES // (4 * max(parameters, 1)))))


def _parameters(model: nn.Module, modules: list[str]) -> int:
    named = dict(model.named_modules())
    return int(sum(p.numel() for name in modules for p in named[name].parameters()))


def block_influence_for_model(model: TransferModel, train: ImageArrays, test: ImageArrays,
                              config: BlocksConfig | None = None, scope: str = "blocks",
                              policy: InputPolicy | None = None) -> InfluenceResult:
    """:func:`compute_block_influence` on a dataset's images, prepared as the model sees them.

    Raises:
        ConfigError: the model's head and the dataset's classes do not match.
        NoUnfrozenBlocksError: scope ``blocks`` and a head-only model.
    """
    from robust_transfer.influence.core import check_classes

    for data in (train, test):
        check_classes(model, data)
    tracked_modules(model, scope)  # refuse a head-only model before any work
    policy = policy or InputPolicy(channels=model.channels, size=model.input_size, augment=False)
    t0 = time.perf_counter()
    x_train, x_test = policy.prepare(train.images), policy.prepare(test.images)
    t_prep = time.perf_counter() - t0
    result = compute_block_influence(model, x_train, train.labels, x_test, test.labels, config, scope)
    result.timings = {"features_s": t_prep, **result.timings}
    return result
