"""Issue 4: field-level diffs and typed change events, on real records and real version pairs."""

from __future__ import annotations

import copy
import random
from datetime import UTC, date, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import mutate
from pipeline.changes import Change, Rules, VersionPair, derive_changes
from pipeline.diff import diff, keyed
from tests.conftest import nct, real_records, snapshot_pairs

NOW = datetime(2026, 11, 24, tzinfo=UTC)
RECORDS = real_records()
record_index = st.integers(min_value=0, max_value=len(RECORDS) - 1)


def changes(old: dict[str, Any], new: dict[str, Any], rules: Rules | None = None) -> list[Change]:
    return derive_changes(VersionPair(nct(old), 1, 2, old, new, "run", NOW, None), rules or Rules())


def typed(rows: list[Change]) -> list[tuple[Any, ...]]:
    return sorted((c.event, c.field, c.old_value, c.new_value, c.shift_days, c.pct_change)
                  for c in rows if c.event != "field_changed")


def test_the_real_nct05766735_pair_is_two_46_day_slips_and_registry_bookkeeping() -> None:
    older, newer = snapshot_pairs()["NCT05766735"]
    rows = changes(older, newer)
    assert typed(rows) == [
        ("date_slipped", "completion date", "2027-04-15", "2027-05-31", 46, None),
        ("date_slipped", "primary completion date", "2027-04-15", "2027-05-31", 46, None),
    ]
    rest = [(c.field, c.category, c.severity, c.old_value, c.new_value) for c in rows if c.event == "field_changed"]
    assert sorted(rest) == [
        ("last update post date", "registry", "info", "2025-05-07", "2026-04-09"),
        ("last update submit date", "registry", "info", "2025-05-05", "2026-04-07"),
    ]
    assert {c.severity for c in rows if c.event == "date_slipped"} == {"notable"}


def test_the_seven_derived_only_pairs_yield_no_events() -> None:
    pairs = {k: v for k, v in snapshot_pairs().items() if k != "NCT05766735"}
    assert len(pairs) == 7
    assert {k: changes(a, b) for k, (a, b) in pairs.items()} == {k: [] for k in pairs}


@settings(max_examples=60, deadline=None)
@given(record_index)
def test_a_record_diffed_with_itself_has_no_changes(i: int) -> None:
    assert diff(RECORDS[i], copy.deepcopy(RECORDS[i])) == []


def _shuffled(value: Any, rng: random.Random, name: str = "") -> Any:
    """Every array permuted, except that elements sharing an identity keep their order (that order is
    what tells duplicate sites apart)."""
    if isinstance(value, dict):
        return {k: _shuffled(v, rng, k) for k, v in value.items()}
    if isinstance(value, list):
        items = [_shuffled(v, rng, name) for v in value]
        keys = list(keyed(items, name))
        groups: dict[str, list[Any]] = {}
        for key, item in zip(keys, items, strict=True):
            groups.setdefault(key.split(" #")[0], []).append(item)
        order = list(groups)
        rng.shuffle(order)
        return [item for key in order for item in groups[key]]
    return value


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(record_index, st.integers(min_value=0, max_value=2**32))
def test_reordering_any_array_is_not_a_change(i: int, seed: int) -> None:
    shuffled = _shuffled(RECORDS[i], random.Random(seed))
    assert changes(RECORDS[i], shuffled) == []


def _with_sites(n: int) -> list[dict[str, Any]]:
    out = []
    for r in RECORDS:
        sites = r["protocolSection"].get("contactsLocationsModule", {}).get("locations", [])
        keys = list(keyed(sites, "locations"))
        if len(sites) >= n and all(" #" not in k for k in keys) and all(s.get("status") for s in sites):
            out.append(r)
    return out


SITED = _with_sites(2)
interventional = [r for r in RECORDS if r["protocolSection"].get("designModule", {}).get("studyType") ==
                  "INTERVENTIONAL" and r["protocolSection"].get("armsInterventionsModule", {}).get("armGroups")
                  and r["protocolSection"].get("outcomesModule", {}).get("primaryOutcomes")]


def _status_of(r: dict[str, Any]) -> str:
    return str(r["protocolSection"]["statusModule"]["overallStatus"])


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(interventional), st.sampled_from(["COMPLETED", "SUSPENDED", "ACTIVE_NOT_RECRUITING"]))
def test_a_status_change_is_one_status_event(record: dict[str, Any], status: str) -> None:
    if _status_of(record) == status:
        return
    rows = changes(record, mutate.set_status(record, status))
    assert typed(rows) == [("status_changed", "overall status", _status_of(record), status, None, None)]
    assert rows[0].severity == ("critical" if status == "SUSPENDED" else "notable")


@settings(max_examples=40, deadline=None)
@given(st.sampled_from([r for r in RECORDS if r["protocolSection"]["designModule"].get("enrollmentInfo", {})
                        .get("count")]), st.integers(min_value=1, max_value=5000))
def test_an_enrollment_change_reports_its_percentage(record: dict[str, Any], count: int) -> None:
    old = record["protocolSection"]["designModule"]["enrollmentInfo"]["count"]
    rows = changes(record, mutate.set_enrollment(record, count))
    if count == old:
        assert rows == []
        return
    pct = (count - old) * 100.0 / old
    assert typed(rows) == [("enrollment_changed", "enrollment", str(old), str(count), None, round(pct, 2))]
    assert rows[0].severity == ("notable" if abs(pct) >= 20 else "minor")


DATE_FIELDS = {"startDate": "start date", "primaryCompletionDate": "primary completion date",
               "completionDate": "completion date"}
full_dates = [(r, f) for r in RECORDS for f in DATE_FIELDS
              if len(r["protocolSection"]["statusModule"].get(f"{f}Struct", {}).get("date", "")) == 10]


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(full_dates), st.integers(min_value=-400, max_value=400).filter(lambda d: d != 0))
def test_moving_a_date_reports_slip_or_advance_in_days(case: tuple[dict[str, Any], str], days: int) -> None:
    record, field = case
    moved = mutate.shift_date(record, field, days)
    old = record["protocolSection"]["statusModule"][f"{field}Struct"]["date"]
    new = moved["protocolSection"]["statusModule"][f"{field}Struct"]["date"]
    event = "date_slipped" if days > 0 else "date_advanced"
    rows = changes(record, moved)
    assert typed(rows) == [(event, DATE_FIELDS[field], old, new, days, None)]
    assert rows[0].severity == ("notable" if abs(days) >= 30 else "minor")


def test_a_month_refined_to_a_day_in_it_is_precision_not_a_slip() -> None:
    record = next(r for r, f in full_dates if f == "completionDate")
    month = mutate.set_date(record, "completionDate", "2028-05")
    rows = changes(month, mutate.set_date(record, "completionDate", "2028-05-30"))
    assert typed(rows) == [("date_precision_refined", "completion date", "2028-05", "2028-05-30", None, None)]
    later = changes(month, mutate.set_date(record, "completionDate", "2028-07-15"))
    assert typed(later) == [("date_slipped", "completion date", "2028-05", "2028-07-15", 75, None)]


def test_estimated_becoming_actual_is_reported_for_dates_and_enrollment() -> None:
    record = next(r for r in RECORDS if r["protocolSection"]["statusModule"].get("completionDateStruct", {})
                  .get("type") == "ESTIMATED" and r["protocolSection"]["designModule"].get("enrollmentInfo", {})
                  .get("type") == "ESTIMATED")
    done = mutate.set_enrollment(mutate.set_date(
        record, "completionDate", record["protocolSection"]["statusModule"]["completionDateStruct"]["date"],
        "ACTUAL"), record["protocolSection"]["designModule"]["enrollmentInfo"]["count"], "ACTUAL")
    assert [e[0] for e in typed(changes(record, done))] == ["date_actualized", "enrollment_actualized"]


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(SITED), st.data())
def test_sites_added_removed_and_restatused_are_reported_by_facility(record: dict[str, Any], data: Any) -> None:
    sites = record["protocolSection"]["contactsLocationsModule"]["locations"]
    i = data.draw(st.integers(min_value=0, max_value=len(sites) - 1))
    facility = sites[i].get("facility")
    assert typed(changes(record, mutate.remove_site(record, i))) == [
        ("site_removed", "site", facility, None, None, None)]
    donor = data.draw(st.sampled_from([s for r in SITED for s in r["protocolSection"]["contactsLocationsModule"]
                                       ["locations"] if s.get("facility") and s not in sites]))
    assert typed(changes(record, mutate.add_site(record, donor))) == [
        ("site_added", "site", None, donor["facility"], None, None)]
    new_status = "COMPLETED" if sites[i]["status"] != "COMPLETED" else "RECRUITING"
    rows = changes(record, mutate.set_site_status(record, i, new_status))
    assert typed(rows) == [("site_status_changed", f"site status ({facility})", sites[i]["status"], new_status,
                            None, None)]


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(interventional), st.sampled_from(interventional))
def test_an_added_arm_is_reported_by_label(record: dict[str, Any], donor: dict[str, Any]) -> None:
    arm = copy.deepcopy(donor["protocolSection"]["armsInterventionsModule"]["armGroups"][0])
    labels = {a["label"] for a in record["protocolSection"]["armsInterventionsModule"]["armGroups"]}
    if arm["label"] in labels:
        arm["label"] += " (new cohort)"
    assert typed(changes(record, mutate.add_arm(record, arm))) == [
        ("arm_added", "arm", None, arm["label"], None, None)]


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(interventional))
def test_a_changed_primary_outcome_is_one_notable_event(record: dict[str, Any]) -> None:
    old = record["protocolSection"]["outcomesModule"]["primaryOutcomes"][0]["measure"]
    rows = changes(record, mutate.set_primary_outcome_measure(record, 0, old + " at 12 months"))
    assert typed(rows) == [("primary_outcome_changed", "primary outcome", old, old + " at 12 months", None, None)]
    assert rows[0].severity == "notable"


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(interventional), st.integers(min_value=40, max_value=300),
       st.sampled_from(["TERMINATED", "COMPLETED"]))
def test_combined_mutations_yield_exactly_the_matching_events(record: dict[str, Any], days: int,
                                                              status: str) -> None:
    if _status_of(record) == status or "primaryCompletionDateStruct" not in record["protocolSection"]["statusModule"]:
        return
    new = mutate.shift_date(mutate.set_status(record, status), "primaryCompletionDate", days)
    events = [e[0] for e in typed(changes(record, new))]
    assert events == sorted(["status_changed", "date_slipped"])


def test_raising_a_threshold_changes_only_the_severities_it_governs() -> None:
    older, newer = snapshot_pairs()["NCT05766735"]
    default = changes(older, newer)
    strict = changes(older, newer, Rules(date_shift_days_notable=60))
    assert [(c.change_id, c.event, c.old_value, c.new_value) for c in default] == [
        (c.change_id, c.event, c.old_value, c.new_value) for c in strict]
    assert [c.severity for c in default if c.event == "date_slipped"] == ["notable", "notable"]
    assert [c.severity for c in strict if c.event == "date_slipped"] == ["minor", "minor"]
    assert [c.severity for c in default if c.event != "date_slipped"] == [
        c.severity for c in strict if c.event != "date_slipped"]


def test_first_versions_are_news_except_in_a_scopes_baseline_run() -> None:
    record = RECORDS[0]
    pair = VersionPair(nct(record), None, 1, None, record, "run", NOW, date(2026, 1, 1))
    assert [c.event for c in derive_changes(pair, Rules())] == ["study_added"]
    assert derive_changes(VersionPair(nct(record), None, 1, None, record, "run", NOW, None, baseline=True),
                          Rules()) == []
    removed = derive_changes(VersionPair(nct(record), 1, 2, record, None, "run", NOW, None, new_removed=True), Rules())
    assert [(c.event, c.severity) for c in removed] == [("study_removed", "critical")]
    back = derive_changes(VersionPair(nct(record), 2, 3, record, record, "run", NOW, None, old_removed=True), Rules())
    assert [c.event for c in back] == ["study_reappeared"]


def test_renaming_one_of_two_outcomes_with_the_same_measure_is_one_change() -> None:
    record = next(r for r in RECORDS if nct(r) == "NCT05854069")  # real: two primary outcomes share a measure
    measures = [o["measure"] for o in record["protocolSection"]["outcomesModule"]["primaryOutcomes"]]
    assert measures[0] == measures[1]
    renamed = mutate.set_primary_outcome_measure(record, 0, measures[0] + " at 12 months")
    assert typed(changes(record, renamed)) == [
        ("primary_outcome_changed", "primary outcome", measures[0], measures[0] + " at 12 months", None, None)]
    swapped = copy.deepcopy(record)
    outcomes = swapped["protocolSection"]["outcomesModule"]["primaryOutcomes"]
    outcomes.reverse()
    assert changes(record, swapped) == []  # identical twins pair by content, so reordering them is no change


def _with_phases(phases: list[str]) -> dict[str, Any]:
    return next(r for r in RECORDS if r["protocolSection"].get("designModule", {}).get("phases") == phases)


PHASES = ("protocolSection", "designModule", "phases")


def test_a_phase_change_reports_the_whole_phase_lists_before_and_after() -> None:
    one, two = _with_phases(["PHASE1"]), _with_phases(["PHASE1", "PHASE2"])
    cases = [(one, ["PHASE1", "PHASE2"], '["PHASE1"]', '["PHASE1","PHASE2"]'),
             (two, ["PHASE2"], '["PHASE1","PHASE2"]', '["PHASE2"]'),
             (two, ["PHASE2", "PHASE3"], '["PHASE1","PHASE2"]', '["PHASE2","PHASE3"]'),
             (one, ["PHASE2"], '["PHASE1"]', '["PHASE2"]')]
    for record, phases, old, new in cases:
        rows = changes(record, mutate.set_path(record, PHASES, phases))
        assert typed(rows) == [("phase_changed", "phase", old, new, None, None)]
        assert rows[0].path == "$.protocolSection.designModule.phases"
    gone = changes(two, mutate.drop_path(two, PHASES))
    assert typed(gone) == [("phase_changed", "phase", '["PHASE1","PHASE2"]', None, None, None)]
    back = changes(mutate.drop_path(two, PHASES), two)
    assert typed(back) == [("phase_changed", "phase", None, '["PHASE1","PHASE2"]', None, None)]


def test_a_dropped_outcome_and_a_reworded_one_are_paired_by_their_text_not_their_place() -> None:
    record = next(r for r in RECORDS if nct(r) == "NCT03914547")  # real: two primary outcomes
    first, second = (o["measure"] for o in record["protocolSection"]["outcomesModule"]["primaryOutcomes"])
    outcomes = ("protocolSection", "outcomesModule", "primaryOutcomes")
    new = mutate.drop_path(mutate.set_primary_outcome_measure(record, 1, second + " (revised)"), (*outcomes, 0))
    assert typed(changes(record, new)) == sorted([
        ("primary_outcome_changed", "primary outcome", first, None, None, None),
        ("primary_outcome_changed", "primary outcome", second, second + " (revised)", None, None)])
    # the reverse: a new outcome placed first, the second reworded
    added = {"measure": "Time in range", "timeFrame": "6 months"}
    reworded = mutate.set_primary_outcome_measure(record, 1, second + " (revised)")
    listed = reworded["protocolSection"]["outcomesModule"]["primaryOutcomes"]
    grown = mutate.set_path(reworded, outcomes, [added, *listed])
    assert [(c.event, c.old_value, c.new_value) for c in changes(record, grown)] == [
        ("primary_outcome_changed", second, second + " (revised)"),
        ("primary_outcome_changed", None, "Time in range")]


def test_enrollment_severity_compares_the_exact_percentage_not_the_rounded_one() -> None:
    record = next(r for r in RECORDS if nct(r) == "NCT00258583")
    rows = changes(mutate.set_enrollment(record, 30001), mutate.set_enrollment(record, 36001))  # +19.9993%
    assert [(c.event, c.pct_change, c.severity) for c in rows] == [("enrollment_changed", 20.0, "minor")]
    rows = changes(mutate.set_enrollment(record, 30000), mutate.set_enrollment(record, 36000))  # +20% exactly
    assert [(c.event, c.pct_change, c.severity) for c in rows] == [("enrollment_changed", 20.0, "notable")]
    lower = changes(mutate.set_enrollment(record, 30001), mutate.set_enrollment(record, 24002))  # -19.9993%
    assert [(c.pct_change, c.severity) for c in lower] == [(-20.0, "minor")]
