"""The canonical form of a record: one notion of equality for "is this a new version" and "what changed".

``content_hash`` (a new version iff it moved) and ``pipeline.diff`` (what changed) both read a record
through ``normalise``, so they can never disagree:

- *Material content only.* The registry re-derives ``derivedSection`` (MeSH trees, versionHolder) on
  its own schedule; only ``derivedSection.miscInfoModule.submissionTracking`` (results submitted for
  quality control, returned, cancelled: the one public sign of results under review) is material.
- *Only what the published schema knows.* A key the registry's OpenAPI spec (``pipeline.schema``)
  does not describe is a registry schema change, not a change of the study: it is kept in the raw JSON,
  reported (``unknown``; a sync records it in ``sync_runs.unknown_fields``), and never makes a version
  on its own. A new optional field appearing in every record therefore does not version the registry.
- *A member set to null is a member absent*: the registry omits empty fields (its OpenAPI spec makes no
  field nullable), and every table reads ``null`` and a missing key alike (NULL), so ``{"whyStopped": null}``
  is no new version and no change (null as an array element stays a value).
- *JSON numbers by value*: ``100.0`` is ``100`` (an integral float becomes an int).
- *Text in Unicode NFC*: NFC and NFD spellings of one text are the same text.
- *Arrays as multisets* (hash only): the diff matches array elements by identity and never reports
  reordering, so the hash sorts every array's elements.

``hash_rule()`` names this rule; a warehouse records the rule its stored hashes follow and is re-hashed
when it changes (``warehouse.migrations``).
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Mapping
from functools import cache, partial
from typing import Any

import msgspec
import orjson

HASH_RULE_VERSION = "4"  # bump when the canonical form below changes (and RULE in pipeline/_canonical.c)

try:  # pipeline/_canonical.c, built by `pip install` where a C compiler is (setup.py); else Python only
    from pipeline import _canonical
except ImportError:  # pragma: no cover - depends on the machine that installed the package
    _canonical = None  # type: ignore[assignment]
if getattr(_canonical, "RULE", None) != HASH_RULE_VERSION:  # built from an older _canonical.c: not used
    _canonical = None  # type: ignore[assignment]


def rule_for(shape: Any) -> str:
    """The name of the hash rule for a schema ``shape``: the canonical form keeps only the keys the
    schema knows, so a release whose schema learns a key hashes the same records differently, and
    the warehouse must be re-hashed (``warehouse.migrations``) or every study would get a new version."""
    digest = hashlib.blake2b(canonical_json(shape), digest_size=5).hexdigest()
    return f"{HASH_RULE_VERSION}-{digest}"


@cache
def hash_rule() -> str:
    """The rule this release hashes by (recorded in each warehouse's metadata)."""
    return rule_for(_shape_of_study())


# The registry re-derives derivedSection (MeSH trees, versionHolder) on its own schedule, so a
# change there alone is not a change of the study.
NON_MATERIAL_SECTIONS = frozenset({"derivedSection"})
# ... except this part of it, kept at its own path.
MATERIAL_DERIVED = ("derivedSection", "miscInfoModule", "submissionTracking")

_MAX_EXACT = 2 ** 53  # floats beyond this are not integers we could round-trip


def material_content(record: Mapping[str, Any]) -> dict[str, Any]:
    """The record without the registry's own derived data (``submissionTracking`` stays)."""
    out = {key: value for key, value in record.items() if key not in NON_MATERIAL_SECTIONS}
    node: Any = record
    for key in MATERIAL_DERIVED:
        node = node.get(key) if isinstance(node, Mapping) else None
    if node is not None:
        out[MATERIAL_DERIVED[0]] = {MATERIAL_DERIVED[1]: {MATERIAL_DERIVED[2]: node}}
    return out


def normalise(record: Mapping[str, Any], unknown: set[str] | None = None) -> dict[str, Any]:
    """The material content in canonical values (NFC text, numbers by value, schema-known keys
    only), array order kept. ``unknown`` collects the dotted paths of keys the schema does not know."""
    out: dict[str, Any] = _walk(material_content(record), _shape_of_study(), [], unknown, sort=False)
    return out


def canonical_json(value: Any) -> bytes:
    """Key-sorted, whitespace-free JSON: the same content gives the same bytes from any source."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def content_hash(record: Mapping[str, Any]) -> str:
    """128-bit BLAKE2b of the canonical JSON of the material content, as hex."""
    return hash_and_unknown(record)[0]


def hash_and_unknown(record: Mapping[str, Any]) -> tuple[str, frozenset[str]]:
    """``content_hash`` and the paths of the record's keys the schema does not know (one walk).

    Most records need no normalisation at all: the C canonicaliser (``pipeline/_canonical.c``) or,
    without it, ``_fast_canonical`` proves that (and sorts their arrays); the others take the full
    walk. All give the same value (tests/test_hash_fast_path.py)."""
    material = material_content(record)
    if _canonical is not None:
        answer = _canonical.canonical(material, _shape_of_study())
        if answer is not None:
            return hashlib.blake2b(answer[0], digest_size=16).hexdigest(), frozenset(answer[1])
    return _python_hash(material)


def implementation() -> str:
    """Which canonicaliser runs: ``C`` (pipeline/_canonical.c) or ``Python`` (no compiler at install)."""
    return "C" if _canonical is not None else "Python"


def python_hash_and_unknown(record: Mapping[str, Any]) -> tuple[str, frozenset[str]]:
    """``hash_and_unknown`` without the C canonicaliser (Python's fast path, else the walk)."""
    return _python_hash(material_content(record))


def _python_hash(material: Mapping[str, Any]) -> tuple[str, frozenset[str]]:
    unknown: list[str] = []
    canonical = _fast_canonical(material, unknown)
    if canonical is not None:
        return hashlib.blake2b(canonical, digest_size=16).hexdigest(), frozenset(unknown)
    return _slow_hash(material)


def slow_hash_and_unknown(record: Mapping[str, Any]) -> tuple[str, frozenset[str]]:
    """``hash_and_unknown`` by the full walk only (the reference the fast path is tested against)."""
    return _slow_hash(material_content(record))


def _slow_hash(material: Mapping[str, Any]) -> tuple[str, frozenset[str]]:
    unknown: set[str] = set()
    canonical = _walk(material, _shape_of_study(), [], unknown, sort=True)
    return hashlib.blake2b(canonical_json(canonical), digest_size=16).hexdigest(), frozenset(unknown)


def numbers_by_value(value: Any) -> Any:
    """A JSON value with every integral float as an int (``100.0`` -> ``100``); the rest as it is."""
    kind = type(value)
    if kind is dict:
        return {key: numbers_by_value(item) for key, item in value.items()}
    if kind is list:
        return [numbers_by_value(item) for item in value]
    if kind is float and value.is_integer() and abs(value) < _MAX_EXACT:
        return int(value)
    return value


# -- the walk -----------------------------------------------------------------------------------
# A shape is the schema's tree of known keys: a dict name -> shape for an object, None for a leaf
# (or a free-form value, taken as it is). Lists are transparent: a list's shape is its elements'.
Shape = dict[str, Any] | None


def _walk(value: Any, shape: Shape, path: list[str], unknown: set[str] | None, *, sort: bool) -> Any:
    """``value`` in canonical values; ``path``: the keys above it (a stack, for naming unknown keys)."""
    kind = type(value)
    if kind is str:
        return value if value.isascii() else unicodedata.normalize("NFC", value)
    if kind is dict:
        out = {}
        for key, item in value.items():
            child: Any = None
            if shape is not None:
                child = shape.get(key, _UNKNOWN)
                if child is _UNKNOWN:
                    if unknown is not None:
                        unknown.add(".".join([*path, key]))
                    continue
            if item is None:  # null is absent
                continue
            name = key if key.isascii() else unicodedata.normalize("NFC", key)
            item_kind = type(item)
            if item_kind in _NESTED or (item_kind not in _SCALARS and isinstance(item, Mapping | list)):
                path.append(key)
                walked = _walk(item, child, path, unknown, sort=sort)
                path.pop()
                if not walked:  # an empty object or array is absent too (no member, no element)
                    continue
                out[name] = walked
            else:
                out[name] = _walk(item, child, path, unknown, sort=sort)
        return out
    if kind is list:
        items = [_walk(item, shape, path, unknown, sort=sort) for item in value]
        if sort and len(items) > 1:
            items.sort(key=canonical_json)
        return items
    if kind is float and value.is_integer() and abs(value) < _MAX_EXACT:
        return int(value)
    # Another mapping, list or text type (a record built in code): walked as the JSON it dumps as.
    if isinstance(value, Mapping):
        return _walk(dict(value), shape, path, unknown, sort=sort)
    if isinstance(value, list):
        return _walk(list(value), shape, path, unknown, sort=sort)
    if isinstance(value, str):
        return _walk(str(value), shape, path, unknown, sort=sort)
    return value


_UNKNOWN: Any = object()
_NESTED = (dict, list)
_SCALARS = frozenset({str, int, float, bool})


# -- the fast path ------------------------------------------------------------------------------
# The walk changes a record's canonical JSON only through (1) keys the schema does not know,
# (2) text not in NFC, (3) integral floats, (4) array order, (5) members set to null, [] or {}, or to
# an object of unknown keys only (any ":null", ":[]" or ":{}" in the compact dump, inside a string or
# not, sends the record to the walk; so does pruning that empties an object). The fast path proves (1) by comparing
# each object's key set with its shape's (C set operations; leaves are never visited one by one),
# (2) and (3) on orjson's compact dump of the whole material content (text is NFC as a whole iff
# every string and key in it is: JSON's own characters are ASCII starters that compose with
# nothing; an integral float < 2**53 always dumps as digits ".0"), and does (4) itself, bottom-up,
# with the walk's own sort key. Anything it cannot prove (or an unknown key) goes to the walk.

_DIGITS = frozenset(b"0123456789")
_AFTER_NUMBER = frozenset(b",]}")


def _maybe_integral_float(text: bytes) -> bool:
    """Whether compact JSON ``text`` may hold an integral float (orjson writes one < 2**53 as
    digits ".0"; text inside strings that looks like one also answers yes: the walk decides)."""
    at = text.find(b".0")
    while at >= 0:
        if at > 0 and text[at - 1] in _DIGITS and at + 2 < len(text) and text[at + 2] in _AFTER_NUMBER:
            return True
        at = text.find(b".0", at + 2)
    return False
_SORT_KEY = partial(orjson.dumps, option=orjson.OPT_SORT_KEYS)


def _fast_canonical(material: Mapping[str, Any], unknown: list[str] | None = None) -> bytes | None:
    """The canonical JSON of ``material`` if it needs no normalisation but pruning and array sorting,
    else None; ``unknown`` collects the paths of the keys pruned."""
    if type(material) is not dict:
        return None
    try:  # (a subclass of dict, list or str, which the walk treats by its own rules, takes the walk)
        text = orjson.dumps(material, option=orjson.OPT_PASSTHROUGH_SUBCLASS)
    except (TypeError, orjson.JSONEncodeError):
        return None
    if _maybe_integral_float(text) or b":null" in text or b":[]" in text or b":{}" in text:
        return None  # (a member set to null, [] or {}: the walk leaves it out)
    if not text.isascii() and not unicodedata.is_normalized("NFC", text.decode()):
        return None
    try:
        return canonical_json(_sorted_arrays(material, _compiled_study(), (), [] if unknown is None else unknown))
    except (TypeError, orjson.JSONEncodeError, _EmptiedByPruning):  # another mapping type inside, ...
        return None


class _EmptiedByPruning(Exception):
    """An object of only unknown keys: the walk leaves it out as a member (an empty object is absent)."""


class _Node:
    """A shape compiled for the fast path: its key set and the shapes of its keys that can nest."""

    __slots__ = ("keys", "nested")

    def __init__(self, keys: frozenset[str], nested: dict[str, _Node | None]) -> None:
        self.keys = keys
        self.nested = nested


def _sorted_arrays(value: Any, node: _Node | None, path: tuple[str, ...], unknown: list[str]) -> Any:
    """``value`` (a dict or list) with every array replaced by its canonical JSON (elements sorted by
    the walk's key) as an ``orjson.Fragment`` and keys ``node`` does not know pruned (their paths, as
    the walk names them, added to ``unknown``); ``node`` None: free-form. ``path``: the keys above."""
    if type(value) is list:
        parts = [_SORT_KEY(_sorted_arrays(item, node, path, unknown)) if type(item) in _NESTED else _SORT_KEY(item)
                 for item in value]
        parts.sort()
        return orjson.Fragment(b"[" + b",".join(parts) + b"]")
    if node is None:
        return {key: _sorted_arrays(item, None, (*path, key), unknown) if type(item) in _NESTED else item
                for key, item in value.items()}
    out = None
    if not node.keys.issuperset(value):
        out = {}
        for key, item in value.items():
            if key in node.keys:
                out[key] = item
            else:
                unknown.append(".".join((*path, key)))
        if not out and path:
            raise _EmptiedByPruning
        value = out
    nested = node.nested
    for key, item in value.items():
        if type(item) in _NESTED:
            if out is None:
                out = value.copy()
            out[key] = _sorted_arrays(item, nested[key], (*path, key), unknown)
    return value if out is None else out


@cache
def _compiled_study() -> _Node | None:
    return _compile(_shape_of_study(), {})


def _compile(shape: Shape, seen: dict[int, _Node]) -> _Node | None:
    if shape is None:
        return None
    if id(shape) in seen:
        return seen[id(shape)]
    node = _Node(frozenset(shape), {})
    seen[id(shape)] = node
    node.nested = {key: _compile(child, seen) for key, child in shape.items()}
    return node


@cache
def _shape_of_study() -> Shape:
    from pipeline.schema import Study

    return _shape_of_info(msgspec.inspect.type_info(Study), 0)


def _shape_of_info(info: msgspec.inspect.Type, depth: int) -> Shape:
    if isinstance(info, msgspec.inspect.UnionType):
        shapes = [_shape_of_info(t, depth) for t in info.types]
        return next((s for s in shapes if s is not None), None)
    if isinstance(info, msgspec.inspect.ListType):
        return _shape_of_info(info.item_type, depth)
    if isinstance(info, msgspec.inspect.StructType):
        if depth > 30:
            return None
        return {f.encode_name: _shape_of_info(f.type, depth + 1) for f in info.fields}
    return None
