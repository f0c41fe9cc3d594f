"""Safe YAML loading that remembers where every key sits (used by every Trace spec file).

The loader is PyYAML's ``SafeLoader`` narrowed further: explicit tags, anchors and aliases
(alias bombs), merge keys, non-scalar or duplicate keys, deep nesting, multiple documents and
files over ``MAX_YAML_BYTES`` are all refused with a ``ConfigError`` naming file and line.
Every mapping key's line is recorded by path so validation errors can point back at the file.
"""

from __future__ import annotations

import codecs
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.events import AliasEvent, CollectionStartEvent, NodeEvent, ScalarEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from trace_core.errors import ConfigError

MAX_YAML_BYTES = 256 * 1024
MAX_DEPTH = 32
_MERGE_TAG = "tag:yaml.org,2002:merge"

YamlPath = tuple[str | int, ...]


@dataclass(frozen=True)
class LoadedYaml:
    """A parsed document plus the 1-based line of each key (by path; ``()`` is the root)."""

    data: Any
    source: str
    lines: Mapping[YamlPath, int] = field(default_factory=dict)

    def line_of(self, path: YamlPath) -> int:
        """The line of ``path``, or of its nearest ancestor that exists in the file."""
        for n in range(len(path), -1, -1):
            line = self.lines.get(path[:n])
            if line is not None:
                return line
        return 1


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses tags, anchors, aliases and deep nesting while composing."""

    def __init__(self, stream: str | bytes, source: str) -> None:
        super().__init__(stream)
        self._source = source
        self._depth = 0

    def _refuse(self, message: str, event: yaml.Event) -> ConfigError:
        return ConfigError(message, file=self._source, line=event.start_mark.line + 1)

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        event = self.peek_event()
        if isinstance(event, AliasEvent):
            raise self._refuse("YAML aliases (*name) are not allowed", event)
        if isinstance(event, NodeEvent) and event.anchor is not None:
            raise self._refuse("YAML anchors (&name) are not allowed", event)
        if isinstance(event, ScalarEvent | CollectionStartEvent) and event.tag is not None:
            raise self._refuse(f"YAML tags ({event.tag}) are not allowed", event)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise self._refuse(f"nesting deeper than {MAX_DEPTH} levels", event)
        try:
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        finally:
            self._depth -= 1


def load_yaml(
    raw: str | bytes, *, source: str = "<string>", max_bytes: int = MAX_YAML_BYTES
) -> LoadedYaml:
    """Parse one YAML document strictly. Raises ``ConfigError`` (file and line) on any refusal."""
    size = len(raw.encode() if isinstance(raw, str) else raw)
    if size > max_bytes:
        raise ConfigError(f"file is {size} bytes, over the {max_bytes}-byte limit", file=source)
    _check_utf8(raw, source)
    loader = _StrictLoader(raw, source)
    try:
        node = loader.get_single_node()
        if node is None:
            raise ConfigError("the file is empty", file=source, line=1)
        lines: dict[YamlPath, int] = {(): node.start_mark.line + 1}
        data = _build(loader, node, (), lines, source)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(
            f"invalid YAML: {exc.problem or exc.context}", file=source, line=line
        ) from exc
    except yaml.YAMLError as exc:  # ReaderError (bad encoding or control characters)
        raise ConfigError(f"invalid YAML: {exc}", file=source) from exc
    finally:
        loader.dispose()
    return LoadedYaml(data=data, source=source, lines=lines)


def _check_utf8(raw: str | bytes, source: str) -> None:
    """Raise ``ConfigError`` naming the file, the encoding and the line of the first byte that
    is not UTF-8 (PyYAML's own ``ReaderError`` comes from the loader's constructor, untranslated).
    A UTF-16 file with its byte-order mark is left to PyYAML, which reads it."""
    if isinstance(raw, str) or raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"not UTF-8 text: byte 0x{raw[exc.start]:02x} cannot be decoded as UTF-8 "
            "(save the file as UTF-8)",
            file=source,
            line=line,
        ) from exc


def _build(
    loader: _StrictLoader, node: Node, path: YamlPath, lines: dict[YamlPath, int], source: str
) -> Any:
    if isinstance(node, ScalarNode):
        return loader.construct_object(node)
    if isinstance(node, SequenceNode):
        items = []
        for i, child in enumerate(node.value):
            lines[(*path, i)] = child.start_mark.line + 1
            items.append(_build(loader, child, (*path, i), lines, source))
        return items
    if isinstance(node, MappingNode):
        out: dict[Hashable, Any] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            where = dotted_path(path) or None
            if key_node.tag == _MERGE_TAG:
                raise ConfigError(
                    "YAML merge keys (<<) are not allowed", file=source, line=line, field=where
                )
            if not isinstance(key_node, ScalarNode):
                raise ConfigError(
                    "mapping keys must be plain scalars", file=source, line=line, field=where
                )
            key = loader.construct_object(key_node)
            if key in out:
                raise ConfigError(
                    f"duplicate key {key!r}",
                    file=source,
                    line=line,
                    field=dotted_path((*path, key)),
                )
            lines[(*path, key)] = line
            out[key] = _build(loader, value_node, (*path, key), lines, source)
        return out
    raise ConfigError(f"unsupported YAML node {type(node).__name__}", file=source)


def dotted_path(path: YamlPath) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def read_capped(path: Path, max_bytes: int = MAX_YAML_BYTES) -> bytes:
    """Read at most ``max_bytes`` (+1 to detect oversize) of a file. Raises ``ConfigError``."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(max_bytes + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", file=str(path)) from exc
    if len(raw) > max_bytes:
        raise ConfigError(f"file is over the {max_bytes}-byte limit", file=str(path))
    return raw
