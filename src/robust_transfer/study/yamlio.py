"""YAML with line numbers: every value of a spec can be blamed on the line it came from.

Specs are loaded with bounds, checked on the parser's events before anything is built: at
most :data:`MAX_BYTES` of text, :data:`MAX_DEPTH` levels of nesting (PyYAML's composer
recurses per level) and :data:`MAX_NODES` values once aliases are expanded (an alias
"bomb" of a few hundred bytes otherwise expands to billions of values), and no alias
inside the node it names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from robust_transfer.errors import ConfigError

Lines = dict[tuple, int]
MAX_BYTES = 1 << 20  # a study spec is a few kB; the paper's grid is 2 kB
MAX_DEPTH = 64
MAX_NODES = 100_000
_OPEN = (yaml.SequenceStartEvent, yaml.MappingStartEvent)
_CLOSE = (yaml.SequenceEndEvent, yaml.MappingEndEvent)


def load_yaml(text: str, where: str) -> tuple[Any, Lines]:
    """Parse ``text``; return the data and the 1-based line of every mapping key / item.

    Args:
        text: YAML source.
        where: names the source in messages (a file name).

    Returns:
        ``(data, lines)`` where ``lines[path]`` is the line of the value at ``path`` (a
        tuple of keys and list indices; ``()`` is the document).

    Raises:
        ConfigError: malformed YAML (with its line), a key given twice, or text beyond
            the bounds (size, nesting depth, values after expanding aliases).
    """
    try:
        check_bounds(text, where)
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


def check_bounds(text: str, where: str) -> None:
    """Refuse YAML too large, too deep or expanding to too many values, without building it.

    Raises:
        ConfigError: one line naming ``where`` (and the line) and the bound.
        yaml.YAMLError: malformed YAML (the caller reports it with its line).
    """
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_BYTES:
        raise ConfigError(f"{where} is {size:,} bytes; a spec may have at most {MAX_BYTES:,}")
    expanded = 0
    open_: list[tuple[int, str | None]] = []  # (values before it, anchor) of open collections
    sizes: dict[str, int] = {}  # anchor -> values it expands to
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent):
            if any(anchor == event.anchor for _, anchor in open_):
                raise ConfigError(f"{where} line {line}: alias *{event.anchor} is inside the "
                                  f"value it names (a recursive structure); write it out")
            expanded += sizes.get(event.anchor, 1)  # an undefined one: the composer says so
        elif isinstance(event, (yaml.ScalarEvent, *_OPEN)):
            expanded += 1
            if isinstance(event, _OPEN):
                open_.append((expanded - 1, event.anchor))
                if len(open_) > MAX_DEPTH:
                    raise ConfigError(f"{where} line {line}: nested more than {MAX_DEPTH} "
                                      "levels deep; a spec needs a few")
            elif event.anchor:
                sizes[event.anchor] = 1
        elif isinstance(event, _CLOSE):
            start, anchor = open_.pop()
            if anchor:
                sizes[anchor] = expanded - start
        if expanded > MAX_NODES:
            raise ConfigError(f"{where} line {line}: more than {MAX_NODES:,} values once its "
                              "aliases (*name) are expanded; write the values out or use fewer aliases")


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
