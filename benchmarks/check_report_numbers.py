"""Check that the report's numbers do not change between two versions of the code.

Writes the report of the same inputs with the code of a git revision (default ``main``)
and with this checkout's code, each in its own process, then compares ``tables/*.csv``
(every value) and ``report.md`` (every line but the generation time). Inputs: a study
directory (``--study DIR``, e.g. from ``robust-transfer study run embedded --out DIR``),
a per-run CSV of other code (``--csv FILE``), and, by default, the test suite's
synthetic study written as a CSV (on unless ``--no-synthetic``). Figures are drawn (their
captions are in report.md) unless ``--no-figures``; their pixels are not compared.

    .venv/bin/python benchmarks/check_report_numbers.py --rev main --study DIR --csv FILE

Exit status 0 when every input gives the same tables and report, 1 otherwise (the
differing files and their first differing lines are printed).
"""

from __future__ import annotations

import argparse
import difflib
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "analysis"))
from synthetic_study import SyntheticStudy, make_study  # noqa: E402  (a test fixture)

SYNTHETIC = SyntheticStudy(targets=("digits", "cifar10"), ns=(100, 200, 400, 800),
                           unfrozen=("0", "3"), budgets=(4, 8), seeds=(0, 1, 2))
ANALYZE = ("import sys; from robust_transfer.cli import main; "
           "sys.exit(main(['analyze', *sys.argv[1:]]))")


def export_revision(rev: str, into: Path) -> Path:
    """The ``src`` tree of ``rev`` (``git archive``), unpacked under ``into``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def run_analyze(src: Path, args: list[str], out: Path) -> None:
    """``robust-transfer analyze ARGS --out OUT`` with the code under ``src``."""
    env = {"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, "-c", ANALYZE, *args, "--out", str(out)], env=env,
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"analyze {' '.join(args)} with {src} failed:\n{proc.stderr}")


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines()
            if not line.startswith("- generated:")]


def compare(old: Path, new: Path) -> list[str]:
    """Differences between two report folders: missing files, then differing lines."""
    problems = []
    names = {p.relative_to(old) for p in old.glob("tables/*.csv")} | {Path("report.md")}
    names |= {p.relative_to(new) for p in new.glob("tables/*.csv")}
    for name in sorted(names):
        a, b = old / name, new / name
        if not (a.is_file() and b.is_file()):
            problems.append(f"{name}: only in {'old' if a.is_file() else 'new'}")
            continue
        diff = list(difflib.unified_diff(_lines(a), _lines(b), "old", "new", n=0, lineterm=""))
        if diff:
            problems.append(f"{name}:\n  " + "\n  ".join(diff[2:8]))
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", default="main", help="git revision to compare with")
    parser.add_argument("--study", type=Path, action="append", default=[],
                        help="study directory (repeatable)")
    parser.add_argument("--csv", type=Path, action="append", default=[],
                        help="per-run CSV (repeatable)")
    parser.add_argument("--no-synthetic", action="store_true",
                        help="skip the synthetic study")
    parser.add_argument("--no-figures", action="store_true", help="skip drawing figures")
    args = parser.parse_args()
    figures = ["--no-figures"] if args.no_figures else []
    failed = False
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        old_src = export_revision(args.rev, tmp)
        inputs = [[str(s), *figures] for s in args.study]
        inputs += [["--csv", str(c), *figures] for c in args.csv]
        if not args.no_synthetic:
            runs, epochs = make_study(SYNTHETIC)
            runs.to_csv(tmp / "synthetic.csv", index=False)
            epochs.to_csv(tmp / "synthetic-epochs.csv", index=False)
            inputs.append(["--csv", str(tmp / "synthetic.csv"),
                           "--epochs-csv", str(tmp / "synthetic-epochs.csv"), *figures])
        for i, given in enumerate(inputs):
            for extra in ([], ["--ci", "bootstrap", "--level", "0.9"]):
                old, new = tmp / f"old-{i}-{len(extra)}", tmp / f"new-{i}-{len(extra)}"
                run_analyze(old_src, [*given, *extra], old)
                run_analyze(ROOT / "src", [*given, *extra], new)
                problems = compare(old, new)
                label = " ".join([*given, *extra])
                print(f"{'same' if not problems else 'DIFFERENT'}: {label}")
                for problem in problems:
                    print(f"  {problem}")
                failed |= bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
