"""``registered_vs_current`` and ``status_spans`` over real version pairs and edited copies of them."""

from __future__ import annotations

import copy
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest

from flows.inputs import utc_today
from pipeline import mutate
from pipeline.date_events import date_change
from pipeline.dates import parse_partial_date
from pipeline.versioning import RunContext
from tests.conftest import STUDIES_DIR, load, snapshot_pairs
from tests.fdaaa_support import store
from warehouse.analyses import date_shift_sql
from warehouse.rows import tombstones_table


def _rows(warehouse: Any, sql: str) -> list[dict[str, Any]]:
    with warehouse.connect() as con:
        result = con.execute(sql)
        columns = [d[0] for d in result.description]
        return [dict(zip(columns, row, strict=True)) for row in result.fetchall()]


def test_registered_vs_current_lists_outcome_enrollment_date_phase_and_arm_changes(tmp_path: Path) -> None:
    older, newer = snapshot_pairs()["NCT05766735"]  # real: both completion dates 2027-04-15 -> 2027-05-31
    third = copy.deepcopy(newer)
    p = third["protocolSection"]
    p["statusModule"]["lastUpdatePostDateStruct"]["date"] = "2026-06-01"
    outcomes = p["outcomesModule"]["primaryOutcomes"]
    first, second, _, fourth = (dict(o) for o in outcomes)
    kept_measure = dict(first, timeFrame="6 months")             # same measure, new time frame: reworded
    replaced = dict(second, measure="Weight change at 13.5 months")  # new text in the same place: reworded
    p["outcomesModule"]["primaryOutcomes"] = [kept_measure, replaced, fourth,
                                              {"measure": "Hypoglycaemia events", "timeFrame": "1 year"}]
    p["designModule"]["enrollmentInfo"] = {"count": 150, "type": "ACTUAL"}
    p["designModule"]["phases"] = ["PHASE2"]
    arms = p["armsInterventionsModule"]["armGroups"]
    p["armsInterventionsModule"]["armGroups"] = [arms[0], {"label": "Education only", "type": "OTHER"}]
    warehouse = store(tmp_path, [older, newer], [third])

    row = _rows(warehouse, "SELECT * FROM registered_vs_current")[0]
    text = {o["measure"]: o["measure"] + (f" [{o['timeFrame']}]" if o.get("timeFrame") else "") for o in outcomes}
    assert (row["first_version"], row["current_version"], row["registered_valid_from"]) == (1, 3, date(2025, 5, 7))
    # as the change feed pairs them: the third measure gone and one new measure are one outcome renamed
    # (a removed and an added outcome pair, most alike first, as many as the shorter side has)
    assert (row["primary_outcomes_added"], row["primary_outcomes_removed"]) == ([], [])
    assert [(r["before"], r["after"]) for r in row["primary_outcomes_reworded"]] == [
        (text[first["measure"]], f"{first['measure']} [6 months]"),
        (text[second["measure"]], f"Weight change at 13.5 months [{second['timeFrame']}]"),
        (text[outcomes[2]["measure"]], "Hypoglycaemia events [1 year]"),
    ]
    assert (row["enrollment_registered"], row["enrollment_current"], row["enrollment_type_registered"],
            row["enrollment_type_current"], row["enrollment_pct_change"]) == (200, 150, "ESTIMATED", "ACTUAL", -25.0)
    assert (row["start_shift_days"], row["primary_completion_shift_days"], row["completion_shift_days"]) == (0, 46, 46)
    assert (row["phases_registered"], row["phases_current"]) == (["NA"], ["PHASE2"])
    assert (row["arms_added"], row["arms_removed"]) == (["Education only"], [arms[1]["label"]])


def test_a_study_with_one_version_registered_equals_current(tmp_path: Path) -> None:
    older, _ = snapshot_pairs()["NCT05766735"]
    row = _rows(store(tmp_path, [older]), "SELECT * FROM registered_vs_current")[0]
    assert (row["primary_outcomes_added"], row["primary_outcomes_removed"], row["primary_outcomes_reworded"]) == (
        [], [], [])
    assert (row["enrollment_pct_change"], row["completion_shift_days"], row["arms_added"]) == (0.0, 0, [])


def test_status_spans_merge_versions_in_one_status_and_the_open_span_ends_today(tmp_path: Path) -> None:
    older, newer = snapshot_pairs()["NCT05766735"]  # RECRUITING in both
    def status(record: dict[str, Any], value: str, day: str) -> dict[str, Any]:
        record = copy.deepcopy(record)
        record["protocolSection"]["statusModule"]["overallStatus"] = value
        record["protocolSection"]["statusModule"]["lastUpdatePostDateStruct"]["date"] = day
        return record
    warehouse = store(tmp_path, [older, newer, status(newer, "ACTIVE_NOT_RECRUITING", "2026-05-01"),
                                 status(newer, "COMPLETED", "2026-06-11")])
    rows = _rows(warehouse, "SELECT span, status, from_date, to_date, days, is_open, first_version, last_version "
                            "FROM status_spans ORDER BY span")
    today = utc_today()
    assert [tuple(r.values()) for r in rows] == [
        (1, "RECRUITING", date(2025, 5, 7), date(2026, 5, 1), 359, False, 1, 2),
        (2, "ACTIVE_NOT_RECRUITING", date(2026, 5, 1), date(2026, 6, 11), 41, False, 3, 3),
        (3, "COMPLETED", date(2026, 6, 11), today, (today - date(2026, 6, 11)).days, True, 4, 4),
    ]


def test_a_measure_repeated_in_one_study_is_matched_by_its_place_among_its_namesakes(tmp_path: Path) -> None:
    """NCT04234217 (real) registers three primary outcomes with the same measure, told apart by their
    time frames: an unchanged copy rewords nothing; a changed time frame rewords that one only."""
    first = load(STUDIES_DIR / "NCT04234217.json")
    same = copy.deepcopy(first)
    same["protocolSection"]["statusModule"]["lastUpdatePostDateStruct"]["date"] = "2026-06-01"
    same["protocolSection"]["statusModule"]["overallStatus"] = "COMPLETED"  # a new version, outcomes as they were
    changed = copy.deepcopy(same)
    changed["protocolSection"]["statusModule"]["lastUpdatePostDateStruct"]["date"] = "2026-07-01"
    outcomes = changed["protocolSection"]["outcomesModule"]["primaryOutcomes"]
    outcomes[1] = dict(outcomes[1], timeFrame="12 months")
    unchanged = _rows(store(tmp_path / "a", [first, same]), "SELECT * FROM registered_vs_current")[0]
    assert (unchanged["current_version"], unchanged["primary_outcomes_reworded"],
            unchanged["primary_outcomes_added"], unchanged["primary_outcomes_removed"]) == (2, [], [], [])
    row = _rows(store(tmp_path / "b", [first, changed]), "SELECT * FROM registered_vs_current")[0]
    old = first["protocolSection"]["outcomesModule"]["primaryOutcomes"][1]
    assert row["primary_outcomes_reworded"] == [{"before": f"{old['measure']} [{old['timeFrame']}]",
                                                 "after": f"{old['measure']} [12 months]",
                                                 "description_before": old["description"],
                                                 "description_after": old["description"]}]
    assert (row["primary_outcomes_added"], row["primary_outcomes_removed"]) == ([], [])


def test_the_report_shows_the_description_of_an_outcome_whose_description_alone_changed(tmp_path: Path) -> None:
    """The report's registered-vs-current table showed "X → X" for an outcome whose measure and time frame
    stayed: the description that changed is shown instead, with the words that differ in sight."""
    from pipeline.report.analyses import registered_table

    first = load(STUDIES_DIR / "NCT04234217.json")
    changed = copy.deepcopy(first)
    changed["protocolSection"]["statusModule"]["lastUpdatePostDateStruct"]["date"] = "2026-07-01"
    outcome = changed["protocolSection"]["outcomesModule"]["primaryOutcomes"][1]
    old_description = outcome["description"]
    new_description = old_description + " Assessed by a blinded central reader."
    outcome["description"] = new_description
    row = _rows(store(tmp_path, [first, changed]), "SELECT * FROM registered_vs_current")[0]
    html = registered_table(row)
    text = f"{outcome['measure']} [{outcome['timeFrame']}]"
    assert f"{text} → {text}" not in html
    reworded = html.split('data-row="primary outcomes reworded"')[1].split("</tr>")[0]
    assert f"<div>{text}<div" in reworded
    assert 'data-description="changed">description: ' in reworded and "blinded central reader" in reworded
    assert html.count("→") - registered_table({**row, "primary_outcomes_reworded": []}).count("→") == 1


def test_a_removed_study_has_no_open_span_and_its_last_one_ends_at_the_removal(tmp_path: Path) -> None:
    older, newer = snapshot_pairs()["NCT05766735"]
    warehouse = store(tmp_path, [older, newer])
    ctx = RunContext("run-removal", datetime(2026, 8, 1, 9, 30, tzinfo=UTC), "api")
    with warehouse.writer(ctx.run_id) as run:
        run.append("study_versions", tombstones_table([("NCT05766735", 3, "removed")], ctx))
        run.commit()
    rows = _rows(warehouse, "SELECT status, from_date, to_date, days, is_open FROM status_spans")
    assert [tuple(r.values()) for r in rows] == [("RECRUITING", date(2025, 5, 7), date(2026, 8, 1), 451, False)]
    assert _rows(warehouse, "SELECT count(*) AS n FROM registered_vs_current") == [{"n": 0}]


@pytest.mark.usefixtures("prefect_api")
def test_after_a_backfill_the_registered_version_is_the_registration_itself(tmp_path: Path) -> None:
    from pipeline.markup import api_form
    from pipeline.registry.fake_server import FakeRegistry
    from tests.conftest import fast_sync
    from tests.test_backfill import HISTORY, NCT, backfill
    from warehouse import Warehouse

    directory = tmp_path / "warehouse"
    query = f"""SELECT first_version, current_version, registered_valid_from, registered_source, enrollment_registered,
                       enrollment_type_registered, enrollment_current, enrollment_type_current, enrollment_pct_change
                FROM registered_vs_current WHERE nct_id = '{NCT}'"""
    with FakeRegistry().start() as registry:
        registry.put(api_form(HISTORY.records[7]))  # first seen by a sync in July 2019, enrollment actual
        fast_sync(registry, directory)
        assert _rows(Warehouse(directory), query) == [{
            "first_version": 1, "current_version": 1, "registered_valid_from": date(2019, 7, 16),
            "registered_source": "api", "enrollment_registered": 16, "enrollment_type_registered": "ACTUAL",
            "enrollment_current": 16, "enrollment_type_current": "ACTUAL", "enrollment_pct_change": 0.0}]
        registry.put_history(HISTORY)
        backfill(registry, directory, NCT)
    assert _rows(Warehouse(directory), query) == [{  # registered on 2018-09-27 with 30 planned
        "first_version": 1, "current_version": 10, "registered_valid_from": date(2018, 9, 27),
        "registered_source": "history", "enrollment_registered": 30, "enrollment_type_registered": "ESTIMATED",
        "enrollment_current": 16, "enrollment_type_current": "ACTUAL", "enrollment_pct_change": -46.7}]


def test_registered_vs_current_shifts_follow_the_change_feeds_date_rule(tmp_path: Path) -> None:
    older, _ = snapshot_pairs()["NCT05766735"]
    registered = mutate.set_date(mutate.set_date(mutate.set_date(
        older, "completionDate", "2026-06"), "primaryCompletionDate", "2028-05-10"), "startDate", "2025")
    current = mutate.posted_on(mutate.set_date(mutate.set_date(mutate.set_date(
        registered, "completionDate", "2026-06-20"), "primaryCompletionDate", "2028-04"), "startDate", "2026-03-05"),
        date(2026, 6, 1))
    row = _rows(store(tmp_path, [registered], [current]), "SELECT * FROM registered_vs_current")[0]
    assert (row["completion_registered"], row["completion_current"], row["completion_shift_days"]) == (
        "2026-06", "2026-06-20", 0)  # refined within its month: not a slip
    assert row["primary_completion_shift_days"] == -10  # to the nearest day of April, not April 1st
    assert row["start_shift_days"] == 428  # 2025 (its first day) -> 2026-03-05


RAW_DATES = ["2027", "2028", "2027-12", "2028-01", "2028-02", "2028-04", "2028-05", "2027-12-31", "2028-01-01",
             "2028-02-29", "2028-04-30", "2028-05-10", "2028-05-31"]


def test_the_views_date_shift_agrees_with_date_change_for_every_pair_of_precisions() -> None:
    pairs = [(a, b) for a in RAW_DATES for b in RAW_DATES]
    expected = [date_change(parse_partial_date(a), parse_partial_date(b)).shift_days or 0 for a, b in pairs]
    first = "CAST(CASE length({0}) WHEN 4 THEN {0} || '-01-01' WHEN 7 THEN {0} || '-01' ELSE {0} END AS DATE)"
    sql = date_shift_sql(first.format("a"), "a", first.format("b"), "b")
    with duckdb.connect() as con:
        got = [con.execute(f"SELECT {sql} FROM (SELECT ? AS a, ? AS b)", [a, b]).fetchone()[0] for a, b in pairs]
    assert dict(zip(pairs, got, strict=True)) == dict(zip(pairs, expected, strict=True))
