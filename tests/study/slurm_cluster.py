"""A one-node SLURM cluster (munged, slurmctld, slurmd) started in a temporary folder.

For the SLURM executor tests. Debian's ``slurm-wlm`` and ``munge`` packages provide the
daemons (``scripts/system_deps.sh --test`` installs them). Everything the daemons write
(config, state, spool, logs, pid files, the munge socket) lives under one folder, and
the ports are free ones picked at start, so the cluster neither needs nor touches
``/etc/slurm`` or a system munged, and several can run on one machine.

Settings chosen to work in a container without systemd or cgroup support: processes
are tracked through /proc (``proctrack/linuxproc``), no task binding (``task/none``),
no accounting (``accounting_storage/none``, so ``sacct`` does not answer and job states
come from ``squeue``) and no cgroup.conf.

The node's ``/work``-style paths are the driver's; :attr:`hidden` is a folder that the
node sees as an empty tmpfs (slurmd runs in its own mount namespace): a study there is
on a filesystem the node does not share, for the shared-folder check.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")


def cannot_run() -> str | None:
    """Why this machine cannot start the cluster, or ``None`` when it can."""
    if os.geteuid() != 0:
        return "the SLURM tests start slurmd, which needs root"
    missing = [d for d in DAEMONS if not shutil.which(d, path="/usr/sbin:/usr/bin:" + os.environ.get("PATH", ""))]
    if missing or not shutil.which("sbatch"):
        return (f"SLURM is not installed ({', '.join(missing) or 'sbatch'} missing): "
                "bash scripts/system_deps.sh --test installs slurm-wlm and munge")
    if not shutil.which("unshare"):
        return "unshare (util-linux) is missing"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _conf(root: Path, node: str, ctld_port: int, slurmd_port: int) -> str:
    return f"""ClusterName=rt{ctld_port}
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
SlurmdTimeout=30
InactiveLimit=0
KillWait=2
MinJobAge=600
MessageTimeout=10
MaxArraySize=1001
NodeName={node} NodeAddr=127.0.0.1 CPUs=2 RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


class LocalSlurm:
    """The cluster; :meth:`start` it, :meth:`stop` it (both idempotent about leftovers).

    Attributes:
        root: its folder.
        conf: the slurm.conf path; commands find it through ``SLURM_CONF`` (:attr:`env`).
        hidden: a folder the node does not see (an empty tmpfs in slurmd's namespace).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.conf = self.root / "slurm.conf"
        self.hidden = self.root / "node-local"
        self.node = socket.gethostname().split(".")[0]
        self.procs: list[subprocess.Popen] = []

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def start(self, timeout: float = 30.0) -> None:
        for sub in ("munge", "state", "spool", "run", "log", "node-local"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(_conf(self.root, self.node, _free_port(), _free_port()))
        self._start_munge()
        env = {**os.environ, **self.env}
        log = open(self.root / "log" / "daemons.out", "ab")  # noqa: SIM115 (kept by the processes)
        # -D: stay in the foreground, so we own the processes and stop them by pid
        self.procs.append(subprocess.Popen(["slurmctld", "-D", "-i", "-f", str(self.conf)],
                                           env=env, stdout=log, stderr=log))
        # slurmd in its own mount namespace, with `hidden` covered by an empty tmpfs
        script = f"mount -t tmpfs none {self.hidden} && exec slurmd -D -f {self.conf}"
        self.procs.append(subprocess.Popen(["unshare", "--mount", "--propagation", "private",
                                            "sh", "-c", script], env=env, stdout=log, stderr=log))
        try:
            self._wait_idle(timeout)
        except RuntimeError:
            self.stop()  # nothing left running when the start fails
            raise

    def _start_munge(self) -> None:
        munge = self.root / "munge"
        key = munge / "munge.key"
        key.write_bytes(os.urandom(128))
        key.chmod(0o600)
        self.procs.append(subprocess.Popen(
            ["munged", "-F", "--force", f"--key-file={key}", f"--socket={munge}/munge.socket",
             f"--pid-file={munge}/munged.pid", f"--log-file={munge}/munged.log",
             f"--seed-file={munge}/munged.seed"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 10
        while not (munge / "munge.socket").exists():
            if time.monotonic() > deadline or self.procs[-1].poll() is not None:
                raise RuntimeError(f"munged did not start: {self._tail(munge / 'munged.log')}")
            time.sleep(0.05)

    def _wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{p.args[0]} exited ({p.returncode}): "
                                       f"{self._tail(self.root / 'log' / 'daemons.out')} "
                                       f"{self._tail(self.root / 'log' / 'slurmctld.log')} "
                                       f"{self._tail(self.root / 'log' / 'slurmd.log')}")
            out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                                 env={**os.environ, **self.env}, check=False)
            state = out.stdout.strip()
            if state == "idle":
                return
            time.sleep(0.2)
        raise RuntimeError(f"the SLURM node is not idle after {timeout:.0f}s (state {state!r}): "
                           f"{self._tail(self.root / 'log' / 'slurmd.log')}")

    @staticmethod
    def _tail(path: Path, chars: int = 600) -> str:
        try:
            return path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Cancel every job, then stop the daemons (slurmd first) and wait for them."""
        subprocess.run(["scancel", "--full", "-u", "root"], env={**os.environ, **self.env},
                       capture_output=True, check=False, timeout=30)
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        self.procs.clear()
        self._kill_leftovers()

    def _kill_leftovers(self) -> None:
        """SIGKILL job processes and step daemons that outlived slurmd (a step whose srun
        hangs after a requeue does): every process whose environment names our config."""
        mark = f"SLURM_CONF={self.conf}".encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                found = mark in (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if found:
                with contextlib.suppress(OSError):
                    os.kill(int(entry.name), signal.SIGKILL)
