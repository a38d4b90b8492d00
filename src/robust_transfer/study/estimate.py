"""What a study will cost, before it runs (``study run --dry-run``).

Each run's work is counted in forward passes of the whole source network at its native
input size: a backward pass costs about two forwards through the trainable blocks, the
frozen prefix runs once per image when its outputs can be cached (no augmentation) and
every epoch otherwise, and input size scales the cost by its square. Work becomes time
through a throughput: seconds per unit fitted on the study's finished runs when there
are any, else a forward-pass micro-benchmark of each architecture on this machine. The
GPU-hours figure uses a stated reference throughput, since this machine may have no GPU.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from robust_transfer.data import dataset_info
from robust_transfer.study.resolve import ResolvedStudy, resolve_study
from robust_transfer.study.spec import RunConfig, StudySpec, load_spec, run_set_id
from robust_transfer.study.store import DB_NAME, StudyStore

# forward images/s at the architecture's native size on one A100-class GPU with bf16
# autocast: assumptions (not measured here), used only for the GPU-hours figure
REFERENCE_GPU_FWD = {"resnet50": 2600.0, "wide_resnet50_2": 1100.0, "resnet18": 9000.0,
                     "small_resnet": 200000.0}
REFERENCE_GPU = "one A100-class GPU (assumed ResNet-50 forward 2,600 img/s at 224 px, bf16)"


@dataclass
class CostEstimate:
    """Estimated cost of the runs still to do.

    Attributes:
        seconds: on this machine, one run at a time.
        basis: how ``seconds`` was obtained.
        gpu_hours: on the reference GPU (:data:`REFERENCE_GPU`).
        work: forward-pass units still to do, per architecture.
    """

    seconds: float
    basis: str
    gpu_hours: float
    work: dict[str, float] = field(default_factory=dict)


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
        measure: micro-benchmark architectures when the store has no finished runs.

    Raises:
        RobustTransferError: a bad spec (missing inputs are reported, not raised).
    """
    spec = spec if isinstance(spec, StudySpec) else load_spec(spec)
    resolved = resolve_study(spec, data_root)
    runs = spec.runs()
    statuses, timings, other = _stored(out_dir, [r.run_id for r in runs])
    finished = sum(s == "finished" for s in statuses.values())
    failed = sum(s == "failed" for s in statuses.values())
    skip = {"finished"} | ({"failed"} if not retry_failed else set())
    todo = [r for r in runs if statuses.get(r.run_id) not in skip]
    estimate = estimate_cost(resolved, todo, timings, measure)
    return StudyPlan(spec, len(runs), finished, failed, len(todo), resolved.missing, estimate,
                     other)


def _stored(out_dir, run_ids: list[str]) -> tuple[dict[str, str], list, bool]:
    """Statuses of ``run_ids``, timings of finished runs, whether the store is another study."""
    if out_dir is None or not (Path(out_dir) / DB_NAME).is_file():
        return {}, [], False
    with StudyStore(out_dir, readonly=True) as store:
        specs = store.specs()
        other = bool(specs) and run_set_id(run_ids) not in {s["run_set"] for s in specs}
        return store.statuses(run_ids), store.mean_seconds(), other


def estimate_cost(resolved: ResolvedStudy, todo: list[RunConfig], timings: list,
                  measure: bool = True) -> CostEstimate:
    """Seconds on this machine and reference GPU-hours for ``todo``."""
    work: dict[str, float] = {}
    for run in todo:
        arch = resolved.sources[run.source].arch
        work[arch] = work.get(arch, 0.0) + run_work(resolved, run)
    gpu_seconds = sum(w / REFERENCE_GPU_FWD.get(a, 2600.0) for a, w in work.items())
    seconds, basis = _local_seconds(resolved, work, timings, measure)
    return CostEstimate(seconds, basis, gpu_seconds / 3600, work)


def run_work(resolved: ResolvedStudy, run: RunConfig) -> float:
    """Forward-pass units of one run (see the module docstring)."""
    source = resolved.sources[run.source]
    target = resolved.targets[run.target]
    n = run.n or target.train_size
    g = _trainable_fraction(run.unfrozen_blocks, source.n_blocks)
    scale = ((run.recipe.resolution or source.input_size) / max(source.input_size, 1)) ** 2
    cached = not _augmented(run) and g < 1
    evals = math.ceil(run.epochs / run.recipe.eval_every)
    if cached:
        units = (n + target.test_size) * (1 - g) + run.epochs * n * 3 * g + evals * target.test_size * g
    else:
        units = run.epochs * n * (1 + 2 * g) + evals * target.test_size
    return units * scale


def _trainable_fraction(unfrozen: str, n_blocks: int) -> float:
    if unfrozen == "all" or not n_blocks:
        return 1.0
    return min(1.0, int(unfrozen) / n_blocks)


def _augmented(run: RunConfig) -> bool:
    if run.recipe.augment == "auto":
        try:
            return not dataset_info(run.target).grayscale_like
        except Exception:  # a folder: dataset that is missing here
            return True
    return bool(run.recipe.augment)


def _local_seconds(resolved: ResolvedStudy, work: dict[str, float], timings: list,
                   measure: bool) -> tuple[float, str]:
    fitted = _fit_from_runs(resolved, timings)
    if fitted is not None:
        per_unit, count = fitted
        return sum(work.values()) * per_unit, f"fitted on {count} finished run(s) in the study directory"
    if not measure:
        return math.nan, "not measured"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rates = {arch: forward_throughput(arch, device) for arch in work}
    return (sum(w / rates[a] for a, w in work.items()),
            f"forward-pass benchmark on this machine ({device}), one run at a time")


def _fit_from_runs(resolved: ResolvedStudy, timings: list) -> tuple[float, int] | None:
    units = seconds = 0.0
    count = 0
    for config_json, secs in timings:
        run = RunConfig.from_dict(json.loads(config_json))
        if run.source in resolved.sources and run.target in resolved.targets and secs:
            units += run_work(resolved, run)
            seconds += secs
            count += 1
    return (seconds / units, count) if count and units else None


def forward_throughput(arch: str, device: str = "cpu", seconds: float = 1.0) -> float:
    """Images per second of a randomly initialised ``arch`` at its native input size."""
    from robust_transfer.models import create_model

    if arch == "unknown":
        return REFERENCE_GPU_FWD["resnet50"] / 50
    model = create_model(arch, 10).to(device).eval()
    batch = 8 if model.input_size >= 128 else 256
    x = torch.rand(batch, model.channels, model.input_size, model.input_size, device=device)
    with torch.no_grad():
        model(x)  # warm-up
        start, count = time.perf_counter(), 0
        while count == 0 or time.perf_counter() - start < seconds:
            model(x)
            count += batch
        if device == "cuda":
            torch.cuda.synchronize()
    return count / (time.perf_counter() - start)
