"""The SLURM executor against a real one-node SLURM (munged, slurmctld, slurmd; conftest).

What is real here: the daemons, sbatch job arrays through submitit, squeue states,
scancel, SLURM's USR2 checkpoint signal and submitit's requeue (scontrol requeue).
What is triggered early, to fit the suite's time: the time-out. SLURM's smallest time
limit is one minute, and it signals a job ``signal_delay_s`` (here 90 s) before its
limit; the test's job has a 5-minute limit and the test sends that same signal after
the run's first epoch with ``scancel --signal=USR2`` (what submitit's own
``SlurmJob._interrupt(timeout=True)`` does). submitit counts a job with a limit under
10 minutes as timed out whenever the signal comes (run time >= limit - 10 min), so this
is the time-out path, not the preemption one. SLURM then holds the requeued job for 120 s
(its requeue delay); the test moves its start time to now with ``scontrol update``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("submitit", reason="submitit is not installed: pip install 'robust-transfer[slurm]'")

from submitit.core.utils import pickle_load  # noqa: E402

from robust_transfer.cli import main  # noqa: E402
from robust_transfer.study import load_results, run_study  # noqa: E402
from robust_transfer.study.slurm_jobs import JobTable  # noqa: E402
from robust_transfer.study.store import StudyStore  # noqa: E402

SPEC = """\
name: slurm-tiny
sources:
  - {model: fmnist-natural, label: natural}
  - {model: fmnist-l2-eps1, label: l2-eps1}
targets: [digits]
train_images: [25, 50]
unfrozen_blocks: [0]
epochs: 1
seeds: [0, 1, 2]
recipe: {lr: 0.1, batch_size: 32}
resources: {num_cpus: 1}
slurm: {time: "5", poll_seconds: 0.5, runs_per_job: 6}
"""
LONG = """\
name: slurm-long
sources: [{model: fmnist-natural, label: natural}]
targets: [digits]
train_images: [400]
unfrozen_blocks: [1]
epochs: 5
seeds: [0]
recipe: {lr: 0.05, batch_size: 32}
resources: {num_cpus: 1}
slurm: {time: "5", poll_seconds: 0.5}
"""
METRICS = ["run_id", "epoch", "train_loss", "train_acc", "test_loss", "test_acc"]


def _spec(folder: Path, text: str, name: str = "spec.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    return folder / name


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> Path:
    return _spec(tmp_path_factory.mktemp("slurm-spec"), SPEC)


@pytest.fixture(scope="module")
def reference(spec, tmp_path_factory):
    out = tmp_path_factory.mktemp("slurm-ref") / "local"
    assert run_study(spec, out, "local").finished == 12
    return load_results(out)


def _same(study_dir: Path, reference, run_ids=None) -> None:
    runs, epochs = load_results(study_dir)
    ref_runs, ref_epochs = reference
    if run_ids is not None:
        ref_runs = ref_runs[ref_runs.run_id.isin(run_ids)]
        ref_epochs = ref_epochs[ref_epochs.run_id.isin(run_ids)]
    cols = ["run_id", "n", "test_acc", "test_loss", "train_loss"]
    a, b = (f.sort_values("run_id")[cols].reset_index(drop=True) for f in (runs, ref_runs))
    assert a.equals(b)
    a, b = (f.sort_values(["run_id", "epoch"])[METRICS].reset_index(drop=True)
            for f in (epochs, ref_epochs))
    assert a.equals(b)


def _executions(study_dir: Path) -> dict[str, int]:
    """How many SLURM jobs ran each run to its end (from submitit's result pickles)."""
    counts: dict[str, int] = {}
    for path in (study_dir / "slurm" / "logs").glob("*/*_result.pkl"):
        kind, value = pickle_load(path)
        assert kind == "success", value
        for run_id in value:
            counts[run_id] = counts.get(run_id, 0) + 1
    return counts


def _squeue(job_id: str) -> tuple[str, str]:
    out = subprocess.run(["squeue", "-h", "--array", "-t", "all", "-j", job_id, "-o", "%T|%r"],
                         capture_output=True, text=True, check=False).stdout.strip()
    return tuple(out.split("|")) if "|" in out else ("", "")  # type: ignore[return-value]


def _first_job(study_dir: Path, timeout: float = 60.0) -> tuple[str, str]:
    """(run id, job id) of the first run whose SLURM job is running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        path = study_dir / "slurm" / "jobs.json"
        if path.exists():
            for run_id, entry in JobTable(path).entries.items():
                if _squeue(entry.job_id)[0] == "RUNNING":
                    return run_id, entry.job_id
        time.sleep(0.2)
    raise AssertionError("no SLURM job started")


def test_twelve_runs_with_a_scancel_and_a_killed_driver_equal_local(slurm_cluster, spec, reference,
                                                                    tmp_path):
    """One study, three faults' worth of checks (one study keeps the suite short).

    The driver (a process of its own) submits 2 array jobs of 6 runs; one is cancelled
    with scancel while running, and the driver resubmits its runs; the driver is
    SIGKILLed once runs are recorded and jobs are still in flight; a new driver collects
    what was written, waits for the job in flight and records everything once.
    """
    out = tmp_path / "study"
    driver = subprocess.Popen([sys.executable, "-m", "robust_transfer", "study", "run", str(spec),
                               "--out", str(out), "--executor", "slurm", "--quiet"],
                              env=os.environ.copy())
    try:
        _, cancelled = _first_job(out)
        subprocess.run(["scancel", cancelled], check=True)
        deadline = time.monotonic() + 120
        while not list((out / "slurm" / "collected").glob("*.json")):  # some runs recorded
            assert driver.poll() is None and time.monotonic() < deadline, "driver ended early"
            time.sleep(0.1)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    in_flight = JobTable(out / "slurm" / "jobs.json").entries
    assert in_flight and cancelled not in {e.job_id for e in in_flight.values()}  # resubmitted
    summary = run_study(spec, out, "slurm")
    assert (summary.store_finished, summary.store_failed) == (12, 0)
    assert summary.skipped >= 1 and summary.skipped + summary.ran == 12
    assert _squeue(cancelled)[0] == "CANCELLED"
    _same(out, reference)
    # every run ran to its end exactly once: the cancelled job's runs in their new job,
    # the runs in flight at the kill in the jobs the new driver found (none submitted again)
    assert sorted(_executions(out).values()) == [1] * 12
    assert len(list((out / "slurm" / "logs").glob("*/*_submitted.pkl"))) == 3
    assert not list((out / "slurm" / "results").iterdir())  # all collected
    assert not (out / "slurm" / "jobs.json").exists() or not JobTable(out / "slurm" / "jobs.json").entries


def test_timed_out_job_resumes_from_its_epoch_checkpoint(slurm_cluster, tmp_path):
    spec = _spec(tmp_path, LONG)
    local = run_study(spec, tmp_path / "local", "local")
    assert local.finished == 1
    out = tmp_path / "study"
    seen: dict = {}

    def time_out() -> None:
        run_id, job_id = _first_job(out)
        checkpoint = out / "slurm" / "checkpoints" / f"{run_id}.pt"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:  # the first epoch's checkpoint
                shutil.copy(checkpoint, tmp_path / "at-signal.pt")
                break
            except FileNotFoundError:
                time.sleep(0.02)
        # SLURM's time-out warning, sent now instead of 90 s before the 5-minute limit
        subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
        while time.monotonic() < deadline:
            state, reason = _squeue(job_id)
            if state == "PENDING" and reason == "BeginTime":  # requeued, held for 120 s
                subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)
                seen["requeued"] = job_id
                return
            time.sleep(0.1)

    watcher = threading.Thread(target=time_out, daemon=True)
    watcher.start()
    summary = run_study(spec, out, "slurm")
    watcher.join(timeout=5)
    assert (summary.finished, summary.failed) == (1, 0)
    assert "requeued" in seen, "the job was not requeued"
    job_log = "".join(p.read_text() for p in (out / "slurm" / "logs").glob("*/*_0_log.*"))
    assert "this job is timed-out" in job_log and "Requeued job" in job_log
    _, epochs = load_results(out)
    _, ref_epochs = load_results(tmp_path / "local")
    assert epochs[METRICS].equals(ref_epochs[METRICS])  # as if never interrupted
    import torch

    saved = torch.load(tmp_path / "at-signal.pt", weights_only=True)["history"]
    assert 1 <= len(saved) < 5
    # the resumed run kept the checkpointed epochs (their timings too), not a fresh start
    assert epochs.seconds.tolist()[:len(saved)] == [m["seconds"] for m in saved]


# --- bad input: one line, exit status 2, nothing written --------------------------------
@pytest.mark.parametrize(("option", "message"), [
    ("--slurm-partition=nope", "invalid partition specified: nope"),
    ("--slurm-gpus-per-run=1", "gres"),
    ("--slurm-time=1:2:3:4", "Invalid --time specification"),
])
def test_settings_slurm_refuses_get_one_line(slurm_cluster, spec, tmp_path, capsys, option, message):
    assert main(["study", "run", str(spec), "--out", str(tmp_path / "s"), "--executor", "slurm",
                 "--quiet", option]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: SLURM refuses these job settings") and message in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "s").exists()


def test_gpus_on_a_partition_without_them_say_so(slurm_cluster, spec, tmp_path, capsys):
    assert main(["study", "run", str(spec), "--out", str(tmp_path / "s"), "--executor", "slurm",
                 "--quiet", "--slurm-partition=debug", "--slurm-gpus-per-run=2"]) == 2
    assert "does partition debug have any?" in capsys.readouterr().err


def test_unanswering_controller_gets_one_line(slurm_cluster, spec, tmp_path, capsys, monkeypatch):
    dead = tmp_path / "dead.conf"
    dead.write_text(slurm_cluster.conf.read_text().replace("SlurmctldPort=", "SlurmctldPort=1#"))
    monkeypatch.setenv("SLURM_CONF", str(dead))
    assert main(["study", "run", str(spec), "--out", str(tmp_path / "s"), "--executor", "slurm",
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the SLURM controller does not answer") and len(err.splitlines()) == 1
    assert not (tmp_path / "s").exists()


def test_study_folder_the_node_does_not_share_gets_one_line(slurm_cluster, spec, capsys):
    out = slurm_cluster.hidden / "study"  # the node sees an empty tmpfs there
    try:
        assert main(["study", "run", str(spec), "--out", str(out), "--executor", "slurm",
                     "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert "is not on a filesystem the SLURM nodes share" in err and len(err.splitlines()) == 1
        runs, _ = load_results(out)
        assert runs.empty  # nothing recorded
    finally:
        shutil.rmtree(out, ignore_errors=True)


def test_no_sbatch_on_path_gets_one_line(spec, tmp_path, capsys, monkeypatch):
    pytest.importorskip("submitit")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert main(["study", "run", str(spec), "--out", str(tmp_path / "s"), "--executor", "slurm",
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: the slurm executor needs SLURM's 'sbatch' on PATH; run on a SLURM "
                   "login node (or use --executor local or ray)")
    assert not (tmp_path / "s").exists()


def test_status_lists_jobs_in_flight(slurm_cluster, spec, tmp_path, capsys):
    """A driver killed after submitting: status shows each job's id, state and log."""
    out = tmp_path / "study"
    (out / "slurm").mkdir(parents=True)
    job = subprocess.run(["sbatch", "--parsable", "--hold", "--wrap=true", "-o", "/dev/null"],
                         capture_output=True, text=True, check=True).stdout.strip()
    try:
        entry = {"job_id": job, "attempt": 1, "stdout": "o", "stderr": str(out / "log.err"),
                 "result_pickle": "r", "runs": ["abc"]}
        (out / "slurm" / "jobs.json").write_text(json.dumps({"abc": entry}))
        StudyStore(out, create=True).close()
        assert main(["study", "status", str(out)]) == 0
        text = capsys.readouterr().out
        assert f"pending    job {job} (attempt 1) run abc: log {out / 'log.err'}" in text
        assert main(["study", "status", str(out), "--json"]) == 0
        jobs = json.loads(capsys.readouterr().out)["slurm_jobs"]
        assert [(j["job_id"], j["state"], j["run_id"]) for j in jobs] == [(job, "PENDING", "abc")]
    finally:
        subprocess.run(["scancel", job], check=False)
