"""Name -> component registries. The CLI's choices come from these."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar, overload

from robust_transfer.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of components (architectures, datasets, attacks, executors).

    Example:
        >>> ARCHS = Registry("architecture")
        >>> @ARCHS.register("tiny")
        ... def tiny(): ...
        >>> ARCHS.get("tiny")
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    @overload
    def register(self, name: str) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, item: T) -> T: ...

    def register(self, name: str, item: T | None = None) -> Callable[[T], T] | T:
        """Register ``item`` under ``name``; without ``item`` acts as a decorator."""
        if item is not None:
            self._add(name, item)
            return item

        def decorator(obj: T) -> T:
            self._add(name, obj)
            return obj

        return decorator

    def _add(self, name: str, item: T) -> None:
        if name in self._items:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        self._items[name] = item

    def get(self, name: str) -> T:
        """The component called ``name``; an unknown name lists the valid ones."""
        try:
            return self._items[name]
        except KeyError:
            raise unknown_name(self.kind, name, self.names()) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x' or 'y'?)`` for the closest of ``choices``, or ``""``."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.6)
    if not close:
        return ""
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)"


def unknown_name(kind: str, name: str, valid: Iterable[str]) -> UnknownNameError:
    """The error for an unknown name: suggestions first, then every valid name."""
    valid = list(valid)
    return UnknownNameError(f"unknown {kind} '{name}'{did_you_mean(name, valid)}; "
                            f"valid: {', '.join(valid)}")
