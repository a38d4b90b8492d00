"""Which form to run, and whether to hold the scores or stream them, under memory and time budgets.

``form="auto"`` takes the cheapest exact form (``direct``, ``kernel``, ``block``: by their
operation counts) whose memory estimate fits the memory budget and whose time estimate
fits the time budget; only when none does, the approximate ``ekfac`` and then ``kfac``
(:mod:`.kfac`); and when nothing fits the time budget, the fastest that fits the memory.
``scores="auto"`` holds the ``[m, n]`` matrices when they fit and streams rankings
(:mod:`.streaming`) when they do not. Times are operation counts at
:data:`NOMINAL_RATE`, the float64 matrix-product rate of the 2-core development CPU, plus
the ranking of every score; they are estimates for choosing, not promises.
"""

from __future__ import annotations

from dataclasses import dataclass

from robust_transfer.influence.errors import InfluenceMemoryError
from robust_transfer.influence.forms import (
    EXACT_FORMS,
    RANK_COST,
    choose_form,
    flop_estimates,
    kronecker_flops,
    woodbury_unavailable,
)
from robust_transfer.influence.solvers import estimate_memory
from robust_transfer.units import format_bytes

NOMINAL_RATE = 1e11  # flop/s: float64 products on 2 cores (DESIGN.md: about 106 GFLOP/s)
APPROXIMATE_FORMS = ("ekfac", "kfac")  # auto's order: the closer approximation first


@dataclass(frozen=True)
class Problem:
    """The sizes and options a plan depends on.

    Attributes:
        n, m: training and test images.
        classes, features: ``C`` and ``d``.
        solver, damping, precision, train_targets, cg_batch: as
            :class:`~robust_transfer.influence.InfluenceConfig`.
    """

    n: int
    m: int
    classes: int
    features: int
    solver: str = "cholesky"
    damping: float = 1e-3
    precision: str = "float64"
    train_targets: bool = True
    cg_batch: int = 256

    def describe(self) -> str:
        return (f"{self.n} training and {self.m} test images, {self.classes} classes, "
                f"{self.features} features")


@dataclass(frozen=True)
class FormPlan:
    """A form, a scores mode and why.

    Attributes:
        form: ``direct``, ``kernel``, ``block``, ``kfac`` or ``ekfac``.
        scores: ``full`` or ``stream``.
        memory: estimated peak bytes.
        seconds: estimated seconds at :data:`NOMINAL_RATE`.
        exact: ``form`` is exact (not ``kfac``/``ekfac``).
        reason: one sentence for the output (``summary.json`` and the CLI line).
    """

    form: str
    scores: str
    memory: int
    seconds: float
    exact: bool
    reason: str

    def to_dict(self) -> dict:
        return {"form": self.form, "scores": self.scores, "memory_bytes": self.memory,
                "estimated_s": self.seconds, "exact": self.exact, "reason": self.reason}


def estimate(problem: Problem, form: str, scores: str) -> tuple[int, float]:
    """``(bytes, seconds)`` of one form and scores mode."""
    p = problem
    memory = estimate_memory(p.n, p.m, p.classes, p.features, p.solver, p.train_targets,
                             p.cg_batch, form, p.precision, scores)
    flops = {**flop_estimates(p.n, p.m, p.classes, p.features, p.train_targets),
             **kronecker_flops(p.n, p.m, p.classes, p.features, p.train_targets)}[form]
    pairs = p.m * p.n + (p.n * p.n if p.train_targets else 0)
    return memory, (flops + RANK_COST * pairs) / NOMINAL_RATE


def plan_form(problem: Problem, form: str, scores: str, memory_limit: int | None,
              time_budget_s: float | None) -> FormPlan:
    """Choose the form and scores mode (see the module docstring).

    Args:
        problem: sizes and options.
        form: a name in :data:`~robust_transfer.influence.forms.FORMS` (``auto`` chooses).
        scores: ``full``, ``stream`` or ``auto``.
        memory_limit: bytes, or ``None`` for no limit.
        time_budget_s: seconds (``auto`` only), or ``None`` for no limit.

    Returns:
        A :class:`FormPlan`.

    Raises:
        ConfigError: a form asked for where it does not apply.
        InfluenceMemoryError: nothing asked for (or, for ``auto``, nothing at all) fits
            the memory budget; the message names the cheapest option and its need.
    """
    p = problem
    modes = ["full", "stream"] if scores == "auto" else [scores]
    limit = float("inf") if memory_limit is None else memory_limit
    budget = float("inf") if time_budget_s is None else time_budget_s
    if p.solver != "cholesky" or form != "auto":
        name = choose_form(form, p.n, p.m, p.classes, p.features, p.damping, p.solver,
                           p.precision, p.train_targets)  # raises where the form does not apply
        name = name if p.solver == "cholesky" else "direct"
        options = [(name, mode, *estimate(p, name, mode)) for mode in modes]
        return (_first_fitting(options, limit, float("inf"), f"form '{name}' as asked")
                or _refuse(p, options, limit))
    exact = _exact_candidates(p)
    approx = [] if woodbury_unavailable(p.damping, p.solver, p.precision) else list(APPROXIMATE_FORMS)
    exact_opts = [(f, mode, *estimate(p, f, mode)) for f in exact for mode in modes]
    approx_opts = [(f, mode, *estimate(p, f, mode)) for f in approx for mode in modes]
    chosen = _first_fitting(exact_opts, limit, budget, "the cheapest exact form within the budgets")
    if chosen:
        return chosen
    least = {f: min((o for o in exact_opts if o[0] == f), key=lambda o: o[2]) for f in exact}
    why = (f"no exact form fits {_budgets(memory_limit, time_budget_s)} (least needs: "
           + ", ".join(f"{f} {format_bytes(mem)} and {sec:,.0f} s"
                       for f, _, mem, sec in least.values()) + ")")
    chosen = _first_fitting(approx_opts, limit, budget, f"approximate: {why}")
    if chosen:
        return chosen
    fitting = [o for o in exact_opts + approx_opts if o[2] <= limit]
    if fitting:
        f, mode, mem, sec = min(fitting, key=lambda o: o[3])
        return FormPlan(f, mode, mem, sec, f in EXACT_FORMS,
                        f"the fastest that fits the memory: nothing fits the time budget ({why})")
    return _refuse(p, exact_opts + approx_opts, limit)


def _exact_candidates(p: Problem) -> list[str]:
    if woodbury_unavailable(p.damping, p.solver, p.precision):
        return ["direct"]
    costs = flop_estimates(p.n, p.m, p.classes, p.features, p.train_targets)
    return sorted(costs, key=lambda name: costs[name])


def _first_fitting(options: list, limit: float, budget: float, reason: str) -> FormPlan | None:
    for f, mode, mem, sec in options:
        if mem <= limit and sec <= budget:
            return FormPlan(f, mode, mem, sec, f in EXACT_FORMS, reason)
    return None


def _budgets(memory_limit: int | None, time_budget_s: float | None) -> str:
    mem = "no memory limit" if memory_limit is None else format_bytes(memory_limit)
    return f"{mem} and {'no time budget' if time_budget_s is None else f'{time_budget_s:g} s'}"


def _refuse(p: Problem, options: list, limit: float) -> FormPlan:
    f, mode, mem, _ = min(options, key=lambda o: o[2])
    cg = estimate_memory(p.n, p.m, p.classes, p.features, "cg", p.train_targets, p.cg_batch)
    what = f"form '{f}'" if p.solver == "cholesky" else f"solver '{p.solver}'"
    hint = ("raise --memory-limit-gb, use fewer images" if p.solver == "cg"
            else f"raise --memory-limit-gb, use fewer images, or the matrix-free solver 'cg' "
                 f"(--solver cg, about {format_bytes(cg)})")
    if p.train_targets:
        hint += ", or skip training images as targets (--no-train-targets)"
    raise InfluenceMemoryError(
        f"no influence form fits {format_bytes(limit)} for {p.describe()}: the cheapest, {what} "
        f"with {'streamed' if mode == 'stream' else 'held'} scores, needs about "
        f"{format_bytes(mem)}; {hint}")
