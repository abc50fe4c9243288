"""Read docs/data-dictionary.md (views, columns, types, JSON sources) and walk JSON paths for the tests."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import Any

from tests.conftest import REPO

DICTIONARY = REPO / "docs" / "data-dictionary.md"
_HEADING = re.compile(r"^## (.*)$")
_ROW = re.compile(r"^\| *(\w+) *\| *([^|]+?) *\| *([^|]+?) *\| *(.+?) *\|$")
_PATHS = re.compile(r"^`([^`]+)`(?: or `([^`]+)`)*$")


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    meaning: str
    source: str

    @property
    def paths(self) -> list[str]:
        """The JSON paths this column copies unchanged; empty for derived or bookkeeping columns."""
        if not _PATHS.match(self.source):
            return []
        return re.findall(r"`([^`]+)`", self.source)

    @property
    def mentioned_paths(self) -> list[str]:
        """Every JSON path the source names, also of derived columns (``startDateStruct.date`` as DATE)."""
        return [p for p in re.findall(r"`([^`]+)`", self.source) if re.fullmatch(r"[\w.\[\]*]+", p)]


@dataclass(frozen=True)
class Dictionary:
    views: dict[str, list[Column]]
    macros: list[str]


@cache
def dictionary() -> Dictionary:
    views: dict[str, list[Column]] = {}
    macros: list[str] = []
    current: list[str] = []
    for line in DICTIONARY.read_text().splitlines():
        if heading := _HEADING.match(line):
            names = re.findall(r"`([^`(]+)[^`]*`", heading.group(1))
            if heading.group(1).startswith("Macro"):
                macros += names
                current = []
            else:
                current = names
                for name in names:
                    assert name not in views, f"{name} is documented twice"
                    views[name] = []
        elif (row := _ROW.match(line)) and current and row.group(1) != "column":
            for name in current:
                views[name].append(Column(*row.groups()))
    return Dictionary(views, macros)


def path_pattern(path: str) -> re.Pattern[str]:
    """A documented path (``a.b[].c``, ``*`` for any key) as a regex over normalised leaf paths."""
    return re.compile("^" + re.escape(path).replace(r"\*", r"[^.\[\]]*") + "$")


def normalise(leaf_path: str) -> str:
    """``$.a.b[3].c`` -> ``a.b[].c``: the shape of a leaf path, as the dictionary writes sources."""
    return re.sub(r"\[\d+\]", "[]", leaf_path.removeprefix("$."))


def values_at(record: Any, path: str) -> list[Any]:
    """Every value at a documented path of ``record`` (absent parts give nothing)."""
    nodes = [record]
    for token in re.findall(r"\[\]|[^.\[\]]+", path):
        if token == "[]":
            nodes = [item for node in nodes if isinstance(node, list) for item in node]
        else:
            key = path_pattern(token)
            nodes = [value for node in nodes if isinstance(node, dict)
                     for name, value in node.items() if key.match(name)]
    return [node for node in nodes if node is not None]


def leaves(value: Any, path: str = "$") -> list[tuple[str, Any]]:
    """Every leaf of a JSON value as (DuckDB json_tree fullkey, value); empty containers count as leaves."""
    if isinstance(value, dict) and value:
        return [leaf for key, item in value.items() for leaf in leaves(item, f"{path}.{_key(key)}")]
    if isinstance(value, list) and value:
        return [leaf for i, item in enumerate(value) for leaf in leaves(item, f"{path}[{i}]")]
    return [(path, value)]


def _key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) else '"' + key.replace('"', '\\"') + '"'
