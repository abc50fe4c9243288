"""Field-level diff of two versions of a study, arrays matched by identity rather than position.

Sites match by facility, city, state, zip and country (duplicates by their order), arm groups by
label, interventions by name, outcomes by measure, lists of text as sets; other arrays of objects
match by content. Reordering alone is therefore never a change. A subtree present on one side only
is one change at its root (a posted ``resultsSection`` is one row, not thousands).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from pipeline.hashing import NON_MATERIAL_SECTIONS

Json = Any


@dataclass(frozen=True)
class Key:
    """An array element's identity inside a path, e.g. a site's key."""

    value: str

    def __str__(self) -> str:
        return "[" + orjson.dumps(self.value).decode() + "]"


Path = tuple[str | Key, ...]


@dataclass(frozen=True)
class Leaf:
    path: Path
    old: Json  # None when absent
    new: Json  # None when absent

    @property
    def text(self) -> str:
        return render_path(self.path)


def render_path(path: Path) -> str:
    return "$" + "".join(str(p) if isinstance(p, Key) else f".{p}" for p in path)


def _text(value: Json) -> str:
    return "" if value is None else str(value)


def site_key(site: Mapping[str, Json]) -> str:
    return " | ".join(_text(site.get(k)) for k in ("facility", "city", "state", "zip", "country"))


def _field(name: str) -> Callable[[Mapping[str, Json]], str]:
    return lambda element: _text(element.get(name))


def _content(element: Json) -> str:
    """An element's identity by content, blind to the order of arrays inside it."""
    return orjson.dumps(_unordered(element), option=orjson.OPT_SORT_KEYS).decode()


def _unordered(value: Json) -> Json:
    if isinstance(value, dict):
        return {k: _unordered(v) for k, v in value.items()}
    if isinstance(value, list):
        items = [_unordered(v) for v in value]
        return sorted(items, key=lambda v: orjson.dumps(v, option=orjson.OPT_SORT_KEYS))
    return value


IDENTITY: dict[str, Callable[[Mapping[str, Json]], str]] = {
    "locations": site_key,
    "armGroups": _field("label"),
    "interventions": _field("name"),
    "primaryOutcomes": _field("measure"),
    "secondaryOutcomes": _field("measure"),
    "otherOutcomes": _field("measure"),
    "collaborators": _field("name"),
    "secondaryIdInfos": _field("id"),
    "overallOfficials": _field("name"),
    "centralContacts": _field("name"),
    "contacts": _field("name"),
    "seeAlsoLinks": _field("url"),
}


def diff(old: Mapping[str, Json], new: Mapping[str, Json]) -> list[Leaf]:
    """Every changed leaf of the material sections (``derivedSection`` is the registry's own)."""
    return list(_diff_dicts(
        {k: v for k, v in old.items() if k not in NON_MATERIAL_SECTIONS},
        {k: v for k, v in new.items() if k not in NON_MATERIAL_SECTIONS},
        (),
    ))


def _diff(old: Json, new: Json, path: Path) -> Iterator[Leaf]:
    if isinstance(old, dict) and isinstance(new, dict):
        yield from _diff_dicts(old, new, path)
    elif isinstance(old, list) and isinstance(new, list):
        yield from _diff_lists(old, new, path)
    elif old != new or (type(old) is not type(new) and not _same_number(old, new)):
        yield Leaf(path, old, new)


def _same_number(a: Json, b: Json) -> bool:
    numbers = (int, float)
    return isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and a == b


def _diff_dicts(old: Mapping[str, Json], new: Mapping[str, Json], path: Path) -> Iterator[Leaf]:
    for key in [*old, *(k for k in new if k not in old)]:
        if key in old and key in new:
            yield from _diff(old[key], new[key], (*path, key))
        else:
            yield Leaf((*path, key), old.get(key), new.get(key))


def _diff_lists(old: list[Json], new: list[Json], path: Path) -> Iterator[Leaf]:
    name = next((p for p in reversed(path) if isinstance(p, str)), "")
    old_keyed, new_keyed = keyed(old, name), keyed(new, name)
    for key in [*old_keyed, *(k for k in new_keyed if k not in old_keyed)]:
        if key in old_keyed and key in new_keyed:
            yield from _diff(old_keyed[key], new_keyed[key], (*path, Key(key)))
        else:
            yield Leaf((*path, Key(key)), old_keyed.get(key), new_keyed.get(key))


def keyed(elements: list[Json], name: str) -> dict[str, Json]:
    """Elements by identity; the second element with the same identity gets ``#2``, and so on."""
    identity = IDENTITY.get(name)
    out: dict[str, Json] = {}
    counts: dict[str, int] = {}
    for element in elements:
        if isinstance(element, dict):
            base = identity(element) if identity else _content(element)
        else:
            base = element if isinstance(element, str) else _content(element)
        counts[base] = counts.get(base, 0) + 1
        out[base if counts[base] == 1 else f"{base} #{counts[base]}"] = element
    return out
