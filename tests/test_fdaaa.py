"""FDAAA 801 results reporting (../shared/FDAAA_RULES.md) judged by ``fdaaa_as_of(d)`` in a real warehouse,
on copies of real records with dates, flags, results and QC submissions edited."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.fdaaa import counted_submission, end_of_period, qc_days
from pipeline.parse import parse_record
from pipeline.schema import SubmissionInfo
from pipeline.versioning import RunContext, plan_batch
from tests.conftest import real_records
from tests.fdaaa_support import ABSENT, FLAGLESS_BASE, judge, store, trial
from warehouse import Warehouse
from warehouse.analyses import qc_counted, qc_last_cancelled, qc_newest_cancelled
from warehouse.rows import plan_tables

# P = 2020-06-30 (primary completion): due date P + 365 days = 2021-06-30; due once the date is after
# P + 1 calendar year + 30 days, i.e. from 2021-07-31.
STARTS = {"ACT": "2018-03-01", "pACT": "2016-05-01"}
CANCELLED = {"releaseDate": "2021-07-05", "unreleaseDate": "2021-07-20"}
# (name, edits, as_of, status, days_late, results_submitted_date)
STATUS_CASES: list[tuple[str, dict[str, Any], str, str, int | None, str | None]] = [
    ("ongoing: the day before it is due", {}, "2021-07-30", "ongoing", None, None),
    ("overdue: the first day it is due", {}, "2021-07-31", "overdue", 31, None),
    ("reported before it is due", {"results": "2021-05-01"}, "2021-07-01", "reported", None, "2021-05-01"),
    ("reported on the due date", {"results": "2021-06-30"}, "2022-01-01", "reported", None, "2021-06-30"),
    ("reported one day late, no grace", {"results": "2021-07-01"}, "2022-01-01", "reported-late", 1, "2021-07-01"),
    ("QC submission in time counts as reporting", {"qc": [{"releaseDate": "2021-06-01"}]}, "2022-01-01",
     "reported", None, "2021-06-01"),
    ("QC submission 10 days late", {"qc": [{"releaseDate": "2021-07-10", "resetDate": "2021-08-01"}]},
     "2022-01-01", "reported-late", 10, "2021-07-10"),
    ("cancelled QC submission", {"qc": [CANCELLED]}, "2022-01-01", "overdue-cancelled", 185, None),
]


def study_of_case(number: int) -> str:
    """The NCT id the ``number``-th case's trial has in a warehouse that holds every case's trial."""
    return f"NCT9{number:07d}"


STATUS_TRIALS = [(kind, case) for case in STATUS_CASES for kind in STARTS]


@pytest.fixture(scope="module")
def every_status_trial(tmp_path_factory: pytest.TempPathFactory) -> Warehouse:
    """Each case of ``test_every_status_for_acts_and_probable_acts`` as a study of its own in one warehouse
    (one commit, not one per case): a trial is judged on its own record."""
    return store(tmp_path_factory.mktemp("fdaaa-status"), [
        trial(study_of_case(n), start=STARTS[kind], **case[1]) for n, (kind, case) in enumerate(STATUS_TRIALS, 1)])


@pytest.mark.parametrize("kind", ["ACT", "pACT"])
@pytest.mark.parametrize(("name", "edits", "as_of", "status", "days_late", "submitted"), STATUS_CASES,
                         ids=[c[0] for c in STATUS_CASES])
def test_every_status_for_acts_and_probable_acts(every_status_trial: Warehouse, kind: str, name: str,
                                                 edits: dict[str, Any], as_of: str, status: str,
                                                 days_late: int | None, submitted: str | None) -> None:
    [number] = [n for n, (k, case) in enumerate(STATUS_TRIALS, 1) if (k, case[0]) == (kind, name)]
    row = judge(every_status_trial, as_of)[study_of_case(number)]
    assert (row["act_kind"], row["status"], row["days_late"]) == (kind, status, days_late)
    assert row["results_submitted_date"] == (date.fromisoformat(submitted) if submitted else None)
    assert (row["completion_date_used"], row["due_date"]) == (date(2020, 6, 30), date(2021, 6, 30))
    assert row["is_due"] == (as_of >= "2021-07-31")


def test_the_flagless_path_needs_a_covered_intervention_and_a_site_whose_country_equals_a_us_name(
        tmp_path: Path) -> None:
    def flagless(nct_id: str, countries: list[str], types: tuple[str, ...] = ("DRUG", "OTHER")) -> dict[str, Any]:
        return trial(nct_id, base=FLAGLESS_BASE, start="2016-05-01", drug=ABSENT, device=ABSENT,
                     countries=countries, intervention_types=types)

    warehouse = store(tmp_path, [
        flagless("NCT90000001", ["France", "United States"]),
        flagless("NCT90000002", ["Puerto Rico"], ("GENETIC",)),
        flagless("NCT90000003", ["Virgin Islands (U.S.)"], ("RADIATION",)),
        flagless("NCT90000004", ["United States Minor Outlying Islands"]),  # a substring match is not enough
        flagless("NCT90000005", ["United States"], ("BEHAVIORAL", "OTHER")),  # no covered intervention
        flagless("NCT90000006", ["Canada"]),
        trial("NCT90000007", start="2016-05-01", drug=False, device=ABSENT),  # one flag false, one absent
        trial("NCT90000008", start="2016-05-01", drug=False, device=False),
        trial("NCT90000009", start="2018-05-01", drug=ABSENT, device=ABSENT),  # after 2017 without flags
        trial("NCT90000010", start="2016-05-01", device=True, drug=ABSENT),  # flag-yes: no site condition
    ])
    kinds = {n: r["act_kind"] for n, r in judge(warehouse, "2022-01-01").items()}
    assert kinds == {"NCT90000001": "pACT", "NCT90000002": "pACT", "NCT90000003": "pACT", "NCT90000010": "pACT"}


CONDITION_CASES: list[tuple[dict[str, Any], bool]] = [
    ({"phases": ("PHASE1", "PHASE2")}, True),
    ({"phases": ("PHASE2", "PHASE3")}, True),
    ({"phases": ("PHASE3",)}, True),
    ({"phases": ("PHASE4",)}, True),
    ({"phases": ("NA",)}, True),
    ({"phases": ("PHASE1",)}, False),
    ({"phases": ("EARLY_PHASE1",)}, False),
    ({"phases": ABSENT}, False),
    ({"purpose": "DEVICE_FEASIBILITY", "device": True}, False),
    ({"purpose": ABSENT}, True),
    ({"status": "WITHDRAWN"}, False),
    ({"status": "TERMINATED"}, True),
    ({"status": "SUSPENDED"}, True),
    ({"status": "UNKNOWN"}, True),
    ({"study_type": "OBSERVATIONAL"}, False),
    ({"start": ABSENT}, False),
    ({"drug": False, "device": True}, True),
    ({"drug": False, "device": False}, False),
]


def condition_case_id(edits: dict[str, Any]) -> str:
    """``phases=PHASE1+PHASE2``, ``start=absent``: the same on every xdist worker (no object addresses)."""
    def shown(value: Any) -> str:
        if value is ABSENT:
            return "absent"
        return "+".join(value) if isinstance(value, tuple) else str(value)
    return ",".join(f"{key}={shown(value)}" for key, value in edits.items())


@pytest.fixture(scope="module")
def judged_condition_trials(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Each case of ``test_the_shared_conditions_of_an_applicable_trial`` as a study of its own in one
    warehouse (one commit, not one per case), judged on 2022-01-01: a trial is judged on its own record."""
    warehouse = store(tmp_path_factory.mktemp("fdaaa-conditions"), [
        trial(study_of_case(n), **edits) for n, (edits, _) in enumerate(CONDITION_CASES, 1)])
    return judge(warehouse, "2022-01-01")


@pytest.mark.parametrize("number", range(1, len(CONDITION_CASES) + 1),
                         ids=[condition_case_id(edits) for edits, _ in CONDITION_CASES])
def test_the_shared_conditions_of_an_applicable_trial(judged_condition_trials: dict[str, dict[str, Any]],
                                                      number: int) -> None:
    edits, qualifies = CONDITION_CASES[number - 1]
    assert (study_of_case(number) in judged_condition_trials) is qualifies, edits


def test_a_month_only_start_in_january_2017_is_its_last_day_so_an_act(tmp_path: Path) -> None:
    warehouse = store(tmp_path, [trial("NCT90000001", start="2017-01"), trial("NCT90000002", start="2017-01-17")])
    rows = judge(warehouse, "2022-01-01")
    assert rows["NCT90000001"]["act_kind"] == "ACT" and rows["NCT90000001"]["start_date"] == date(2017, 1, 31)
    assert rows["NCT90000002"]["act_kind"] == "pACT"


def test_month_and_year_only_completion_dates_count_from_the_end_of_their_period(tmp_path: Path) -> None:
    warehouse = store(tmp_path, [trial("NCT90000001", primary_completion="2020-02"),
                                 trial("NCT90000002", primary_completion="2020")])
    rows = judge(warehouse, "2022-01-01")
    assert rows["NCT90000001"]["completion_date_used"] == date(2020, 2, 29)
    assert rows["NCT90000002"]["completion_date_used"] == date(2020, 12, 31)


def test_without_a_primary_completion_the_completion_date_decides_both_pact_and_due_date(tmp_path: Path) -> None:
    warehouse = store(tmp_path, [
        trial("NCT90000001", start="2016-05-01", primary_completion=ABSENT, completion="2019-03-31"),
        trial("NCT90000002", start="2016-05-01", primary_completion=ABSENT, completion="2016-12-31"),
        # the primary completion wins even when it is later than the completion date
        trial("NCT90000003", primary_completion="2020-06-30", completion="2019-01-31"),
    ])
    rows = judge(warehouse, "2022-01-01")
    assert set(rows) == {"NCT90000001", "NCT90000003"}
    assert (rows["NCT90000001"]["completion_date_used"], rows["NCT90000001"]["due_date"]) == (
        date(2019, 3, 31), date(2020, 3, 30))
    assert rows["NCT90000003"]["completion_date_used"] == date(2020, 6, 30)


def test_an_act_without_any_completion_date_is_never_due(tmp_path: Path) -> None:
    warehouse = store(tmp_path, [
        trial("NCT90000001", primary_completion=ABSENT, completion=ABSENT),
        trial("NCT90000002", primary_completion=ABSENT, completion=ABSENT, results="2019-05-01"),
    ])
    rows = judge(warehouse, "2030-01-01")
    assert [(r["status"], r["is_due"], r["due_date"], r["days_late"]) for r in rows.values()] == [
        ("ongoing", False, None, None), ("reported", False, None, None)]


def test_an_anticipated_completion_date_in_the_past_makes_a_trial_overdue(tmp_path: Path) -> None:
    record = trial("NCT90000001", primary_completion="2020-06-30")
    record["protocolSection"]["statusModule"]["primaryCompletionDateStruct"]["type"] = "ESTIMATED"
    row = judge(store(tmp_path, [record]), "2022-01-01")["NCT90000001"]
    assert (row["status"], row["days_late"]) == ("overdue", 185)


def test_a_certificate_delays_due_by_two_more_years_even_when_filed_late(tmp_path: Path) -> None:
    warehouse = store(tmp_path, [trial("NCT90000001", certificate="2021-12-01")])  # filed after it was due
    assert judge(warehouse, "2023-07-31")["NCT90000001"]["due_date"] == date(2023, 6, 30)
    assert judge(warehouse, "2023-07-30")["NCT90000001"]["status"] == "ongoing"
    row = judge(warehouse, "2023-07-31")["NCT90000001"]
    assert (row["status"], row["days_late"], row["is_due"]) == ("overdue", 31, True)


def test_the_29th_of_february_plus_a_year_is_the_28th_and_the_due_date_is_365_days_on(tmp_path: Path) -> None:
    day = {"updated": "2016-03-05", "start": "2017-02-01"}
    warehouse = store(tmp_path, [trial("NCT90000001", primary_completion="2016-02-29", **day),
                                 trial("NCT90000002", primary_completion="2016-02-29", certificate="2016-03-01", **day),
                                 trial("NCT90000003", primary_completion="2016-01-01", **day)])
    rows = judge(warehouse, "2017-03-30")
    assert rows["NCT90000001"]["due_date"] == date(2017, 2, 28)  # 365 days on
    assert rows["NCT90000003"]["due_date"] == date(2016, 12, 31)  # the tracker's own pinned case
    assert rows["NCT90000002"]["due_date"] == date(2019, 2, 28)  # three calendar years
    assert (rows["NCT90000001"]["status"], judge(warehouse, "2017-03-31")["NCT90000001"]["status"]) == (
        "ongoing", "overdue")  # due after 2017-02-28 + 30 days


def test_results_posted_after_the_due_date_are_reported_until_due_then_reported_late(tmp_path: Path) -> None:
    warehouse = store(tmp_path, [trial("NCT90000001", results="2021-07-10")])
    assert judge(warehouse, "2021-07-20")["NCT90000001"]["status"] == "reported"
    row = judge(warehouse, "2021-07-31")["NCT90000001"]
    assert (row["status"], row["days_late"]) == ("reported-late", 10)


def test_a_pending_qc_submission_before_the_due_moment_is_ongoing_with_its_date(tmp_path: Path) -> None:
    row = judge(store(tmp_path, [trial("NCT90000001", qc=[{"releaseDate": "2021-03-01"}])]),
                "2021-05-01")["NCT90000001"]
    assert (row["status"], row["results_submitted_date"], row["days_late"]) == ("ongoing", date(2021, 3, 1), None)


def test_after_a_cancellation_lateness_runs_from_the_resubmission(tmp_path: Path) -> None:
    qc = [{"releaseDate": "2021-05-01"}, {"releaseDate": "2021-06-01", "unreleaseDateUnknown": True},
          {"releaseDate": "2021-08-01"}, {"releaseDate": "2021-09-01", "resetDate": "2021-09-10"}]
    row = judge(store(tmp_path, [trial("NCT90000001", qc=qc)]), "2022-01-01")["NCT90000001"]
    assert (row["status"], row["results_submitted_date"], row["days_late"]) == (
        "reported-late", date(2021, 8, 1), 32)


def test_entries_of_one_day_merge_and_the_day_is_cancelled_if_any_is(tmp_path: Path) -> None:
    qc = [{"releaseDate": "2021-06-01"}, {"releaseDate": "2021-06-01", "unreleaseDate": "2021-06-02"}]
    row = judge(store(tmp_path, [trial("NCT90000001", qc=qc)]), "2022-01-01")["NCT90000001"]
    assert (row["status"], row["qc_submissions"], row["qc_newest_cancelled"]) == ("overdue-cancelled", 1, True)


def test_posted_results_win_over_a_qc_history(tmp_path: Path) -> None:
    row = judge(store(tmp_path, [trial("NCT90000001", results="2021-09-01", qc=[{"releaseDate": "2021-06-01"}])]),
                "2022-01-01")["NCT90000001"]
    assert (row["status"], row["results_submitted_date"], row["days_late"]) == ("reported-late", date(2021, 9, 1), 63)


def test_a_date_is_judged_on_the_version_valid_then_not_on_the_current_one(tmp_path: Path) -> None:
    """Two versions of one study: before results (2021) and after (posted in 2025)."""
    before = trial("NCT90000001", updated="2021-01-05")
    after = trial("NCT90000001", updated="2025-03-03", results="2025-02-20")
    warehouse = store(tmp_path, [before], [after])
    in_2022 = judge(warehouse, "2022-06-01")["NCT90000001"]
    assert (in_2022["version"], in_2022["status"], in_2022["days_late"]) == (1, "overdue", 336)
    now = judge(warehouse, "2025-06-01")["NCT90000001"]
    assert (now["version"], now["status"], now["days_late"]) == (2, "reported-late", 1331)
    with warehouse.connect() as con:
        assert con.execute("SELECT status FROM fdaaa_status").fetchall() == [("reported-late",)]


def test_events_the_version_dates_after_the_judged_day_had_not_happened_on_it(tmp_path: Path) -> None:
    """The registry does not move a record's date for a QC submission, so one version can carry it
    before it happened: judged on an earlier day, it is not there yet."""
    record = trial("NCT90000001", updated="2021-01-05", qc=[{"releaseDate": "2021-09-01"}],
                   certificate="2021-08-01")
    warehouse = store(tmp_path, [record])
    early = judge(warehouse, "2021-07-31")["NCT90000001"]
    assert (early["status"], early["certificate_date"], early["qc_submissions"]) == ("overdue", None, 0)
    assert judge(warehouse, "2021-10-01")["NCT90000001"]["status"] == "ongoing"  # certificate: due in 2023


def _real_qc_history(nct_id: str = "NCT03660631") -> list[dict[str, Any]]:
    """A real record's QC history (NCT03660631: released 2024-11-17, cancelled and resubmitted 2024-11-18)."""
    record = next(r for r in real_records() if r["protocolSection"]["identificationModule"]["nctId"] == nct_id)
    return list(record["derivedSection"]["miscInfoModule"]["submissionTracking"]["submissionInfos"])


@pytest.mark.parametrize(("as_of", "status", "days_late", "submitted", "newest_cancelled"), [
    ("2024-11-17", "reported-late", 141, date(2024, 11, 17), False),  # the day before its cancellation
    ("2024-11-18", "reported-late", 142, date(2024, 11, 18), False),  # cancelled, resubmitted the same day
])
def test_a_qc_cancellation_dated_after_the_judged_day_had_not_happened_on_it(
        tmp_path: Path, as_of: str, status: str, days_late: int, submitted: date, newest_cancelled: bool) -> None:
    warehouse = store(tmp_path, [trial("NCT90000001", primary_completion="2023-06-30", completion="2023-06-30",
                                       qc=_real_qc_history())])
    row = judge(warehouse, as_of)["NCT90000001"]
    assert (row["status"], row["days_late"], row["results_submitted_date"], row["qc_newest_cancelled"]) == (
        status, days_late, submitted, newest_cancelled)


def test_a_cancellation_is_overdue_cancelled_from_its_own_day_not_its_submission_day(tmp_path: Path) -> None:
    warehouse = store(tmp_path, [trial("NCT90000001", qc=[CANCELLED])])  # released 2021-07-05, cancelled 07-20
    before, on = judge(warehouse, "2021-07-19")["NCT90000001"], judge(warehouse, "2021-07-20")["NCT90000001"]
    assert (before["status"], before["results_submitted_date"], before["qc_newest_cancelled"]) == (
        "ongoing", date(2021, 7, 5), False)
    assert judge(warehouse, "2021-07-31")["NCT90000001"]["status"] == "overdue-cancelled"
    assert (on["results_submitted_date"], on["qc_newest_cancelled"]) == (None, True)


def test_a_cancellation_of_unknown_date_counts_from_its_submission_day(tmp_path: Path) -> None:
    qc = [{"releaseDate": "2021-08-01", "unreleaseDateUnknown": True}]
    row = judge(store(tmp_path, [trial("NCT90000001", qc=qc)]), "2021-08-01")["NCT90000001"]
    assert (row["status"], row["days_late"], row["qc_newest_cancelled"]) == ("overdue-cancelled", 32, True)


def test_inputs_typed_before_cancellation_days_were_kept_count_a_cancellation_from_its_submission(
        tmp_path: Path) -> None:
    warehouse = Warehouse(tmp_path / "w")
    ctx = RunContext("run-old", datetime(2026, 1, 1, tzinfo=UTC), "api")
    with warehouse.writer(ctx.run_id) as run:  # as a release without qc_cancelled_on stored it
        for table, rows in plan_tables(plan_batch([trial("NCT90000001", qc=[CANCELLED])], {}, ctx), ctx).items():
            if table == "fdaaa_inputs":
                rows = rows.set_column(rows.schema.get_field_index("qc_cancelled_on"), "qc_cancelled_on",
                                       pa.nulls(len(rows), rows.schema.field("qc_cancelled_on").type))
            run.append(table, rows)
        run.commit()
    row = judge(warehouse, "2021-07-19")["NCT90000001"]
    assert (row["results_submitted_date"], row["qc_newest_cancelled"]) == (None, True)


def test_newly_overdue_is_a_time_event_inside_the_window(tmp_path: Path) -> None:
    warehouse = store(tmp_path, [
        trial("NCT90000001"),                                   # due from 2021-07-31
        trial("NCT90000002", primary_completion="2020-01-31"),  # overdue since 2021-03-03: before the window
        trial("NCT90000003", results="2021-06-01"),             # reported in time
        trial("NCT90000004", primary_completion="2020-12-31"),  # due only from 2022-01-31
    ])
    with warehouse.connect() as con:
        rows = con.execute("SELECT nct_id, overdue_from, event_id FROM fdaaa_newly_overdue(DATE '2021-07-01', "
                           "DATE '2021-08-15')").fetchall()
        later = con.execute("SELECT event_id FROM fdaaa_newly_overdue(DATE '2021-07-30', DATE '2021-12-01')").fetchall()
    assert rows == [("NCT90000001", date(2021, 7, 31), "fdaaa-overdue:NCT90000001:2021-07-31")]
    assert later == [(rows[0][2],)]  # another window that holds the same moment: the same id


def test_the_sponsor_ranking_matches_a_hand_computed_one(tmp_path: Path) -> None:
    warehouse = store(tmp_path, [
        trial("NCT90000001", sponsor="Acme"),                              # overdue 185 days
        trial("NCT90000002", sponsor="Acme", results="2021-06-01"),         # reported on time
        trial("NCT90000003", sponsor="Acme", results="2021-07-11"),         # reported 11 days late
        trial("NCT90000004", sponsor="Acme", primary_completion="2021-06-30"),  # not due yet
        trial("NCT90000005", sponsor="Beta", results="2021-06-30"),         # reported on time
        trial("NCT90000006", sponsor="Beta", qc=[CANCELLED]),               # overdue-cancelled 185 days
        trial("NCT90000007", sponsor="Beta", primary_completion="2020-05-31"),  # overdue 215 days
        trial("NCT90000008", sponsor="Gamma", results="2020-12-01"),        # reported on time
    ])
    with warehouse.connect() as con:
        rows = con.execute("SELECT * FROM fdaaa_sponsors(DATE '2022-01-01')").fetchall()
    # sponsor, trials, due, reported, on time, % on time, overdue, days late
    assert rows == [
        ("Beta", 3, 3, 1, 1, 33.3, 2, 400),
        ("Acme", 4, 3, 2, 1, 33.3, 1, 196),
        ("Gamma", 1, 1, 1, 1, 100.0, 0, 0),
    ]


def test_the_real_records_give_the_documented_acts_and_pacts(tmp_path: Path, records: list[dict[str, Any]]) -> None:
    """FDAAA_RULES.md §3: the four flag-less pACTs of our data are found; nothing partial qualifies."""
    rows = judge(store(tmp_path, records), "2026-11-23")
    flagless = {n for n, r in rows.items() if r["act_kind"] == "pACT" and r["is_fda_regulated_drug"] is None
                and r["is_fda_regulated_device"] is None}
    assert flagless == {"NCT02087826", "NCT02513394", "NCT02552212", "NCT02969798"}
    assert rows["NCT03377387"]["act_kind"] == "ACT" and rows["NCT03377387"]["status"] == "overdue"
    assert "NCT06269120" not in rows


# -- the pure parts ------------------------------------------------------------------------------------
def test_end_of_period() -> None:
    assert [end_of_period(x, "d") for x in ("2017-01", "2016-02", "2019", "2020-05-04", None)] == [
        date(2017, 1, 31), date(2016, 2, 29), date(2019, 12, 31), date(2020, 5, 4), None]


def test_qc_days_merge_a_day_and_ignore_returns_to_the_sponsor() -> None:
    infos = [SubmissionInfo(release_date="2024-11-18", reset_date="2024-11-26"),
             SubmissionInfo(release_date="2024-11-17", unrelease_date="2024-11-18"),
             SubmissionInfo(release_date="2024-11-18", mcp_release_n=2)]
    assert qc_days(infos) == ([date(2024, 11, 17), date(2024, 11, 18)], [date(2024, 11, 17)], [date(2024, 11, 18)])


def test_qc_days_date_a_day_by_its_first_cancellation_and_an_unknown_one_by_the_submission() -> None:
    infos = [SubmissionInfo(release_date="2021-06-01", unrelease_date="2021-06-09"),
             SubmissionInfo(release_date="2021-06-01", unrelease_date="2021-06-03"),
             SubmissionInfo(release_date="2021-07-01", unrelease_date_unknown=True)]
    assert qc_days(infos).cancelled_on == [date(2021, 6, 3), date(2021, 7, 1)]


def test_a_real_qc_history_reads_as_a_cancelled_then_a_counted_submission(records: list[dict[str, Any]]) -> None:
    record = next(r for r in records if r["protocolSection"]["identificationModule"]["nctId"] == "NCT03660631")
    derived = parse_record(record).study.derived_section
    assert derived and derived.misc_info_module and derived.misc_info_module.submission_tracking
    qc = qc_days(derived.misc_info_module.submission_tracking.submission_infos)
    assert counted_submission(qc, date(2025, 1, 1)) == (date(2024, 11, 18), False)
    assert counted_submission(qc, date(2024, 11, 17)) == (date(2024, 11, 17), False)  # not yet cancelled


_DAY = st.integers(0, 40).map(lambda n: date(2021, 1, 1) + timedelta(days=n))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(_DAY, st.one_of(st.none(), st.just(True), st.integers(-3, 10))), max_size=8), _DAY)
def test_the_sql_scan_of_qc_submissions_equals_the_reference_scan(entries: list[tuple[date, int | bool | None]],
                                                                   as_of: date) -> None:
    """Each entry: kept (None), cancelled on an unknown day (True), or cancelled that many days after it."""
    infos = [SubmissionInfo(release_date=d.isoformat(), unrelease_date_unknown=gone is True or None,
                            unrelease_date=None if gone is None or gone is True else
                            (d + timedelta(days=gone)).isoformat())
             for d, gone in entries]
    qc = qc_days(infos)
    expected = counted_submission(qc, as_of)
    sql = (f"SELECT {qc_counted('m', 'c')}, {qc_newest_cancelled('m', 'c')} "
           f"FROM (SELECT list_filter(days, lambda x: x <= d) AS m, {qc_last_cancelled('gone', 'gone_on', 'd')} AS c "
           "FROM (SELECT ?::DATE[] AS days, ?::DATE[] AS gone, ?::DATE[] AS gone_on, ?::DATE AS d))")
    assert duckdb.execute(sql, [qc.days, qc.cancelled, qc.cancelled_on, as_of]).fetchone() == expected


def test_rederive_types_the_inputs_of_versions_stored_before_the_table_existed(tmp_path: Path,
                                                                               prefect_api: str) -> None:
    from flows.derive import rederive_changes

    warehouse = Warehouse(tmp_path / "w")
    ctx = RunContext("run-old", datetime(2026, 1, 1, tzinfo=UTC), "api")
    with warehouse.writer(ctx.run_id) as run:  # as a release without fdaaa_inputs stored it
        for table, rows in plan_tables(plan_batch([trial("NCT90000001")], {}, ctx), ctx).items():
            if table != "fdaaa_inputs":
                run.append(table, rows)
        run.commit()
    assert judge(warehouse, "2022-01-01") == {}
    rederive_changes(warehouse=str(warehouse.root))
    assert judge(warehouse, "2022-01-01")["NCT90000001"]["status"] == "overdue"
    rederive_changes(warehouse=str(warehouse.root))  # nothing left to type: no second row
    with warehouse.connect() as con:
        assert con.execute("SELECT count(*) FROM fdaaa_inputs").fetchall() == [(1,)]
