"""The driver lock: one process at a time runs (and so writes) a study directory."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from robust_transfer.errors import RobustTransferError

LOCK_NAME = "driver.lock"


class DriverLock:
    """An exclusive ``flock`` on ``<study>/driver.lock``, released when the process dies.

    Raises:
        RobustTransferError: another process is running this study.
    """

    def __init__(self, study_dir: str | Path) -> None:
        self.path = Path(study_dir) / LOCK_NAME
        self.fh = None

    def __enter__(self) -> DriverLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            pid = fh.read().strip() or "?"
            fh.close()
            raise RobustTransferError(f"{self.path.parent} is being run by another process "
                                      f"(pid {pid}); wait for it or stop it first") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self.fh = fh
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fh is not None:
            fcntl.flock(self.fh.fileno(), fcntl.LOCK_UN)
            self.fh.close()
            self.fh = None


def driver_alive(study_dir: str | Path) -> bool:
    """Whether some process holds the driver lock of ``study_dir`` now."""
    path = Path(study_dir) / LOCK_NAME
    if not path.exists():
        return False
    with open(path) as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        return False
