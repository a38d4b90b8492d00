"""The study specification, how the numbers were computed, and the environment."""

from __future__ import annotations

import platform
import sys
from datetime import datetime, timezone
from importlib import metadata

from robust_transfer.analysis.document import Bullets, Code, Pairs, Section
from robust_transfer.analysis.frames import unfrozen_text
from robust_transfer.analysis.result import AnalysisResult
from robust_transfer.analysis.sections.common import base_name, method_name

PACKAGES = ("robust-transfer", "numpy", "pandas", "scipy", "matplotlib", "torch", "torchvision")


def build(result: AnalysisResult, draw: bool) -> list[Section]:
    """The spec (when given), the method notes and the environment."""
    spec = [Section("Study specification", (Code(result.spec_text),))] if result.spec_text \
        else []
    return [*spec, Section("Method", (Bullets(tuple(method_notes(result))),)),
            Section("Environment", (Pairs(tuple(environment().items())),))]


def method_notes(result: AnalysisResult) -> list[str]:
    """How the numbers were computed, in a few sentences."""
    base = base_name(result)
    notes = [
        f"Each cell's interval is a {method_name(result)} over its seeds; cells with one "
        "seed have none. Table cells give the number of seeds in brackets.",
        f"Differences are paired: a source's run and the {base} run with the same target, "
        "n, unfrozen blocks, epoch budget and seed (the same training images) give one "
        "difference, and the interval is over those differences.",
        f"Image factors: for each seed, the {base} accuracy at n is the goal; the other "
        "source's accuracy curve, linear in log n between measured points, first reaches it "
        "at n'; the factor is n / n'. The point estimate is the geometric mean over seeds and "
        "the interval is taken over the seeds' log factors. Nothing is extrapolated: "
        "'≥' marks a source already above the goal at its smallest n (a lower bound), "
        "'not reached' one that never reaches it.",
        "Epoch factors do the same along each run's per-epoch test accuracy, on log epochs; "
        "a setting's factor is the geometric mean over the epochs where every seed reached "
        "the goal.",
        "The verdict's 'few epochs' point is the evaluated epoch nearest a fifth of the "
        "budget.",
    ]
    if result.block_baseline is not None:
        notes.append(f"Unfrozen blocks compared: accuracy with {unfrozen_text(result.block_baseline)}"
                     " minus each other setting, paired by source, target, n, epochs and seed.")
    notes.append("Every table is also written in long form (numbers, not text) as CSV, and as "
                 "Parquet when pyarrow is installed, in tables/ beside this report.")
    return notes


def environment() -> dict[str, str]:
    """Python, platform and package versions (read from metadata; nothing is imported)."""
    env = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in PACKAGES:
        try:
            env[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            env[name] = "not installed"
    env["generated"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return env
