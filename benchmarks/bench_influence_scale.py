"""Influence on whole target datasets: CIFAR-10- and CIFAR-100-shaped heads (issue 19).

Synthetic class-clustered, post-ReLU-like features of the real shapes (2,048 features,
50,000 training and 10,000 test images; 10 or 100 classes) and a class-mean head. The
problem goes through ``compute_influence`` with the default configuration (``form`` and
``scores`` ``auto``) under an 8 GiB memory limit, then is ranked: top-10 helpful and
harmful images per test image, the class-match curves to rank 100 and self-influence.
Each part runs in its own process, so its peak RSS is its own. Targets on the 2-core CPU:
<= 8 GB peak RSS; CIFAR-100 ranked in <= 10 min, CIFAR-10 in <= 3 min. Also prints what
``auto`` picks at the paper's setting (3,200 train, 10,000 test, 10 classes), without
running it.

    python benchmarks/bench_influence_scale.py [--parts cifar10 cifar100] [--no-train-targets]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time

import torch

from robust_transfer.influence import InfluenceConfig, compute_influence
from robust_transfer.influence.core import plan_for
from robust_transfer.influence.outputs import curves_for
from robust_transfer.influence.solvers import format_bytes

LIMIT = 8 * 2**30
SHAPES = {"cifar10": (10, 50_000, 10_000, 2048), "cifar100": (100, 50_000, 10_000, 2048)}
TARGET_S = {"cifar10": 180, "cifar100": 600}


def synthetic32(n: int, m: int, d: int, c: int, seed: int = 0, spread: float = 3.0):
    """float32 ``bench_influence.synthetic``: clustered relu features, a class-mean head."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(c, d, generator=g)
    y, yt = torch.arange(n) % c, torch.arange(m) % c

    def draw(labels: torch.Tensor) -> torch.Tensor:
        out = torch.empty(len(labels), d)
        for s in range(0, len(labels), 4096):
            part = centres[labels[s:s + 4096]]
            out[s:s + 4096] = torch.relu(part.add_(torch.randn(part.shape, generator=g), alpha=1.5))
        return out

    x, xt = draw(y), draw(yt)
    means = torch.zeros(c, d).index_add_(0, y, x) / torch.bincount(y, minlength=c)[:, None]
    w = means - means.mean(0)
    w *= spread / (x[:4096] @ w.T).std()
    b = -(x[:4096] @ w.T).mean(0)
    return x, y, xt, yt, w, b


def peak_rss() -> str:
    return format_bytes(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def cpu_seconds() -> float:
    """User + system CPU seconds of this process: under load, wall time overstates the work."""
    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


def run_part(name: str, train_targets: bool) -> None:
    c, n, m, d = SHAPES[name]
    load0 = os.getloadavg()
    x, y, xt, yt, w, b = synthetic32(n, m, d, c)
    cfg = InfluenceConfig(memory_limit=LIMIT, train_targets=train_targets)
    plan = plan_for(cfg, n, m, c, d)
    print(f"[{name}] {c} classes, {n:,} train, {m:,} test, {d:,} features, train targets "
          f"{train_targets}; {torch.get_num_threads()} threads, load average {load0[0]:.1f}")
    print(f"  auto picks form {plan.form}, scores {plan.scores} (estimates {format_bytes(plan.memory)}, "
          f"{plan.seconds:,.0f} s): {plan.reason}")
    t0, c0 = time.perf_counter(), cpu_seconds()
    result = compute_influence(x, y, xt, yt, w, b, cfg)
    t_solve = time.perf_counter() - t0
    ranking = result.rank(10, 100)
    curves = curves_for(result, 100, ranking)
    t_all, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    steps = ", ".join(f"{k} {v:.1f}" for k, v in result.timings.items())
    top1 = ", ".join(f"{cv.targets} {cv.share[0]:.1%}" for cv in curves)
    print(f"  scores and rankings {t_solve:.1f} s ({steps}); with curves {t_all:.1f} s "
          f"(target <= {TARGET_S[name]} s: {'met' if t_all <= TARGET_S[name] else 'MISSED'}); "
          f"peak RSS {peak_rss()} (target <= 8 GB); load average now {os.getloadavg()[0]:.1f}")
    print(f"  CPU time of this process {cpu:.0f} s, i.e. {cpu / torch.get_num_threads():.0f} s on "
          f"{torch.get_num_threads()} otherwise idle cores")
    print(f"  top-1 class match {top1}; top-10 helpful of test 0: {ranking.helpful[0].tolist()}")


def paper_choice() -> None:
    cfg = InfluenceConfig()
    plan = plan_for(cfg, 3200, 10_000, 10, 2048)
    print(f"[paper] 3,200 train, 10,000 test, 10 classes, 2,048 features: auto picks form "
          f"{plan.form}, scores {plan.scores}, exact {plan.exact} (estimates "
          f"{format_bytes(plan.memory)}, {plan.seconds:,.0f} s): {plan.reason}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["cifar10", "cifar100"], choices=list(SHAPES))
    parser.add_argument("--no-train-targets", action="store_true")
    parser.add_argument("--one", choices=list(SHAPES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        run_part(args.one, not args.no_train_targets)
        return
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    paper_choice()
    for part in args.parts:  # one process each: peak RSS per part
        cmd = [sys.executable, __file__, "--one", part] + (["--no-train-targets"] if args.no_train_targets else [])
        subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
