"""A study on a two-node Ray cluster (simulated on this machine) survives losing a node."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from reliability_support import SECONDS_ENV, STARTS_ENV, timed_run
from study_support import make_sources, write_spec

from robust_transfer.study import load_results, run_study, study_status

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
BODY = """\
    train_images: [30, 60]
    unfrozen_blocks: [0]
    epochs: 2
    seeds: [0, 1, 2, 3, 4]
    """  # 20 runs


@pytest.mark.slow
def test_a_removed_node_loses_and_duplicates_no_run(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'robust-transfer[ray]'")
    from ray.cluster_utils import Cluster

    spec = write_spec(tmp_path, make_sources(tmp_path), body=BODY)
    # the nodes' worker processes inherit this: they import the stand-in run by name
    monkeypatch.setenv("PYTHONPATH", f"{REPO / 'src'}:{HERE}")
    monkeypatch.setenv(SECONDS_ENV, "2.0")
    starts = tmp_path / "starts"
    starts.mkdir()
    monkeypatch.setenv(STARTS_ENV, str(starts))
    # runs go to two worker nodes (the head only coordinates): one stays, one is removed
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    cluster.add_node(num_cpus=1)
    doomed = cluster.add_node(num_cpus=2)
    removed = threading.Event()
    try:
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
        cluster.wait_for_nodes()
        out = tmp_path / "ray"

        def remove_node_mid_study() -> None:
            # a run notes its node as it starts, then sleeps 2 s: remove the node right
            # after the first run starts there, so that run is in flight when it goes
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                if any(p.name.endswith(f"@{doomed.node_id}") for p in starts.iterdir()):
                    cluster.remove_node(doomed, allow_graceful=False)
                    removed.set()
                    return
                time.sleep(0.05)

        killer = threading.Thread(target=remove_node_mid_study, daemon=True)
        killer.start()
        summary = run_study(spec, out, executor="ray", run_fn=timed_run)
        killer.join(timeout=5)
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert removed.is_set(), "the node was not removed while the study ran"
    attempts = [p.name.split("@") for p in starts.iterdir()]
    cut_short = {run for run, node in attempts if node == doomed.node_id}
    assert cut_short, "no run was in flight on the removed node"
    runs_frame, _ = load_results(out)
    # each run cut short by the removal ran again, on the node that stayed
    again = {run for run, node in attempts if node != doomed.node_id}
    assert cut_short <= again
    assert (summary.ran, summary.finished, summary.failed) == (20, 20, 0)
    assert summary.store_finished == study_status(out).total == 20
    runs, epochs = runs_frame, load_results(out)[1]
    assert len(runs) == 20 and runs["run_id"].is_unique
    assert len(epochs) == 40 and epochs.groupby("run_id").size().eq(2).all()
    monkeypatch.setenv(SECONDS_ENV, "0")
    run_study(spec, tmp_path / "local", run_fn=timed_run)
    local, _ = load_results(tmp_path / "local")
    cols = ["run_id", "n", "test_acc", "test_loss", "train_loss"]
    assert runs[cols].reset_index(drop=True).equals(local[cols].reset_index(drop=True))
