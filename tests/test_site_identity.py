"""Issue 19 item 7: a site keeps its identity through small edits of its identity fields (real sites)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import mutate
from pipeline.changes import Change, Rules, VersionPair, derive_changes
from pipeline.sites import normalised, site_name
from tests.conftest import nct, real_records

RECORDS = real_records()
Site = dict[str, Any]


def sites_of(record: dict[str, Any]) -> list[Site]:
    sites: list[Site] = record["protocolSection"].get("contactsLocationsModule", {}).get("locations", [])
    return sites


def changes(old: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    return derive_changes(VersionPair(nct(old), 1, 2, old, new, "run", None, None), Rules())


def typed(rows: list[Change]) -> list[tuple[Any, ...]]:
    return sorted((c.event, c.field, c.old_value, c.new_value) for c in rows if c.event != "field_changed")


def edit_site(record: dict[str, Any], index: int, edit: Callable[[Site], None]) -> dict[str, Any]:
    out = copy.deepcopy(record)
    edit(sites_of(out)[index])
    return out


# (record index, site index) of every real site with a status
STATUSED = [(i, j) for i, r in enumerate(RECORDS) for j, s in enumerate(sites_of(r)) if s.get("status")]


def _trailing_space(site: Site) -> None:
    if site.get("facility"):
        site["facility"] += " "


def _upper_case(site: Site) -> None:
    if site.get("facility"):
        site["facility"] = site["facility"].upper()


def _no_zip(site: Site) -> None:
    site.pop("zip", None)


def _no_state(site: Site) -> None:
    site.pop("state", None)


EDITS = {"trailing space": _trailing_space, "upper case": _upper_case, "zip filled in": _no_zip,
         "state filled in": _no_state}


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(STATUSED), st.sampled_from(sorted(EDITS)), st.booleans())
def test_an_identity_edit_with_a_status_change_is_one_status_change(case: tuple[int, int], edit: str,
                                                                    forward: bool) -> None:
    i, j = case
    record = RECORDS[i]
    site = sites_of(record)[j]
    edited = edit_site(record, j, EDITS[edit])
    new_status = "COMPLETED" if site["status"] != "COMPLETED" else "RECRUITING"
    moved = mutate.set_site_status(record, j, new_status)
    old, new = (edited, moved) if forward else (mutate.set_site_status(edited, j, new_status), record)
    before, after = (sites_of(old)[j]["status"], sites_of(new)[j]["status"])
    rows = changes(old, new)
    assert typed(rows) == [("site_status_changed", f"site status ({site_name(sites_of(new)[j])})", before, after)]
    assert {c.category for c in rows} <= {"sites"}


DONORS = [s for r in RECORDS for s in sites_of(r)]


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(STATUSED), st.sampled_from(DONORS))
def test_another_real_site_in_its_place_is_a_removal_and_an_addition(case: tuple[int, int], donor: Site) -> None:
    i, j = case
    record, site = RECORDS[i], sites_of(RECORDS[i])[j]

    def same(a: Site, b: Site, field: str) -> bool:
        return normalised(str(a.get(field) or "")) == normalised(str(b.get(field) or ""))

    if same(site, donor, "facility") or same(site, donor, "city") or any(
            same(s, donor, "facility") and same(s, donor, "city") for s in sites_of(record)):
        return  # the same site, or one the study already has
    replaced = edit_site(record, j, lambda s: (s.clear(), s.update(copy.deepcopy(donor))))
    assert typed(changes(record, replaced)) == sorted([
        ("site_added", "site", None, site_name(donor)), ("site_removed", "site", site_name(site), None)])


def test_a_site_without_facility_is_named_by_its_place() -> None:
    i, j = next((i, j) for i, r in enumerate(RECORDS) for j, s in enumerate(sites_of(r)) if not s.get("facility"))
    record = mutate.set_site_status(RECORDS[i], j, "RECRUITING")  # none of the 69 real ones has a status
    site = sites_of(record)[j]
    place = ", ".join(site[k] for k in ("city", "state", "country") if site.get(k))
    assert site_name(site) == place and place
    assert typed(changes(record, mutate.set_site_status(record, j, "COMPLETED"))) == [
        ("site_status_changed", f"site status ({place})", "RECRUITING", "COMPLETED")]
    assert typed(changes(record, mutate.remove_site(record, j))) == [("site_removed", "site", place, None)]
    assert typed(changes(mutate.remove_site(record, j), record)) == [("site_added", "site", None, place)]


def test_research_sites_in_two_cities_are_two_sites() -> None:
    research = [(i, j) for i, r in enumerate(RECORDS) for j, s in enumerate(sites_of(r))
                if s.get("facility") == "Research Site"]
    i, j = research[0]
    site = sites_of(RECORDS[i])[j]
    other = next(sites_of(RECORDS[a])[b] for a, b in research
                 if sites_of(RECORDS[a])[b].get("city") != site.get("city")
                 and sites_of(RECORDS[a])[b].get("country") == site.get("country"))
    moved = edit_site(RECORDS[i], j, lambda s: s.update(city=other["city"], zip=other.get("zip")))
    assert [e[0] for e in typed(changes(RECORDS[i], moved))] == ["site_added", "site_removed"]


ARMED = [i for i, r in enumerate(RECORDS) if r["protocolSection"].get("armsInterventionsModule", {}).get("armGroups")
         and r["protocolSection"]["armsInterventionsModule"].get("interventions")]


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(ARMED), st.sampled_from(["armGroups", "interventions"]))
def test_an_arm_or_intervention_renamed_in_case_or_spacing_keeps_its_identity(i: int, array: str) -> None:
    record = RECORDS[i]
    field = "label" if array == "armGroups" else "name"
    edited = copy.deepcopy(record)
    element = edited["protocolSection"]["armsInterventionsModule"][array][0]
    element[field] = " " + element[field].upper() + " "
    element["description"] = element.get("description", "") + " (amended)"
    rows = changes(record, edited)
    assert typed(rows) == []
    assert sorted(c.path.rsplit(".", 1)[-1] for c in rows) == sorted(["description", field])


def test_namesake_sites_reordered_with_their_contacts_are_no_change_as_for_the_hash() -> None:
    """Two sites sharing every identity field but differing in status, delivered in the other order
    with each site's contacts reversed too: the hash sees the same content, so must the diff."""
    from pipeline.diff import diff
    from pipeline.hashing import content_hash

    record = next(r for r in RECORDS if any(len(s.get("contacts", [])) >= 2 for s in sites_of(r)))
    site = next(s for s in sites_of(record) if len(s.get("contacts", [])) >= 2)
    old = copy.deepcopy(record)
    twin_a, twin_b = copy.deepcopy(site), copy.deepcopy(site)
    twin_a["status"], twin_b["status"] = "RECRUITING", "COMPLETED"
    sites_of(old)[:] = [twin_a, twin_b]
    new = copy.deepcopy(old)
    sites_of(new).reverse()
    for s in sites_of(new):
        s["contacts"].reverse()
    assert content_hash(old) == content_hash(new)
    assert diff(old, new) == []
    assert changes(old, new) == []
