"""Names a package exports but loads only on first use (PEP 562).

``import robust_transfer`` and ``robust-transfer --help`` must not import torch, so the
packages that re-export torch-backed names resolve them lazily through one helper.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str],
                 namespace: dict[str, Any]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A module ``__getattr__`` and ``__dir__`` that import each export on first access.

    Args:
        package: the package's ``__name__`` (for messages and relative module names).
        exports: name -> the module defining it, absolute or relative (``".sources"``).
        namespace: the package's ``globals()``; a loaded name is stored there, so later
            lookups skip ``__getattr__``.

    Returns:
        ``(__getattr__, __dir__)`` to assign at module level.

    Example:
        >>> __getattr__, __dir__ = lazy_exports(__name__, {"load_source": ".sources"}, globals())
    """

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module '{package}' has no attribute '{name}'")
        value = getattr(importlib.import_module(exports[name], package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted([*namespace, *exports])

    return __getattr__, __dir__
