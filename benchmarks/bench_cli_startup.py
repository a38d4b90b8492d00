"""Start-up time of light CLI commands, as whole processes (median of 5), and whether torch loads.

Times ``robust-transfer --help``, ``--version``, ``zoo list``, ``study status DIR`` (DIR a
real 96-run store of the embedded preset, planned and filled by instant stand-in runs) and
every subcommand's ``--help`` (``--help-only`` times just those) as
``python -m robust_transfer ...`` subprocesses, from process start to exit. With
``--baseline SRC`` the same commands also run against another checkout's ``src`` (e.g.
main before this change), interleaved, so both see the same machine load; ratios are
printed. Target (issues 10 and 22): each under 1 s.

    python benchmarks/bench_cli_startup.py [--baseline /path/to/other/src] [--repeats 5] [--help-only]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
sys.path.insert(0, str(SRC))


def instant_run(task, ctx):
    """A finished run with a one-epoch history, in no time (fills the store)."""
    from robust_transfer.study.store import RunOutcome

    now = time.time()
    history = ({"epoch": 1, "lr": 0.1, "train_loss": 1.0, "train_acc": 0.5, "test_loss": 1.0,
                "test_acc": 0.5},)
    return RunOutcome(task.run_id, "finished", now, now, n=10, history=history)


def make_study(folder: Path) -> Path:
    from robust_transfer.study.presets import resolve_spec_path
    from robust_transfer.study.runner import run_study

    out = folder / "study"
    run_study(resolve_spec_path("embedded"), out, run_fn=instant_run)
    return out


def time_command(src: Path, argv: list[str]) -> tuple[float, bool]:
    """Seconds for one whole process, and whether it imported torch."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    code = ("import runpy, sys; sys.argv = ['robust-transfer', *sys.argv[1:]]\n"
            "try:\n    runpy.run_module('robust_transfer', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "sys.stderr.write('TORCH=%d' % ('torch' in sys.modules))")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *argv], env=env, capture_output=True,
                          text=True)
    seconds = time.perf_counter() - start
    return seconds, done.stderr.endswith("TORCH=1")


def subcommands() -> list[list[str]]:
    """Every command and ``study`` subcommand, from the command table."""
    from robust_transfer.cli.common import COMMANDS

    out = [[name] for name in COMMANDS]
    return out + [["study", s] for s in ("run", "status", "runs", "show", "export", "repair",
                                         "presets")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, default=None, help="another checkout's src folder")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--help-only", action="store_true", help="time only the --help commands")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        commands = [["--help"]] + [[*c, "--help"] for c in subcommands()]
        if not args.help_only:
            study = make_study(Path(tmp))
            commands += [["--version"], ["zoo", "list"], ["study", "status", str(study)]]
        trees = {"this": SRC, **({"baseline": args.baseline} if args.baseline else {})}
        print(f"{'command':<24} " + "  ".join(f"{t + ' median s':>18}  torch" for t in trees)
              + ("  ratio" if args.baseline else ""))
        for argv in commands:
            times: dict[str, list[float]] = {t: [] for t in trees}
            torch_loaded: dict[str, bool] = {}
            for _ in range(args.repeats):
                for name, src in trees.items():  # interleaved: same load for both
                    seconds, loaded = time_command(src, argv)
                    times[name].append(seconds)
                    torch_loaded[name] = loaded
            medians = {t: statistics.median(v) for t, v in times.items()}
            row = f"{' '.join(argv[:3]):<24} " + "  ".join(
                f"{medians[t]:>18.3f}  {'yes' if torch_loaded[t] else 'no':>5}" for t in trees)
            if args.baseline:
                row += f"  {medians['baseline'] / medians['this']:.1f}x faster"
            print(row)
    print(f"(whole processes, median of {args.repeats}; the machine may be shared, so compare "
          "the interleaved columns rather than absolute times)")


if __name__ == "__main__":
    main()
