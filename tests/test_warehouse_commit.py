"""Warehouse care: the commit point, the manifest beside the catalog, warehouses and files of other
releases (migration, catalogs of other view definitions, newer formats, files' schemas).

Each case copies the small three-run warehouse of tests/care_support.py (built once per process).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from pipeline.registry.fake_server import FakeRegistry
from tests.care_support import (  # noqa: F401 - fixtures: built, copy
    _cli,
    _days,
    built,
    copy,
    damage,
    files_of,
    second_run_files,
)
from tests.conftest import fast_sync
from tests.reliability.support import FULL, state
from warehouse import Warehouse, catalog, catalog_file, store
from warehouse import manifest as manifests
from warehouse.check import check
from warehouse.manifest import GenerationTaken
from warehouse.repair import DAMAGED_DIR, repair

# -- item 1: the commit point ---------------------------------------------------------------------------

@pytest.mark.parametrize("failure", ["directory fsync", "catalog rename"])
def test_an_error_just_after_the_commit_point_never_undoes_the_run(
        failure: str, prefect_api: str, warehouse_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    days = _days()
    with FakeRegistry(days[0]).start() as registry:
        fast_sync(registry, warehouse_dir, full=True, page_size=50)
    root = warehouse_dir.resolve()
    fsync = catalog_file.fsync_path
    if failure == "directory fsync":  # as on some FUSE/SMB mounts: the root's fsync fails after the rename
        def failing(path: Path) -> None:
            if Path(path) == root:
                raise OSError(errno.EIO, "Input/output error")
            fsync(path)
        monkeypatch.setattr(catalog_file, "fsync_path", failing)
    else:
        def no_rename(root: Path, tmp: Path) -> None:
            raise OSError(errno.EIO, "Input/output error")
        monkeypatch.setattr(catalog_file, "install_catalog", no_rename)
    with FakeRegistry(days[1]).start() as registry:
        second = fast_sync(registry, warehouse_dir, full=True, page_size=50)
    monkeypatch.undo()
    assert (root / "runs" / second["run_id"] / "study_versions.parquet").exists()
    with Warehouse(root).connect() as con:
        runs = [r[0] for r in con.execute("SELECT run_id FROM sync_runs ORDER BY started_at").fetchall()]
        assert runs[-1] == second["run_id"] and len(runs) == 2
        assert con.execute("SELECT count(*) FROM study_versions").fetchall()[0][0] == 30 + 8
    assert check(root, deep=True).ok
    with FakeRegistry(days[2]).start() as registry:
        third = fast_sync(registry, warehouse_dir, full=True, page_size=50)
    assert third["versions_written"] == 4


def _run_row(run_id: str) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {"run_id": run_id, "mode": "full", "scope": "test", "started_at": now, "finished_at": now,
            "status": "succeeded"}


@contextmanager
def _no_locks() -> Iterator[None]:
    """What NFS with local locks or two hosts give: flock keeps nobody apart."""
    @contextmanager
    def no_lock(*args: Any, **kwargs: Any) -> Iterator[None]:
        yield

    original = store.exclusive_lock
    store.exclusive_lock = no_lock
    try:
        yield
    finally:
        store.exclusive_lock = original


def test_two_writers_that_locks_do_not_keep_apart_never_lose_a_committed_run(
        copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """Both start from the same generation (as on NFS with local locks, or two hosts): the first to
    publish commits, the second is refused and its files go; the catalog lists the first."""
    monkeypatch.setenv("TRIALSYNC_AUTOCOMPACT", "off")  # one generation per commit, to count them
    root = copy.resolve()
    wh = Warehouse(root)
    before = manifests.head(root)
    with _no_locks(), wh.writer("r-a") as a:
        b = store.RunWriter(wh, "r-b", a.manifest, a.log)  # another host, same generation
        a.append_rows("sync_runs", [_run_row("r-a")])
        b.append_rows("sync_runs", [_run_row("r-b")])
        a.commit()
        with pytest.raises(GenerationTaken, match="another writer committed generation"):
            b.commit()
        b.abort()
    assert manifests.head(root) == before + 1
    assert manifests.read_log(root)[-1].run_id == "r-a"
    assert not (root / "runs" / "r-b").exists() and not list(root.glob("warehouse.duckdb.tmp-*"))
    with wh.connect() as con:
        assert ("r-a",) in con.execute("SELECT run_id FROM sync_runs").fetchall()
    assert check(root, deep=True).ok


def test_an_interrupt_that_lands_just_after_the_commit_point_keeps_the_run(
        copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """Ctrl-C or SIGTERM (a KeyboardInterrupt from the CLI's handler) right after the generation file
    is linked, still inside ``publish``: the run is committed, so nothing may delete its files."""
    root = copy.resolve()
    link = os.link

    def link_then_interrupt(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        link(src, dst, *args, **kwargs)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), Warehouse(root).writer("r-int") as run:
        run.append_rows("sync_runs", [_run_row("r-int")])
        monkeypatch.setattr(manifests.os, "link", link_then_interrupt)
        run.commit()
    monkeypatch.undo()
    assert manifests.read_log(root)[-1].run_id == "r-int"
    assert (root / "runs" / "r-int" / "sync_runs.parquet").exists()
    with Warehouse(root).connect() as con:
        assert ("r-int",) in con.execute("SELECT run_id FROM sync_runs").fetchall()
    assert check(root, deep=True).ok


def test_the_manifest_is_read_in_generation_order_not_directory_order(copy: Path) -> None:  # noqa: F811
    log = manifests.read_log(copy)
    assert [g.number for g in log] == list(range(1, len(log) + 1))
    reordered = manifests.fold(reversed(log))
    assert reordered == manifests.fold(log)


# -- item 2: the manifest beside the catalog, migration -------------------------------------------------

def test_every_committed_file_is_in_the_manifest_with_its_size_and_checksum(built: dict[str, Any]) -> None:  # noqa: F811
    root = built["path"]
    log = manifests.read_log(root)
    assert len(log) == 3
    for entry in manifests.fold(log).entries:
        assert entry.size == (root / entry.path).stat().st_size
        assert entry.checksum == manifests.file_checksum(root / entry.path)


def _make_legacy(root: Path) -> None:
    """A warehouse as the previous release left it: ``_manifest`` inside the catalog, no manifest/."""
    manifest = manifests.fold(manifests.read_log(root))
    shutil.rmtree(root / "manifest")
    (root / "warehouse.duckdb").unlink()
    import duckdb

    con = duckdb.connect(str(root / "warehouse.duckdb"))
    con.execute("CREATE TABLE _manifest(run_id VARCHAR, table_name VARCHAR, path VARCHAR)")
    con.executemany("INSERT INTO _manifest VALUES (?, ?, ?)", [(e.run_id, e.table, e.path) for e in manifest.entries])
    con.execute("CREATE TABLE _meta(key VARCHAR PRIMARY KEY, value VARCHAR)")
    con.executemany("INSERT INTO _meta VALUES (?, ?)", [("root", str(root)), ("schema_version", "1"),
                                                        *manifest.meta.items()])
    catalog.build(con, root, manifest)
    con.close()


def test_a_warehouse_of_the_previous_release_is_migrated_on_first_use(copy: Path, built: dict[str, Any]) -> None:  # noqa: F811
    root = copy.resolve()
    runs = [g.run_id for g in manifests.read_log(root)]
    _make_legacy(root)
    assert state(root) == built["states"][-1]  # the first reader migrates it
    log = manifests.read_log(root)
    assert [g.run_id for g in log] == runs
    assert check(root, deep=True).ok
    (root / "warehouse.duckdb").unlink()  # and the catalog is now derivable
    assert repair(root).rebuilt_catalog
    assert state(root) == built["states"][-1]


PREVIOUS_RELEASE_DAMAGE = ("truncate", "zero", "delete")


@pytest.mark.reliability
@pytest.mark.parametrize("kind", PREVIOUS_RELEASE_DAMAGE if FULL else PREVIOUS_RELEASE_DAMAGE[:1])
def test_a_previous_release_warehouse_with_a_damaged_file_answers_reads_of_other_tables_and_refuses_writes(
        kind: str, copy: Path, built: dict[str, Any]) -> None:  # noqa: F811
    """The damaged file is never blessed by the migration (its size and checksum are not taken as the
    truth): reads that do not touch its table answer, ``check`` names it, writers point at ``repair``.
    ``make test`` damages the file one way (truncated); ``TRIALSYNC_FULL=1`` also empties and deletes it
    (each case runs five commands, ~9 s)."""
    root = copy.resolve()
    target = second_run_files(root)["locations"]
    _make_legacy(root)
    damage(root / target, kind)
    one = _cli("sql", "select 1 as one", "--format", "csv", "--warehouse", str(root))
    assert one.returncode == 0, one.stderr
    assert "1" in one.stdout
    versions = _cli("sql", "select count(*) as n from study_versions", "--format", "csv", "--warehouse", str(root))
    assert versions.returncode == 0, versions.stderr
    assert str(30 + 8 + 4) in versions.stdout
    with Warehouse(root).connect() as con:
        assert con.execute("SELECT count(*) FROM studies").fetchone() == (32,)
    migrated = {e.path: e for e in manifests.fold(manifests.read_log(root)).entries}
    assert (migrated[target].size, migrated[target].checksum) == (None, None)
    assert all(e.checksum == manifests.file_checksum(root / p) for p, e in migrated.items() if p != target)
    report = _cli("check", "--warehouse", str(root))
    assert report.returncode == 1
    assert any(line.startswith(f"{target}: ") for line in report.stdout.splitlines()), report.stdout
    refused = _cli("sync", "--warehouse", str(root), "--api-url", "http://127.0.0.1:9", "--quiet")
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1 and "trialsync repair" in refused.stderr, refused.stderr
    assert target in refused.stderr
    fixed = _cli("repair", "--warehouse", str(root))
    assert fixed.returncode == 0, fixed.stderr
    assert check(root, deep=True).ok
    assert state(root) == built["states"][0]


def _as_written_by_an_older_release(root: Path) -> None:
    """The catalog as a release with other view definitions left it: one view is not this release's,
    and its meta has no digest of this release's views (the release before the digest had none)."""
    import duckdb

    con = duckdb.connect(str(root / catalog.CATALOG_NAME))
    try:
        con.execute("CREATE OR REPLACE VIEW studies AS SELECT 'old' AS nct_id")
        con.execute("DELETE FROM _meta WHERE key = 'views_digest'")
    finally:
        con.close()


def test_a_catalog_written_by_another_release_is_rewritten_not_called_damaged(copy: Path) -> None:  # noqa: F811
    root = copy.resolve()
    with Warehouse(root).connect() as con:
        expected = con.execute("SELECT * FROM studies ORDER BY nct_id").fetchall()
    _as_written_by_an_older_release(root)
    report = check(root)
    assert report.ok, report.problems
    assert any("another release" in note for note in report.notes)
    with Warehouse(root).connect() as con:  # no writer holds the lock: the reader rewrites the catalog
        assert con.execute("SELECT * FROM studies ORDER BY nct_id").fetchall() == expected
    assert catalog_file.catalog_meta(root / catalog.CATALOG_NAME)["views_digest"] == catalog.views_digest()
    assert check(root).notes == [] and check(root).ok


def test_a_writer_takes_a_catalog_of_another_release_without_refusing(copy: Path) -> None:  # noqa: F811
    root = copy.resolve()
    _as_written_by_an_older_release(root)
    store.refuse_if_damaged(root)  # what every writing command runs first: no refusal
    with Warehouse(root).writer("upgrade-test"):
        pass  # the writer brings the catalog up to date before it starts
    assert catalog_file.catalog_meta(root / catalog.CATALOG_NAME)["views_digest"] == catalog.views_digest()


def _without_write_override() -> None:
    """In a child of root: drop CAP_DAC_OVERRIDE, so file modes bind it as they bind any user."""
    import ctypes

    if ctypes.CDLL(None, use_errno=True).prctl(24, 1, 0, 0, 0) != 0:  # PR_CAPBSET_DROP, CAP_DAC_OVERRIDE
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_a_reader_without_the_right_to_write_answers_from_a_catalog_of_another_release(
        built: dict[str, Any], tmp_path: Path) -> None:  # noqa: F811
    """A read-only copy (a mount, another user's warehouse): the reader cannot take the lock file or
    rewrite the catalog, so it builds the views in memory instead of failing."""
    import sys

    with Warehouse(built["path"]).connect() as con:
        expected = con.execute("SELECT count(*), max(nct_id) FROM studies").fetchone()
    root = tmp_path / "wh"
    shutil.copytree(built["path"], root)
    _as_written_by_an_older_release(root)
    for path in [root, *root.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)
    try:
        script = ("import sys; from warehouse import Warehouse; con = Warehouse(sys.argv[1]).connect(); "
                  "print(con.execute('SELECT count(*), max(nct_id) FROM studies').fetchone())")
        reader = subprocess.run(
            [sys.executable, "-c", script, str(root)], capture_output=True, text=True, timeout=120,
            cwd=Path(__file__).parents[1], preexec_fn=_without_write_override if os.geteuid() == 0 else None)
        assert reader.returncode == 0, reader.stderr[-2000:]
        assert reader.stdout.strip() == repr(expected)
        assert "views_digest" not in catalog_file.catalog_meta(root / catalog.CATALOG_NAME)  # left as it was
    finally:
        for path in [root, *root.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)


def _as_written_by_a_newer_release(path: Path) -> None:
    doc = json.loads(path.read_bytes())
    del doc["digest"]
    doc["format"] = manifests.FORMAT + 1
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    path.write_text(json.dumps({**doc, "digest": manifests._digest(text)}, sort_keys=True, indent=1) + "\n")


def test_a_generation_of_a_newer_format_is_refused_by_every_command_and_never_repaired_away(copy: Path) -> None:  # noqa: F811
    root = copy.resolve()
    _as_written_by_a_newer_release(root / "manifest/00000002.json")
    before = files_of(root)
    for args in (("check",), ("check", "--deep"), ("repair",), ("sql", "select 1"),
                 ("sync", "--api-url", "http://127.0.0.1:9", "--quiet")):
        refused = _cli(*args, "--warehouse", str(root))
        assert refused.returncode != 0, args
        assert refused.stderr.count("\n") == 1, (args, refused.stderr)
        assert "manifest generation 2 was written by a newer trialsync release" in refused.stderr, args
    assert files_of(root) == before and not (root / DAMAGED_DIR).exists()  # nothing moved, nothing rolled back


# -- files' schemas: views unify columns by name only when a file may differ -----------------------------

def test_every_committed_file_records_its_schema_and_the_views_need_not_unify_columns(copy: Path) -> None:  # noqa: F811
    root = copy.resolve()
    manifest = Warehouse(root).manifest()
    assert {e.schema for e in manifest.entries} == {catalog.schema_fingerprint(e.table) for e in manifest.entries}
    raw_views = [s for s in catalog.plan_catalog(root, manifest) if s.startswith("CREATE OR REPLACE VIEW raw_")]
    assert raw_views and all("union_by_name = false" in s for s in raw_views)
    # ... and the empty schema file last: DuckDB plans with the first file's statistics (0 rows led it
    # to plans that ran out of memory, tests/test_fidelity.py)
    assert all(re.search(r"/schema/[^']+\.parquet'\], union_by_name = false", s) for s in raw_views)
    writer_views = [s for s in catalog.plan_catalog(root, manifest, analyses=False, children=False, every_footer=True)
                    if s.startswith("CREATE OR REPLACE VIEW raw_")]
    assert writer_views and all("union_by_name = true" in s for s in writer_views)


def test_a_file_of_an_earlier_release_without_a_column_is_read_by_name_with_nulls(copy: Path) -> None:  # noqa: F811
    """Rewrite generation 1's locations file as an earlier release wrote it: without the last column,
    its entry without a schema. The views must unify that table's files by name (and only that table's)."""
    root = copy.resolve()
    log = manifests.read_log(root)
    first = log[0]
    target = next(e for e in first.entries if e.table == "locations")
    table = pq.read_table(root / target.path)
    dropped = table.schema.names[-1]
    pq.write_table(table.drop_columns([dropped]), root / target.path)
    entries = tuple(manifests.measure(root, e._replace(schema=None)) if e.path == target.path else e
                    for e in first.entries)
    old = dataclasses.replace(first, entries=entries, raw=None)
    manifests.generation_path(root, 1).write_bytes(old.to_bytes())
    log = manifests.read_log(root)
    catalog_file.write_catalog(root, manifests.fold(log), log, tag="earlier")  # its copy of the log too
    manifest = Warehouse(root).manifest()
    plan = {s.split(" AS ")[0]: s for s in catalog.plan_catalog(root, manifest)
            if s.startswith("CREATE OR REPLACE VIEW raw_")}
    assert "union_by_name = true" in plan["CREATE OR REPLACE VIEW raw_locations"]
    assert "union_by_name = false" in plan["CREATE OR REPLACE VIEW raw_study_versions"]
    old_keys = {(r["nct_id"], r["version"]) for r in table.select(["nct_id", "version"]).to_pylist()}
    with Warehouse(root).connect() as con:
        rows = con.execute(f"SELECT nct_id, version, {dropped} FROM raw_locations").fetchall()
    old_rows = [r for r in rows if (r[0], r[1]) in old_keys]
    assert len(old_rows) == table.num_rows > 0 and len(rows) > len(old_rows)
    assert all(r[2] is None for r in old_rows)  # the old file's rows read NULL for the column it lacks
    assert any(r[2] is not None for r in rows if (r[0], r[1]) not in old_keys)
    assert check(root).ok


