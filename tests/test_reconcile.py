"""Issue 6: reconciliation checks: pure over plain data, and in a real sync (stored + Prefect artifacts)."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from pipeline.reconcile import (
    RunFacts,
    Thresholds,
    listing_omitted,
    missing_ids,
    reconcile,
    status_counts,
    unexpected_ids,
    zero_update_weekdays,
)
from pipeline.registry.fake_server import FakeRegistry
from tests.conftest import fast_sync, nct
from warehouse import Warehouse

MONDAY = date(2026, 5, 4)


def facts(**overrides: Any) -> RunFacts:
    base: dict[str, Any] = dict(
        scope="all", mode="incremental", baseline=False, total_count=3, studies_seen=3,
        seen_dates={"NCT00000001": MONDAY, "NCT00000002": MONDAY, "NCT00000003": MONDAY + timedelta(days=1)},
        members_before=frozenset({"NCT00000001", "NCT00000002", "NCT00000003"}), previous_watermark=MONDAY,
        since=MONDAY - timedelta(days=1), today=MONDAY + timedelta(days=2),
        status_counts={"RECRUITING": 3}, previous_status_counts={"RECRUITING": 3})
    base.update(overrides)
    return RunFacts(**base)


def by_name(run_facts: RunFacts) -> dict[str, tuple[str, int]]:
    return {c.check: (c.status, c.flagged) for c in reconcile(run_facts)}


def test_a_clean_incremental_run_passes_and_skips_the_full_run_checks() -> None:
    assert by_name(facts()) == {"total_count": ("ok", 0), "missing_ids": ("skipped", 0),
                                "listing_omitted": ("skipped", 0), "unexpected_ids": ("skipped", 0),
                                "zero_update_weekdays": ("ok", 0), "status_counts": ("ok", 0)}


def test_a_listing_short_of_the_total_count_fails() -> None:
    check = reconcile(facts(total_count=5))[0]
    assert (check.status, check.expected, check.observed, check.flagged) == ("fail", 5, 3, 2)
    assert check.detail == "saw 3 of the 5 studies the registry counted: 2 missing from the listing"


def test_a_weekday_without_updates_is_flagged_where_updates_were_expected_and_weekends_never() -> None:
    friday, tuesday = MONDAY - timedelta(days=3), MONDAY + timedelta(days=1)
    quiet_monday = facts(since=friday, today=tuesday + timedelta(days=1),
                         seen_dates={"NCT00000001": friday, "NCT00000002": tuesday})
    small = zero_update_weekdays(quiet_monday)
    assert (small.status, small.data["quiet"]) == ("ok", ["2026-05-04"])  # 3 studies: quiet days are normal
    big = zero_update_weekdays(quiet_monday, Thresholds(weekday_update_rate=1.0, min_expected_updates=3))
    assert (big.status, big.flagged, big.data["quiet"]) == ("warn", 1, ["2026-05-04"])
    assert big.detail == "no update on 1 weekday(s): 2026-05-04 (Mon) (~3 expected per weekday)"
    assert big.data["weekdays"] == ["2026-05-01", "2026-05-04", "2026-05-05"]  # Sat, Sun and today left out


def test_unexpected_ids_are_new_studies_older_than_the_last_window() -> None:
    run_facts = facts(mode="full", previous_watermark=date(2026, 5, 1), members_before=frozenset({"NCT00000001"}),
                      seen_dates={"NCT00000001": MONDAY, "NCT00000002": date(2026, 4, 1),
                                  "NCT00000003": date(2026, 4, 30)})
    check = unexpected_ids(run_facts)
    assert (check.status, check.ids, check.data["new_since_last_run"]) == ("warn", ("NCT00000002",), ["NCT00000003"])
    asked = unexpected_ids(facts(mode="full", requested_ids=("NCT00000001", "NCT00000002", "NCT00000009")))
    assert (asked.status, asked.ids) == ("warn", ("NCT00000003",))


def test_a_study_listed_again_after_leaving_the_scope_is_named_returned_never_claimed_unseen() -> None:
    run_facts = facts(mode="full", previous_watermark=date(2026, 5, 1), members_before=frozenset({"NCT00000001"}),
                      former_members=frozenset({"NCT00000002"}),
                      seen_dates={"NCT00000001": MONDAY, "NCT00000002": date(2026, 4, 1)})
    check = unexpected_ids(run_facts)
    assert (check.status, check.flagged, check.data["returned"], check.data["new_since_last_run"]) == (
        "ok", 0, ["NCT00000002"], [])
    assert check.detail == ("0 new studies since the last run, none missed by earlier runs, 1 listed again after "
                            "leaving the scope: NCT00000002")


def test_listing_omitted_warns_naming_the_studies_the_listing_left_out_but_the_registry_still_serves() -> None:
    clean = listing_omitted(facts(mode="full"))
    assert (clean.status, clean.flagged) == ("ok", 0)
    gap = listing_omitted(facts(mode="full", omitted=frozenset({"NCT00000003", "NCT00000002"})))
    assert (gap.status, gap.flagged, gap.ids) == ("warn", 2, ("NCT00000002", "NCT00000003"))
    assert gap.detail == ("the listing left out 2 studies that the registry still publishes inside the scope "
                          "(kept, not retired): NCT00000002, NCT00000003")
    assert listing_omitted(facts(omitted=frozenset({"NCT00000003"}))).status == "skipped"


def test_missing_ids_warn_only_for_studies_gone_from_the_registry_not_for_those_that_left_the_scope() -> None:
    one_left = facts(mode="full", seen_dates={"NCT00000001": MONDAY, "NCT00000002": MONDAY},
                     left_scope=frozenset({"NCT00000003"}))
    check = missing_ids(one_left)
    assert (check.status, check.flagged, check.ids, check.data) == (
        "ok", 0, ("NCT00000003",), {"left_scope": ["NCT00000003"], "removed": [], "not_found": [], "unverified": []})
    assert check.detail == ("1 of 3 known studies are no longer listed: 1 left the scope but are still in the "
                            "registry, 0 gone from it: NCT00000003")
    both = missing_ids(facts(mode="full", seen_dates={"NCT00000001": MONDAY}, left_scope=frozenset({"NCT00000003"})))
    assert (both.status, both.flagged, both.ids, both.data["removed"]) == (
        "warn", 1, ("NCT00000002", "NCT00000003"), ["NCT00000002"])
    assert both.detail.endswith("1 left the scope but are still in the registry, 1 gone from it: NCT00000002")


def test_missing_ids_calls_a_study_gone_only_when_the_registry_was_asked_about_it() -> None:
    """A member the run could not ask about (the look-up failed, the listing was incomplete) is unknown:
    a failure of the check, never counted as gone from the registry."""
    check = missing_ids(facts(mode="full", seen_dates={"NCT00000001": MONDAY},
                              unverified=frozenset({"NCT00000003"}), unverified_why="HTTP 503: down (2 tries)"))
    assert (check.status, check.flagged, check.ids) == ("fail", 2, ("NCT00000002", "NCT00000003"))
    assert (check.data["removed"], check.data["unverified"]) == (["NCT00000002"], ["NCT00000003"])
    assert check.detail == ("2 of 3 known studies are no longer listed: 0 left the scope but are still in the "
                            "registry, 1 gone from it: NCT00000002; 1 could not be looked up (HTTP 503: down "
                            "(2 tries)), so whether they are still in the registry is unknown (kept, not retired; "
                            "the next full run asks again): NCT00000003")
    only = missing_ids(facts(mode="full", seen_dates={"NCT00000001": MONDAY, "NCT00000002": MONDAY},
                             unverified=frozenset({"NCT00000003"})))
    assert (only.status, only.data["removed"]) == ("fail", [])
    assert only.detail.startswith("1 of 3 known studies are no longer listed: 0 left the scope but are still in "
                                  "the registry, 0 gone from it; 1 could not be looked up, so")
    # A first run of an ids scope: an id never listed is "not in the registry" only after a 404.
    first = missing_ids(facts(mode="full", baseline=True, members_before=frozenset(), seen_dates={},
                              requested_ids=("NCT00000001", "NCT00000002", "NCT00000003"),
                              unverified=frozenset({"NCT00000002"}), unverified_why="timed out",
                              left_scope=frozenset({"NCT00000003"})))
    assert (first.status, first.flagged, first.ids) == ("fail", 2, ("NCT00000001", "NCT00000002"))
    assert first.detail == ("1 of the 3 requested ids are not in the registry: NCT00000001; 1 requested ids were "
                            "not listed and could not be looked up (timed out): NCT00000002")


def test_a_requested_id_the_registry_does_not_have_is_flagged_from_the_first_run() -> None:
    first = facts(mode="full", baseline=True, members_before=frozenset(),
                  requested_ids=("NCT00000001", "NCT00000002", "NCT00000003", "NCT09999999"))
    check = missing_ids(first)
    assert (check.status, check.flagged, check.ids) == ("warn", 1, ("NCT09999999",))
    assert check.detail == "1 of the 4 requested ids are not in the registry: NCT09999999"
    all_there = missing_ids(facts(mode="full", baseline=True, members_before=frozenset(),
                                  requested_ids=("NCT00000001", "NCT00000002")))
    assert all_there.status == "skipped"
    # Later: a mistyped id does not hide a study that is gone from the registry.
    later = missing_ids(facts(mode="full", seen_dates={"NCT00000001": MONDAY, "NCT00000003": MONDAY},
                              requested_ids=("NCT00000001", "NCT00000002", "NCT00000003", "NCT09999999")))
    assert (later.status, later.flagged, later.ids) == ("warn", 2, ("NCT00000002", "NCT09999999"))
    assert later.detail == ("1 of 3 known studies are no longer listed: 0 left the scope but are still in the "
                            "registry, 1 gone from it: NCT00000002; 1 of the 4 requested ids are not in the "
                            "registry: NCT09999999")


def test_status_counts_warn_on_a_large_move_against_the_previous_run() -> None:
    before = {"RECRUITING": 100, "COMPLETED": 40}
    small = status_counts(facts(status_counts={"RECRUITING": 98, "COMPLETED": 42}, previous_status_counts=before))
    assert (small.status, small.data["delta"]) == ("ok", {"COMPLETED": 2, "RECRUITING": -2})
    large = status_counts(facts(status_counts={"RECRUITING": 80, "COMPLETED": 40, "TERMINATED": 20},
                                previous_status_counts=before))
    assert (large.status, large.flagged) == ("warn", 2)
    assert large.detail == "140 studies (140 before): RECRUITING -20, TERMINATED +20"


@pytest.mark.prefect  # the artifacts are Prefect's
def test_reconciliation_flags_a_scope_whose_full_run_lost_three_studies(
        registry: FakeRegistry, warehouse_dir: Path, records: list[dict[str, Any]]) -> None:
    first = fast_sync(registry, warehouse_dir)
    assert first["reconciliation"]["status"] == "ok"
    gone = sorted(nct(r) for r in records[:3])
    registry.remove(*gone)
    full = fast_sync(registry, warehouse_dir, full=True)
    assert full["reconciliation"]["status"] == "warn"
    assert list(full["reconciliation"]["flags"]) == ["missing_ids"]
    with Warehouse(warehouse_dir).connect() as con:
        rows = con.execute("""SELECT "check", status, expected, observed, flagged, ids FROM reconciliation
                              WHERE run_id = ? ORDER BY "check" """, [full["run_id"]]).fetchall()
    assert rows == [
        ("listing_omitted", "ok", 0, 0, 0, []),
        ("missing_ids", "warn", 326, 323, 3, gone),
        ("status_counts", "ok", 326, 323, 0, []),
        ("total_count", "ok", 323, 323, 0, []),
        ("unexpected_ids", "ok", 0, 0, 0, []),
        ("zero_update_weekdays", "skipped", None, None, 0, []),
    ]
    artifacts = run_artifacts("reconciliation-all", full["run_id"])
    assert artifacts["table"]["type"] == "table" and full["run_id"] in artifacts["table"]["description"]
    assert "| missing_ids | ⚠️ warn | 326 | 323 |" in artifacts["markdown"]["data"]


def run_artifacts(key: str, run_id: str) -> dict[str, dict[str, Any]]:
    """The table and Markdown artifacts that one run published under a reconciliation key. Pinned to the
    run (its id is in their description), never "the newest": on a busy machine Prefect may list an
    earlier run's artifact last (issue 13.9)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[key, f"{key}-summary"])))
    mine = [a for a in found if f"run {run_id}" in (a.description or "")]
    by_kind = {("table" if a.key == key else "markdown"): a.model_dump(mode="json") for a in mine}
    assert len(mine) == len(by_kind) == 2, [(a.key, a.description) for a in found]
    return by_kind
