"""Real syncs (Prefect, fake registry on loopback) of what makes a version: an earlier release's
warehouse is re-hashed on first use, a stale record is counted, a registry-wide new field is a
registry schema change (no versions), a QC submission is a version dated by its observation."""

from __future__ import annotations

import copy
import hashlib
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest

from pipeline import mutate
from pipeline.hashing import content_hash, hash_rule
from pipeline.registry.fake_server import FakeRegistry
from tests.conftest import STUDIES_DIR, fast_sync, load, nct
from warehouse import Warehouse
from warehouse.catalog import Manifest
from warehouse.migrations import HASH_RULE_KEY
from warehouse.store import RunWriter

pytestmark = pytest.mark.usefixtures("prefect_api")


def previous_release_hash(record: dict[str, Any]) -> str:
    """The content hash of the release before hash rule 2 (kept here to build its warehouses)."""
    material = {k: v for k, v in record.items() if k != "derivedSection"}
    return hashlib.blake2b(orjson.dumps(material, option=orjson.OPT_SORT_KEYS), digest_size=16).hexdigest()


def as_previous_release(root: Path) -> None:
    """Rewrite a warehouse into what the previous release left: its hashes, no ``hash_rule`` recorded."""
    store = Warehouse(root)
    manifest = store.manifest()
    old_meta = {k: v for k, v in manifest.meta.items() if k != HASH_RULE_KEY}
    run = RunWriter(store, "20000101T000000Z-oldrel", Manifest(manifest.entries, old_meta, manifest.generation))
    with store.committed() as con:
        table = con.sql("SELECT * FROM raw_study_versions ORDER BY nct_id, version").to_arrow_table()
    hashes = [previous_release_hash(orjson.loads(raw)) if raw is not None else digest
              for raw, digest in zip(table["raw"].to_pylist(), table["content_hash"].to_pylist(), strict=True)]
    index = table.schema.get_field_index("content_hash")
    run.append("study_versions", table.set_column(index, table.schema.field(index), pa.array(hashes, pa.string())))
    run.commit(replace=frozenset({"study_versions"}))


def query(root: Path, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    with Warehouse(root).connect() as con:
        return con.execute(sql, params or []).fetchall()


def test_an_earlier_releases_warehouse_is_rehashed_once_and_a_resync_writes_no_version(
        registry: FakeRegistry, warehouse_dir: Path, records: list[dict[str, Any]]) -> None:
    fast_sync(registry, warehouse_dir)
    as_previous_release(warehouse_dir)
    differing = sum(1 for r in records if previous_release_hash(r) != content_hash(r))
    assert differing > 300  # the rule really changed for (nearly) every study
    assert HASH_RULE_KEY not in Warehouse(warehouse_dir).manifest().meta

    summary = fast_sync(registry, warehouse_dir, full=True)
    assert (summary["versions_written"], summary["unchanged"], summary["changes_written"]) == (0, 326, 0)
    assert Warehouse(warehouse_dir).manifest().meta[HASH_RULE_KEY] == hash_rule()
    stored = dict(query(warehouse_dir, "SELECT nct_id, content_hash FROM study_versions"))
    assert stored == {nct(r): content_hash(r) for r in records}
    migrations = query(warehouse_dir, "SELECT mode, versions_written, params FROM sync_runs WHERE mode = 'migrate'")
    assert len(migrations) == 1 and orjson.loads(migrations[0][2])["rehashed"] == differing

    again = fast_sync(registry, warehouse_dir, full=True)  # already migrated: no second migration run
    assert again["versions_written"] == 0
    assert query(warehouse_dir, "SELECT count(*) FROM sync_runs WHERE mode = 'migrate'") == [(1,)]


def test_a_new_warehouse_records_the_hash_rule_and_never_migrates(registry: FakeRegistry,
                                                                   warehouse_dir: Path) -> None:
    fast_sync(registry, warehouse_dir)
    fast_sync(registry, warehouse_dir, full=True)
    assert Warehouse(warehouse_dir).manifest().meta[HASH_RULE_KEY] == hash_rule()
    assert query(warehouse_dir, "SELECT count(*) FROM sync_runs WHERE mode = 'migrate'") == [(0,)]


def test_a_stale_record_is_counted_in_the_summary_and_sync_runs(warehouse_dir: Path) -> None:
    older = load(STUDIES_DIR / "NCT05766735.json")  # posted 2026-04-09
    newer = mutate.posted_on(mutate.set_status(older, "COMPLETED"), date(2026, 5, 16))
    with FakeRegistry([newer]).start() as registry:
        fast_sync(registry, warehouse_dir)
    with FakeRegistry([older]).start() as registry:
        summary = fast_sync(registry, warehouse_dir, full=True)
    assert (summary["stale"], summary["versions_written"], summary["changes_written"]) == (1, 0, 0)
    assert query(warehouse_dir, "SELECT stale FROM sync_runs ORDER BY started_at") == [(0,), (1,)]
    assert query(warehouse_dir, "SELECT count(*) FROM studies_as_of('2026-05-01') "
                                "WHERE nct_id = 'NCT05766735'") == [(0,)]  # only the newer one: from 05-16
    assert query(warehouse_dir, "SELECT overall_status FROM studies") == [("COMPLETED",)]


def test_a_field_new_to_every_record_is_one_schema_change_not_326_versions(
        registry: FakeRegistry, warehouse_dir: Path, records: list[dict[str, Any]]) -> None:
    fast_sync(registry, warehouse_dir)
    for record in records:
        widened = copy.deepcopy(record)
        widened["protocolSection"]["statusModule"]["registryReviewDate"] = "2026-06-01"
        registry.put(widened)
    first = fast_sync(registry, warehouse_dir, full=True)
    second = fast_sync(registry, warehouse_dir, full=True)
    assert (first["versions_written"], first["changes_written"], second["versions_written"]) == (0, 0, 0)
    assert first["unknown_fields"]["protocolSection.statusModule.registryReviewDate"] == 326
    rows = query(warehouse_dir, "SELECT path, first_run_id, runs FROM schema_changes ORDER BY path")
    assert ("protocolSection.statusModule.registryReviewDate", first["run_id"], 2) in rows
    # and the raw JSON of the next real version keeps the field
    registry.put(mutate.set_status(registry.record("NCT05766735"), "COMPLETED"))
    fast_sync(registry, warehouse_dir, full=True)
    assert query(warehouse_dir, "SELECT raw->'$.protocolSection.statusModule.registryReviewDate' FROM studies "
                                "JOIN study_versions USING (nct_id, version) WHERE nct_id = 'NCT05766735'") == [
        ('"2026-06-01"',)]


def test_a_qc_submission_without_a_new_registry_date_is_a_version_from_its_observation_day(
        warehouse_dir: Path) -> None:
    record = load(STUDIES_DIR / "NCT06401733.json")  # three QC submissions, each returned
    earlier = copy.deepcopy(record)
    earlier["derivedSection"]["miscInfoModule"]["submissionTracking"]["submissionInfos"].pop()
    with FakeRegistry([earlier]).start() as registry:
        fast_sync(registry, warehouse_dir)
        registry.put(record)  # the registry did not move lastUpdatePostDate
        summary = fast_sync(registry, warehouse_dir, full=True)
    assert summary["versions_written"] == 1
    changes = query(warehouse_dir, "SELECT event, category, severity, old_value, new_value FROM changes "
                                   "ORDER BY event")
    assert changes == [("results_returned", "results", "notable", "2025-11-18", "2025-12-09"),
                       ("results_submitted", "results", "notable", None, "2025-11-18")]
    (v1_from, v1_to), (v2_from, v2_to) = query(
        warehouse_dir, "SELECT valid_from, valid_to FROM study_versions ORDER BY version")
    registry_date = date.fromisoformat(record["protocolSection"]["statusModule"]["lastUpdatePostDateStruct"]["date"])
    assert v1_from == registry_date < v2_from == v1_to and v2_to is None  # v2 from the day it was seen


def test_a_stale_member_of_a_bulk_load_is_counted_and_stores_nothing(warehouse_dir: Path, tmp_path: Path) -> None:
    import zipfile

    from flows.bulk import run_load_bulk

    older = load(STUDIES_DIR / "NCT05766735.json")  # posted 2026-04-09
    newer = mutate.posted_on(mutate.set_status(older, "COMPLETED"), date(2026, 5, 16))
    with FakeRegistry([newer]).start() as registry:
        fast_sync(registry, warehouse_dir)
    others = sorted(STUDIES_DIR.glob("NCT0*.json"))[:2]
    archive = tmp_path / "ctg-studies.json.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in [STUDIES_DIR / "NCT05766735.json", *others]:
            zf.writestr(f"{path.stem[-2:]}/{path.name}", path.read_bytes())
    summary = run_load_bulk(dict(source=str(archive), warehouse=str(warehouse_dir), lock_timeout=5.0), workers=1)
    assert (summary["stale"], summary["versions_written"], summary["new_studies"]) == (1, 2, 2)
    assert query(warehouse_dir, "SELECT mode, stale FROM sync_runs ORDER BY started_at") == [("full", 0), ("bulk", 1)]
    assert query(warehouse_dir, "SELECT max(version) FROM study_versions WHERE nct_id = 'NCT05766735'") == [(1,)]
