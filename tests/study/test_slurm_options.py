"""SLURM settings: parsing from the spec and the command line, time limits (no SLURM needed)."""

from __future__ import annotations

import pytest

from robust_transfer.errors import ConfigError
from robust_transfer.study import load_spec
from robust_transfer.study.slurm_jobs import SlurmOptions, slurm_message, time_minutes

BASE = {"sources": ["fmnist-natural"], "targets": ["digits"]}


@pytest.mark.parametrize(("text", "minutes"), [
    ("30", 30), ("90:30", 91), ("4:00:00", 240), ("1-12", 2160), ("1-00:30", 1470),
    ("2-01:02:03", 2943), ("0:30", 1)])
def test_time_limits_in_slurm_forms(text, minutes):
    assert time_minutes(text) == minutes


def test_spec_slurm_section_and_executor():
    spec = load_spec({**BASE, "executor": "slurm", "slurm": {
        "partition": "gpu", "time": "4:00:00", "gpus_per_run": 1, "mem": "16G",
        "sbatch_args": "--qos=high --exclusive", "runs_per_job": 4}})
    assert spec.executor == "slurm"
    assert spec.slurm == SlurmOptions(partition="gpu", time="4:00:00", gpus_per_run=1, mem="16G",
                                      sbatch_args=("--qos=high", "--exclusive"), runs_per_job=4)
    assert spec.slurm.sbatch_flags(2, 1) == [
        "--time=4:00:00", "--cpus-per-task=2", "--partition=gpu", "--gpus-per-node=1",
        "--mem=16G", "--qos=high", "--exclusive"]
    # execution settings: the same runs as without them
    assert [r.run_id for r in spec.runs()] == [r.run_id for r in load_spec(BASE).runs()]


@pytest.mark.parametrize(("slurm", "message"), [
    ({"partiton": "x"}, "unknown key 'partiton' in slurm; valid: partition"),
    ({"runs_per_job": 0}, "runs_per_job must be >= 1"),
    ({"retries": "many"}, "slurm retries: bad value 'many'"),
    ({"sbatch_args": ["qos=high"]}, "'qos=high' is not an sbatch option"),
])
def test_bad_slurm_settings_name_the_line(slurm, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_spec({**BASE, "slurm": slurm})
    assert "line" in str(err.value)


def test_slurm_messages_shortened_to_one_line():
    said = slurm_message("sbatch: error: invalid partition specified: nope\n"
                         "sbatch: error: Batch job submission failed: Invalid partition name\n")
    assert said == "invalid partition specified: nope; Batch job submission failed: Invalid partition name"
