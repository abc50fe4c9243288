"""The content hash's fast path gives exactly the full walk's value (stored hashes must never move).

``hash_and_unknown`` proves most records need no normalisation and hashes them without the walk;
``slow_hash_and_unknown`` is the walk alone. Records are the 326 real ones and perturbations of
them that each hit one rule of the canonical form (NFD text, integral floats, reordered arrays,
unknown keys, derivedSection edits, members set to ``[]``, ``{}`` or an object that pruning empties).
"""

from __future__ import annotations

import copy
import unicodedata
from types import MappingProxyType
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import hashing
from pipeline.hashing import hash_and_unknown, material_content, slow_hash_and_unknown
from tests.conftest import real_records

REAL = real_records()
NON_ASCII = st.text(st.characters(min_codepoint=0xC0, max_codepoint=0x1EFF), min_size=1, max_size=6)


def _containers(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths (tuples of keys and indexes) of every dict and list in ``value``."""
    out = [path]
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if isinstance(item, dict | list):
            out += _containers(item, (*path, key))
    return out


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths of every string leaf."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    out = []
    for key, item in items:
        if isinstance(item, str):
            out.append((*path, key))
        elif isinstance(item, dict | list):
            out += _leaves(item, (*path, key))
    return out


def _at(value: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        value = value[key]
    return value


@st.composite
def perturbed(draw: st.DrawFn) -> dict[str, Any]:
    record = copy.deepcopy(draw(st.sampled_from(REAL)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["nfd", "float", "reorder", "unknown", "known_elsewhere", "derived",
                                     "tracking", "non_ascii", "empty"]))
        containers = _containers(record)
        if kind in ("nfd", "non_ascii"):
            leaves = _leaves(record)
            if not leaves:  # an earlier step replaced every text's container by a number
                continue
            path = draw(st.sampled_from(leaves))
            text = draw(NON_ASCII)
            value = unicodedata.normalize("NFD", text) if kind == "nfd" else text
            _at(record, path[:-1])[path[-1]] = _at(record, path) + value
        elif kind == "float":
            path = draw(st.sampled_from([p for p in containers if isinstance(_at(record, p), dict)]))
            keys = sorted(_at(record, path))
            number = draw(st.sampled_from([100.0, -0.0, 6.0, 2.5, 1e16, 3]))
            _at(record, path)[draw(st.sampled_from(keys))] = number
        elif kind == "reorder":
            lists = [p for p in containers if isinstance(_at(record, p), list) and len(_at(record, p)) > 1]
            if lists:
                items = _at(record, draw(st.sampled_from(lists)))
                items[:] = draw(st.permutations(items))
        elif kind in ("unknown", "known_elsewhere"):
            path = draw(st.sampled_from([p for p in containers if isinstance(_at(record, p), dict)]))
            name = (draw(st.sampled_from(["nctId", "date", "type", "locations", "name", "city"]))
                    if kind == "known_elsewhere" else draw(st.text(min_size=1, max_size=8)))
            _at(record, path)[name] = draw(st.sampled_from(["x", 1, [2, 1], {"b": 1, "a": [3, 2]}]))
        elif kind == "empty":  # hash rule 4: an empty member (also one pruning or nulls empty) is absent
            path = draw(st.sampled_from([p for p in containers if isinstance(_at(record, p), dict)]))
            keys = sorted(_at(record, path))
            name = draw(st.sampled_from([*keys, "keywords", "locations", "phases", "zzUnknown"]))
            _at(record, path)[name] = copy.deepcopy(draw(st.sampled_from(
                [[], {}, {"zzUnknown": 1}, {"city": None}, {"zzUnknown": []}, {"a": {"b": []}}, [[]], [{}], [None],
                 [{"zzUnknown": 1}]])))
        elif kind == "derived":
            derived = _dict_in(record, "derivedSection")
            derived[draw(st.sampled_from(["conditionBrowseModule", "miscInfoModule", "new"]))] = {"versionHolder": "x"}
        else:
            misc = _dict_in(_dict_in(record, "derivedSection"), "miscInfoModule")
            misc["submissionTracking"] = {"submissionInfos": [
                {"releaseDate": "2025-01-02", "resetDate": "2025-02-0" + str(draw(st.integers(1, 9)))},
                {"releaseDate": "2024-11-30"}]}
    return record


def _dict_in(parent: dict[str, Any], key: str) -> dict[str, Any]:
    """``parent[key]``, made a dict first when missing or when an earlier step set it to a scalar."""
    if not isinstance(parent.get(key), dict):
        parent[key] = {}
    child: dict[str, Any] = parent[key]
    return child


def test_fast_path_hashes_every_real_record_like_the_walk() -> None:
    assert [hash_and_unknown(r) for r in REAL] == [slow_hash_and_unknown(r) for r in REAL]


def test_fast_path_takes_most_real_records() -> None:
    """Else the fast path would be dead code and the property below proves nothing."""
    fast = sum(1 for r in REAL if hashing._fast_canonical(material_content(r)) is not None)
    assert fast >= 0.9 * len(REAL)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(perturbed())
def test_fast_path_equals_the_walk_on_perturbed_real_records(record: dict[str, Any]) -> None:
    assert hash_and_unknown(record) == slow_hash_and_unknown(record)


@settings(max_examples=100, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers(-10, 10) | st.floats(allow_nan=False) | st.text(max_size=4),
                    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=3), children,
                                                                                       max_size=4), max_leaves=20))
def test_fast_path_equals_the_walk_on_free_form_values(value: Any) -> None:
    """Any JSON value under a schema leaf that takes free-form content (here: under an unknown key of
    a record's root the walk prunes, and inside a known free-form-less place via the derived part)."""
    record = copy.deepcopy(REAL[0])
    record["derivedSection"] = {"miscInfoModule": {"submissionTracking": value}}
    assert hash_and_unknown(record) == slow_hash_and_unknown(record)


def test_nfd_and_integral_float_records_take_the_walk() -> None:
    record = copy.deepcopy(REAL[0])
    record["protocolSection"]["identificationModule"]["briefTitle"] += unicodedata.normalize("NFD", "é")
    assert hashing._fast_canonical(material_content(record)) is None
    record = copy.deepcopy(REAL[0])
    record["protocolSection"]["designModule"] = {**record["protocolSection"].get("designModule", {}),
                                                 "enrollmentInfo": {"count": 100.0}}
    assert hashing._fast_canonical(material_content(record)) is None
    assert hash_and_unknown(record)[0] == slow_hash_and_unknown(record)[0]


class _Dict(dict):  # type: ignore[type-arg]
    pass


class _List(list):  # type: ignore[type-arg]
    pass


def _as_other_types(value: Any) -> Any:
    """``value`` with every object a read-only mapping or a dict subclass and every array a list subclass
    (a record built in code, not parsed from JSON), alternately."""
    if isinstance(value, dict):
        items = {key: _as_other_types(item) for key, item in value.items()}
        return MappingProxyType(items) if len(items) % 2 else _Dict(items)
    if isinstance(value, list):
        return _List(_as_other_types(item) for item in value)
    return value


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(perturbed())
def test_a_record_built_of_other_mapping_and_list_types_hashes_as_its_json(record: dict[str, Any]) -> None:
    """The walk takes any mapping and list (``normalise`` on a record built in code): the same rules
    apply, an empty one is absent (rule 4) and unknown keys are named by their whole path. A mapping
    member was walked without its key on the path and kept when empty; a list subclass kept its order."""
    other = _as_other_types(record)
    assert slow_hash_and_unknown(other) == hash_and_unknown(other) == slow_hash_and_unknown(record)
    assert hashing.normalise(other) == hashing.normalise(record)
