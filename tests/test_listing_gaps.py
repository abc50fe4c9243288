"""Issue 13.1: a study is removed only when ``GET /studies/{id}`` answers 404, never because a listing
(the scope's walk or a ``filter.ids`` look-up) left it out. Real Prefect runs against the fake registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipeline import mutate
from pipeline.registry.fake_server import FakeRegistry
from tests.conftest import fast_sync, nct, real_records
from warehouse import Warehouse

pytestmark = pytest.mark.usefixtures("prefect_api")


def rows(warehouse_dir: Path, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    with Warehouse(warehouse_dir).connect() as con:
        return con.execute(sql, params or []).fetchall()


def check_row(warehouse_dir: Path, run_id: str, check: str) -> tuple[Any, ...]:
    found = rows(warehouse_dir, """SELECT status, flagged, ids, detail FROM reconciliation
                                   WHERE run_id = ? AND "check" = ?""", [run_id, check])
    assert len(found) == 1
    return found[0]


@pytest.fixture
def small() -> Any:
    with FakeRegistry(real_records()[:60]).start() as fake:
        yield fake


def test_the_fakes_listing_gap_hides_studies_from_listings_only(small: FakeRegistry) -> None:
    import requests

    hidden = nct(real_records()[3])
    small.omit_from_listings(hidden)
    listed = requests.get(small.url + "/studies", params={"filter.ids": hidden, "countTotal": "true"}, timeout=10)
    assert listed.json() == {"studies": [], "totalCount": 0}
    single = requests.get(f"{small.url}/studies/{hidden}", timeout=10)
    assert single.status_code == 200 and single.json() == real_records()[3]


def test_a_full_run_whose_listing_omits_two_studies_retires_nothing_and_reports_listing_omitted(
        small: FakeRegistry, warehouse_dir: Path) -> None:
    fast_sync(small, warehouse_dir, page_size=25)
    omitted = sorted(nct(r) for r in real_records()[5:7])
    small.omit_from_listings(*omitted)
    small.requests.clear()
    full = fast_sync(small, warehouse_dir, page_size=25, full=True)
    assert (full["retired"], full["left_scope"], full["versions_written"], full["changes_written"]) == (0, 0, 0, 0)
    assert sorted(p for p, _ in small.requests if p.startswith("/studies/")) == [f"/studies/{n}" for n in omitted]
    assert rows(warehouse_dir, "SELECT count(*) FROM study_versions WHERE is_removed") == [(0,)]
    assert rows(warehouse_dir, "SELECT count(*) FROM scope_exits") == [(0,)]
    assert rows(warehouse_dir, "SELECT count(*) FROM changes WHERE run_id = ?", [full["run_id"]]) == [(0,)]
    status, flagged, ids, detail = check_row(warehouse_dir, full["run_id"], "listing_omitted")
    assert (status, flagged, ids) == ("warn", 2, omitted)
    assert detail.endswith(f"(kept, not retired): {omitted[0]}, {omitted[1]}")
    assert check_row(warehouse_dir, full["run_id"], "missing_ids")[:2] == ("ok", 0)
    assert full["reconciliation"]["flags"].keys() == {"listing_omitted"}
    # The next run, with the listing whole again, sees nothing new, reappeared or unexpected.
    small.restore_listings()
    again = fast_sync(small, warehouse_dir, page_size=25, full=True)
    assert (again["versions_written"], again["changes_written"], again["reconciliation"]["status"]) == (0, 0, "ok")


def test_only_a_404_from_the_single_study_endpoint_retires_a_study(small: FakeRegistry, warehouse_dir: Path) -> None:
    fast_sync(small, warehouse_dir, page_size=25)
    gone, omitted = nct(real_records()[10]), nct(real_records()[11])
    small.remove(gone)
    small.omit_from_listings(omitted)
    full = fast_sync(small, warehouse_dir, page_size=25, full=True)
    assert full["retired"] == 1
    assert rows(warehouse_dir, "SELECT nct_id FROM study_versions WHERE is_removed") == [(gone,)]
    assert rows(warehouse_dir, "SELECT nct_id, reason FROM scope_exits") == [(gone, "removed")]
    assert rows(warehouse_dir, "SELECT nct_id, event FROM changes WHERE run_id = ?", [full["run_id"]]) == [
        (gone, "study_removed")]
    assert check_row(warehouse_dir, full["run_id"], "listing_omitted")[:3] == ("warn", 1, [omitted])


def test_a_published_study_outside_the_status_filter_leaves_the_scope_even_when_the_listing_omits_it(
        small: FakeRegistry, warehouse_dir: Path) -> None:
    recruiting = [r for r in real_records()[:60] if r["protocolSection"]["statusModule"]["overallStatus"]
                  == "RECRUITING"]
    fast_sync(small, warehouse_dir, page_size=25, status=["RECRUITING"])
    moved, omitted = recruiting[0], nct(recruiting[1])
    small.put(mutate.set_status(moved, "COMPLETED"))
    small.omit_from_listings(nct(moved), omitted)
    full = fast_sync(small, warehouse_dir, page_size=25, status=["RECRUITING"], full=True)
    assert (full["retired"], full["left_scope"]) == (0, 1)
    assert rows(warehouse_dir, "SELECT nct_id, reason FROM scope_exits") == [(nct(moved), "left_scope")]
    assert rows(warehouse_dir, "SELECT count(*) FROM study_versions WHERE is_removed") == [(0,)]
    assert check_row(warehouse_dir, full["run_id"], "listing_omitted")[:3] == ("warn", 1, [omitted])


def test_a_text_query_scope_asks_the_registrys_search_whether_an_unlisted_study_still_matches(
        small: FakeRegistry, warehouse_dir: Path) -> None:
    term = "cancer"
    fast_sync(small, warehouse_dir, page_size=25, query=term)
    members = [p for p, in rows(warehouse_dir, "SELECT nct_id FROM studies ORDER BY nct_id")]
    assert len(members) >= 2
    small.omit_from_listings(members[0])
    full = fast_sync(small, warehouse_dir, page_size=25, query=term, full=True)
    # members[0]: 200 by id, not returned by the search with filter.ids either (the gap): the registry's
    # search judges it outside, so it leaves the scope (still stored, never retired).
    assert rows(warehouse_dir, "SELECT nct_id, reason FROM scope_exits ORDER BY nct_id") == [
        (members[0], "left_scope")]
    assert (full["retired"], full["left_scope"]) == (0, 1)
    assert rows(warehouse_dir, "SELECT count(*) FROM study_versions WHERE is_removed") == [(0,)]


# A single-study look-up that fails, each way a registry fails: never a study_removed, never a scope exit.
LOOKUP_FAULTS: dict[str, tuple[str, dict[str, Any]]] = {
    "500 on every try": ("status", dict(status=500, body="Internal Server Error")),
    "429 with a Retry-After past the budget": ("status", dict(status=429, retry_after="120",
                                                              body="Too Many Requests")),
    "read timeouts": ("delay", dict(delay=2.5)),
    "a truncated 200": ("truncate", {}),
    "a maintenance page as 200": ("status", dict(status=200, content_type="text/html",
                                                 body="<html><title>Scheduled maintenance</title></html>")),
    # the registry answers 404 in plain text (its spec): a web page is a proxy's or a CDN's, no word on a study
    "a CDN's HTML 404 page": ("status", dict(status=404, content_type="text/html",
                                             body="<html><title>404 Not Found</title><body>nginx</body></html>")),
    # ... and a JSON one an API gateway's (the registry's 404 is text/plain)
    "an API gateway's JSON 404": ("status", dict(status=404, content_type="application/json",
                                                 body='{"message":"Not Found"}')),
}


@pytest.mark.parametrize("case", list(LOOKUP_FAULTS))
def test_a_failing_single_study_look_up_retires_nothing_and_the_run_names_the_study_as_unverified(
        case: str, small: FakeRegistry, warehouse_dir: Path) -> None:
    fast_sync(small, warehouse_dir, page_size=25)
    gone, unknown = nct(real_records()[10]), nct(real_records()[11])  # asked in this order (sorted ids)
    assert gone < unknown
    small.remove(gone)
    small.omit_from_listings(unknown)
    kind, options = LOOKUP_FAULTS[case]
    small.faults.add(kind, path=f"/studies/{unknown}", times=-1, **options)
    full = fast_sync(small, warehouse_dir, page_size=25, full=True, max_attempts=2, timeout_seconds=1.0,
                     retry_budget=5.0)
    # The 404 before the failure is the registry's word: retired. The failed look-up says nothing.
    assert (full["retired"], full["left_scope"], full["unverified"]) == (1, 0, 1)
    assert rows(warehouse_dir, "SELECT nct_id FROM study_versions WHERE is_removed") == [(gone,)]
    assert rows(warehouse_dir, "SELECT nct_id, reason FROM scope_exits") == [(gone, "removed")]
    assert rows(warehouse_dir, "SELECT nct_id, event FROM changes WHERE run_id = ?", [full["run_id"]]) == [
        (gone, "study_removed")]
    status, flagged, ids, detail = check_row(warehouse_dir, full["run_id"], "missing_ids")
    assert (status, flagged, ids) == ("fail", 2, sorted([gone, unknown]))
    assert "1 gone from it: " + gone in detail and "1 could not be looked up (the registry failed: " in detail
    assert detail.endswith(f"(kept, not retired; the next full run asks again): {unknown}")
    assert full["reconciliation"]["status"] == "fail"
    # Still a member: the next full run, against a healthy registry, asks again and finds it published.
    small.faults.clear()
    again = fast_sync(small, warehouse_dir, page_size=25, full=True)
    assert (again["retired"], again["changes_written"]) == (0, 0)
    assert check_row(warehouse_dir, again["run_id"], "listing_omitted")[:3] == ("warn", 1, [unknown])
    assert check_row(warehouse_dir, again["run_id"], "missing_ids")[:2] == ("ok", 0)


def test_an_incomplete_full_listing_calls_no_unlisted_study_gone_from_the_registry(
        small: FakeRegistry, warehouse_dir: Path) -> None:
    fast_sync(small, warehouse_dir, page_size=25)
    dropped = nct(real_records()[30])  # on page 2, still counted by totalCount
    small.faults.add("drop", page=2, nct_ids=(dropped,), times=-1)
    full = fast_sync(small, warehouse_dir, page_size=25, full=True)
    assert (full["retired"], full["studies_seen"], full["total_count"], full["unverified"]) == (0, 59, 60, 1)
    assert [p for p, _ in small.requests if p.startswith("/studies/")] == []  # nothing looked up
    assert check_row(warehouse_dir, full["run_id"], "total_count")[0] == "fail"
    status, flagged, ids, detail = check_row(warehouse_dir, full["run_id"], "missing_ids")
    assert (status, flagged, ids) == ("fail", 1, [dropped])
    assert "0 gone from it" in detail
    assert "(the listing was incomplete: saw 59 of 60 studies)" in detail
    assert rows(warehouse_dir, "SELECT count(*) FROM scope_exits") == [(0,)]


@pytest.mark.parametrize("listed", [True, False], ids=["the-listing-holds-the-study", "the-listing-omits-it"])
def test_a_study_merged_into_another_is_retired_as_merged_naming_the_study_it_became(
        listed: bool, small: FakeRegistry, warehouse_dir: Path) -> None:
    """The registry merged A into B (A is one of B's nctIdAliases; GET /studies/A answers 301 to B): A's
    own record is gone by the registry's word, so A is retired (scope_exits reason 'merged', study_removed)
    and missing_ids names the study it became; it is neither "listing_omitted" (a member kept forever,
    counted twice with B) nor a plain removal. B is kept."""
    import requests

    fast_sync(small, warehouse_dir, page_size=25)
    merged, into = real_records()[10], real_records()[11]
    small.remove(nct(merged))
    small.put(mutate.set_path(into, ("protocolSection", "identificationModule", "nctIdAliases"), [nct(merged)]))
    # The spec: an id found in NCTIdAlias is answered 301, redirecting to the real study.
    moved = requests.get(f"{small.url}/studies/{nct(merged)}", allow_redirects=False, timeout=10)
    assert (moved.status_code, moved.headers["Location"]) == (301, f"/api/v2/studies/{nct(into)}")
    if not listed:
        small.omit_from_listings(nct(into))  # and the listing (filter.ids too) leaves the study out
    small.requests.clear()
    full = fast_sync(small, warehouse_dir, page_size=25, full=True)
    asked = [p for p, _ in small.requests if p.startswith("/studies/")]
    assert asked[0] == f"/studies/{nct(merged)}"  # the single-study endpoint's word, also when filter.ids found B
    if not listed:
        assert asked == [
            f"/studies/{nct(merged)}", f"/studies/{nct(into)}", f"/studies/{nct(into)}"]  # followed the redirect
    assert full["retired"] == 1
    assert rows(warehouse_dir, "SELECT nct_id FROM study_versions WHERE is_removed") == [(nct(merged),)]
    assert rows(warehouse_dir, "SELECT nct_id, reason FROM scope_exits") == [(nct(merged), "merged")]
    assert rows(warehouse_dir, "SELECT nct_id, event FROM changes WHERE run_id = ? AND nct_id = ?",
                [full["run_id"], nct(merged)]) == [(nct(merged), "study_removed")]
    assert rows(warehouse_dir, "SELECT count(*) FROM studies WHERE nct_id IN (?, ?)", [nct(merged), nct(into)]) == [
        (1,)]
    status, flagged, ids, detail = check_row(warehouse_dir, full["run_id"], "missing_ids")
    assert (status, flagged, ids) == ("ok", 0, [nct(merged)])
    assert detail.endswith(f"1 merged by the registry into another study (retired, the study it became is kept): "
                           f"{nct(merged)} into {nct(into)}")
    assert check_row(warehouse_dir, full["run_id"], "listing_omitted")[:2] == (
        ("ok", 0) if listed else ("warn", 1))  # B itself, when the listing leaves it out
    again = fast_sync(small, warehouse_dir, page_size=25, full=True)
    assert (again["retired"], again["versions_written"], again["changes_written"]) == (0, 0, 0)


def test_a_member_merged_into_a_study_outside_the_scopes_filters_does_not_bring_that_study_into_the_scope(
        small: FakeRegistry, warehouse_dir: Path) -> None:
    """A RECRUITING member merged into a COMPLETED study: the member is retired as merged; the study it
    became, never in the scope, is not stored as one of its members (it would "leave" the next run)."""
    status = ("protocolSection", "statusModule", "overallStatus")
    merged = next(r for r in real_records()[:60] if r[status[0]][status[1]][status[2]] == "RECRUITING")
    into = next(r for r in real_records()[:60] if r[status[0]][status[1]][status[2]] == "COMPLETED")
    fast_sync(small, warehouse_dir, page_size=25, status=["RECRUITING"])
    small.remove(nct(merged))
    small.put(mutate.set_path(into, ("protocolSection", "identificationModule", "nctIdAliases"), [nct(merged)]))
    full = fast_sync(small, warehouse_dir, page_size=25, status=["RECRUITING"], full=True)
    assert rows(warehouse_dir, "SELECT nct_id, reason FROM scope_exits") == [(nct(merged), "merged")]
    assert (full["retired"], full["left_scope"], full["versions_written"]) == (1, 0, 0)
    again = fast_sync(small, warehouse_dir, page_size=25, status=["RECRUITING"], full=True)
    assert (again["retired"], again["left_scope"], again["versions_written"]) == (0, 0, 0)
    assert rows(warehouse_dir, "SELECT nct_id, reason FROM scope_exits") == [(nct(merged), "merged")]


def test_a_look_up_answered_with_another_studys_record_stores_nothing_for_the_study_and_names_it_unverified(
        small: FakeRegistry, warehouse_dir: Path) -> None:
    """A cache or proxy answers GET /studies/A with B's record (B does not hold A as an alias): no version
    of A (or of anything else) comes of it, A is neither retired nor "listing_omitted": it is unverified,
    named with the reason, and the other look-ups of the run still settle their studies."""
    import orjson

    fast_sync(small, warehouse_dir, page_size=25)
    asked, other, gone = nct(real_records()[11]), real_records()[12], nct(real_records()[13])
    small.omit_from_listings(asked)
    small.remove(gone)
    small.faults.add("status", status=200, path=f"/studies/{asked}", times=-1, content_type="application/json",
                     body=orjson.dumps(mutate.set_status(other, "WITHDRAWN")).decode())
    before = rows(warehouse_dir, "SELECT nct_id, version, content_hash FROM study_versions ORDER BY ALL")
    full = fast_sync(small, warehouse_dir, page_size=25, full=True)
    assert (full["retired"], full["versions_written"], full["unverified"]) == (1, 0, 1)
    assert rows(warehouse_dir, "SELECT nct_id, version, content_hash FROM study_versions WHERE NOT is_removed "
                               "ORDER BY ALL") == [r for r in before]
    assert rows(warehouse_dir, "SELECT nct_id, reason FROM scope_exits") == [(gone, "removed")]
    status, _flagged, ids, detail = check_row(warehouse_dir, full["run_id"], "missing_ids")
    assert (status, ids) == ("fail", sorted([asked, gone]))
    assert f"answered with the record of {nct(other)}" in detail and detail.endswith(asked)
    assert check_row(warehouse_dir, full["run_id"], "listing_omitted")[:2] == ("ok", 0)


ALIAS_ONLY = {
    # B lists A in nctIdAliases, but GET /studies/A still answers with A's own record: A is published
    "its-own-record-still-served": None,
    # A merged into B by the listing's word, but its own look-up fails: no word from the single-study endpoint
    "its-own-look-up-fails": ("status", dict(status=503, body="Service Unavailable")),
    "its-own-look-up-is-a-cdn-404-page": ("status", dict(status=404, content_type="text/html",
                                                         body="<html><title>404 Not Found</title></html>")),
}


@pytest.mark.parametrize("case", list(ALIAS_ONLY))
def test_an_id_the_listing_finds_only_as_another_studys_alias_is_retired_only_by_its_own_look_up(
        case: str, small: FakeRegistry, warehouse_dir: Path) -> None:
    """SPEC: only GET /studies/{id} says a study is gone. A ``filter.ids`` look-up that answers a member A,
    which the listing left out, with B's record (A in B's nctIdAliases) is the listing's word, not the
    single-study endpoint's: A is asked for itself. Published there, it stays (``listing_omitted``); a
    failed look-up leaves it unverified. Neither retires it as merged."""
    fast_sync(small, warehouse_dir, page_size=25)
    member, other = real_records()[10], real_records()[11]
    small.omit_from_listings(nct(member))
    small.put(mutate.set_path(other, ("protocolSection", "identificationModule", "nctIdAliases"), [nct(member)]))
    fault = ALIAS_ONLY[case]
    if fault is not None:
        small.remove(nct(member))
        small.faults.add(fault[0], path=f"/studies/{nct(member)}", times=-1, **fault[1])
    small.requests.clear()
    full = fast_sync(small, warehouse_dir, page_size=25, full=True, max_attempts=2, retry_budget=5.0)
    assert f"/studies/{nct(member)}" in [p for p, _ in small.requests]  # the single-study endpoint was asked
    assert full["retired"] == 0
    assert rows(warehouse_dir, "SELECT count(*) FROM study_versions WHERE is_removed") == [(0,)]
    assert rows(warehouse_dir, "SELECT count(*) FROM scope_exits") == [(0,)]
    assert rows(warehouse_dir, "SELECT count(*) FROM changes WHERE event = 'study_removed'") == [(0,)]
    status, _flagged, ids, detail = check_row(warehouse_dir, full["run_id"], "missing_ids")
    if fault is None:
        assert full["unverified"] == 0 and status == "ok"
        assert check_row(warehouse_dir, full["run_id"], "listing_omitted")[:3] == ("warn", 1, [nct(member)])
    else:
        assert (full["unverified"], status, ids) == (1, "fail", [nct(member)])
        assert "merged" not in detail and detail.endswith(nct(member))


def test_an_ids_scope_asks_for_each_id_its_listing_never_held_from_its_first_run(
        small: FakeRegistry, warehouse_dir: Path) -> None:
    status = ("protocolSection", "statusModule", "overallStatus")
    recruiting = [nct(r) for r in real_records()[:60] if r[status[0]][status[1]][status[2]] == "RECRUITING"][:4]
    other = next(nct(r) for r in real_records()[:60] if r[status[0]][status[1]][status[2]] == "COMPLETED")
    omitted, unknown = recruiting[1], "NCT09999999"  # NCT09999999: no such study (404)
    small.omit_from_listings(omitted)
    ids = [*recruiting, other, unknown]
    first = fast_sync(small, warehouse_dir, page_size=25, ids=ids, status=["RECRUITING"], full=True)
    # The omitted id is published inside the scope: stored and named; the COMPLETED one is outside the
    # scope's filters (left alone); only the one the registry answers 404 for is "not in the registry".
    # (the COMPLETED one is found by the cheap look-up through the listing, filter.ids without the status)
    assert sorted(p for p, _ in small.requests if p.startswith("/studies/")) == [
        f"/studies/{omitted}", f"/studies/{unknown}"]
    assert rows(warehouse_dir, "SELECT nct_id FROM studies ORDER BY nct_id") == [(n,) for n in sorted(recruiting)]
    # the omitted one, found by its look-up, is a new study of the run like the three listed
    assert (first["new_studies"], first["versions_written"]) == (4, 4)
    assert rows(warehouse_dir, "SELECT new_studies, versions_written FROM sync_runs WHERE run_id = ?",
                [first["run_id"]]) == [(4, 4)]
    assert check_row(warehouse_dir, first["run_id"], "listing_omitted")[:3] == ("warn", 1, [omitted])
    status_, flagged, found, detail = check_row(warehouse_dir, first["run_id"], "missing_ids")
    assert (status_, flagged, found) == ("warn", 1, [unknown])
    assert detail == f"1 of the 6 requested ids are not in the registry: {unknown}"
    # Later full runs: the same, the omitted study now a member kept by its look-up.
    again = fast_sync(small, warehouse_dir, page_size=25, ids=ids, status=["RECRUITING"], full=True)
    assert (again["versions_written"], again["retired"], again["left_scope"]) == (0, 0, 0)
    assert check_row(warehouse_dir, again["run_id"], "listing_omitted")[:3] == ("warn", 1, [omitted])
    assert check_row(warehouse_dir, again["run_id"], "missing_ids")[:3] == ("warn", 1, [unknown])
