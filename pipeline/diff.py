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

from pipeline.hashing import normalise

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
    "submissionInfos": _field("releaseDate"),  # a QC submission, by the day it was submitted
}


def diff(old: Mapping[str, Json], new: Mapping[str, Json]) -> list[Leaf]:
    """Every changed leaf of the material content, compared in the canonical form that decides what is
    a new version (``pipeline.hashing.normalise``): no diff here iff the content hashes are equal."""
    return list(_diff_dicts(normalise(old), normalise(new), ()))


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
    old_groups, new_groups = _grouped(old, name), _grouped(new, name)
    for base in [*old_groups, *(b for b in new_groups if b not in old_groups)]:
        pairs, removed, added = _match(old_groups.get(base, []), new_groups.get(base, []))
        for rank, (o, n) in enumerate(pairs):
            yield from _diff(o, n, (*path, Key(_label(base, rank))))
        for rank, o in enumerate(removed, start=len(pairs)):
            yield Leaf((*path, Key(_label(base, rank))), o, None)
        for rank, n in enumerate(added, start=len(pairs)):
            yield Leaf((*path, Key(_label(base, rank))), None, n)


def _match(olds: list[Json], news: list[Json]) -> tuple[list[tuple[Json, Json]], list[Json], list[Json]]:
    """Elements sharing an identity: identical ones pair first, the rest in order (the tie-break)."""
    if len(olds) == 1 and len(news) == 1:
        return [(olds[0], news[0])], [], []
    rest_new = list(news)
    exact, rest_old = [], []
    for o in olds:
        twin = next((i for i, n in enumerate(rest_new) if n == o), None)
        if twin is None:
            rest_old.append(o)
        else:
            exact.append((o, rest_new.pop(twin)))
    paired = list(zip(rest_old, rest_new, strict=False))
    return exact + paired, rest_old[len(paired):], rest_new[len(paired):]


def _label(base: str, rank: int) -> str:
    return base if rank == 0 else f"{base} #{rank + 1}"


def _grouped(elements: list[Json], name: str) -> dict[str, list[Json]]:
    identity = IDENTITY.get(name)
    groups: dict[str, list[Json]] = {}
    for element in elements:
        groups.setdefault(_identity(element, identity), []).append(element)
    return groups


def _identity(element: Json, identity: Callable[[Mapping[str, Json]], str] | None) -> str:
    if isinstance(element, dict):
        return identity(element) if identity else _content(element)
    return element if isinstance(element, str) else _content(element)


def keyed(elements: list[Json], name: str) -> dict[str, Json]:
    """Elements by identity; the second element with the same identity gets ``#2``, and so on."""
    return {_label(base, rank): element for base, group in _grouped(elements, name).items()
            for rank, element in enumerate(group)}
