"""Argument types for the CLI: every value is checked while the command line is parsed.

Each function here is an argparse ``type=``: it turns the text into a value or raises
:class:`argparse.ArgumentTypeError`, which the parser prints as one ``error:`` line with
exit status 2, before any work starts and before any file is written. Numbers must be
finite and in range; devices must exist on this machine; output paths must be writable
and must not be existing files. Checking writability creates nothing: the probe file is
made in a folder that already exists and removed at once.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import tempfile
from fractions import Fraction
from pathlib import Path

MAX_SEED = 2**32 - 1  # numpy's and torch's seeds both accept [0, 2**32)
MAX_RESOLUTION = 4096  # pixels per side: far above any input the architectures are used at
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda)(:(\d+))?$")


def _fail(message: str) -> argparse.ArgumentTypeError:
    return argparse.ArgumentTypeError(message)


# --- numbers -------------------------------------------------------------------------
def finite_float(text: str) -> float:
    """A finite number (``nan``, ``inf`` refused)."""
    try:
        value = float(text)
    except ValueError:
        raise _fail(f"not a number: '{text}'") from None
    if not math.isfinite(value):
        raise _fail(f"must be a finite number, got {text}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = finite_float(text)
    if value <= 0:
        raise _fail(f"must be > 0, got {text}")
    return value


def byte_size(text: str) -> int:
    """A positive size: bytes or e.g. ``'8 GiB'``, ``'512MB'`` (the spec's byte sizes)."""
    from robust_transfer.engine.features import parse_bytes  # torch only when the flag is given
    from robust_transfer.errors import ConfigError

    try:
        return parse_bytes(text)
    except ConfigError as err:
        raise _fail(str(err)) from None


def nonneg_float(text: str) -> float:
    """A finite number >= 0."""
    value = finite_float(text)
    if value < 0:
        raise _fail(f"must be >= 0, got {text}")
    return value


def probability(text: str) -> float:
    """A number in [0, 1]."""
    value = finite_float(text)
    if not 0 <= value <= 1:
        raise _fail(f"must lie in [0, 1], got {text}")
    return value


def open_unit(text: str) -> float:
    """A number strictly between 0 and 1 (an interval level, a relative cutoff)."""
    value = finite_float(text)
    if not 0 < value < 1:
        raise _fail(f"must lie strictly between 0 and 1, got {text}")
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise _fail(f"not an integer: '{text}'") from None


def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = _integer(text)
    if value < 1:
        raise _fail(f"must be a positive integer, got {text}")
    return value


def nonneg_int(text: str) -> int:
    """An integer >= 0."""
    value = _integer(text)
    if value < 0:
        raise _fail(f"must be a non-negative integer, got {text}")
    return value


def seed(text: str) -> int:
    """A random seed in [0, 2**32)."""
    value = _integer(text)
    if not 0 <= value <= MAX_SEED:
        raise _fail(f"a seed must lie in 0..{MAX_SEED}, got {text}")
    return value


def resolution(text: str) -> int:
    """Pixels per side of a model input, 8..4096."""
    value = _integer(text)
    if not 8 <= value <= MAX_RESOLUTION:
        raise _fail(f"must lie in 8..{MAX_RESOLUTION} pixels, got {text}")
    return value


def n_images(text: str) -> int | None:
    """A positive number of images, or ``all`` (``None``)."""
    return None if text == "all" else positive_int(text)


def eps(text: str) -> float:
    """A radius in pixel units: ``0.5`` or a fraction such as ``8/255``; finite, >= 0."""
    try:
        value = float(Fraction(text)) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise _fail(f"not a number or fraction: '{text}'") from None
    if not math.isfinite(value) or value < 0:
        raise _fail(f"eps must be a finite number >= 0, got {text}")
    return value


def positive_eps(text: str) -> float:
    """A radius or step size > 0 (``8/255`` allowed)."""
    value = eps(text)
    if value == 0:
        raise _fail(f"must be > 0, got {text}")
    return value


def unfrozen(text: str) -> str:
    """A number of unfrozen blocks (``0``, ``3``) or ``all``."""
    if text != "all":
        nonneg_int(text)
    return text


# --- devices -------------------------------------------------------------------------
def device_name(text: str) -> str:
    """A device of a known kind (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``), not
    checked against this machine (a study may run on a cluster's GPUs)."""
    _device_match(text)
    return text


def _device_match(text: str) -> re.Match[str]:
    found = _DEVICE.match(text)
    if found is None or text.startswith("auto:"):
        raise _fail(f"unknown device '{text}'; valid: auto, cpu, cuda, cuda:N, mps")
    return found


def device(text: str) -> str:
    """A device this machine has: ``auto``, ``cpu``, or a CUDA / MPS device that is there
    (:func:`robust_transfer.engine.training.require_device`)."""
    from robust_transfer.engine.training import require_device
    from robust_transfer.errors import ConfigError

    name = device_name(text)
    try:
        require_device(name)
    except ConfigError as err:
        raise _fail(str(err)) from None
    return name


# --- paths ---------------------------------------------------------------------------
def out_dir(text: str) -> Path:
    """A folder to write into: absent or a folder, in a writable place (nothing is created)."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise _fail(f"{text} is an existing file, not a folder; choose another path")
    _check_writable(path, text)
    return path


def out_stem(text: str) -> str:
    """A checkpoint path stem (``OUT`` -> ``OUT.safetensors`` + ``OUT.json``) in a writable
    folder; whether those files may be replaced is checked by the command (``--overwrite``)."""
    from robust_transfer.models.checkpoints import checkpoint_paths

    if not text or text.endswith(("/", os.sep)):
        raise _fail(f"'{text}' is a folder; give a file stem such as runs/model")
    for part in checkpoint_paths(text):
        if part.is_dir():
            raise _fail(f"{part} is a folder; choose another checkpoint path")
    _check_writable(Path(text).parent, text)
    return text


def _check_writable(path: Path, text: str) -> None:
    """Find the nearest existing ancestor of ``path`` and prove it can take a new file."""
    probe = path.absolute()
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise _fail(f"cannot write {text}: {probe} is a file, not a folder")
    try:
        fd, name = tempfile.mkstemp(prefix=".rt-write-probe-", dir=probe)
    except OSError as err:
        raise _fail(f"cannot write {text}: {probe} is not writable "
                    f"({err.strerror or err})") from None
    os.close(fd)
    os.unlink(name)
