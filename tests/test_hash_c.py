"""The C canonicaliser (pipeline/_canonical.c) writes exactly the Python fast path's bytes.

Stored hashes must never move: wherever the C path answers, its canonical JSON is byte for byte
``hashing._fast_canonical``'s, and ``hash_and_unknown`` (C first) equals the Python-only hash and the
full walk. Where it declines (normalisation needed, unusual values) the Python path answers.
"""

from __future__ import annotations

import copy
import shutil
import sysconfig
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import hashing
from pipeline.hashing import hash_and_unknown, material_content, python_hash_and_unknown, slow_hash_and_unknown
from tests.conftest import real_records
from tests.test_hash_fast_path import perturbed

REAL = real_records()
built = pytest.mark.skipif(hashing._canonical is None, reason="pipeline/_canonical.c was not built (no C compiler "
                                                                 "at install): hashes are computed in Python")


def test_the_c_canonicaliser_is_built_where_a_compiler_is() -> None:
    """`pip install` skips a failed build quietly (setup.py: optional); here it must not have."""
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        pytest.skip(f"no C compiler ({compiler}) on this machine")
    assert hashing.implementation() == "C"


def _c(record: dict[str, Any]) -> tuple[bytes, list[str]] | None:
    answer: tuple[bytes, list[str]] | None = hashing._canonical.canonical(material_content(record),
                                                                          hashing._shape_of_study())
    return answer


def _python(record: dict[str, Any]) -> tuple[bytes, list[str]] | None:
    unknown: list[str] = []
    canonical = hashing._fast_canonical(material_content(record), unknown)
    return None if canonical is None else (canonical, unknown)


def _same_answer(record: dict[str, Any]) -> None:
    c, python = _c(record), _python(record)
    if c is not None and python is not None:
        assert c[0] == python[0]
        assert sorted(c[1]) == sorted(python[1])
    assert hash_and_unknown(record) == python_hash_and_unknown(record) == slow_hash_and_unknown(record)


@built
def test_c_writes_the_python_fast_paths_bytes_for_every_real_record() -> None:
    answered = 0
    for record in REAL:
        _same_answer(record)
        answered += _c(record) is not None
    assert answered >= 0.95 * len(REAL)  # else the C path is dead code and the tests prove nothing


@built
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(perturbed())
def test_c_equals_python_on_perturbed_real_records(record: dict[str, Any]) -> None:
    _same_answer(record)


JSON_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=6)  # controls, quotes, ...
SCALARS = (st.none() | st.booleans() | st.integers(-(2 ** 65), 2 ** 65) | st.floats(allow_nan=False) | JSON_TEXT
           | st.sampled_from(["\x00", "\x1f", "\x7f", '"', "\\", "/", "\u2028", "e\u0301", "\u00e9", 2 ** 63 - 1,
                              2 ** 64 - 1, -(2 ** 63), 1e-7, 1e22, 0.1, -0.0, 100.0]))


@built
@settings(max_examples=300, deadline=None)
@given(st.recursive(SCALARS, lambda children: st.lists(children, max_size=5)
                    | st.dictionaries(JSON_TEXT, children, max_size=4), max_leaves=25))
def test_c_equals_python_on_free_form_values(value: Any) -> None:
    """Free-form content (kept whole): every kind of text escape, big and small numbers, NFD text."""
    record = copy.deepcopy(REAL[0])
    record["derivedSection"] = {"miscInfoModule": {"submissionTracking": value}}
    try:
        expected: Any = python_hash_and_unknown(record)
    except Exception as exc:  # e.g. an int beyond 64 bits: orjson refuses it, so must the C path's caller
        with pytest.raises(type(exc)):
            hash_and_unknown(record)
        return
    assert hash_and_unknown(record) == expected
    c, python = _c(record), _python(record)
    if c is not None and python is not None:
        assert c[0] == python[0]


@built
def test_c_declines_what_needs_normalising_or_is_unusual() -> None:
    base = copy.deepcopy(REAL[0])
    module = base["protocolSection"]["identificationModule"]
    assert _c(base) is not None
    for value in ["e\u0301", 100.0, 2 ** 64, "\ud800", ("a",)]:
        record = copy.deepcopy(base)
        record["protocolSection"]["identificationModule"] = {**module, "briefTitle": value}
        assert _c(record) is None, value
    subclass = copy.deepcopy(base)
    subclass["protocolSection"] = type("D", (dict,), {})(subclass["protocolSection"])
    assert _c(subclass) is None


@built
def test_c_reports_unknown_keys_by_their_dotted_path_and_leaves_them_out() -> None:
    record = copy.deepcopy(REAL[0])
    record["protocolSection"]["statusModule"]["newField"] = {"x": [3, 1]}
    answer = _c(record)
    assert answer is not None
    assert answer[1] == ["protocolSection.statusModule.newField"]
    assert b"newField" not in answer[0]
    assert hash_and_unknown(record)[0] == hash_and_unknown(REAL[0])[0]


@built
def test_c_sorts_arrays_so_their_order_does_not_move_the_hash() -> None:
    first, second = copy.deepcopy(REAL[0]), copy.deepcopy(REAL[0])
    first["protocolSection"]["conditionsModule"]["conditions"] = ["b", "a", "c"]
    second["protocolSection"]["conditionsModule"]["conditions"] = ["c", "b", "a"]
    answer = _c(first)
    assert answer is not None and b'"conditions":["a","b","c"]' in answer[0]
    assert hash_and_unknown(first) == hash_and_unknown(second)


@built
@pytest.mark.parametrize("depth", [150, 254, 300, 2_000])
def test_c_leaves_deep_nesting_to_the_python_path(depth: int) -> None:
    """orjson refuses more than 254 levels; the C path declines past 200, so a C build and a Python-only
    install agree on every record (a hash, or the same error)."""
    value: Any = "x"
    for _ in range(depth):
        value = [value, "y"]  # lists: kept whatever the shape (objects' unknown keys would be left out)
    record = copy.deepcopy(REAL[0])
    record["derivedSection"] = {"miscInfoModule": {"submissionTracking": value}}
    assert (_c(record) is None) == (depth > 195)
    try:
        expected: Any = python_hash_and_unknown(record)
    except (TypeError, RecursionError) as exc:
        with pytest.raises(type(exc)):
            hash_and_unknown(record)
        return
    assert hash_and_unknown(record) == expected


@built
def test_c_leaves_out_members_set_to_null_as_the_walk_does() -> None:
    base = next(r for r in REAL if "whyStopped" not in r["protocolSection"]["statusModule"])
    record = copy.deepcopy(base)
    record["protocolSection"]["statusModule"]["whyStopped"] = None
    record["protocolSection"]["identificationModule"]["unknownToTheSchema"] = None  # still reported unknown
    c = _c(record)
    assert c is not None and c[0] == _c(base)[0] and c[1] == ["protocolSection.identificationModule.unknownToTheSchema"]
    assert hash_and_unknown(record) == slow_hash_and_unknown(record)
    assert hash_and_unknown(record)[0] == slow_hash_and_unknown(base)[0]


@built
@pytest.mark.parametrize(("path", "empty"), [
    (("conditionsModule", "keywords"), []), (("oversightModule",), {}), (("oversightModule",), []),
    (("oversightModule",), {"unknownToTheSchema": 1}), (("oversightModule",), {"isFdaRegulatedDrug": None}),
    (("oversightModule",), {"oversightHasDmc": None, "unknownToTheSchema": []}),
], ids=repr)
def test_c_leaves_empty_members_to_the_walk_which_leaves_them_out(path: tuple[str, ...], empty: Any) -> None:
    """An empty array or object (also one emptied by leaving out unknown keys or nulls) is an absent
    member: C declines the record, and every path gives the hash of the record without it."""
    base = next(r for r in REAL if "keywords" not in r["protocolSection"].get("conditionsModule", {"keywords": 0})
                and "oversightModule" not in r["protocolSection"])
    record = copy.deepcopy(base)
    node = record["protocolSection"]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = copy.deepcopy(empty)
    assert _c(record) is None
    assert (hash_and_unknown(record)[0], python_hash_and_unknown(record)[0], slow_hash_and_unknown(record)[0]) == (
        hash_and_unknown(base)[0],) * 3


def test_an_extension_built_from_an_older_canonical_c_is_not_used() -> None:
    """A stale build (no ``RULE``, or another one) would hash by the old canonical form under the new rule's
    name: the Python path answers instead."""
    import subprocess
    import sys

    script = ("import sys, types; stale = types.ModuleType('pipeline._canonical'); "
              "stale.canonical = lambda value, shape: (b'{}', []); sys.modules['pipeline._canonical'] = stale; "
              "from pipeline import hashing; print(hashing.implementation())")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "Python"
