"""What a study will cost, before it runs (``study run --dry-run``).

Each run's work is counted in FLOPs per part of the network (:mod:`.cost`): the frozen
prefix (once per cached image), the trainable blocks' forward and backward, and the
evaluations. A short calibration measures this machine's throughput for each source's
architecture at the study's resolution and threads (a few seconds for ResNet-50 at 224 px
on a CPU), which turns the counts into time on this machine: CPU-hours here, GPU-hours
where the runs' device is a GPU. The same grid is costed without any prefix cache, and
the ratio is the saving the cache buys; the breakdown says where the rest goes.

The input side (resizing and augmenting, timed with the images on the runs' device) is
costed beside the model: for each part of the grid (target, unfrozen blocks) the dry run
says what share of a run's time its inputs take on this device, and calls the part
*input-bound* when inputs would take more time than the model (more than half).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from robust_transfer.data import dataset_info
from robust_transfer.errors import RobustTransferError
from robust_transfer.study.cost import (
    RunShape,
    StudyCost,
    Throughput,
    calibrate,
    run_work,
    study_cost,
)
from robust_transfer.study.resolve import ResolvedStudy, resolve_study
from robust_transfer.study.spec import RunConfig, StudySpec, load_spec, run_set_id
from robust_transfer.study.store import DB_NAME, StudyStore


@dataclass
class CostEstimate:
    """Estimated cost of the runs still to do.

    Attributes:
        seconds: on this machine with the prefix cache, one run at a time (NaN when not
            measured).
        basis: how ``seconds`` was obtained.
        cost: the counted work and its time per part, cached and uncached.
        device: where the calibration ran (``cpu`` or ``cuda``).
        inputs: the input side's share of the time per part of the grid.
    """

    seconds: float
    basis: str
    cost: StudyCost = field(default_factory=StudyCost)
    device: str = "cpu"
    inputs: list[InputShare] = field(default_factory=list)

    @property
    def flops(self) -> float:
        """Counted FLOPs with the prefix cache."""
        return self.cost.cached.flops

    @property
    def hours_label(self) -> str:
        return "GPU-hours" if self.device.startswith("cuda") else "CPU-hours"

    def lines(self) -> list[str]:
        """The dry run's cost report, one line per fact."""
        c = self.cost
        out = [f"counted work: {c.cached.flops / 1e15:,.3f} PFLOP with the prefix cache, "
               f"{c.uncached.flops / 1e15:,.3f} PFLOP without ({_times(c.uncached.flops, c.cached.flops)} "
               "fewer FLOPs)"]
        if c.uncounted:
            out.append(f"not counted: {c.uncounted} run(s) whose source is missing here")
        if math.isnan(self.seconds):
            out.append(f"time: not estimated ({self.basis})")
            return out
        hours = self.hours_label
        out.append(f"estimated time on this machine ({self.basis}): "
                   f"{_hours(c.total_cached)} {hours} with caching, "
                   f"{_hours(c.total_uncached)} {hours} without; "
                   f"caching makes it {_times(c.total_uncached, c.total_cached)} cheaper")
        parts = ", ".join(f"{share:.0%} {name}" for name, _, share in c.breakdown() if share >= 0.005)
        out.append(f"where the cached cost goes: {parts}")
        if len(c.by_target) > 1:
            total = sum(c.by_target.values())
            targets = ", ".join(f"{t} {s / total:.0%}" for t, s in
                                sorted(c.by_target.items(), key=lambda kv: -kv[1]))
            out.append(f"by target: {targets}")
        if self.inputs:
            out.append(f"input side on {self.device} per part of the grid (share of run time; "
                       "input-bound: inputs take longer than the model):")
            out += [f"  {part.line()}" for part in self.inputs]
        for (arch, res), t in c.throughput.items():
            out.append(f"measured for {arch} at {res} px on {t.device} ({t.threads} thread(s)): "
                       f"forward {t.forward / 1e9:,.1f} GFLOP/s, training step {t.train / 1e9:,.1f} "
                       f"GFLOP/s, {1e3 * (t.prepare + t.augment):.1f} ms/image input preparation")
        return out


@dataclass(frozen=True)
class InputShare:
    """The input side of one part of the grid: seconds of inputs and of the model.

    Attributes:
        target, unfrozen, augmented: the part of the grid.
        runs: runs in it.
        input_seconds: resizing and augmenting, summed over its runs.
        model_seconds: every network pass (training, evaluation, cache fills).
    """

    target: str
    unfrozen: str
    augmented: bool
    runs: int
    input_seconds: float
    model_seconds: float

    @property
    def share(self) -> float:
        total = self.input_seconds + self.model_seconds
        return self.input_seconds / total if total else 0.0

    @property
    def input_bound(self) -> bool:
        return self.input_seconds > self.model_seconds

    def line(self) -> str:
        aug = "augmented" if self.augmented else "not augmented"
        verdict = "INPUT-BOUND" if self.input_bound else "model-bound"
        return (f"{self.target}, unfrozen {self.unfrozen} ({aug}, {self.runs} run(s)): "
                f"inputs {self.share:.0%} of run time, {verdict}")


def input_shares(shapes: list[tuple[RunShape, tuple]], rates: dict[tuple, Throughput],
                 share_cache: bool = True) -> list[InputShare]:
    """The input side's seconds beside the model's, per (target, unfrozen blocks)."""
    parts: dict[tuple, list[float]] = {}
    for shape, key in shapes:
        rate = rates.get((shape.arch, shape.resolution))
        if rate is None:
            continue
        seconds = rate.seconds(run_work(shape, cache=True, fill=not share_cache))
        model = sum(v for k, v in seconds.items() if k not in ("inputs", "overhead"))
        acc = parts.setdefault((key[1] if len(key) > 1 else "?", str(shape.unfrozen),
                                shape.augmented), [0, 0.0, 0.0])
        acc[0] += 1
        acc[1] += seconds["inputs"]
        acc[2] += model
    return [InputShare(t, u, a, int(n), i, m) for (t, u, a), (n, i, m) in parts.items()]


def _hours(seconds: float) -> str:
    """Hours, with seconds or minutes beside them when that is easier to read."""
    if seconds < 120:
        return f"{seconds / 3600:.3f} ({seconds:.0f} s)"
    if seconds < 7200:
        return f"{seconds / 3600:.2f} ({seconds / 60:.1f} min)"
    return f"{seconds / 3600:,.1f}"


def _times(big: float, small: float) -> str:
    return f"{big / small:,.1f}x" if small else "n/a"


@dataclass
class StudyPlan:
    """A study as ``--dry-run`` reports it.

    Attributes:
        spec: the study.
        total_runs: runs the spec defines.
        finished, failed: of those, already in the store at ``out_dir``.
        to_run: runs a ``study run`` would execute now.
        missing: inputs absent on this machine (a real run refuses to start).
        estimate: the cost of ``to_run``.
        other_study: ``out_dir`` holds a different study (a run needs ``--extend``).
    """

    spec: StudySpec
    total_runs: int
    finished: int
    failed: int
    to_run: int
    missing: list
    estimate: CostEstimate
    other_study: bool = False


def plan_study(spec: StudySpec | str | Path, out_dir: str | Path | None = None,
               retry_failed: bool = False, data_root: str | None = None,
               measure: bool = True) -> StudyPlan:
    """Count a study's runs, those already done, and estimate the cost of the rest.

    Args:
        spec: the study or its YAML path.
        out_dir: a study directory to compare with (may not exist yet).
        retry_failed: count failed runs as to run.
        data_root: dataset folder override.
        measure: calibrate this machine's throughput (a few seconds per architecture);
            without it only FLOPs are counted.

    Raises:
        RobustTransferError: a bad spec (missing inputs are reported, not raised).
    """
    spec = spec if isinstance(spec, StudySpec) else load_spec(spec)
    resolved = resolve_study(spec, data_root)
    runs = spec.runs()
    statuses, other = _stored(out_dir, [r.run_id for r in runs])
    finished = sum(s == "finished" for s in statuses.values())
    failed = sum(s == "failed" for s in statuses.values())
    skip = {"finished"} | ({"failed"} if not retry_failed else set())
    todo = [r for r in runs if statuses.get(r.run_id) not in skip]
    estimate = estimate_cost(resolved, todo, measure)
    return StudyPlan(spec, len(runs), finished, failed, len(todo), resolved.missing, estimate,
                     other)


def _stored(out_dir, run_ids: list[str]) -> tuple[dict[str, str], bool]:
    """Statuses of ``run_ids`` and whether the store holds another study."""
    if out_dir is None or not (Path(out_dir) / DB_NAME).is_file():
        return {}, False
    with StudyStore(out_dir, readonly=True) as store:
        specs = store.specs()
        other = bool(specs) and run_set_id(run_ids) not in {s["run_set"] for s in specs}
        return store.statuses(run_ids), other


def estimate_cost(resolved: ResolvedStudy, todo: list[RunConfig], measure: bool = True) -> CostEstimate:
    """Counted work of ``todo`` and, when ``measure``, its time on this machine.

    Args:
        resolved: the study as found on this machine.
        todo: the runs to cost.
        measure: calibrate the throughput of each (architecture, resolution).
    """
    shapes, uncounted = [], 0
    for run in todo:
        shape = run_shape(resolved, run)
        if shape is None:
            uncounted += 1
        else:
            shapes.append((shape, (run.source, run.target, run.seed)))
    device = _device(resolved.spec.device)
    rates: dict[tuple, Throughput] = {}
    if measure:
        threads = resolved.spec.resources.threads
        for shape, _ in shapes:
            key = (shape.arch, shape.resolution)
            if key not in rates:
                rates[key] = calibrate(shape.arch, shape.resolution, device, threads,
                                       image_size=_image_size(shape))
    cost = study_cost(shapes, resolved.spec.feature_cache, rates)
    cost.uncounted = uncounted
    if not measure:
        return CostEstimate(math.nan, "no calibration asked", cost, device)
    basis = (f"{device}, {resolved.spec.resources.threads} thread(s), one run at a time, "
             "calibrated now")
    return CostEstimate(cost.total_cached if shapes else 0.0, basis, cost, device,
                        input_shares(shapes, rates, resolved.spec.feature_cache))


def run_shape(resolved: ResolvedStudy, run: RunConfig) -> RunShape | None:
    """What the cost of ``run`` depends on; ``None`` when its source is missing here."""
    source = resolved.sources[run.source]
    if source.arch == "unknown":
        return None
    target = resolved.targets[run.target]
    n = run.n or target.train_size
    classes, size = _target_facts(run.target)
    robust = (min(run.recipe.robust_images, target.test_size or run.recipe.robust_images)
              if run.recipe.robust_eps is not None else 0)
    return RunShape(source.arch, run.recipe.resolution or source.input_size, run.unfrozen_blocks,
                    n, run.epochs, math.ceil(run.epochs / run.recipe.eval_every),
                    target.test_size, _augmented(run), classes, target.train_size, size,
                    robust, run.recipe.robust_steps)


def _target_facts(name: str) -> tuple[int, int]:
    try:
        info = dataset_info(name)
        return info.num_classes, info.size
    except RobustTransferError:  # a folder: dataset missing here
        return 10, 32


def _image_size(shape: RunShape) -> int:
    return shape.image_size


def _augmented(run: RunConfig) -> bool:
    if run.recipe.augment == "auto":
        try:
            return not dataset_info(run.target).grayscale_like
        except RobustTransferError:  # a folder: dataset that is missing here
            return True
    return bool(run.recipe.augment)


def _device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if device.startswith("cuda") and torch.cuda.is_available() else "cpu"
