"""The driver lock: one process at a time runs (and so writes) a study directory.

The lock is :class:`filelock.FileLock` on ``<study>/driver.lock`` (an OS lock, released by
the kernel when the process dies, SIGKILL included); the holder's pid sits beside it in
``driver.pid`` so a refused second driver can say who holds the study. Both are removed
when the driver ends normally; a killed driver leaves them, and the next one takes over.
"""

from __future__ import annotations

import os
from pathlib import Path

from filelock import FileLock, Timeout

from robust_transfer.errors import RobustTransferError

LOCK_NAME = "driver.lock"
PID_NAME = "driver.pid"


class DriverLock:
    """An exclusive lock on ``<study>/driver.lock``, released when the process dies.

    Raises:
        RobustTransferError: another process is running this study.
    """

    def __init__(self, study_dir: str | Path) -> None:
        self.dir = Path(study_dir)
        self.path = self.dir / LOCK_NAME
        self.lock: FileLock | None = None

    def __enter__(self) -> DriverLock:
        self.dir.mkdir(parents=True, exist_ok=True)
        for _ in range(_ATTEMPTS):
            lock = FileLock(str(self.path), timeout=0)
            try:
                lock.acquire()
            except Timeout:
                raise RobustTransferError(f"{self.dir} is being run by another process "
                                          f"(pid {_holder(self.dir)}); wait for it or stop it "
                                          "first") from None
            if _still_linked(lock, self.path):
                break
            lock.release()  # the previous holder removed this file as we locked it: again
        else:
            raise RobustTransferError(f"cannot take the driver lock {self.path}: it keeps "
                                      "being removed; is another driver starting?")
        self.lock = lock
        tmp = self.dir / f".{PID_NAME}.tmp"
        tmp.write_text(str(os.getpid()), encoding="utf-8")
        os.replace(tmp, self.dir / PID_NAME)
        return self

    def __exit__(self, *exc: object) -> None:
        """Remove ``driver.pid`` and ``driver.lock`` (while still holding it), then release."""
        if self.lock is not None:
            for name in (PID_NAME, LOCK_NAME):
                (self.dir / name).unlink(missing_ok=True)
            self.lock.release()
            self.lock = None


_ATTEMPTS = 5


def _still_linked(lock: FileLock, path: Path) -> bool:
    """Whether the file ``lock`` holds is still the one at ``path``.

    A holder removes the lock file before releasing it, so a driver that opened the old
    file just before its removal may lock a file no one else sees; it must try again.
    """
    fd = getattr(getattr(lock, "_context", None), "lock_file_fd", None)
    try:
        here = os.stat(path)
    except FileNotFoundError:
        return False
    if fd is None:  # filelock's internals moved: fall back to the path still existing
        return True
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (here.st_dev, here.st_ino)


def _holder(study_dir: Path) -> str:
    try:
        return (study_dir / PID_NAME).read_text(encoding="utf-8").strip() or "?"
    except OSError:
        return "?"


def driver_alive(study_dir: str | Path) -> bool:
    """Whether some process holds the driver lock of ``study_dir`` now.

    A probe that takes and drops the lock at once; on a folder this process cannot write
    (a read-only disk) no driver can be writing either, so the answer is ``False``.
    """
    path = Path(study_dir) / LOCK_NAME
    if not path.exists() or not os.access(path, os.W_OK):
        return False
    probe = FileLock(str(path), timeout=0)
    try:
        probe.acquire()
    except Timeout:
        return True
    except OSError:  # e.g. a read-only file system
        return False
    probe.release()
    return False
