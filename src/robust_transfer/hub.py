"""Downloads of published checkpoints: resumable, checked, never a half file.

Two paths, chosen by the URL:

* Hugging Face hub URLs (``https://huggingface.co/<repo>/resolve/<rev>/<file>``, where
  MadryLab's robust ImageNet models live): ``huggingface_hub.hf_hub_download`` into the
  target's folder (``local_dir``). The library resumes interrupted downloads (its
  ``.incomplete`` file under ``<folder>/.cache/huggingface/``), checks the size, shows
  progress bars and moves the file into place only when complete.
* any other URL (Dropbox, Google Drive): a resumable HTTP download here. torch.hub's
  ``download_url_to_file`` was the first choice, but it cannot resume and, measured with
  a server that closes the connection early, it kept a truncated body under the final
  name without an error. So: the body goes to ``.<name>.part`` beside the target, an
  interrupted download continues from there with a ``Range`` request (or starts over if
  the server ignores it), the size is checked against ``Content-Length`` /
  ``Content-Range``, and only a complete, checksum-verified file is renamed to the target.
  A file lock keeps two processes from writing the same ``.part``.

Where files go is the caller's choice; the zoo uses its folder (``$ROBUST_TRANSFER_ZOO``,
default ``~/.cache/robust_transfer/zoo``) as the cache: a file that is there is never
fetched again.
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from robust_transfer.errors import CheckpointError

HF_URL = re.compile(r"^https://huggingface\.co/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")
_CHUNK = 1 << 20
_ATTEMPTS = 3  # connections per call, as long as each one brings new bytes


ByteProgress = Callable[[int, int | None], None]
"""``progress(bytes_done, bytes_total_or_None)``, called as a download goes."""


def download(url: str, target: str | os.PathLike, sha256: str | None = None,
             timeout: float = 60.0, progress: bool | ByteProgress = False) -> Path:
    """Download ``url`` to ``target``; the target appears only complete and verified.

    Args:
        url: what to fetch (a Hugging Face hub ``resolve`` URL or any HTTP(S) URL).
        target: the final path.
        sha256: expected hex checksum, or ``None`` when none is known.
        timeout: seconds to wait for the server at each step.
        progress: ``True``: a progress bar on stderr; a callable: byte counts to it
            (the CLI's :meth:`robust_transfer.progress.Progress.bytes`; Hugging Face hub
            downloads report nothing to it); ``False``: silent.

    Returns:
        ``target`` as a :class:`Path`.

    Raises:
        CheckpointError: the server cannot be reached, the download was interrupted
            (run again to resume), the server sent a web page instead of the file, or
            the checksum differs.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    hf = HF_URL.match(url)
    if hf:
        _hf_download(hf["repo"], hf["file"], hf["rev"], target, timeout, progress)
    else:
        from filelock import FileLock  # a torch dependency

        with FileLock(str(target.parent / f".{target.name}.lock")):
            _http_download(url, target, sha256, timeout, progress)
    if hf and sha256 is not None:
        _verify(target, sha256, url, remove=True)
    return target


def part_path(target: Path) -> Path:
    """Where an unfinished download of ``target`` is kept."""
    return target.parent / f".{target.name}.part"


# --- any URL ---------------------------------------------------------------------------
def _http_download(url: str, target: Path, sha256: str | None, timeout: float,
                   progress: bool | ByteProgress) -> None:
    part = part_path(target)
    total = None
    for _ in range(_ATTEMPTS):
        before = _size(part)
        try:
            total = _fetch_into(url, part, timeout, progress)
        except OSError as err:  # URLError, HTTPError, timeouts, reset connections
            if _size(part) > before:
                continue  # it got further: resume at once
            raise CheckpointError(f"cannot download {url}: {_reason(err)}; when online, run "
                                  f"again (it resumes), or put {target.name} into "
                                  f"{target.parent} by hand") from None
        if total is None or _size(part) >= total or _size(part) <= before:
            break  # complete, of unknown size, or the server sent nothing new
    size = _size(part)
    if total is not None and size != total:
        raise CheckpointError(f"download of {url} was interrupted at {size:,} of {total:,} "
                              f"bytes; run again to resume ({part.name} is kept)")
    if sha256 is not None:
        _verify(part, sha256, url, remove=True)
    os.replace(part, target)


def _fetch_into(url: str, part: Path, timeout: float,
                progress: bool | ByteProgress) -> int | None:
    """One request appending to ``part`` from its current size; the file's total size."""
    done = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "robust-transfer", **({"Range": f"bytes={done}-"} if done else {})}
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                          timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code != 416 or not done:  # 416: the range starts at or past the end
            raise
        part.unlink()  # what we hold cannot be continued: start over
        return _fetch_into(url, part, timeout, progress)
    with response:
        if response.headers.get_content_type() == "text/html":
            raise CheckpointError(f"{url} answered with a web page, not the file (a login, "
                                  "quota or confirmation page); download it in a browser and "
                                  "put it into the zoo folder")
        resumed = response.status == 206
        total = _total_size(response, done if resumed else 0)
        start = done if resumed else 0  # a server that ignores Range sends it all again
        with open(part, "ab" if resumed else "wb") as out, _bar(progress, total, start, url) as bar:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                bar.update(len(chunk))
    return total


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _total_size(response, offset: int) -> int | None:
    crange = response.headers.get("Content-Range")  # "bytes 100-299/300"
    if crange and "/" in crange and not crange.endswith("/*"):
        return int(crange.rsplit("/", 1)[1])
    length = response.headers.get("Content-Length")
    return offset + int(length) if length is not None else None


class _ByteCounts:
    """Byte counts to a :data:`ByteProgress` callback, shaped like a tqdm bar."""

    def __init__(self, report: ByteProgress, total: int | None, done: int) -> None:
        self.report, self.total, self.done = report, total, done

    def __enter__(self) -> _ByteCounts:
        self.report(self.done, self.total)
        return self

    def __exit__(self, *exc) -> None:
        return None

    def update(self, n: int) -> None:
        self.done += n
        self.report(self.done, self.total)


def _bar(progress: bool | ByteProgress, total: int | None, initial: int, url: str):
    if callable(progress):
        return _ByteCounts(progress, total, initial)
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
                desc=url.rsplit("/", 1)[-1].split("?")[0][:40], disable=not progress)


# --- the Hugging Face hub ----------------------------------------------------------------
def _hf_download(repo: str, filename: str, revision: str, target: Path, timeout: float,
                 progress: bool | ByteProgress, endpoint: str | None = None) -> None:
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.utils import disable_progress_bars, enable_progress_bars
    except ImportError:  # not installed: the same resumable path as any other URL
        url = f"https://huggingface.co/{repo}/resolve/{revision}/{filename}"
        return _http_download(url, target, None, timeout, progress)
    (enable_progress_bars if progress is True else disable_progress_bars)()
    try:
        with quiet_hub(target.parent, endpoint=endpoint):
            path = hf_hub_download(repo, filename, revision=revision, local_dir=target.parent,
                                   etag_timeout=timeout, endpoint=endpoint)
    except Exception as err:  # the hub client raises its own types (HTTP, offline, 404)
        raise CheckpointError(f"cannot download {filename} from the Hugging Face hub "
                              f"({repo}): {_reason(err)}; when online, run again (it "
                              f"resumes), or put {target.name} into {target.parent} by hand") from None
    finally:
        enable_progress_bars()
    if Path(path).resolve() != target.resolve():
        os.replace(path, target)


# --- checks ----------------------------------------------------------------------------
def _verify(path: Path, sha256: str, url: str, remove: bool) -> None:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    actual = digest.hexdigest()
    if actual != sha256.lower():
        if remove:
            path.unlink(missing_ok=True)
        raise CheckpointError(f"{url} downloaded with sha256 {actual[:12]}..., expected "
                              f"{sha256[:12]}...: the download is corrupt or the file changed")


def _reason(err: BaseException) -> str:
    """One line: the innermost reason (``Connection refused``) rather than a traceback."""
    inner_err: BaseException | None = err
    while inner_err is not None:  # down to the root cause (a `raise ... from None` ends it)
        hidden = inner_err.__suppress_context__ and inner_err.__cause__ is None
        err, inner_err = inner_err, None if hidden else (inner_err.__cause__ or inner_err.__context__)
    inner = getattr(err, "reason", None)
    text = str(inner if inner is not None else err)
    first = " ".join(text.split())[:200]
    return f"{type(err).__name__}: {first}" if first else type(err).__name__



# --- quiet, tidy failures offline ------------------------------------------------------------
HUB_URL = "https://huggingface.co"


def hub_unreachable(endpoint: str | None = None, timeout: float = 3.0) -> str | None:
    """Why the Hugging Face hub (or ``endpoint``, or ``$HF_ENDPOINT``) does not answer a
    TCP connection within ``timeout`` seconds; ``None`` when it does."""
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(endpoint or os.environ.get("HF_ENDPOINT") or HUB_URL)
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((url.hostname or "", port), timeout=timeout).close()
    except OSError as err:
        return f"{url.hostname}:{port}: {err.strerror or err}"
    return None


@contextmanager
def quiet_hub(*folders: Path, endpoint: str | None = None) -> Iterator[None]:
    """Calls into the hub client that fail in one exception, not pages of retries.

    Without a connection, the client is put in offline mode (files already cached are
    still found; anything else fails at once instead of five retries with back-off per
    file), its retry warnings are silenced, and on failure the empty folders and
    ``.lock`` files it created under ``folders`` are removed.

    Args:
        folders: where the client writes (its cache, a download's folder).
        endpoint: the hub's address, when not the default one.
    """
    import logging

    from huggingface_hub import constants

    before = {f: _listing(f) for f in folders}
    logger = logging.getLogger("huggingface_hub")
    level, offline = logger.level, constants.HF_HUB_OFFLINE
    logger.setLevel(logging.ERROR)
    why = None if offline else hub_unreachable(endpoint)
    forced = why is not None
    constants.HF_HUB_OFFLINE = offline or forced
    unreachable = False
    try:
        yield
    except BaseException as err:
        for folder, seen in before.items():
            _remove_new_litter(folder, seen)
        if not (forced and isinstance(err, Exception)):
            raise
        unreachable = True  # not the user's HF_HUB_OFFLINE: say why, below (no context)
    finally:
        logger.setLevel(level)
        constants.HF_HUB_OFFLINE = offline
    if unreachable:
        raise ConnectionError(f"the Hugging Face hub cannot be reached from this machine "
                              f"({why}) and the file is not in its cache") from None


_MARKERS = ("CACHEDIR.TAG", ".gitignore")  # what huggingface_hub writes into a new cache


def _listing(folder: Path) -> set[Path]:
    return set(folder.rglob("*")) | {folder} if folder.exists() else set()


def _remove_new_litter(folder: Path, seen: set[Path]) -> None:
    """Lock files, the client's cache markers and then empty folders that appeared under
    ``folder`` (deepest first)."""
    if not folder.exists():
        return
    new = sorted(_listing(folder) - seen, key=lambda p: len(p.parts), reverse=True)
    for path in new:
        if path.is_file() and (path.suffix in (".lock", ".incomplete") or path.name in _MARKERS):
            path.unlink(missing_ok=True)
    for path in new:
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
