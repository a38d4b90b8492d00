"""Executors: in process, a process pool and Ray give the same results; Ray fails fast."""

from __future__ import annotations

import socket
import time

import pytest
from study_support import make_sources, write_spec

from robust_transfer.errors import ConfigError
from robust_transfer.study import load_results, run_study
from robust_transfer.study.executors import check_ray_address

BODY = """\
    train_images: [40]
    unfrozen_blocks: [0, 1]
    epochs: 2
    seeds: [0]
    recipe: {lr: 0.05, batch_size: 16}
    """


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    folder = tmp_path_factory.mktemp("exec")
    return write_spec(folder, make_sources(folder), body=BODY)


@pytest.fixture(scope="module")
def reference(spec, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "study"
    assert run_study(spec, out).finished == 4
    return load_results(out)


def _same(a, b) -> None:
    runs_a, epochs_a = (f.sort_values(list(f.columns[:2])).reset_index(drop=True) for f in a)
    runs_b, epochs_b = (f.sort_values(list(f.columns[:2])).reset_index(drop=True) for f in b)
    cols = ["run_id", "n", "test_acc", "test_loss", "train_loss"]
    assert runs_a[cols].equals(runs_b[cols])
    metrics = ["run_id", "epoch", "train_loss", "train_acc", "test_loss", "test_acc"]
    assert epochs_a[metrics].equals(epochs_b[metrics])


def test_process_pool_matches_in_process(spec, reference, tmp_path):
    summary = run_study(spec, tmp_path / "pool", workers=2)
    assert summary.finished == 4
    _same(load_results(tmp_path / "pool"), reference)


def test_ray_matches_local(spec, reference, tmp_path):
    pytest.importorskip("ray", reason="ray is not installed: pip install 'robust-transfer[ray]'")
    summary = run_study(spec, tmp_path / "ray", executor="ray", workers=2)
    assert (summary.finished, summary.failed) == (4, 0)
    _same(load_results(tmp_path / "ray"), reference)


def test_unanswered_ray_address_fails_fast_in_one_line():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=rf"Ray address 127.0.0.1:{port} does not answer"):
        check_ray_address(f"127.0.0.1:{port}")
    assert time.perf_counter() - start < 6
    with pytest.raises(ConfigError, match="is not host:port"):
        check_ray_address("nonsense")


def test_unanswered_ray_address_touches_nothing(spec, tmp_path):
    pytest.importorskip("ray", reason="ray is not installed")
    with pytest.raises(ConfigError, match="does not answer"):
        run_study(spec, tmp_path / "r", executor="ray", ray_address="127.0.0.1:1")
    assert not (tmp_path / "r").exists()
