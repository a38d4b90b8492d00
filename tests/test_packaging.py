"""The built wheel works on its own, and files come out with the user's umask."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kwargs)
    assert done.returncode == 0, f"{cmd}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The package built as a wheel and installed (no dependencies) into a folder of its own.

    The wheel is built from a copy of the sources, so the checkout gets no build/ or
    egg-info; it is installed with ``pip --target``; the project's dependencies (torch...)
    come from this interpreter's site-packages.
    """
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "src", source / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
          str(source), "-w", str(base / "dist")])
    wheel = next((base / "dist").glob("robust_transfer-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "robust_transfer/studies/embedded.yaml" in names
    assert "robust_transfer/studies/paper.yaml" in names
    assert "robust_transfer/zoo/fmnist-natural.safetensors" in names
    target = base / "site"
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "-q",
          "--target", str(target), str(wheel)])
    return target


def _installed_env(target: Path) -> dict[str, str]:
    # the folder first on the path, ahead of any editable install of the checkout
    return {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_demo_dry_run_from_the_installed_wheel(installed, tmp_path):
    env = _installed_env(installed)
    where = _run([sys.executable, "-c", "import robust_transfer; print(robust_transfer.__file__)"],
                 env=env, cwd=tmp_path).stdout.strip()
    assert Path(where).is_relative_to(installed), where
    script = installed / "bin" / "robust-transfer"  # the console script, as pip installed it
    presets = _run([sys.executable, str(script), "study", "presets"], env=env, cwd=tmp_path)
    assert {"embedded", "paper"} <= {line.split()[0] for line in presets.stdout.splitlines()}
    done = _run([sys.executable, str(script), "demo", "--dry-run", "--out", str(tmp_path / "demo")],
                env=env, cwd=tmp_path)
    spec = installed / "robust_transfer" / "studies" / "embedded.yaml"
    assert done.stdout.startswith(f"demo: {spec}: 96 runs, 0 already finished"), done.stdout
    assert "missing" not in done.stdout
    assert not (tmp_path / "demo").exists()  # a dry run writes nothing


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_checkpoints_and_metrics_follow_the_umask(tmp_path, umask_022, digits_net):
    from robust_transfer.engine.training import MetricsCSV
    from robust_transfer.events import EpochDone, EpochMetrics
    from robust_transfer.models.checkpoints import save_model

    weights = save_model(digits_net, tmp_path / "model", {"training": "natural"})
    assert _mode(weights) == 0o644
    assert _mode(weights.with_suffix(".json")) == 0o644
    MetricsCSV(tmp_path / "model.metrics.csv")(EpochDone(EpochMetrics(1, 0.1, 1.0, 0.5)))
    assert _mode(tmp_path / "model.metrics.csv") == 0o644
