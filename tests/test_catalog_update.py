"""A writer's commit updates a copy of the catalog in place (only the views whose files changed) and
gets exactly the catalog a full build writes; anything else falls back to the full build."""

from __future__ import annotations

import re
import shutil
from datetime import date
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows.compact import compact_warehouse
from flows.derive import rederive_changes
from pipeline import mutate
from pipeline.registry.fake_server import FakeRegistry
from tests.conftest import fast_sync, nct
from tests.test_backfill import observe_then_backfill
from tests.test_checkpoints import commit_days
from warehouse import Warehouse, autocompact, catalog, catalog_file
from warehouse.catalog_file import open_catalog
from warehouse.check import check
from warehouse.manifest import ManifestEntry
from warehouse.tables import TABLES

# DuckDB renders a view's ``EXCLUDE (...)`` in no fixed order: compared as a set.
_EXCLUDED = re.compile(r"EXCLUDE \(([^()]*)\)")


def _sorted_exclude(match: re.Match[str]) -> str:
    return "EXCLUDE (" + ", ".join(sorted(match.group(1).split(", "))) + ")"


def catalog_contents(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Everything a reader of the catalog can see: views (their SQL and columns), macros, manifest tables."""
    con = open_catalog(path)
    try:
        here = "database_name = current_database() AND NOT internal"
        queries = {
            "views": f"SELECT schema_name, view_name, sql FROM duckdb_views() WHERE {here} ORDER BY ALL",
            "macros": "SELECT schema_name, function_name, macro_definition FROM duckdb_functions() "
                      f"WHERE {here} AND function_type IN ('macro', 'table_macro') ORDER BY ALL",
            "columns": "SELECT schema_name, table_name, column_index, column_name, data_type "
                       "FROM duckdb_columns() WHERE database_name = current_database() ORDER BY ALL",
        }
        found = {name: con.execute(sql).fetchall() for name, sql in queries.items()}
        found["views"] = [(schema, view, _EXCLUDED.sub(_sorted_exclude, sql)) for schema, view, sql in found["views"]]
        for table in ("_manifest", "_manifest_log", "_meta"):
            found[table] = con.execute(f"SELECT * FROM {table} ORDER BY ALL").fetchall()
        return found
    finally:
        con.close()


class UpdateRecorder:
    """Wraps ``_update_copy``: each copy it finishes is compared with a full build of the same manifest."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.updated: list[list[str]] = []  # the views each update redefined
        self.fell_back = 0
        self.differences: list[str] = []
        original = catalog_file._update_copy

        def update(root: Path, tmp: Path, previous: Any, manifest: Any, log: Any, attach: Any) -> bool:
            done = original(root, tmp, previous, manifest, log, attach)
            if not done:
                self.fell_back += 1
                return False
            names = [catalog.view_name(s) for s in catalog.changed_statements(root, previous, manifest) or []]
            self.updated.append(names)
            whole = catalog_file.prepare_catalog(root, manifest, log, tag="compare")
            try:
                mine, theirs = catalog_contents(tmp), catalog_contents(whole)
                if mine != theirs:
                    detail = {k: (sorted(set(mine[k]) - set(theirs[k]))[:3], sorted(set(theirs[k]) - set(mine[k]))[:3])
                              for k in mine if mine[k] != theirs[k]}
                    self.differences.append(f"generation {manifest.generation}: {names}: {detail}")
            finally:
                whole.unlink()
            return True

        monkeypatch.setattr(catalog_file, "_update_copy", update)


def test_every_kind_of_commit_leaves_the_catalog_a_full_build_would_write(
        prefect_api: str, records: list[dict[str, Any]], warehouse_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Syncs, a backfill that rewrote a study (its hiding views appear, then change), a retirement, a
    rederive replacing ``changes``, automatic merges and a compaction: each catalog the copy path wrote
    equals the full build's (every view's SQL and columns, the macros, the manifest tables)."""
    recorder = UpdateRecorder(monkeypatch)
    monkeypatch.setenv(autocompact.ENV, "2")  # a merge every other run
    with FakeRegistry(records[:12]).start() as registry:
        observe_then_backfill(registry, warehouse_dir)
        registry.put(mutate.posted_on(mutate.set_status(records[3], "TERMINATED", "Funding"), date(2030, 1, 2)))
        registry.remove(nct(records[4]))
        fast_sync(registry, warehouse_dir, full=True)
        rederive_changes(warehouse=str(warehouse_dir))
        registry.put(mutate.posted_on(mutate.set_status(records[5], "COMPLETED"), date(2030, 1, 3)))
        fast_sync(registry, warehouse_dir)
        compact_warehouse(warehouse=str(warehouse_dir), keep_hours=0)
        for day in range(4, 6):
            registry.put(mutate.posted_on(mutate.set_status(records[6], "SUSPENDED"), date(2030, 1, day)))
            fast_sync(registry, warehouse_dir)
    assert recorder.differences == []
    assert len(recorder.updated) >= 8, recorder.updated
    redefined = {name for names in recorder.updated for name in names}
    assert {"raw_study_versions", "raw_changes", "raw_sync_runs", "_file_seq"} <= redefined
    assert check(warehouse_dir, deep=True).ok


def next_commit(store: Warehouse) -> tuple[Any, Any]:
    """The committed manifest and one with a further ``sync_runs`` file (a committed one listed again)."""
    previous = store.manifest()
    return previous, previous.plus([ManifestEntry("r9", "sync_runs", previous.files("sync_runs")[0])])


def test_a_catalog_in_place_for_another_generation_is_not_copied(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A catalog left at an earlier generation (its rename failed, or a backup put it back) is not
    the one ``previous`` implies: no copy, the full build decides."""
    monkeypatch.setenv(autocompact.ENV, "off")
    store = Warehouse(tmp_path / "warehouse")
    commit_days(store, range(1, 3))
    stale = shutil.copyfile(store.root / "warehouse.duckdb", tmp_path / "stale.duckdb")
    commit_days(store, range(3, 4))
    previous, manifest = next_commit(store)
    tmp = tmp_path / "copy.duckdb"
    assert catalog_file._update_copy(store.root, tmp, previous, manifest, [], None) is True  # the one in place
    shutil.copyfile(stale, store.root / "warehouse.duckdb")
    assert catalog_file._update_copy(store.root, tmp, previous, manifest, [], None) is False


def test_a_catalog_in_place_at_another_place_or_damaged_is_not_copied(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(autocompact.ENV, "off")
    store = Warehouse(tmp_path / "warehouse")
    commit_days(store, range(1, 3))
    moved = Warehouse(Path(shutil.copytree(store.root, tmp_path / "moved", symlinks=True)))
    previous, manifest = next_commit(moved)
    tmp = tmp_path / "copy.duckdb"
    assert catalog_file._update_copy(moved.root, tmp, previous, manifest, [], None) is False  # views of the old place
    previous, manifest = next_commit(store)
    (store.root / "warehouse.duckdb").write_bytes(b"\0" * 4096)
    assert catalog_file._update_copy(store.root, tmp, previous, manifest, [], None) is False


def test_a_file_view_whose_columns_change_is_built_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Views over a file view keep the columns they were defined with: a file with a column this
    release does not know changes ``raw_sync_runs``'s columns, so the copy is given up."""
    monkeypatch.setenv(autocompact.ENV, "off")
    store = Warehouse(tmp_path / "warehouse")
    commit_days(store, range(1, 3))
    previous = store.manifest()
    with store.connect() as con:
        result = con.execute("SELECT * FROM raw_sync_runs LIMIT 1")
        row = dict(zip([d[0] for d in result.description], result.fetchall()[0], strict=True))
    odd = store.root / "runs" / "odd" / "sync_runs.parquet"
    odd.parent.mkdir(parents=True)
    schema = TABLES["sync_runs"].append(pa.field("surprise", pa.string()))
    pq.write_table(pa.Table.from_pylist([{**row, "surprise": "x"}], schema=schema), odd)
    manifest = previous.plus([ManifestEntry("odd", "sync_runs", "runs/odd/sync_runs.parquet")])
    assert [catalog.view_name(s) for s in catalog.changed_statements(store.root, previous, manifest) or []] == [
        "raw_sync_runs"]
    tmp = tmp_path / "copy.duckdb"
    assert catalog_file._update_copy(store.root, tmp, previous, manifest, [], None) is False
    assert catalog_file._update_copy(store.root, tmp, *next_commit(store), [], None) is True


def test_only_file_views_are_redefined_on_a_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The plan of a commit differs from the one before in file views only; a view that appears (a
    rewrite's hiding views) or any other changed definition means a full build."""
    monkeypatch.setenv(autocompact.ENV, "off")
    store = Warehouse(tmp_path / "warehouse")
    commit_days(store, range(1, 2))
    previous = store.manifest()
    grown = previous.plus([ManifestEntry("r9", "changes", "runs/r9/changes.parquet")])
    assert [catalog.view_name(s) for s in catalog.changed_statements(store.root, previous, grown) or []] == [
        "raw_changes"]
    assert catalog.changed_statements(store.root, previous, previous) == []
    rewritten = previous.plus([ManifestEntry("r9", "study_rewrites", "runs/r9/study_rewrites.parquet")])
    assert catalog.changed_statements(store.root, previous, rewritten) is None


def storage_version(path: Path) -> str:
    with open_catalog(path) as con:
        row = con.execute("SELECT tags['storage_version'] FROM duckdb_databases() "
                          "WHERE database_name = current_database()").fetchone()
    assert row is not None
    return str(row[0])


def test_a_catalog_in_place_in_a_newer_storage_format_is_built_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A catalog saved in a newer storage format (the same views and tables; e.g. a newer ``duckdb`` wrote
    it) is not copied, with or without the writer's DuckDB: the copy would keep that format, which the
    ``duckdb`` shell 1.x cannot open; a full build writes the catalog's own."""
    monkeypatch.setenv(autocompact.ENV, "off")
    store = Warehouse(tmp_path / "warehouse")
    commit_days(store, range(1, 3))
    ours = storage_version(store.root / "warehouse.duckdb")
    newer = tmp_path / "newer.duckdb"
    with duckdb.connect(str(newer), config={"storage_compatibility_version": "latest"}) as con:
        con.execute(f"ATTACH '{store.root / 'warehouse.duckdb'}' AS old (READ_ONLY)")
        con.execute("COPY FROM DATABASE old TO newer")
    shutil.copyfile(newer, store.root / "warehouse.duckdb")
    assert storage_version(store.root / "warehouse.duckdb") != ours
    previous, manifest = next_commit(store)
    assert catalog_file._update_copy(store.root, tmp_path / "copy.duckdb", previous, manifest, [], None) is False
    commit_days(store, range(3, 4))  # the writer's commit, in its own DuckDB
    assert storage_version(store.root / "warehouse.duckdb") == ours
    assert check(store.root).ok


def test_a_catalog_in_place_with_a_wal_beside_it_is_not_copied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write-ahead log beside the catalog in place holds changes the file alone lacks: no copy."""
    monkeypatch.setenv(autocompact.ENV, "off")
    store = Warehouse(tmp_path / "warehouse")
    commit_days(store, range(1, 3))
    previous, manifest = next_commit(store)
    tmp = tmp_path / "copy.duckdb"
    assert catalog_file._update_copy(store.root, tmp, previous, manifest, [], None) is True
    (store.root / "warehouse.duckdb.wal").write_bytes(b"")
    assert catalog_file._update_copy(store.root, tmp, previous, manifest, [], None) is False
