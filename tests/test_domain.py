"""Pure domain: partial dates, parsing of every real record, canonical hashing, version planning."""

from __future__ import annotations

import copy
from datetime import UTC, date, datetime
from urllib.parse import urlencode

import pytest

from pipeline import mutate
from pipeline.dates import parse_partial_date
from pipeline.errors import RecordInvalid, UsageError
from pipeline.hashing import content_hash
from pipeline.parse import parse_study
from pipeline.scope import Scope, resolve_window
from pipeline.versioning import Head, RunContext, plan_batch
from tests.conftest import nct, real_records, snapshot_pairs

CTX = RunContext("run-1", datetime(2026, 11, 24, tzinfo=UTC), "api")


@pytest.mark.parametrize(
    ("raw", "value", "precision"),
    [("2025", date(2025, 1, 1), "year"), ("2025-05", date(2025, 5, 1), "month"),
     ("2025-05-30", date(2025, 5, 30), "day")],
)
def test_partial_dates_keep_their_precision_and_raw_text(raw: str, value: date, precision: str) -> None:
    parsed = parse_partial_date(raw)
    assert (parsed.value, parsed.raw, parsed.precision) == (value, raw, precision)


@pytest.mark.parametrize("raw", ["2025-13", "2025-02-30", "25-05", "2025/05/01", "", "2025--01"])
def test_malformed_dates_are_rejected_with_the_field_name(raw: str) -> None:
    with pytest.raises(RecordInvalid, match="startDate"):
        parse_partial_date(raw, field="startDate")


def test_a_date_parsed_before_names_the_field_of_each_later_caller() -> None:
    """Parsing is cached by text (dates recur across studies); the error still names its field."""
    for field in ("startDate", "completionDate", "startDate"):
        with pytest.raises(RecordInvalid, match=f"^{field}: '2025-02-30' is not a calendar date"):
            parse_partial_date("2025-02-30", field=field)
    assert parse_partial_date("2025-02-28") is parse_partial_date("2025-02-28")


def test_every_real_record_parses_to_the_values_in_its_json() -> None:
    forms = set()
    for record in real_records():
        core = parse_study(record)
        status = record["protocolSection"]["statusModule"]
        enrollment = record["protocolSection"].get("designModule", {}).get("enrollmentInfo", {})
        assert core.nct_id == nct(record)
        assert core.overall_status == status.get("overallStatus")
        assert core.enrollment_count == enrollment.get("count")
        assert core.start_date_raw == status.get("startDateStruct", {}).get("date")
        assert core.completion_date_raw == status.get("completionDateStruct", {}).get("date")
        assert core.completion_date_type == status.get("completionDateStruct", {}).get("type")
        if core.start_date_raw:
            forms.add(len(core.start_date_raw))
            assert core.start_date == parse_partial_date(core.start_date_raw).value
    assert forms == {7, 10}  # the corpus has month-only and full start dates


def test_a_record_with_an_unknown_status_is_invalid_and_names_the_path() -> None:
    record = mutate.set_status(real_records()[0], "PAUSED_FOR_LUNCH")
    with pytest.raises(RecordInvalid, match="overallStatus") as info:
        parse_study(record)
    assert info.value.nct_id == nct(record)


def test_derived_section_alone_never_changes_the_hash() -> None:
    pairs = snapshot_pairs()
    same = [k for k, (a, b) in pairs.items() if content_hash(a) == content_hash(b)]
    assert sorted(same) == sorted(k for k in pairs if k != "NCT05766735")
    older, newer = pairs["NCT05766735"]
    assert content_hash(older) != content_hash(newer)


def test_hash_ignores_key_order_but_not_values() -> None:
    record = real_records()[3]
    reordered = dict(reversed(list(record.items())))
    assert content_hash(reordered) == content_hash(record)
    assert content_hash(mutate.set_enrollment(record, 999)) != content_hash(record)


def test_plan_adds_a_version_only_when_material_content_changes() -> None:
    a, b, c = (copy.deepcopy(r) for r in real_records()[:3])
    first = plan_batch([a, b], {}, CTX)
    assert [(v.core.nct_id, v.version, v.is_new_study) for v in first.versions] == [
        (nct(a), 1, True), (nct(b), 1, True)]
    heads = dict(first.heads)
    again = plan_batch([a, mutate.set_status(b, "COMPLETED"), c], heads, CTX)
    assert again.unchanged == 1
    assert [(v.core.nct_id, v.version) for v in again.versions] == [(nct(b), 2), (nct(c), 1)]
    assert again.seen == [(nct(a), 1), (nct(b), 2), (nct(c), 1)]


def test_a_study_seen_twice_in_one_batch_with_new_content_gets_two_versions() -> None:
    a = real_records()[5]
    plan = plan_batch([a, mutate.set_enrollment(a, 1), a], {}, CTX)
    assert [v.version for v in plan.versions] == [1, 2, 3]


def test_a_removed_study_that_reappears_unchanged_gets_a_new_version() -> None:
    a = real_records()[7]
    plan = plan_batch([a], {nct(a): Head(4, content_hash(a), is_removed=True)}, CTX)
    assert [v.version for v in plan.versions] == [5]


def test_invalid_records_are_quarantined_and_the_rest_planned() -> None:
    good = real_records()[0]
    no_protocol = {"derivedSection": {}, "hasResults": False}
    bad_id = copy.deepcopy(real_records()[1])
    bad_id["protocolSection"]["identificationModule"]["nctId"] = "NCT123"
    wrong_type = mutate.set_enrollment(real_records()[2], "many")  # type: ignore[arg-type]
    plan = plan_batch([no_protocol, good, bad_id, wrong_type], {}, CTX)
    assert [v.core.nct_id for v in plan.versions] == [nct(good)]
    reasons = [(q.nct_id, q.reason) for q in plan.quarantined]
    assert reasons[0] == (None, "record has no protocolSection")
    assert reasons[1][0] == "NCT123" and "invalid NCT id" in reasons[1][1]
    assert reasons[2][0] == nct(real_records()[2]) and "enrollmentInfo.count" in reasons[2][1]


def test_watermark_is_the_newest_last_update_in_the_batch() -> None:
    plan = plan_batch(real_records()[:50], {}, CTX)
    expected = max(date.fromisoformat(r["protocolSection"]["statusModule"]["lastUpdatePostDateStruct"]["date"])
                   for r in real_records()[:50])
    assert plan.newest_update == expected


def test_scope_parameters_and_key() -> None:
    scope = Scope.build(condition="acute myeloid leukemia", ids="nct07011004, NCT05766735",
                        statuses=["recruiting"])
    assert scope.params() == {"query.cond": "acute myeloid leukemia",
                              "filter.ids": "NCT05766735,NCT07011004", "filter.overallStatus": "RECRUITING"}
    assert scope.key == ("filter.ids=NCT05766735,NCT07011004&filter.overallStatus=RECRUITING"
                         "&query.cond=acute myeloid leukemia")
    assert Scope.build().key == "all"


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(ids="NCT00000000"), "invalid NCT id 'NCT00000000'"),
    (dict(ids="NCT123456789"), "invalid NCT id 'NCT123456789'"),
    (dict(ids="XYZ12345678"), "invalid NCT id 'XYZ12345678'"),
    (dict(statuses="RUNNING"), "unknown status 'RUNNING'"),
    (dict(query="NCT05766735 NCT07011004"), "--query holds only NCT ids, for which the registry ignores every "
                                            r"filter \(--status, the incremental window\): use --ids "
                                            "NCT05766735,NCT07011004"),
    (dict(condition="nct05766735,NCT07011004"), "--condition holds only NCT ids"),
    # given blank (a deployment's or a scope file's ""), never read as absent: that is the whole registry
    (dict(ids=""), "--ids must not be empty"),
    (dict(ids=[" , "]), "--ids must not be empty"),
    (dict(statuses=","), "--status must not be empty"),
    (dict(query=" "), "--query must not be empty"),
    (dict(sponsor=""), "--sponsor must not be empty"),
])
def test_bad_scope_input_is_a_one_line_usage_error(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        Scope.build(**kwargs)


def test_ids_are_taken_as_the_spec_allows_and_stored_as_nct_plus_8_digits() -> None:
    assert Scope.build(ids="nct123, NCT05766735 NCT005766735").ids == ("NCT00000123", "NCT05766735")


def test_a_large_ids_scope_is_walked_in_batches_that_keep_every_url_short() -> None:
    ids = [f"NCT{n:08d}" for n in range(1, 1202)]
    scope = Scope.build(ids=ids, statuses="RECRUITING")
    batches = scope.batches({"pageSize": "1000"})
    assert [len(b["filter.ids"].split(",")) for b in batches] == [200] * 6 + [1]
    assert sorted(i for b in batches for i in b["filter.ids"].split(",")) == ids
    assert all(b["filter.overallStatus"] == "RECRUITING" and b["pageSize"] == "1000" for b in batches)
    assert max(len(urlencode(b)) for b in batches) < 4096
    assert Scope.build(ids=ids[:200]).batches({}) == [{"filter.ids": ",".join(ids[:200])}]


def test_window_is_full_first_then_incremental_from_watermark_minus_14_days() -> None:
    assert resolve_window(full=False, since=None, watermark=None).mode == "full"
    window = resolve_window(full=False, since=None, watermark=date(2026, 5, 15))
    assert (window.mode, window.since) == ("incremental", date(2026, 5, 1))
    assert window.params() == {"filter.advanced": "AREA[LastUpdatePostDate]RANGE[2026-05-01,MAX]"}
    assert resolve_window(full=True, since=None, watermark=date(2026, 5, 15)).since is None
    with pytest.raises(UsageError):
        resolve_window(full=True, since=date(2026, 1, 1), watermark=None)


def test_the_watermark_never_passes_the_runs_next_day_nor_goes_back() -> None:
    from pipeline.scope import next_watermark

    today = date(2026, 12, 7)
    assert next_watermark(date(2026, 12, 1), date(2026, 12, 5), today) == date(2026, 12, 5)
    assert next_watermark(date(2026, 12, 5), date(2026, 12, 1), today) == date(2026, 12, 5)  # never back
    assert next_watermark(None, date(2026, 12, 8), today) == date(2026, 12, 8)  # US Eastern vs UTC
    assert next_watermark(date(2026, 12, 1), date(2099, 1, 1), today) == date(2026, 12, 8)  # a damaged record
    assert next_watermark(date(2099, 1, 1), None, today) == date(2026, 12, 8)  # stored by an older release
    assert next_watermark(None, None, today) is None
