"""YAML with line numbers: every value of a spec can be blamed on the line it came from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from robust_transfer.errors import ConfigError

Lines = dict[tuple, int]


def load_yaml(text: str, where: str) -> tuple[Any, Lines]:
    """Parse ``text``; return the data and the 1-based line of every mapping key / item.

    Args:
        text: YAML source.
        where: names the source in messages (a file name).

    Returns:
        ``(data, lines)`` where ``lines[path]`` is the line of the value at ``path`` (a
        tuple of keys and list indices; ``()`` is the document).

    Raises:
        ConfigError: malformed YAML (with its line) or a key given twice.
    """
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{where}{line}: malformed YAML: {problem}") from None
    lines: Lines = {}
    if node is not None:
        _walk(node, (), lines, where)
    return data, lines


def _walk(node: yaml.Node, path: tuple, lines: Lines, where: str) -> None:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: set = set()
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                raise ConfigError(f"{where} line {key_node.start_mark.line + 1}: key '{key}' "
                                  "is given twice")
            seen.add(key)
            _walk(value_node, path + (key,), lines, where)
            lines[path + (key,)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*path, i), lines, where)


def read_text(path: str | Path) -> str:
    """A spec file's text, or a :class:`ConfigError` naming the file."""
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"study spec {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read study spec {p}: {err}") from None
