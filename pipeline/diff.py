"""Field-level diff of two versions of a study, arrays matched by identity rather than position.

Sites match by facility, city, state, zip and country (duplicates by their order), arm groups by
label, interventions by name, outcomes by measure (identity text blind to case and whitespace), lists
of text as sets; other arrays of objects match by content. Sites left over on both sides are then
paired by ``site_affinity`` (one site with an identity field filled in or corrected) before they count
as removed and added. Reordering alone is therefore never a change. A subtree present on one side only
is one change at its root (a posted ``resultsSection`` is one row, not thousands), unless typed events
read something inside it (``TYPED``): then the diff descends into it as if the missing side were an
empty object or array, so the first site of a study is a ``site_added`` like any other site.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from pipeline.hashing import material_content, normalise
from pipeline.sites import normalised, pair_sites, site_key, site_name

Json = Any


@dataclass(frozen=True)
class Key:
    """An array element's identity inside a path, e.g. a site's key; ``name`` is the element in words
    (a site's ``site_name``), not part of the path."""

    value: str
    name: str | None = field(default=None, compare=False)

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


_PARTIAL: dict[str, Callable[[list[Mapping[str, Json]], list[Mapping[str, Json]]], list[tuple[int, int]]]] = {
    "locations": pair_sites}


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


# What typed events read (member names from the record's root). A subtree that appears or vanishes is
# diffed against an empty object or array when one of these lies inside it or is it, so the events do
# not depend on whether the array or module existed before; any other subtree is one change.
TYPED_ARRAYS = frozenset({
    ("protocolSection", "contactsLocationsModule", "locations"),
    ("protocolSection", "armsInterventionsModule", "armGroups"),
    ("protocolSection", "armsInterventionsModule", "interventions"),
    ("protocolSection", "outcomesModule", "primaryOutcomes"),
})
TYPED = TYPED_ARRAYS | frozenset({
    ("protocolSection", "statusModule", "overallStatus"),
    ("protocolSection", "statusModule", "whyStopped"),
    ("protocolSection", "statusModule", "startDateStruct"),
    ("protocolSection", "statusModule", "primaryCompletionDateStruct"),
    ("protocolSection", "statusModule", "completionDateStruct"),
    ("protocolSection", "designModule", "phases"),
    ("protocolSection", "designModule", "enrollmentInfo", "count"),
    ("protocolSection", "designModule", "enrollmentInfo", "type"),
    ("protocolSection", "sponsorCollaboratorsModule", "leadSponsor", "name"),
})
_TYPED_WITHIN = frozenset(path[:n] for path in TYPED for n in range(1, len(path)))


def diff(old: Mapping[str, Json], new: Mapping[str, Json]) -> list[Leaf]:
    """Every changed leaf of the material content, compared in the canonical form that decides what is
    a new version (``pipeline.hashing.normalise``): no diff here iff the content hashes are equal."""
    trimmed_old, trimmed_new = without_identical(old, new)
    left, right = normalise(trimmed_old), normalise(trimmed_new)
    if absent := _absent_by_trimming(old, new, trimmed_old, left, right):
        left, right = _with_empty(left, absent, old), _with_empty(right, absent, new)
    return list(_diff_dicts(left, right, ()))


def _with_empty(normal: dict[str, Json], keys: list[str], record: Mapping[str, Json]) -> dict[str, Json]:
    """``normal`` with an empty object at each of ``keys`` it lacks, its members in the order the whole
    record's would have (the diff lists them so)."""
    out = {key: normal.get(key, {}) for key in material_content(record) if key in normal or key in keys}
    return {**out, **{key: value for key, value in normal.items() if key not in out}}


def _absent_by_trimming(old: Mapping[str, Json], new: Mapping[str, Json], trimmed_old: Mapping[str, Json],
                        left: Mapping[str, Json], right: Mapping[str, Json]) -> list[str]:
    """Sections present on both sides whose trimming (``without_identical``) left one side with nothing
    (or nothing but empty members): an empty object is an absent one (hash rule 4), so that side would
    lack the section and the other side's modules show as one change at ``$.section`` (a results module
    added to posted results as the whole ``resultsSection`` appearing). The modules skipped decide: the
    same on both sides and not empty, they make the section present on both."""
    found = []
    for key, value in old.items():
        other = new.get(key)
        if (key in left) == (key in right) or not isinstance(value, dict) or not isinstance(other, dict):
            continue
        kept = trimmed_old.get(key)
        shared = (m for m in value if m in other and not (isinstance(kept, dict) and m in kept))
        if any(key in normalise({key: {m: value[m]}}) for m in shared):  # (the first usually answers)
            found.append(key)
    return found


def full_diff(old: Mapping[str, Json], new: Mapping[str, Json]) -> list[Leaf]:
    """``diff`` without skipping identical sections and modules (the reference it is tested against)."""
    return list(_diff_dicts(normalise(old), normalise(new), ()))


def without_identical(old: Mapping[str, Json], new: Mapping[str, Json],
                      depth: int = 2) -> tuple[dict[str, Json], dict[str, Json]]:
    """Both records without the sections and modules that are the same JSON on both sides.

    A version usually changes one or two of its ~20 modules: normalising and diffing the rest costs
    ~1.5 ms a pair and finds nothing. Dropping a member from both sides leaves the diff as it was:
    identical subtrees give no leaves, and the walk's canonical form of a subtree depends on the
    subtree and its place only; except that a section left empty is absent (``diff`` puts it back:
    ``_absent_by_trimming``). Sameness is by orjson's bytes (``true`` is not ``1``, as for the hash)."""
    kept_old: dict[str, Json] = {}
    kept_new: dict[str, Json] = {}
    for key, value in old.items():
        other = new.get(key, _ABSENT)
        if other is _ABSENT:
            kept_old[key] = value
        elif isinstance(value, dict) and isinstance(other, dict) and depth > 1:
            inner_old, inner_new = without_identical(value, other, depth - 1)
            if inner_old or inner_new:
                kept_old[key], kept_new[key] = inner_old, inner_new
        elif orjson.dumps(value) != orjson.dumps(other):
            kept_old[key], kept_new[key] = value, other
    for key, value in new.items():
        if key not in old:
            kept_new[key] = value
    return kept_old, _in_order(kept_new, new)


def _in_order(kept: dict[str, Json], like: Mapping[str, Json]) -> dict[str, Json]:
    """``kept`` in ``like``'s key order (the diff lists a side's members in its order)."""
    return {key: kept[key] for key in like if key in kept}


_ABSENT: Any = object()


def _diff(old: Json, new: Json, path: Path) -> Iterator[Leaf]:
    if isinstance(old, dict) and isinstance(new, dict):
        yield from _diff_dicts(old, new, path)
    elif isinstance(old, list) and isinstance(new, list):
        yield from _diff_lists(old, new, path)
    elif old != new or (type(old) is not type(new) and not _same_number(old, new)):
        yield Leaf(path, old, new)


def _same_number(a: Json, b: Json) -> bool:
    numbers = (int, float)
    return (isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool)
            and not isinstance(b, bool) and a == b)


def _diff_dicts(old: Mapping[str, Json], new: Mapping[str, Json], path: Path) -> Iterator[Leaf]:
    for key in [*old, *(k for k in new if k not in old)]:
        if key in old and key in new:
            yield from _diff(old[key], new[key], (*path, key))
        else:
            yield from _one_sided((*path, key), old.get(key), new.get(key))


def _one_sided(path: Path, old: Json, new: Json) -> Iterator[Leaf]:
    """A member present on one side only: one leaf, or (where typed events look inside) its parts."""
    names = tuple(p for p in path if isinstance(p, str))
    value = new if old is None else old
    if names in TYPED_ARRAYS and isinstance(value, list) and value:
        yield from _diff_lists(old or [], new or [], path)
    elif names in _TYPED_WITHIN and isinstance(value, dict) and value:  # an empty one stays one leaf
        yield from _diff_dicts(old or {}, new or {}, path)
    else:
        yield Leaf(path, old, new)


def _diff_lists(old: list[Json], new: list[Json], path: Path) -> Iterator[Leaf]:
    name = next((p for p in reversed(path) if isinstance(p, str)), "")
    old_groups, new_groups = _grouped(old, name), _grouped(new, name)
    removed: list[tuple[Json, int]] = []  # (element, its rank in its identity group)
    added: list[tuple[Json, int]] = []
    for base in [*old_groups, *(b for b in new_groups if b not in old_groups)]:
        pairs, gone, came = _match(old_groups.get(base, []), new_groups.get(base, []))
        for rank, (o, n) in enumerate(pairs):
            yield from _diff(o, n, (*path, _key(n, name, rank)))
        removed += [(o, rank) for rank, o in enumerate(gone, start=len(pairs))]
        added += [(n, rank) for rank, n in enumerate(came, start=len(pairs))]
    for (o, _), (n, rank) in _pair_partially(removed, added, _PARTIAL.get(name)):
        yield from _diff(o, n, (*path, _key(n, name, rank)))
    for o, rank in removed:
        yield Leaf((*path, _key(o, name, rank)), o, None)
    for n, rank in added:
        yield Leaf((*path, _key(n, name, rank)), None, n)


Ranked = tuple[Json, int]


def _pair_partially(removed: list[Ranked], added: list[Ranked],
                    pair: Callable[[list[Mapping[str, Json]], list[Mapping[str, Json]]], list[tuple[int, int]]]
                    | None) -> list[tuple[Ranked, Ranked]]:
    """Removed and added elements that are one element with edited identity fields (``pair`` decides).
    What pairs is taken out of ``removed`` and ``added``."""
    if pair is None or not removed or not added or not all(isinstance(e, dict) for e, _ in removed + added):
        return []
    chosen = pair([e for e, _ in removed], [e for e, _ in added])
    pairs = [(removed[i], added[j]) for i, j in chosen]
    gone, came = {i for i, _ in chosen}, {j for _, j in chosen}
    removed[:] = [r for i, r in enumerate(removed) if i not in gone]
    added[:] = [a for j, a in enumerate(added) if j not in came]
    return pairs


def _match(olds: list[Json], news: list[Json]) -> tuple[list[tuple[Json, Json]], list[Json], list[Json]]:
    """Elements sharing an identity: identical ones pair first, the rest in order (the tie-break)."""
    if len(olds) == 1 and len(news) == 1:
        return [(olds[0], news[0])], [], []
    rest_new = list(news)
    new_content = [_content(n) for n in rest_new]
    exact, rest_old = [], []
    for o in olds:  # identical as the hash sees them (arrays inside in any order): no change at all
        content = _content(o)
        twin = next((i for i, c in enumerate(new_content) if c == content), None)
        if twin is None:
            rest_old.append(o)
        else:
            new_content.pop(twin)
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
    """What an element is matched by: its identity fields normalised (case, whitespace), or its content."""
    if isinstance(element, dict):
        return normalised(identity(element)) if identity else _content(element)
    return element if isinstance(element, str) else _content(element)


def _display(element: Json, name: str) -> str:
    """An element's identity as written, for its path: ``[\"Mayo Clinic | Rochester | ...\"]``."""
    identity = IDENTITY.get(name)
    if isinstance(element, dict):
        return identity(element) if identity else _content(element)
    return element if isinstance(element, str) else _content(element)


def _key(element: Json, name: str, rank: int) -> Key:
    words = site_name(element) if name == "locations" and isinstance(element, dict) else None
    return Key(_label(_display(element, name), rank), words)


def keyed(elements: list[Json], name: str) -> dict[str, Json]:
    """Elements by identity; the second element with the same identity gets ``#2``, and so on."""
    return {_key(element, name, rank).value: element for group in _grouped(elements, name).values()
            for rank, element in enumerate(group)}
