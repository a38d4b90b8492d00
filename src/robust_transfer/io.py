"""Writing files whole or not at all, with the user's permissions.

Every file the project writes (checkpoints, metadata, caches, reports, study exports)
goes through :func:`atomic_write`: the bytes go to a temporary file in the same folder,
which is renamed over the final name only once complete, so a killed process never
leaves a half-written file under the final name. ``tempfile.mkstemp`` creates files
0600; the result is given the mode a plain ``open()`` would have given it (0666 less the
umask), so checkpoints others must read are not private by accident.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", fsync: bool = False,
                 **open_kwargs: Any) -> Iterator[IO]:
    """Open a temporary file beside ``path``; rename it to ``path`` when the block ends.

    Args:
        path: the final file; its folder must exist.
        mode: ``"wb"`` or ``"w"`` (text; ``open_kwargs`` such as ``encoding`` pass through).
        fsync: flush the data to disk before the rename (for results that cannot be
            recomputed; caches skip it).

    Yields:
        The open temporary file.

    On an exception inside the block the temporary file is removed and ``path`` is left
    as it was.

    Example:
        >>> with atomic_write(out / "meta.json", "w", encoding="utf-8") as f:
        ...     json.dump(meta, f)
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as handle:
            yield handle
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, fsync: bool = False) -> Path:
    """Write ``data`` to ``path`` whole or not at all (see :func:`atomic_write`)."""
    with atomic_write(path, "wb", fsync=fsync) as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, fsync: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` whole or not at all (see :func:`atomic_write`)."""
    return atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=,@-]{0,99}")
_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9._+=,@-]+")


def safe_filename(name: str) -> str:
    """``name`` (a label, target or checkpoint name) as one file name that stays in its folder.

    A name that is already a plain file name (letters, digits, ``._+=,@-``, not starting
    with a dot, at most 100 characters) is kept as it is, so ordinary names keep their
    files. Any other (``cifar/10``, ``../../x``, ``folder:/data/set``, ``.hidden``, an
    empty or very long name) has each run of other characters replaced by ``_`` and gets
    the first 8 hex digits of its sha256 appended, so two names never share a file.

    Example:
        >>> safe_filename("verdict_digits"), safe_filename("verdict_../../x")
        ('verdict_digits', 'verdict_.._.._x-67841370')
    """
    if _SAFE_NAME.fullmatch(name):
        return name
    import hashlib

    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    stem = _UNSAFE_RUN.sub("_", name).lstrip("._")[:80]
    return f"{stem}-{digest}" if stem else digest


@contextmanager
def staged_dir(path: str | os.PathLike) -> Iterator[Path]:
    """A hidden folder beside ``path`` to write into; its files join ``path`` at the end.

    A result folder appears whole or not at all: an exception, Ctrl-C included, removes
    the staging folder (and ``path`` itself when this call created it), so an interrupted
    command leaves nothing a rerun would refuse. When the block ends, each staged file
    replaces its namesake under ``path`` (files already there and not written now are
    kept, as with writing into the folder directly).

    Args:
        path: the result folder; created, with its parents, when the block succeeds.

    Yields:
        The staging folder.
    """
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        yield stage
        path.mkdir(exist_ok=True)
        _merge_into(stage, path)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _merge_into(src: Path, dst: Path) -> None:
    for item in src.iterdir():
        target = dst / item.name
        if item.is_dir() and not item.is_symlink():
            target.mkdir(exist_ok=True)
            _merge_into(item, target)
        else:
            os.replace(item, target)
