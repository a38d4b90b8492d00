"""Influence of every training image on every test image through a model's last layer.

``I(z, z_test) = -g_test^T (H + lambda I)^-1 g_z`` (Koh & Liang 2017, "I_up,loss"): the
derivative of the test loss when ``z`` is up-weighted. Negative means helpful (up-weighting
``z`` lowers the test loss), positive means harmful. Removing ``z`` changes the test loss
by about ``-I / n``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from robust_transfer.data import ImageArrays, InputPolicy
from robust_transfer.errors import ConfigError
from robust_transfer.events import Listener
from robust_transfer.influence.forms import FORMS
from robust_transfer.influence.hessian import augment, head_probs, residuals
from robust_transfer.influence.planning import FormPlan, Problem, plan_form
from robust_transfer.influence.solvers import (
    PRECISIONS,
    SOLVERS,
    GradientProblem,
    available_memory,
    check_nonsingular,
)
from robust_transfer.influence.streaming import (
    SCORE_MODES,
    FullScores,
    Ranking,
    StreamedRanking,
    check_score_mode,
    rank_matrix,
)

if TYPE_CHECKING:
    from robust_transfer.influence.blocks import BlocksConfig
    from robust_transfer.models.base import TransferModel

Tensor = torch.Tensor


@dataclass(frozen=True)
class InfluenceConfig:
    """How to compute last-layer influence.

    Each field's metadata holds its command-line help (and choices where there are some);
    :func:`config_fields` turns them into rows a CLI can add as options.

    Attributes:
        damping: ``lambda`` added to the Hessian's diagonal (an L2 term of the mean loss).
        solver: ``cholesky``, ``eigh``, ``pinv`` or ``cg`` (see :data:`SOLVERS`).
        rcond: ``pinv`` only: drop eigenvalues below ``rcond * max`` (the paper: 5e-2).
        train_targets: also score every training image as a target (train-by-train
            matrix, self-influence); costs ``n`` more solves.
        form: ``cholesky`` only: ``direct`` (factor the Hessian), ``kernel`` (Woodbury
            through the feature Gram matrix, cheap when ``n < d + 1``), ``block`` (Woodbury
            around the class blocks, cheap at the paper's setting), the approximate
            ``kfac`` / ``ekfac`` (Kronecker-factored Hessian, :mod:`.kfac`; for heads no
            exact form fits) or ``auto``: the cheapest exact form within ``memory_limit``
            and ``time_budget_s``, else ``ekfac``, else ``kfac`` (:mod:`.planning`).
        precision: ``float64`` throughout, or ``mixed`` (direct cholesky only): Hessian,
            factor and solves in float32, then float64 iterative refinement. The scores
            equal float64's, but it pays only where the factorisation is most of the time
            (1.5x at 2,048 features and 300 images, where form ``kernel`` is faster still);
            with many targets the float64 score products dominate and it is slower (0.40x
            at 512 features, 3,200 training and 10,000 test images; README).
        refine_tol: ``mixed`` only: stop refining when the last correction is below this
            fraction of the solution.
        refine_max_iter: ``mixed`` only: refinement steps at most.
        cg_tol: ``cg`` only: relative residual to reach.
        cg_max_iter: ``cg`` only: iterations at most.
        cg_batch: ``cg`` only: right-hand sides solved together.
        memory_limit: bytes allowed; ``None`` means what the OS reports as available.
        time_budget_s: ``form="auto"`` only: estimated seconds an exact form may take
            before ``auto`` takes an approximate one; ``None``: no budget.
        scores: ``full`` (keep the ``[m, n]`` and ``[n, n]`` matrices), ``stream`` (keep
            only top-k, class-match ranks and self-influence, made chunk by chunk:
            :mod:`.streaming`) or ``auto`` (full when it fits ``memory_limit``).
        top_k: ``stream``: helpful and harmful images kept per test image.
        max_rank: ``stream``: ranks kept for the class-match curves.
    """

    damping: float = field(default=1e-3, metadata={"help": "lambda added to the Hessian's diagonal"})
    solver: str = field(default="cholesky", metadata={
        "help": "how (H + damping*I)^-1 is applied", "choices": lambda: SOLVERS.names()})
    rcond: float = field(default=5e-2, metadata={
        "help": "pinv only: drop eigenvalues below rcond*max (the paper's 5e-2)"})
    train_targets: bool = field(default=True, metadata={
        "help": "score training images as targets too (self-influence, train curve)",
        "negative_flag": "--no-train-targets"})
    form: str = field(default="auto", metadata={
        "help": "cholesky only: direct, kernel (few images), block (many), the approximate "
                "kfac/ekfac (Kronecker-factored Hessian) or auto: the cheapest exact form within "
                "the memory and time budgets, else ekfac, else kfac",
        "choices": lambda: list(FORMS)})
    precision: str = field(default="float64", metadata={
        "help": "float64, or mixed: float32 factor refined to float64 scores (direct form; "
                "slower than float64 when there are many targets)",
        "choices": lambda: list(PRECISIONS)})
    refine_tol: float = field(default=1e-10, metadata={
        "help": "mixed only: stop when the correction is below this fraction of the solution"})
    refine_max_iter: int = field(default=10, metadata={"help": "mixed only: refinement steps at most"})
    cg_tol: float = field(default=1e-10, metadata={"help": "cg only: relative residual"})
    cg_max_iter: int = field(default=500, metadata={"help": "cg only: iterations at most"})
    cg_batch: int = field(default=256, metadata={"help": "cg only: right-hand sides at once"})
    memory_limit: int | None = field(default=None, metadata={
        "help": "refuse problems estimated above this many bytes (default: the available memory)"})
    time_budget_s: float | None = field(default=600.0, metadata={
        "help": "form auto: estimated seconds an exact form may take before auto takes "
                "ekfac or kfac (approximate)"})
    scores: str = field(default="auto", metadata={
        "help": "full: keep every score; stream: only top-k, class-match ranks and "
                "self-influence, chunk by chunk; auto: full when it fits the memory",
        "choices": lambda: list(SCORE_MODES)})
    top_k: int = field(default=10, metadata={"help": "helpful/harmful images kept per test image"})
    max_rank: int = field(default=100, metadata={"help": "largest rank of the class-match curve"})

    def __post_init__(self) -> None:
        SOLVERS.get(self.solver)  # unknown names list the valid ones
        for name, value, valid in (("form", self.form, FORMS), ("precision", self.precision, PRECISIONS)):
            if value not in valid:
                raise ConfigError(f"unknown influence {name} '{value}'; valid: {', '.join(valid)}")
        if not (self.damping >= 0 and np.isfinite(self.damping)):
            raise ConfigError(f"damping must be a finite number >= 0, got {self.damping}")
        if not 0 < self.rcond < 1:
            raise ConfigError(f"rcond must lie in (0, 1), got {self.rcond}")
        if self.cg_batch < 1 or self.cg_max_iter < 1 or not self.cg_tol > 0:
            raise ConfigError("cg_batch and cg_max_iter must be >= 1 and cg_tol > 0")
        if self.refine_max_iter < 1 or not self.refine_tol > 0:
            raise ConfigError("refine_max_iter must be >= 1 and refine_tol > 0")
        check_score_mode(self.scores)
        if self.top_k < 1 or self.max_rank < 1:
            raise ConfigError(f"top_k and max_rank must be >= 1, got {self.top_k} and {self.max_rank}")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise ConfigError(f"time_budget_s must be > 0 or None, got {self.time_budget_s}")
        if self.precision == "mixed" and (self.solver != "cholesky" or self.form not in ("direct", "auto")):
            raise ConfigError(f"precision 'mixed' applies to solver 'cholesky' with form 'direct' "
                              f"or 'auto', not solver '{self.solver}' with form '{self.form}'")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ConfigField:
    """One :class:`InfluenceConfig` field as a command-line option.

    Attributes:
        name: the field name.
        flag: ``--kebab-case`` option (``--no-...`` for a true-by-default switch).
        type: ``float``, ``int``, ``str`` or ``bool``.
        default: the field's default.
        help: one line.
        choices: valid values, or ``None``.
    """

    name: str
    flag: str
    type: type
    default: Any
    help: str
    choices: list[str] | None = None


def config_fields() -> list[ConfigField]:
    """:class:`InfluenceConfig`'s fields with their help, for building CLI options.

    Returns:
        One :class:`ConfigField` per field, in declaration order.

    Example:
        >>> for f in config_fields():
        ...     parser.add_argument(f.flag, type=f.type, default=f.default, help=f.help)
    """
    rows = []
    for f in fields(InfluenceConfig):
        meta = f.metadata
        kind = {"float": float, "int": int, "str": str, "bool": bool}.get(
            str(f.type).split(" | ")[0], str)
        choices = meta["choices"]() if "choices" in meta else None
        flag = meta.get("negative_flag", "--" + f.name.replace("_", "-"))
        rows.append(ConfigField(f.name, flag, kind, f.default, meta["help"], choices))
    return rows


@dataclass
class InfluenceResult:
    """Influence scores of one head on one train/test pair.

    Attributes:
        scores: ``[m, n]``; ``scores[t, i] = I(train i, test t)``; ``None`` when streamed.
        train_scores: ``[n, n]`` with training images as targets, or ``None``.
        self_influence: ``[n]``, ``I(z_i, z_i) = -g_i^T H^-1 g_i`` (<= 0), or ``None``.
        train_labels, test_labels: ``[n]``, ``[m]``.
        config: what produced it (damping, solver, ...); a
            :class:`~robust_transfer.influence.blocks.BlocksConfig` through the blocks.
        timings: seconds per step.
        info: solver details (form and why, scores mode, eigenvalues kept, CG iterations...).
        ranking: the streamed :class:`~robust_transfer.influence.streaming.Ranking`
            (``scores="stream"``), else ``None``; :meth:`rank` serves both.
    """

    scores: np.ndarray | None
    train_scores: np.ndarray | None
    self_influence: np.ndarray | None
    train_labels: np.ndarray
    test_labels: np.ndarray
    config: InfluenceConfig | BlocksConfig
    timings: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    ranking: Ranking | None = None

    def rank(self, k: int = 10, max_rank: int = 100) -> Ranking:
        """Top-``k`` helpful and harmful images and class-match ranks up to ``max_rank``.

        From the held matrices, or from the streamed ranking (then ``k`` and ``max_rank``
        may not exceed what was kept: ``config.top_k`` and ``config.max_rank``); the two
        are equal bit for bit.

        Raises:
            ConfigError: a streamed result asked for more than it kept.
        """
        if self.scores is not None:
            return rank_matrix(self.scores, self.train_scores, k, max_rank, self.self_influence)
        if self.ranking is None:
            raise ConfigError("this influence result holds neither scores nor a ranking")
        n = len(self.train_labels)
        return self.ranking.cut(min(k, n), min(max_rank, n))


def compute_influence(train_features: Tensor, train_labels: Tensor, test_features: Tensor,
                      test_labels: Tensor, weight: Tensor, bias: Tensor,
                      config: InfluenceConfig | None = None,
                      callback: Listener | None = None) -> InfluenceResult:
    """Influence of each training point on each test point for a softmax linear head.

    Args:
        train_features: ``[n, d]`` (fixed; any float dtype, used in float64).
        train_labels: ``[n]``.
        test_features: ``[m, d]``.
        test_labels: ``[m]``.
        weight: ``[C, d]`` head weight.
        bias: ``[C]`` head bias.
        config: damping, solver, ...; defaults to :class:`InfluenceConfig`.
        callback: called with a :class:`~robust_transfer.events.StepDone` as the solve
            advances (a :class:`~robust_transfer.progress.Progress` shows them), or ``None``.

    Returns:
        An :class:`InfluenceResult`.

    Raises:
        ConfigError: shapes or labels that do not fit the head.
        SingularHessianError: zero damping and features that leave ``H`` singular.
        InfluenceMemoryError: the estimate exceeds the available memory.
    """
    cfg = config or InfluenceConfig()
    _check_shapes(train_features, train_labels, test_features, test_labels, weight, bias)
    plan = plan_for(cfg, len(train_labels), len(test_labels), *weight.shape)
    t0 = time.perf_counter()
    problem = _gradient_problem(train_features, train_labels, test_features, test_labels,
                                weight, bias, cfg.train_targets)
    problem.callback = callback
    n, m = len(train_labels), len(test_labels)
    sink = (StreamedRanking(m, n, cfg.top_k, cfg.max_rank, cfg.train_targets)
            if plan.scores == "stream" else FullScores(m, n, cfg.train_targets))
    problem.sink = sink
    if cfg.damping == 0 and cfg.solver != "pinv":
        check_nonsingular(problem.x_train, weight.shape[0])
    t_grads = time.perf_counter() - t0
    out = SOLVERS.get(cfg.solver).run(problem, cfg.damping, replace(cfg, form=plan.form))
    timings = {"gradients_s": t_grads, **out.timings, "total_s": time.perf_counter() - t0}
    own = None if out.self_influence is None else out.self_influence.numpy()
    info = {"parameters": int(weight.numel() + bias.numel()),
            "hessian_dimension": int(problem.r_train.shape[1] * problem.x_train.shape[1]),
            "form": plan.form, **out.info, "scores": plan.scores, "plan": plan.to_dict()}
    labels = {"train_labels": train_labels.numpy().copy(), "test_labels": test_labels.numpy().copy()}
    if isinstance(sink, StreamedRanking):
        ranking = sink.ranking(own)
        return InfluenceResult(None, None, ranking.self_influence, config=cfg, timings=timings,
                               info=info, ranking=ranking, **labels)
    train = None if sink.train_scores is None else sink.train_scores.numpy()
    if own is None and train is not None:
        own = train.diagonal().copy()
    return InfluenceResult(sink.scores.numpy(), train, own, config=cfg, timings=timings,
                           info=info, **labels)


def _gradient_problem(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor,
                      weight: Tensor, bias: Tensor, train_targets: bool) -> GradientProblem:
    w, b = weight.detach().to(torch.float64).cpu(), bias.detach().to(torch.float64).cpu()
    train_x, test_x = train_x.detach().to(torch.float64).cpu(), test_x.detach().to(torch.float64).cpu()
    return GradientProblem(
        x_train=augment(train_x), probs=head_probs(train_x, w, b),
        r_train=residuals(train_x, train_y, w, b, reduced=True), x_test=augment(test_x),
        r_test=residuals(test_x, test_y, w, b, reduced=True), train_targets=train_targets)


def _check_shapes(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor,
                  weight: Tensor, bias: Tensor) -> None:
    c, d = weight.shape
    if c < 2 or bias.shape != (c,):
        raise ConfigError(f"head must have >= 2 classes and a bias of shape [{c}]")
    for name, x, y in (("training", train_x, train_y), ("test", test_x, test_y)):
        if x.ndim != 2 or x.shape[1] != d or len(x) != len(y) or len(x) == 0:
            raise ConfigError(f"{name} features must be [N, {d}] with one label each, "
                              f"got {tuple(x.shape)} and {len(y)} labels")
        if int(y.min()) < 0 or int(y.max()) >= c:
            raise ConfigError(f"{name} labels must lie in 0..{c - 1} for a {c}-class head, "
                              f"got {int(y.min())}..{int(y.max())}")


def plan_for(cfg: InfluenceConfig, n: int, m: int, c: int, d: int) -> FormPlan:
    """The form and scores mode ``cfg`` gives for a problem of this size (:mod:`.planning`).

    Args:
        cfg: the configuration (``memory_limit=None``: the memory available now).
        n, m: training and test images.
        c, d: classes and features of the head.

    Raises:
        InfluenceMemoryError: nothing fits the memory budget (naming the cheapest option).
        ConfigError: a form asked for where it does not apply.
    """
    limit = cfg.memory_limit if cfg.memory_limit is not None else available_memory()
    problem = Problem(n, m, c, d, cfg.solver, cfg.damping, cfg.precision, cfg.train_targets,
                      cfg.cg_batch)
    return plan_form(problem, cfg.form, cfg.scores, limit, cfg.time_budget_s)


# --- from a model ----------------------------------------------------------------------


def extract_features(model: TransferModel, images: Tensor, policy: InputPolicy,
                     batch_size: int = 256) -> Tensor:
    """Pooled penultimate features of the frozen model, batched, without autograd.

    Args:
        model: a :class:`~robust_transfer.models.arch.TransferModel`.
        images: uint8 ``[N, C, H, W]``.
        policy: maps images to model inputs (its ``prepare``: never augmented).
        batch_size: images per forward pass.

    Returns:
        float64 ``[N, d]`` on the CPU.
    """
    from robust_transfer.engine.transfer import prefix_outputs  # the one feature extractor

    depth = len(model.stages())
    return prefix_outputs(model, images, policy, depth, True, batch_size=batch_size).to(torch.float64)


def influence_for_model(model: TransferModel, train: ImageArrays, test: ImageArrays,
                        policy: InputPolicy | None = None, config: InfluenceConfig | None = None,
                        batch_size: int = 256,
                        callback: Listener | None = None) -> InfluenceResult:
    """Last-layer influence of ``train`` on ``test`` for a fine-tuned model.

    Features are computed once with the frozen backbone; the model's own head
    (``model.head``) gives ``W`` and ``b``.

    Args:
        model: a :class:`~robust_transfer.models.arch.TransferModel`.
        train: the training images the head was fitted on.
        test: the target images.
        policy: input mapping; default: the model's channels and size, no augmentation.
        config: see :class:`InfluenceConfig`.
        batch_size: images per forward pass.
        callback: progress events of the solve (see :func:`compute_influence`).

    Returns:
        An :class:`InfluenceResult`; ``timings["features_s"]`` holds the forward passes.

    Raises:
        ConfigError: the model's head and the dataset's classes do not match.
    """
    for data in (train, test):
        check_classes(model, data)
    cfg = config or InfluenceConfig()
    plan_for(cfg, len(train), len(test), *model.head.weight.shape)  # raise before the forward passes
    policy = policy or InputPolicy(channels=model.channels, size=model.input_size, augment=False)
    t0 = time.perf_counter()
    f_train = extract_features(model, train.images, policy, batch_size)
    f_test = extract_features(model, test.images, policy, batch_size)
    t_feat = time.perf_counter() - t0
    head = model.head
    # the features are on the CPU (float64); so must the head be when the model is on a GPU
    result = compute_influence(f_train, train.labels, f_test, test.labels,
                               head.weight.detach().cpu(), head.bias.detach().cpu(), cfg,
                               callback)
    result.timings = {"features_s": t_feat, **result.timings}
    return result


def check_classes(model: TransferModel, data: ImageArrays) -> None:
    """Refuse a dataset whose classes are not the model head's."""
    c = model.head.out_features
    if c != data.info.num_classes:
        raise ConfigError(
            f"the model's head has {c} classes but dataset '{data.info.name}' has "
            f"{data.info.num_classes}; use the checkpoint fine-tuned on this dataset")
