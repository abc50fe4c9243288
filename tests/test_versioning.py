"""What makes a new version: stale records, validity intervals that never overlap, one notion of
equality for the hash and the diff, registry schema changes. Records are derived from real ones."""

from __future__ import annotations

import copy
import functools
import itertools
import logging
import secrets
import tempfile
import unicodedata
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import mutate
from pipeline.diff import diff, full_diff, without_identical
from pipeline.hashing import content_hash, hash_and_unknown
from pipeline.versioning import BatchPlan, Head, RunContext, plan_batch
from tests.conftest import Record, examples, nct, real_records
from warehouse import Warehouse

CTX = RunContext("r1", datetime(2026, 6, 1, tzinfo=UTC), "api")  # after every date the tests post


def by_id(nct_id: str) -> Record:
    return copy.deepcopy(next(r for r in real_records() if nct(r) == nct_id))


def with_locations() -> Record:
    return copy.deepcopy(next(r for r in real_records()
                              if len(r["protocolSection"].get("contactsLocationsModule", {}).get("locations", [])) > 3))


def head_of(record: Record, version: int = 1) -> dict[str, Head]:
    updated = date.fromisoformat(record["protocolSection"]["statusModule"]["lastUpdatePostDateStruct"]["date"])
    return {nct(record): Head(version, content_hash(record), registry_updated=updated)}


# -- stale records -------------------------------------------------------------------------------
def test_a_record_older_than_the_stored_head_is_stale_no_version_but_seen() -> None:
    newer = mutate.posted_on(mutate.set_status(by_id("NCT05766735"), "COMPLETED"), date(2026, 5, 16))
    older = by_id("NCT05766735")  # posted 2026-04-09
    plan = plan_batch([older], head_of(newer, 2), CTX)
    assert (plan.versions, plan.stale, plan.seen, plan.unchanged) == ([], ["NCT05766735"], [("NCT05766735", 2)], 0)


def test_an_old_record_of_a_removed_study_is_stale_not_a_reappearance() -> None:
    """After the registry removed a study (our removal marker is its head), a lagging replica can still
    list its last record: older than the latest registry date we stored, so stale, not study_reappeared."""
    newer = mutate.posted_on(mutate.set_status(by_id("NCT05766735"), "COMPLETED"), date(2026, 5, 16))
    removed = {"NCT05766735": Head(3, content_hash(newer), is_removed=True, registry_updated=date(2026, 5, 16))}
    plan = plan_batch([by_id("NCT05766735")], removed, CTX)  # posted 2026-04-09
    assert (plan.versions, plan.stale) == ([], ["NCT05766735"])
    back = mutate.posted_on(by_id("NCT05766735"), date(2026, 6, 1))  # really published again, later
    assert [v.version for v in plan_batch([back], removed, CTX).versions] == [4]


def test_the_head_index_gives_a_removed_study_the_latest_registry_date_it_had() -> None:
    import duckdb

    from warehouse.heads import HEADS_SQL

    con = duckdb.connect()
    con.execute("CREATE TABLE raw_study_versions (nct_id VARCHAR, version INT, content_hash VARCHAR, is_removed "
                "BOOLEAN, registry_updated DATE, member_key BIGINT, observed_at TIMESTAMPTZ, run_id VARCHAR)")
    con.execute("CREATE TABLE raw_sync_runs (run_id VARCHAR, params VARCHAR)")
    con.execute("""INSERT INTO raw_sync_runs VALUES ('api-1', '{}'), ('bulk-1', '{"archive_newest": "2026-05-16"}'), """
                """('bulk-2', '{"archive_newest": "2026-06-30"}')""")
    con.execute("SET TimeZone = 'America/Los_Angeles'")  # the day a version was stored is a UTC day
    con.execute("INSERT INTO raw_study_versions VALUES "
                "('NCT05766735', 1, 'a', false, DATE '2026-04-09', 7, TIMESTAMPTZ '2026-04-10 01:00:00+00', 'api-1'), "
                "('NCT05766735', 2, 'b', false, DATE '2026-05-16', 8, TIMESTAMPTZ '2026-11-17 01:00:00+00', 'bulk-1'), "
                "('NCT05766735', 3, 'b', true, NULL, NULL, TIMESTAMPTZ '2026-12-02 23:30:00+00', 'api-1'), "
                "('NCT00000242', 1, 'c', false, DATE '2026-06-30', 9, TIMESTAMPTZ '2026-07-01 03:00:00+00', 'bulk-2')")
    # (the removal marker's member key is NULL: a removed study's member is always read again). As of:
    # the UTC day a version was stored, or the day after its bulk file's newest date if earlier.
    assert con.execute(HEADS_SQL + " ORDER BY nct_id").fetchall() == [
        ("NCT00000242", 1, "c", False, date(2026, 6, 30), 9, date(2026, 7, 1)),
        ("NCT05766735", 3, "b", True, date(2026, 5, 16), None, date(2026, 12, 2))]
    bulk_head = con.execute(HEADS_SQL.replace("= 1", "= 2")).fetchall()  # version 2, read from bulk-1
    assert bulk_head == [("NCT05766735", 2, "b", False, date(2026, 5, 16), 8, date(2026, 5, 17))]


def test_same_registry_date_and_new_content_is_a_version_not_stale() -> None:
    record = by_id("NCT05766735")
    edited = mutate.set_status(record, "COMPLETED")  # same lastUpdatePostDate
    plan = plan_batch([edited], head_of(record), CTX)
    assert ([v.version for v in plan.versions], plan.stale) == ([2], [])


def test_a_stale_record_in_the_same_batch_after_its_newer_version_is_stale() -> None:
    record = by_id("NCT05766735")
    newer = mutate.posted_on(mutate.set_status(record, "COMPLETED"), date(2026, 5, 16))
    plan = plan_batch([newer, record], {}, CTX)
    assert ([v.registry_updated for v in plan.versions], plan.stale) == ([date(2026, 5, 16)], ["NCT05766735"])


# -- one notion of equality ----------------------------------------------------------------------
def _reorder_locations(record: Record) -> Record:
    out = copy.deepcopy(record)
    out["protocolSection"]["contactsLocationsModule"]["locations"].reverse()
    return out


def _float_enrollment(record: Record) -> Record:
    out = copy.deepcopy(record)
    info = out["protocolSection"]["designModule"]["enrollmentInfo"]
    info["count"] = float(info["count"])
    return out


def _nfd_text(record: Record) -> Record:
    out = copy.deepcopy(record)
    ident = out["protocolSection"]["identificationModule"]
    ident["briefTitle"] = unicodedata.normalize("NFD", ident["briefTitle"] + " Café Münster")
    return out


def _nfc_text(record: Record) -> Record:
    out = copy.deepcopy(record)
    ident = out["protocolSection"]["identificationModule"]
    ident["briefTitle"] = unicodedata.normalize("NFC", ident["briefTitle"] + " Café Münster")
    return out


@pytest.mark.parametrize("spelling", [_reorder_locations, _float_enrollment])
def test_another_spelling_of_the_same_content_is_no_new_version_and_no_change(
        spelling: Callable[[Record], Record]) -> None:
    record = with_locations()
    variant = spelling(record)
    assert orjson.dumps(variant) != orjson.dumps(record)
    plan = plan_batch([variant], head_of(record), CTX)
    assert (plan.versions, plan.unchanged, diff(record, variant)) == ([], 1, [])


def test_nfc_and_nfd_text_are_one_version() -> None:
    record = with_locations()
    nfc, nfd = _nfc_text(record), _nfd_text(record)
    assert nfc != nfd
    plan = plan_batch([nfd], head_of(nfc), CTX)
    assert (plan.versions, plan.unchanged, diff(nfc, nfd)) == ([], 1, [])


def test_integral_float_where_an_integer_is_expected_parses_and_a_fraction_is_quarantined() -> None:
    record = by_id("NCT05766735")
    fine = _float_enrollment(record)
    plan = plan_batch([fine], {}, CTX)
    assert plan.versions[0].core.enrollment_count == record["protocolSection"]["designModule"]["enrollmentInfo"][
        "count"]
    broken = copy.deepcopy(record)
    broken["protocolSection"]["designModule"]["enrollmentInfo"]["count"] = 100.5
    plan = plan_batch([broken], {}, CTX)
    assert (plan.versions, [q.nct_id for q in plan.quarantined]) == ([], ["NCT05766735"])
    assert "enrollmentInfo.count" in plan.quarantined[0].reason


# A variant of a real record: equivalent spellings (order, numbers, Unicode) and material edits.
def _paths_to_lists(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = []
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths_to_lists(item, (*path, key))
    elif isinstance(value, list):
        if len(value) > 1:
            out.append(path)
        for index, item in enumerate(value):
            out += _paths_to_lists(item, (*path, index))
    return out


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, dict):
        return [p for key, item in value.items() for p in _leaves(item, (*path, key))]
    if isinstance(value, list):
        return [p for index, item in enumerate(value) for p in _leaves(item, (*path, index))]
    return [path]


def _get(record: Any, path: tuple[Any, ...]) -> Any:
    """The value at ``path``, or None where an earlier edit moved or dropped it."""
    for part in path:
        try:
            record = record[part]
        except (KeyError, IndexError, TypeError):
            return None
    return record


def _set(record: Any, path: tuple[Any, ...], value: Any) -> None:
    _get(record, path[:-1])[path[-1]] = value


@st.composite
def variants(draw: st.DrawFn) -> tuple[Record, Record]:
    base = copy.deepcopy(draw(st.sampled_from(_variant_pool())))
    material = {k: v for k, v in base.items() if k != "derivedSection"}
    out = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["shuffle", "float", "nfd", "edit", "drop", "derived", "module"]))
        if kind == "shuffle" and (lists := _paths_to_lists(material)):
            path = draw(st.sampled_from(lists))
            items = _get(out, path)
            if isinstance(items, list):
                items[:] = draw(st.permutations(items))
        elif kind in {"float", "nfd", "edit"}:
            leaf = draw(st.sampled_from(_leaves(material)))
            value = _get(out, leaf)
            if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
                _set(out, leaf, float(value))
            elif kind == "nfd" and isinstance(value, str):
                _set(out, leaf, unicodedata.normalize("NFD", value + " é"))
            elif kind == "edit" and isinstance(value, str):
                _set(out, leaf, value + draw(st.sampled_from([" (amended)", "x", " é"])))
        elif kind == "drop":
            lists = [p for p in _paths_to_lists(material) if isinstance(_get(out, p), list)]
            if lists:
                path = draw(st.sampled_from(lists))
                items = _get(out, path)
                if isinstance(items, list) and len(items) > 1:
                    items.pop(draw(st.integers(0, len(items) - 1)))
        elif kind == "derived":
            out.setdefault("derivedSection", {})["versionHolder"] = draw(st.sampled_from(["2026-01-01", "x"]))
        elif kind == "module" and (sections := sorted(k for k, v in out.items() if isinstance(v, dict) and v)):
            # a module gone, or written empty (hash rule 4: absent), beside the section's unchanged ones
            modules = out[draw(st.sampled_from(sections))]
            name = draw(st.sampled_from(sorted(modules)))
            if draw(st.booleans()):
                del modules[name]
            else:
                modules[name if draw(st.booleans()) else "zzNewModule"] = draw(st.sampled_from(
                    [{}, [], None, {"zzUnknown": 1}]))
    return base, out


@functools.cache
def _variant_pool() -> list[Record]:
    """Records without results (most), and the two smallest with several results modules."""
    records = real_records()
    results = sorted((r for r in records if len(r.get("resultsSection", {})) > 2), key=lambda r: len(str(r)))
    return [r for r in records if "resultsSection" not in r][:40] + results[:2]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(variants())
def test_a_version_is_stored_if_and_only_if_the_diff_finds_a_change(pair: tuple[Record, Record]) -> None:
    old, new = pair
    plan = plan_batch([new], {nct(old): Head(1, content_hash(old))}, CTX)
    # (an edit that breaks the schema, e.g. of an enum value, is quarantined instead: not a version)
    assert bool(plan.versions or plan.quarantined) == bool(diff(old, new))
    assert (content_hash(old) == content_hash(new)) == (diff(old, new) == [])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(variants(), st.booleans())
def test_skipping_identical_modules_leaves_the_diff_exactly_as_it_was(pair: tuple[Record, Record],
                                                                        swapped: bool) -> None:
    old, new = pair[::-1] if swapped else pair
    assert diff(old, new) == full_diff(old, new)


def test_skipping_identical_modules_changes_no_diff_between_real_records() -> None:
    from tests.conftest import snapshot_pairs

    records = real_records()
    pairs = [*snapshot_pairs().values(), *itertools.pairwise(records[:61]),
             (records[0], {}), ({}, records[0])]
    for old, new in pairs:
        assert diff(old, new) == full_diff(old, new)
    assert sum(len(diff(old, new)) for old, new in pairs) > 1000  # they do differ


def test_members_identical_as_json_are_skipped_and_true_is_not_one() -> None:
    old = {"protocolSection": {"statusModule": {"x": 1}, "designModule": {"y": True}}, "derivedSection": {}}
    new = {"protocolSection": {"statusModule": {"x": 1}, "designModule": {"y": 1}}, "hasResults": False}
    assert without_identical(old, new) == (
        {"protocolSection": {"designModule": {"y": True}}, "derivedSection": {}},
        {"protocolSection": {"designModule": {"y": 1}}, "hasResults": False})


# -- registry schema changes ---------------------------------------------------------------------
def test_a_key_the_schema_does_not_know_makes_no_version_and_is_reported() -> None:
    record = by_id("NCT05766735")
    widened = copy.deepcopy(record)
    widened["protocolSection"]["statusModule"]["newRegistryField"] = {"date": "2026-01-01"}
    digest, unknown = hash_and_unknown(widened)
    assert (digest, unknown) == (content_hash(record), frozenset({"protocolSection.statusModule.newRegistryField"}))
    plan = plan_batch([widened], head_of(record), CTX)
    assert (plan.versions, plan.unchanged, plan.unknown_fields) == (
        [], 1, {"protocolSection.statusModule.newRegistryField": 1})
    assert diff(record, widened) == []


def test_a_known_field_that_appears_is_still_a_change() -> None:
    record = by_id("NCT05766735")
    edited = copy.deepcopy(record)
    edited["protocolSection"]["statusModule"]["whyStopped"] = "Funding"
    assert content_hash(edited) != content_hash(record)
    assert [leaf.text for leaf in diff(record, edited)] == ["$.protocolSection.statusModule.whyStopped"]


# -- validity intervals in a real warehouse ------------------------------------------------------
def store(root: Path, records: list[Record], observed: datetime) -> BatchPlan:
    """One committed run of ``records`` (plan -> stage -> commit, as a sync does, without Prefect)."""
    run_id = f"{observed:%Y%m%dT%H%M%S}Z-{secrets.token_hex(3)}"
    ctx = RunContext(run_id, observed, "api")
    with Warehouse(root).writer(run_id) as run:
        plan = plan_batch(records, run.head_index().lookup(nct(r) for r in records), ctx)
        run.append_plan(plan, ctx)
        run.commit()
    return plan


def validity(root: Path, nct_id: str) -> list[tuple[int, date | None, date, date | None]]:
    with Warehouse(root).connect() as con:
        rows = con.execute("SELECT version, registry_updated, valid_from, valid_to FROM study_versions "
                           "WHERE nct_id = ? ORDER BY version", [nct_id]).fetchall()
    return [tuple(r) for r in rows]


def check_invariants(root: Path) -> None:
    """Versions never overlap; studies_as_of has at most one row per study on every boundary day."""
    with Warehouse(root).connect() as con:
        bad = con.execute("SELECT nct_id, version, valid_from, valid_to FROM study_versions "
                          "WHERE valid_to IS NOT NULL AND valid_from >= valid_to").fetchall()
        assert bad == []
        days = [r[0] for r in con.execute(
            "SELECT DISTINCT d FROM (SELECT valid_from AS d FROM study_versions UNION ALL "
            "SELECT valid_from - 1 FROM study_versions UNION ALL SELECT valid_to FROM study_versions) "
            "WHERE d IS NOT NULL").fetchall()]
        for day in days:
            twice = con.execute("SELECT nct_id FROM studies_as_of(?) GROUP BY nct_id HAVING count(*) > 1",
                                [day]).fetchall()
            assert twice == [], day


def test_a_stale_record_of_nct05766735_makes_no_overlapping_version(tmp_path: Path) -> None:
    """Issue 13.2: the demo holds NCT05766735's newer record; the older one (posted 2026-04-09) arrives."""
    older = by_id("NCT05766735")
    newer = mutate.posted_on(mutate.set_status(older, "COMPLETED"), date(2026, 5, 16))
    root = tmp_path / "w"
    store(root, [mutate.posted_on(older, date(2025, 5, 7))], datetime(2025, 5, 8, tzinfo=UTC))
    store(root, [newer], datetime(2026, 5, 17, tzinfo=UTC))
    plan = store(root, [older], datetime(2026, 5, 18, tzinfo=UTC))
    assert (plan.versions, plan.stale) == ([], ["NCT05766735"])
    assert validity(root, "NCT05766735") == [(1, date(2025, 5, 7), date(2025, 5, 7), date(2026, 5, 16)),
                                             (2, date(2026, 5, 16), date(2026, 5, 16), None)]
    check_invariants(root)


def test_new_content_on_the_heads_registry_date_is_valid_from_its_observation_day(tmp_path: Path) -> None:
    record = mutate.posted_on(by_id("NCT05766735"), date(2026, 4, 9))
    root = tmp_path / "w"
    store(root, [record], datetime(2026, 4, 10, tzinfo=UTC))
    store(root, [mutate.set_status(record, "COMPLETED")], datetime(2026, 4, 20, tzinfo=UTC))
    # ... and a second edit observed the same day: one day later, never a zero-length interval
    store(root, [mutate.set_status(record, "TERMINATED")], datetime(2026, 4, 20, 18, tzinfo=UTC))
    assert validity(root, "NCT05766735") == [(1, date(2026, 4, 9), date(2026, 4, 9), date(2026, 4, 20)),
                                             (2, date(2026, 4, 9), date(2026, 4, 20), date(2026, 4, 21)),
                                             (3, date(2026, 4, 9), date(2026, 4, 21), None)]
    check_invariants(root)


@st.composite
def deliveries(draw: st.DrawFn) -> list[tuple[date, list[tuple[date, int]]]]:
    """Versions of one study (registry date, content number), delivered out of order over runs.
    Each run is observed on a day and delivers only versions posted by then (some more than once)."""
    start = date(2026, 1, 1)
    offsets = draw(st.lists(st.integers(0, 40), min_size=1, max_size=6))
    versions = [(start + timedelta(days=o), i) for i, o in enumerate(offsets)]  # dates may repeat
    runs = []
    observed = start
    for _ in range(draw(st.integers(1, 4))):
        observed += timedelta(days=draw(st.integers(0, 20)))
        posted = [v for v in versions if v[0] <= observed]
        if posted:
            runs.append((observed, draw(st.lists(st.sampled_from(posted), max_size=4))))
    return runs


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(deliveries())
def test_planned_versions_never_overlap_whatever_the_delivery_order(
        runs: list[tuple[date, list[tuple[date, int]]]]) -> None:
    """The same property on many more schedules: the plans of every run (``plan_batch``, heads carried
    from run to run) as the rows a run writes, dated by the view's SQL (``warehouse.validity``)."""
    import duckdb
    import pyarrow as pa

    from warehouse.rows import versions_table
    from warehouse.validity import versions_with_validity

    base = by_id("NCT05766735")
    heads: dict[str, Head] = {}
    tables = []
    for number, (observed, batch) in enumerate(runs):
        ctx = RunContext(f"r{number}", datetime.combine(observed, datetime.min.time(), UTC), "api")
        plan = plan_batch([mutate.set_enrollment(mutate.posted_on(base, day), 1000 + content)
                           for day, content in batch], heads, ctx)
        heads.update(plan.heads)
        tables.append(versions_table(plan.versions, ctx))
    if not tables:
        return
    con = duckdb.connect()
    con.register("raw_study_versions", pa.concat_tables(tables))
    con.execute(f"CREATE VIEW v AS SELECT version, registry_updated, valid_from, lead(valid_from) OVER "
                f"(PARTITION BY nct_id ORDER BY version) AS valid_to FROM ({versions_with_validity()})")
    rows = con.execute("SELECT version, registry_updated, valid_from, valid_to FROM v ORDER BY version").fetchall()
    assert all(to is None or start < to for _, _, start, to in rows), rows
    assert [r[1] for r in rows] == sorted(r[1] for r in rows)  # a stale record never became a version
    for _, _, start, _ in rows:
        for day in (start - timedelta(days=1), start):
            assert con.execute("SELECT count(*) FROM v WHERE valid_from <= ? AND (valid_to IS NULL OR valid_to > ?)",
                               [day, day]).fetchall()[0][0] <= 1


@pytest.mark.reliability
@settings(max_examples=examples(3, 8), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(deliveries())
def test_out_of_order_deliveries_never_overlap_and_as_of_gives_one_row(
        runs: list[tuple[date, list[tuple[date, int]]]]) -> None:
    """Each example commits up to four real runs (seconds each): ``make test`` tries 3 schedules, the
    full suite (``TRIALSYNC_FULL=1``, ``make test-reliability``) 8; the next test checks the same rule
    on 150 schedules through the plans and the view's SQL, without the commits."""
    base = by_id("NCT05766735")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "w"
        newest: date | None = None
        for observed, batch in runs:
            records = [mutate.set_enrollment(mutate.posted_on(base, day), 1000 + content) for day, content in batch]
            plan = store(root, records, datetime.combine(observed, datetime.min.time(), UTC))
            for version in plan.versions:  # a stored version is never older than the stored head
                assert newest is None or version.registry_updated is None or version.registry_updated >= newest
                newest = version.registry_updated
        if not (root / "warehouse.duckdb").exists():
            return
        check_invariants(root)
        rows = validity(root, "NCT05766735")
        # registry dates never go back: a stale record never became a version
        assert [r[1] for r in rows] == sorted((r[1] for r in rows), key=lambda d: d or date.min)



def test_the_hash_and_the_diff_agree_on_every_real_version_pair() -> None:
    from tests.conftest import snapshot_pairs

    pairs = snapshot_pairs()
    assert len(pairs) == 8
    for name, (old, new) in pairs.items():
        assert (content_hash(old) == content_hash(new)) == (diff(old, new) == []), name


def test_a_schema_that_learns_a_key_is_a_new_hash_rule_so_the_warehouse_is_rehashed() -> None:
    """The canonical form keeps only keys the schema knows: a release whose schema learns a key the
    registry already sends hashes every such record differently. Its rule name must differ, so the
    warehouse's stored hashes are migrated instead of every study getting a new version."""
    from pipeline.hashing import _shape_of_study, hash_rule, rule_for

    shape = _shape_of_study()
    wider = {**shape, "protocolSection": {**shape["protocolSection"], "aNewModule": None}}
    assert hash_rule() == rule_for(shape)
    assert rule_for(wider) != rule_for(shape)
    assert rule_for(wider).split("-")[0] == rule_for(shape).split("-")[0]


def test_a_run_with_thousands_of_stale_records_logs_a_count_and_the_first_ids_only(
        caplog: pytest.LogCaptureFixture) -> None:
    """Reloading an older bulk file makes every changed study stale: one readable line, not 10,000 ids."""
    from flows.runs import STALE_IDS_LOGGED, RunTotals, log_stale

    ids = [f"NCT{n:08d}" for n in range(5_000)]
    totals = RunTotals()
    for start in range(0, len(ids), 7):  # page by page or shard by shard
        totals.add_stale(ids[start:start + 7])
    assert (totals.stale, totals.stale_ids) == (5_000, ids[:STALE_IDS_LOGGED])
    with caplog.at_level(logging.WARNING, logger="trialsync"):
        log_stale(totals.stale, totals.stale_ids)
    [record] = caplog.records
    message = record.getMessage()
    assert message.startswith("5000 stale record(s)")
    assert ids[STALE_IDS_LOGGED - 1] in message and ids[STALE_IDS_LOGGED] not in message
    assert message.endswith(f"and {5_000 - STALE_IDS_LOGGED} more")


def test_a_head_dated_in_the_future_does_not_make_every_later_record_stale() -> None:
    """A damaged record dated 2099 became a study's head: the real records after it must not all be
    taken for stale (the study would never update again)."""
    real = by_id("NCT05766735")  # posted 2026-04-09
    bogus = {"NCT05766735": Head(1, "x", registry_updated=date(2099, 1, 1))}
    plan = plan_batch([mutate.set_enrollment(real, 7)], bogus, CTX)
    assert (plan.stale, [v.version for v in plan.versions]) == ([], [2])
    plausible = {"NCT05766735": Head(1, "x", registry_updated=date(2026, 6, 2))}  # the run's next day
    assert plan_batch([real], plausible, CTX).stale == ["NCT05766735"]


def test_a_same_day_record_with_new_content_is_a_version_stale_or_held_as_asked() -> None:
    """``same_day`` decides a record dated as its head but different (or of a removed study): a live
    registry's edit (new), not known yet (held, counted later), or from a bulk file whose newest date
    is given: stale where that file was made before the head was stored."""
    real = by_id("NCT05766735")
    day = date(2026, 4, 9)
    edited = mutate.set_enrollment(real, 7)  # same lastUpdatePostDate, new content
    stored = date(2026, 5, 20)
    head = Head(1, content_hash(real), registry_updated=day, as_of=stored)
    removed = Head(2, "removed", is_removed=True, registry_updated=day, as_of=stored)
    assert mutate._status(real)["lastUpdatePostDateStruct"]["date"] == day.isoformat()
    for heads in ({"NCT05766735": head}, {"NCT05766735": removed}):
        version = heads["NCT05766735"].version
        new = plan_batch([edited], heads, CTX)
        assert ([v.version for v in new.versions], new.stale, new.held) == ([version + 1], [], [])
        held = plan_batch([real, edited], heads, CTX, same_day="hold")
        assert (held.held, held.seen, held.stale, held.unknown_fields) == (
            ([0, 1], [], [], {}) if heads["NCT05766735"].is_removed else ([1], [("NCT05766735", 1)], [], {}))
        older = plan_batch([edited], heads, CTX, same_day=stored - timedelta(days=2))  # made before it was stored
        assert (older.versions, older.stale, older.seen) == ([], ["NCT05766735"], [("NCT05766735", version)])
        for newest in (stored - timedelta(days=1), stored, stored + timedelta(days=9)):  # as new as the head
            current = plan_batch([edited], heads, CTX, same_day=newest)
            assert ([v.version for v in current.versions], current.stale) == ([version + 1], [])
        exempt = plan_batch([edited], heads, CTX, same_day=stored - timedelta(days=30), always_new={"NCT05766735"})
        assert ([v.version for v in exempt.versions], exempt.stale) == ([version + 1], [])
    # A later date is news and an earlier one stale whatever ``same_day`` says.
    long_ago = stored - timedelta(days=30)
    later = mutate.posted_on(edited, day + timedelta(days=3))
    assert [v.version for v in plan_batch([later], {"NCT05766735": head}, CTX, same_day=long_ago).versions] == [2]
    earlier = mutate.posted_on(edited, day - timedelta(days=3))
    assert plan_batch([earlier], {"NCT05766735": head}, CTX, same_day="hold").stale == ["NCT05766735"]


@settings(max_examples=300, deadline=None)
@given(st.dates(date(2000, 1, 1), date(2100, 1, 1)), st.dates(date(2000, 1, 1), date(2100, 1, 1)),
       st.dates(date(2020, 1, 1), date(2040, 1, 1)))
def test_a_record_is_from_an_older_snapshot_only_when_both_snapshot_days_are_plausible_and_it_is_older(
        mine: date, stored: date, today: date) -> None:
    """``holder_predates``: a record lags the stored version only if both ``versionHolder`` days are real days
    no later than the run's next day (a damaged one later than that must not make the study's later records
    stale for ever), and the record's is the earlier."""
    from pipeline.dates import latest_plausible
    from pipeline.versioning import holder_predates

    record = mutate.set_path(real_records()[0], ("derivedSection", "miscInfoModule", "versionHolder"),
                             mine.isoformat())
    plausible = mine <= latest_plausible(today) and stored <= latest_plausible(today)
    assert holder_predates(record, stored.isoformat(), today) == (plausible and mine < stored)
    assert not holder_predates(record, f"{stored.year}-13-{stored.day:02d}", today)  # no real day
    assert not holder_predates(record, None, today)
