"""Issue 13 item 3: element events do not depend on whether the array (or its module) existed before."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import mutate
from pipeline.changes import Change, Rules, VersionPair, derive_changes
from pipeline.diff import TYPED_ARRAYS
from tests.conftest import nct, real_records

RECORDS = real_records()
ELEMENT_EVENT = {"locations": "site_added", "armGroups": "arm_added", "interventions": "intervention_added",
                 "primaryOutcomes": "primary_outcome_changed"}
REMOVED_EVENT = {"locations": "site_removed", "armGroups": "arm_removed", "interventions": "intervention_removed",
                 "primaryOutcomes": "primary_outcome_changed"}


def rows(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[Any, ...]]:
    changes: list[Change] = derive_changes(VersionPair(nct(old), 1, 2, old, new, "run", None, None), Rules())
    return sorted((c.event, c.path, c.field, c.category, c.old_value, c.new_value, c.severity) for c in changes)


def _get(record: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = record
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    return node


CASES = [(i, path) for i, r in enumerate(RECORDS) for path in sorted(TYPED_ARRAYS) if _get(r, path)]


def test_every_typed_array_has_real_cases() -> None:
    assert {path[-1] for _, path in CASES} == set(ELEMENT_EVENT)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(CASES))
def test_an_array_that_appears_gives_the_events_of_an_empty_array_filling(case: Any) -> None:
    i, path = case
    record = RECORDS[i]
    without = mutate.drop_path(record, path)
    empty = mutate.set_path(record, path, [])
    appeared = rows(without, record)
    assert appeared == rows(empty, record)
    name, elements = path[-1], _get(record, path)
    assert [r[0] for r in appeared] == [ELEMENT_EVENT[name]] * len(elements)
    assert all(r[4] is None and r[5] for r in appeared)  # each element named by its own text
    vanished = rows(record, without)
    assert vanished == rows(record, empty)
    assert [r[0] for r in vanished] == [REMOVED_EVENT[name]] * len(elements)
    assert all(r[4] and r[5] is None for r in vanished)


MODULES = sorted({(i, path[:2]) for i, path in CASES})


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(MODULES))
def test_a_module_that_appears_gives_the_events_of_an_empty_module_filling(case: Any) -> None:
    i, module = case
    record = RECORDS[i]
    without = mutate.drop_path(record, module)
    empty = mutate.set_path(record, module, {})
    assert rows(without, record) == rows(empty, record)
    assert rows(record, without) == rows(record, empty)
    expected = sum(len(_get(record, p)) for p in TYPED_ARRAYS if p[:2] == module and _get(record, p))
    typed = [r for r in rows(without, record) if r[0] != "field_changed"]
    assert len(typed) == expected


def test_the_first_site_of_a_not_yet_recruiting_study_is_one_site_added() -> None:
    sited = next(r for r in RECORDS if _get(r, ("protocolSection", "contactsLocationsModule", "locations")))
    site = _get(sited, ("protocolSection", "contactsLocationsModule", "locations"))[0]
    bare = next(r for r in RECORDS if _get(r, ("protocolSection", "contactsLocationsModule"))
                and not _get(r, ("protocolSection", "contactsLocationsModule", "locations")))
    opened = mutate.add_site(bare, site)
    assert [(r[0], r[5], r[6]) for r in rows(bare, opened)] == [("site_added", site["facility"], "minor")]


def test_a_newly_posted_results_section_stays_one_field_change() -> None:
    record = next(r for r in RECORDS if "resultsSection" in r)
    before = mutate.drop_path(record, ("resultsSection",))
    assert [(r[0], r[1]) for r in rows(before, record)] == [("field_changed", "$.resultsSection")]
