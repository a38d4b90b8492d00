"""Fixtures of the study tests: a one-node SLURM cluster for the SLURM executor tests."""

from __future__ import annotations

import os

import pytest
from slurm_cluster import LocalSlurm, cannot_run


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """munged, slurmctld and slurmd started for the session as one 2-CPU node, then stopped.

    Commands find the cluster through ``SLURM_CONF``, set for the session (jobs inherit
    it through sbatch). Skips, with the reason, where the daemons cannot run.
    """
    reason = cannot_run()
    if reason:
        pytest.skip(reason)
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except RuntimeError as err:
        cluster.stop()
        pytest.skip(f"the SLURM daemons do not start on this machine: {err}")
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        yield cluster
    finally:
        cluster.stop()
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
