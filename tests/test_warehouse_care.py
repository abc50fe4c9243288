"""Warehouse care: the commit point, the manifest beside the catalog, check / repair / backup, moves.

One small warehouse is built once per session from real records (three runs: a first sync, a day with
status changes and new studies, a day with enrollment changes); each case copies it, damages the copy
and checks what ``check`` says and what ``repair`` restores, against the intact reference.
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
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import mutate
from pipeline.errors import WarehouseError
from pipeline.registry.fake_server import FakeRegistry
from tests.conftest import fast_sync, nct, real_records
from tests.reliability.support import DUCKDB_CLI, FULL, TRIALSYNC, state
from warehouse import Warehouse, catalog, catalog_file, store
from warehouse import manifest as manifests
from warehouse.check import WarehouseDamaged, check
from warehouse.manifest import GenerationTaken
from warehouse.repair import DAMAGED_DIR, repair

KINDS = ("truncate", "delete", "flip", "zero")


def _day_after(records: list[dict[str, Any]]) -> date:
    return max(date.fromisoformat(r["protocolSection"]["statusModule"]["lastUpdatePostDateStruct"]["date"])
               for r in records) + timedelta(days=1)


def _days() -> list[list[dict[str, Any]]]:
    """Three registry days from real records: 30 studies; 6 change status and 2 appear; 4 change enrollment."""
    real = real_records()
    first = real[::9][:30]
    day2 = _day_after(first)
    second = [mutate.posted_on(mutate.set_status(r, "SUSPENDED"), day2) if i < 6 else r for i, r in enumerate(first)]
    second += [mutate.posted_on(real[1], day2), mutate.posted_on(real[2], day2)]
    day3 = day2 + timedelta(days=1)
    third = [mutate.posted_on(mutate.set_enrollment(r, 4321), day3) if 10 <= i < 14 else r
             for i, r in enumerate(second)]
    return [first, second, third]


@pytest.fixture(scope="session")
def built(prefect_api: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The three-run warehouse, the state after each run, and which studies runs 2 and 3 changed.
    Its run ids share one second and their names sort against commit order (as runs started within a
    second of each other may): nothing may take the order of runs from their ids."""
    base = tmp_path_factory.mktemp("care")
    warehouse = base / "wh"
    states = []
    suffixes = iter(["ffffff", "888888", "000000"])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("flows.sync.new_run_id", lambda started: f"{started:%Y%m%d}T050242Z-{next(suffixes)}")
        for day in _days():
            with FakeRegistry(day).start() as registry:
                fast_sync(registry, warehouse, full=True, page_size=50)
            states.append(state(warehouse))
            shutil.copytree(warehouse, base / f"after-{len(states)}")
    days = _days()
    later = {nct(r) for r in days[1][:6] + days[1][-2:] + days[2][10:14]}
    return {"path": warehouse, "states": states, "later": sorted(later), "base": base}


@pytest.fixture
def copy(built: dict[str, Any], tmp_path: Path) -> Path:
    target = tmp_path / "wh"
    shutil.copytree(built["path"], target)
    return target


def damage(path: Path, kind: str) -> None:
    if kind == "delete":
        path.unlink()
    elif kind == "zero":
        path.write_bytes(b"")
    elif kind == "truncate":
        whole = path.read_bytes()
        path.write_bytes(whole[: len(whole) // 2])
    else:  # flip bytes in the middle
        data = bytearray(path.read_bytes())
        middle = len(data) // 2
        for i in range(middle, min(middle + 16, len(data))):
            data[i] ^= 0xFF
        path.write_bytes(bytes(data))


def files_of(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def survived(root: Path, before: set[str]) -> set[str]:
    """Paths of ``before`` that are neither in place nor under damaged/<time>/."""
    after = files_of(root)
    moved = {p.split("/", 2)[2] for p in after if p.startswith(f"{DAMAGED_DIR}/") and p.count("/") >= 2}
    return before - after - moved


def second_run_files(root: Path) -> dict[str, str]:
    """table -> path of the second run's file of that table."""
    gen = manifests.read_log(root)[1]
    return {e.table: e.path for e in gen.entries}


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
        copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
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
        copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
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


def test_the_manifest_is_read_in_generation_order_not_directory_order(copy: Path) -> None:
    log = manifests.read_log(copy)
    assert [g.number for g in log] == list(range(1, len(log) + 1))
    reordered = manifests.fold(reversed(log))
    assert reordered == manifests.fold(log)


# -- item 2: the manifest beside the catalog, migration -------------------------------------------------

def test_every_committed_file_is_in_the_manifest_with_its_size_and_checksum(built: dict[str, Any]) -> None:
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


def test_a_warehouse_of_the_previous_release_is_migrated_on_first_use(copy: Path, built: dict[str, Any]) -> None:
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


@pytest.mark.parametrize("kind", ["truncate", "zero", "delete"])
def test_a_previous_release_warehouse_with_a_damaged_file_answers_reads_of_other_tables_and_refuses_writes(
        kind: str, copy: Path, built: dict[str, Any]) -> None:
    """The damaged file is never blessed by the migration (its size and checksum are not taken as the
    truth): reads that do not touch its table answer, ``check`` names it, writers point at ``repair``."""
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


# -- item 3 and 5: check, repair, the damage matrix ----------------------------------------------------

def test_an_intact_warehouse_checks_ok_in_one_line(built: dict[str, Any]) -> None:
    for deep in (False, True):
        report = check(built["path"], deep=deep)
        assert report.ok and report.generation == 3 and report.runs == 3
        assert report.summary().startswith(f"ok ({'deep' if deep else 'quick'} check): generation 3, 3 runs")


def test_check_racing_a_writer_that_publishes_after_the_listing_reports_no_missing_file(
        copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer writes generation N+1's file, then installs the catalog: a check that listed manifest/
    just before and read the catalog just after saw N+1 only in the catalog ("manifest file missing")."""
    listings = []
    real = manifests.generations

    def listed_before_the_last_commit(root: Path) -> list[int]:
        numbers = real(root)
        listings.append(numbers)
        return numbers[:-1] if len(listings) == 1 else numbers

    monkeypatch.setattr(manifests, "generations", listed_before_the_last_commit)
    report = check(copy)
    assert len(listings) >= 2  # listed again once the catalog was ahead
    assert report.ok, report.problems
    assert report.generation == 3 and report.runs == 3


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


def test_a_catalog_written_by_another_release_is_rewritten_not_called_damaged(copy: Path) -> None:
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


def test_a_writer_takes_a_catalog_of_another_release_without_refusing(copy: Path) -> None:
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
        built: dict[str, Any], tmp_path: Path) -> None:
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


TABLES_OF_RUN_2 = ["study_versions", "sync_runs", "run_studies", "changes", "locations", "conditions",
                   "reconciliation", "eligibility", "descriptions", "sponsors"]


def damaged_tables_and_kinds() -> list[tuple[str, str]]:
    """Every table with every kind of damage under ``TRIALSYNC_FULL=1`` (40 cases); ``make test``: every
    table with one kind (the kinds in turn) and every kind on study_versions (13 cases), so each table's
    file and each kind of damage is still found and rolled back."""
    every = [(table, kind) for table in TABLES_OF_RUN_2 for kind in KINDS]
    short = {(table, KINDS[i % len(KINDS)]) for i, table in enumerate(TABLES_OF_RUN_2)}
    short |= {("study_versions", kind) for kind in KINDS}
    return every if FULL else [case for case in every if case in short]


@pytest.mark.reliability
@pytest.mark.parametrize(("table", "kind"), damaged_tables_and_kinds())
def test_a_damaged_data_file_is_named_by_check_and_repair_rolls_back_to_the_run_before(
        table: str, kind: str, copy: Path, built: dict[str, Any]) -> None:
    """The full sweep runs under ``TRIALSYNC_FULL=1`` (``make test-reliability``): see
    ``damaged_tables_and_kinds``."""
    root = copy.resolve()
    target = second_run_files(root)[table]
    before = files_of(root)
    damage(root / target, kind)
    report = check(root, deep=True)
    assert not report.ok
    problem = report.problems[0]
    run_2 = manifests.read_log(root)[1].run_id
    assert (problem.path, problem.table, problem.run_id) == (target, table, run_2)
    assert problem.line().startswith(f"{target}: ")
    if kind != "flip":  # a flipped byte inside the data needs the checksum: the quick check may not see it
        assert not check(root).ok
    assert report.summary().endswith("; run `trialsync repair` to fix")  # it can: back to generation 1
    result = repair(root)
    assert result.generation == 1 and len(result.rolled_back) == 2
    assert set(result.lost_studies) == set(built["later"])
    assert check(root, deep=True).ok
    assert state(root) == built["states"][0]
    assert survived(root, before) == ({target} if kind == "delete" else set())


@pytest.mark.parametrize("moves", [1, 2, 4])
def test_a_repair_killed_while_moving_leaves_its_findings_for_the_next_repair(
        copy: Path, built: dict[str, Any], moves: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once a repair has moved manifests and run directories aside, nothing else says which runs were
    rolled back or which studies lost versions: its ``repair.json`` is written before the first move,
    and the next repair completes it and reports its findings (so ``--resync`` fetches them)."""
    import warehouse.repair as repair_module

    root = copy.resolve()
    runs = [g.run_id for g in manifests.read_log(root)[1:]]
    damage(root / second_run_files(root)["study_versions"], "truncate")
    rename, done = os.rename, []

    def rename_then_die(source: Any, destination: Any) -> None:
        if len(done) == moves:
            raise KeyboardInterrupt  # no cleanup runs in repair(): on disk this is a kill -9
        rename(source, destination)
        done.append(source)

    monkeypatch.setattr(repair_module.os, "rename", rename_then_die)
    with pytest.raises(KeyboardInterrupt):
        repair(root)
    monkeypatch.setattr(repair_module.os, "rename", rename)
    result = repair(root)
    assert (result.generation, result.rolled_back, result.lost_studies) == (1, runs, built["later"])
    assert check(root, deep=True).ok
    assert state(root) == built["states"][0]
    records = [json.loads(p.read_text()) for p in sorted((root / DAMAGED_DIR).glob("*/repair.json"))]
    assert [r["finished"] for r in records] == [True, True]
    assert records[0]["completed_by"] == result.damaged_dir
    assert repair(root).changed is False  # and a third repair finds nothing left to do


@pytest.mark.parametrize("table", ["sync_runs", "study_versions"])
def test_damage_to_the_first_runs_files_changes_nothing_and_says_to_restore_a_backup(
        copy: Path, table: str) -> None:
    """Rolling back to before the first run would take every run out of the warehouse for one file:
    repair refuses, like it does when a merged file holds the first run, and moves nothing."""
    from pipeline.errors import WarehouseError

    root = copy.resolve()
    first = {e.table: e.path for e in manifests.read_log(root)[0].entries}[table]
    (root / first).unlink()
    before = files_of(root)
    with pytest.raises(WarehouseError, match=r"^generation 1 has damaged files and no earlier committed state is "
                                             r"intact \(it is the first run\).*nothing was changed$"):
        repair(root)
    assert files_of(root) == before
    report = check(root)
    assert [p.path for p in report.problems] == [first]
    # check's hint says what repair will do: not "run repair to fix"
    assert report.summary() == ("damaged (quick check): 1 problem(s); generation 1 has damaged files and no earlier "
                                "committed state is intact, so `trialsync repair` cannot roll back past them: "
                                "restore from a backup")


def _flip_footer(path: Path) -> bytes:
    """Flip bytes inside the Parquet footer (size and magic kept, so only reading the footer tells);
    returns the original bytes."""
    whole = path.read_bytes()
    data = bytearray(whole)
    footer = int.from_bytes(data[-8:-4], "little")
    for i in range(len(data) - 8 - footer + 8, len(data) - 8 - footer + 40):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    return whole


def test_a_writer_refuses_a_damaged_footer_in_any_committed_file_and_names_it(copy: Path) -> None:
    """A writer reads the footers once, in its own DuckDB, not in the quick check: every file's footer
    must still be read before the run writes anything, and a bad one named as damage. One file of each
    table, from each run in turn (every file would take ~40 s)."""
    root = copy.resolve()
    manifest = Warehouse(root).manifest()
    (root / "runs" / "20000101T000000Z-crashed").mkdir()  # a crashed run's leftovers: kept by a refusal too
    runs_before = sorted(p.name for p in (root / "runs").iterdir())
    runs = sorted({e.run_id for e in manifest.entries})
    by_table = {e.table: [f for f in manifest.entries if f.table == e.table] for e in manifest.entries}
    probes = [files[i % len(files)] for i, files in enumerate(by_table.values())]
    assert len(probes) > 20 and {e.run_id for e in probes} == set(runs)
    for entry in probes:
        whole = _flip_footer(root / entry.path)
        try:
            with pytest.raises(WarehouseDamaged, match="trialsync repair") as refused, Warehouse(root).writer("probe"):
                pass
            assert f"{entry.path}: Parquet footer unreadable" in str(refused.value)
        finally:
            (root / entry.path).write_bytes(whole)
        assert manifests.head(root) == manifest.generation
        assert sorted(p.name for p in (root / "runs").iterdir()) == runs_before
    assert check(root).ok


@pytest.mark.parametrize("kind", KINDS)
def test_a_damaged_manifest_file_is_restored_from_the_catalog_and_nothing_is_lost(
        kind: str, copy: Path, built: dict[str, Any]) -> None:
    root = copy.resolve()
    target = "manifest/00000002.json"
    before = files_of(root)
    damage(root / target, kind)
    report = check(root)
    assert [p.path for p in report.problems][:1] == [target]
    assert state(root) == built["states"][-1]  # readers keep answering
    result = repair(root)
    assert result.restored_manifest == [2] and result.rolled_back == [] and result.lost_studies == []
    assert check(root, deep=True).ok
    assert state(root) == built["states"][-1]
    assert survived(root, before) == set()  # restored or rebuilt in place; the damaged one is in damaged/


@pytest.mark.parametrize("kind", KINDS)
def test_a_damaged_manifest_file_without_the_catalogs_copy_rolls_back_to_before_it(
        copy: Path, built: dict[str, Any], kind: str) -> None:
    """The catalog is gone too, and run 2's marker (of an earlier release) holds no copy, so generation 2
    cannot be restored: the log has a hole, and every
    generation after it is rolled back with it (moved aside, its studies listed), so check passes.
    Generation 2's own run is rolled back and its studies listed too, though no manifest names it now."""
    root = copy.resolve()
    later_runs = [g.run_id for g in manifests.read_log(root)[1:]]
    (root / "runs" / later_runs[0] / "_COMMITTED").write_bytes(b"")  # an earlier release's marker: no copy
    damage(root / "manifest/00000002.json", kind)
    (root / "warehouse.duckdb").unlink()
    result = repair(root)
    assert result.generation == 1
    assert [g.number for g in manifests.read_log(root)] == [1]
    assert result.rolled_back == later_runs
    assert result.lost_studies == built["later"]
    assert check(root, deep=True).ok
    assert state(root) == built["states"][0]


def test_a_committed_run_whose_manifest_file_and_catalog_are_both_lost_is_restored_from_its_marker(
        copy: Path, built: dict[str, Any]) -> None:
    """The catalog and the newest manifest file deleted: run 3 committed, and its marker holds its
    generation. check names the missing generation and the run; repair restores it (nothing rolled
    back, nothing lost) instead of moving an intact committed run to damaged/."""
    root = copy.resolve()
    run_3 = manifests.read_log(root)[2].run_id
    (root / "warehouse.duckdb").unlink()
    (root / "manifest/00000003.json").unlink()
    report = check(root)
    missing = [p for p in report.problems if p.kind == "manifest"]
    assert [(p.path, p.generation, p.run_id) for p in missing] == [("manifest/00000003.json", 3, run_3)]
    assert "_COMMITTED marker" in missing[0].detail
    result = repair(root)
    assert (result.generation, result.rolled_back, result.lost_studies) == (3, [], [])
    assert result.restored_manifest == [3]
    assert not any(m.startswith("runs/") for m in result.moved)
    assert check(root, deep=True).ok
    assert state(root) == built["states"][2]


def test_a_backup_whose_catalog_and_newest_manifest_file_are_lost_is_restored_from_its_markers(
        copy: Path, built: dict[str, Any], tmp_path: Path) -> None:
    """A backup carries every run's marker (its generation, as in the warehouse): with the backup's
    catalog and newest manifest file deleted, repair restores generation 3 and rolls nothing back."""
    from warehouse import backup as backups
    from warehouse.markers import read_marker

    dest = tmp_path / "backup"
    backups.backup(copy.resolve(), dest)
    log = manifests.read_log(dest)
    (dest / "warehouse.duckdb").unlink()
    (dest / "manifest/00000003.json").unlink()
    result = repair(dest)
    assert (result.generation, result.rolled_back, result.lost_studies) == (3, [], [])
    assert result.restored_manifest == [3]
    assert check(dest, deep=True).ok
    assert state(dest) == built["states"][2]
    assert [read_marker(dest / "runs" / g.run_id) for g in log] == log


def test_a_committed_run_listed_nowhere_with_an_empty_marker_is_reported_and_its_studies_listed(
        copy: Path, built: dict[str, Any]) -> None:
    """An earlier release's marker is empty: then nothing says what run 3's generation held. check names
    the run; repair rolls it back and lists the studies that lost their newer versions (never silently)."""
    root = copy.resolve()
    run_3 = manifests.read_log(root)[2].run_id
    (root / "runs" / run_3 / "_COMMITTED").write_bytes(b"")
    (root / "warehouse.duckdb").unlink()
    (root / "manifest/00000003.json").unlink()
    report = check(root)
    assert [(p.path, p.run_id) for p in report.problems if p.kind == "manifest"] == [
        (f"runs/{run_3}/_COMMITTED", run_3)]
    result = repair(root)
    assert (result.generation, result.rolled_back) == (2, [run_3])
    assert result.lost_studies == sorted(nct(r) for r in _days()[2][10:14])
    assert check(root, deep=True).ok
    assert state(root) == built["states"][1]


def test_readers_never_go_back_in_time_when_the_newest_manifest_file_is_lost(
        copy: Path, built: dict[str, Any]) -> None:
    """The newest manifest file deleted, the catalog intact (it holds a good copy of it): readers used to
    answer silently from generation 2. They answer from the copy, with a warning that points at
    check and repair; check names the missing generation."""
    root = copy.resolve()
    (root / "manifest/00000003.json").unlink()
    assert state(root) == built["states"][2]
    versions = len(built["states"][2]["versions"])
    out = _cli("sql", "--warehouse", str(root), "SELECT count(*) AS n FROM study_versions", "--format", "csv")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["n", str(versions)]
    assert "manifest generation 3 is missing" in out.stderr and "trialsync repair" in out.stderr
    runs = _cli("runs", "--warehouse", str(root), "--format", "csv")
    assert runs.returncode == 0 and len(runs.stdout.strip().splitlines()) == 1 + 3, runs.stdout
    assert [(p.path, p.generation) for p in check(root).problems] == [("manifest/00000003.json", 3)]
    assert repair(root).restored_manifest == [3]
    assert check(root, deep=True).ok


@pytest.mark.parametrize("kind", KINDS)
def test_a_damaged_catalog_is_rebuilt_from_the_manifest_and_nothing_is_lost(
        kind: str, copy: Path, built: dict[str, Any]) -> None:
    root = copy.resolve()
    target = "warehouse.duckdb"
    before = files_of(root)
    if kind == "flip":  # the middle of the file may be free space: flip DuckDB's headers
        data = bytearray((root / target).read_bytes())
        for offset in (4096, 8192):
            for i in range(offset + 8, offset + 40):
                data[i] ^= 0xFF
        (root / target).write_bytes(bytes(data))
    else:
        damage(root / target, kind)
    report = check(root)
    assert [p.path for p in report.problems] == [target]
    assert state(root) == built["states"][-1]  # readers keep answering (views built in memory)
    with pytest.raises(WarehouseDamaged, match="trialsync repair"):
        Warehouse(root).check_location()
    result = repair(root)
    assert result.rebuilt_catalog and result.rolled_back == [] and result.lost_studies == []
    assert check(root, deep=True).ok
    assert state(root) == built["states"][-1]
    assert survived(root, before) == set()  # restored or rebuilt in place; the damaged one is in damaged/


def test_readers_keep_answering_from_tables_a_damaged_file_does_not_belong_to(copy: Path) -> None:
    root = copy.resolve()
    (root / second_run_files(root)["locations"]).unlink()
    with Warehouse(root).connect() as con:
        assert con.execute("SELECT count(*) FROM studies").fetchall()[0][0] == 32
        assert con.execute("SELECT count(*) FROM changes").fetchall()[0][0] > 0


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(TRIALSYNC), *args], capture_output=True, text=True, timeout=180, cwd=cwd)


def test_a_query_that_needs_a_missing_file_names_it_and_points_at_repair_with_the_damage_exit_code(
        copy: Path) -> None:
    """It used to fail as bad input (exit 2) with DuckDB's "Table with name conditions does not exist!"."""
    root = copy.resolve()
    target = second_run_files(root)["conditions"]
    (root / target).unlink()
    out = _cli("sql", "--warehouse", str(root), "SELECT count(*) FROM conditions")
    assert out.returncode == 1, out.stderr
    [line] = out.stderr.splitlines()
    assert line.startswith(f"trialsync: error: query failed: the warehouse is damaged ({target}: file missing; "
                           "table conditions; run "), line
    assert line.endswith("see `trialsync check`, then `trialsync repair`")
    typo = _cli("sql", "--warehouse", str(root), "SELECT count(*) FROM no_such_table")
    assert typo.returncode == 2 and "damaged" not in typo.stderr  # a query's own mistake stays bad input
    assert _cli("sql", "--warehouse", str(root), "SELECT count(*) FROM studies").returncode == 0


def test_the_commands_check_and_repair_and_a_sync_that_refuses_a_damaged_warehouse(
        copy: Path, built: dict[str, Any]) -> None:
    root = copy.resolve()
    ok = _cli("check", "--warehouse", str(root))
    assert ok.returncode == 0 and ok.stdout.startswith("ok (quick check)") and len(ok.stdout.splitlines()) == 1
    target = second_run_files(root)["locations"]
    (root / target).unlink()
    bad = _cli("check", "--warehouse", str(root))
    assert bad.returncode == 1
    assert bad.stdout.splitlines()[0].startswith(f"{target}: file missing; table locations; run ")
    refused = _cli("sync", "--warehouse", str(root), "--api-url", "http://127.0.0.1:9", "--quiet")
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1 and "trialsync repair" in refused.stderr, refused.stderr
    assert "nanobind" not in refused.stderr
    fixed = _cli("repair", "--warehouse", str(root))
    assert fixed.returncode == 0, fixed.stderr
    assert f"{len(built['later'])} studies lost newer versions" in fixed.stdout
    assert _cli("check", "--deep", "--warehouse", str(root)).returncode == 0


def test_repair_resync_fetches_the_lost_studies_again(prefect_api: str, copy: Path, built: dict[str, Any]) -> None:
    root = copy.resolve()
    (root / second_run_files(root)["study_versions"]).write_bytes(b"")
    from flows.care import repair_warehouse, resync_lost

    result = repair_warehouse(str(root))
    with FakeRegistry(_days()[2]).start() as registry:
        summary = resync_lost(str(root), result.lost_studies, api_url=registry.url, request_interval=0.0)
    assert summary["studies_seen"] == len(built["later"])
    with Warehouse(root).connect() as con:
        current = dict(con.execute("SELECT nct_id, overall_status FROM studies").fetchall())
    assert len(current) == 32
    assert sum(1 for s in current.values() if s == "SUSPENDED") == 6
    assert check(root, deep=True).ok


# -- backup and portability ----------------------------------------------------------------------------

def _shell(warehouse: Path, sql: str) -> str:
    out = subprocess.run([str(DUCKDB_CLI), "-readonly", "-csv", "-noheader", str(warehouse / "warehouse.duckdb"),
                          "-c", sql], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_a_backup_is_a_working_warehouse_of_hard_links(copy: Path, built: dict[str, Any], tmp_path: Path) -> None:
    dest = tmp_path / "backup"
    result = _cli("backup", str(dest), "--warehouse", str(copy))
    assert result.returncode == 0, result.stderr
    assert check(dest.resolve(), deep=True).ok
    assert state(dest) == built["states"][-1]
    entry = manifests.fold(manifests.read_log(dest)).entries[0]
    assert os.stat(dest / entry.path).st_ino == os.stat(copy / entry.path).st_ino
    again = _cli("backup", str(dest), "--warehouse", str(copy))
    assert again.returncode == 2 and "exists" in again.stderr


def test_a_backup_killed_after_its_rename_leaves_a_whole_warehouse_and_a_killed_copy_is_cleaned_up(
        copy: Path, built: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DEST appears by a rename: killed just after it (before the catalog is rewritten for DEST), DEST
    must already be a whole warehouse. A backup killed before its rename leaves its temporary directory,
    which the next backup to the same DEST removes (its process is gone)."""
    from warehouse import backup as backups

    dest = tmp_path / "b"
    write, calls = catalog_file.write_catalog, []

    def killed_on_the_second_write(*args: Any, **kwargs: Any) -> None:
        calls.append(args[0])
        if len(calls) == 2:
            raise KeyboardInterrupt  # the rename is done; on disk this is a kill -9
        write(*args, **kwargs)

    monkeypatch.setattr(catalog_file, "write_catalog", killed_on_the_second_write)
    with pytest.raises(KeyboardInterrupt):
        backups.backup(copy.resolve(), dest)
    monkeypatch.setattr(catalog_file, "write_catalog", write)
    assert calls[1] == dest.resolve()
    assert check(dest.resolve(), deep=True).ok
    assert state(dest) == built["states"][-1]  # commands at DEST read DEST's files

    def fails(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(catalog_file, "write_catalog", fails)
    with pytest.raises(WarehouseError, match=f"^cannot write the backup at {tmp_path / 'f'}: No space left on device$"):
        backups.backup(copy.resolve(), tmp_path / "f")
    monkeypatch.setattr(catalog_file, "write_catalog", write)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".f")) == []  # a failure leaves nothing

    abandoned = tmp_path / ".c.tmp-999999999"  # no such process
    (abandoned / "runs").mkdir(parents=True)
    mine = tmp_path / f".c.tmp-{os.getpid()}-x"  # not a pid: never touched
    mine.mkdir()
    backups.backup(copy.resolve(), tmp_path / "c")
    assert not abandoned.exists() and mine.exists()
    assert check((tmp_path / "c").resolve(), deep=True).ok


def test_a_backup_to_a_place_that_takes_no_directory_says_so_at_once(copy: Path) -> None:
    """/proc exists but takes no new directory (ENOENT): that is DEST's side, not a warehouse changing
    under the backup (which was retried five times and reported as such)."""
    from warehouse import backup as backups

    with pytest.raises(WarehouseError, match=r"^cannot write the backup at /proc/trialsync-backup: No such file"):
        backups.backup(copy.resolve(), Path("/proc/trialsync-backup"))


@pytest.mark.parametrize("how", ["hard links", "--copy"])
def test_a_backup_refuses_a_file_whose_bytes_differ_from_the_manifest_checksum_even_at_the_same_size(
        how: str, copy: Path, tmp_path: Path) -> None:
    root = copy.resolve()
    target = second_run_files(root)["conditions"]
    size = (root / target).stat().st_size
    damage(root / target, "flip")
    assert (root / target).stat().st_size == size
    dest = tmp_path / "backup"
    result = _cli("backup", str(dest), "--warehouse", str(root), *(["--copy"] if how == "--copy" else []))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and target in result.stderr and "checksum" in result.stderr, result.stderr
    assert not dest.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".backup")] == []


@pytest.mark.parametrize("hard_links", [True, False])
def test_a_backup_that_returns_has_fsynced_every_file_it_wrote_and_every_directory(
        hard_links: bool, copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Durable when it returns: each file the backup wrote (copies, manifest files, marker, catalog,
    schema files) and each directory of the copy, and the parent's entry for DEST, went through fsync
    (the real one: the spy only records which inode each call made durable)."""
    from warehouse.backup import backup

    synced: set[tuple[int, int]] = set()
    real_fsync = os.fsync

    def recording(fd: int) -> None:
        real_fsync(fd)
        info = os.fstat(fd)
        synced.add((info.st_dev, info.st_ino))
    monkeypatch.setattr(os, "fsync", recording)
    dest = tmp_path / "out" / "backup"
    dest.parent.mkdir()
    result = backup(copy.resolve(), dest, hard_links=hard_links)
    assert result.files > 0 and (result.linked > 0) == hard_links
    unsynced = []
    for path in [dest.parent, dest, *dest.rglob("*")]:
        info = path.stat()
        linked = path.is_file() and info.st_nlink > 1  # a committed file, durable since its commit
        if not linked and (info.st_dev, info.st_ino) not in synced:
            unsynced.append(str(path.relative_to(tmp_path)))
    assert unsynced == []


def test_a_backup_taken_while_a_sync_commits_holds_whole_runs_only(
        prefect_api: str, built: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The backup runs at the worst moment: the next run's files are written and its manifest
    generation published, the catalog not yet in place."""
    root = tmp_path / "wh"
    shutil.copytree(built["base"] / "after-2", root)
    taken: dict[str, Any] = {}
    publish = manifests.publish

    def backup_around_publish(where: Path, gen: manifests.Generation) -> None:
        from warehouse.backup import backup

        taken["before"] = backup(where, tmp_path / "b-before")
        publish(where, gen)
        taken["after"] = backup(where, tmp_path / "b-after")
    monkeypatch.setattr(manifests, "publish", backup_around_publish)
    with FakeRegistry(_days()[2]).start() as registry:
        fast_sync(registry, root, full=True, page_size=50)
    assert (taken["before"].generation, taken["after"].generation) == (2, 3)
    assert state(tmp_path / "b-before") == built["states"][1]
    assert state(tmp_path / "b-after") == built["states"][2]
    for name in ("b-before", "b-after"):
        assert check((tmp_path / name).resolve(), deep=True).ok


@pytest.mark.parametrize("how", ["cp -r", "mv", "tar", "rsync"])
def test_a_copied_or_moved_warehouse_works_at_its_new_place_also_in_the_duckdb_shell(
        how: str, prefect_api: str, copy: Path, built: dict[str, Any], tmp_path: Path) -> None:
    source, dest = copy, tmp_path / "elsewhere" / "wh"
    dest.parent.mkdir()
    if how == "cp -r":
        subprocess.run(["cp", "-r", str(source), str(dest)], check=True)
    elif how == "mv":
        subprocess.run(["mv", str(source), str(dest)], check=True)
    elif how == "tar":
        subprocess.run(f"tar -C {source.parent} -cf - wh | tar -C {dest.parent} -xf -", shell=True, check=True)
    else:
        if shutil.which("rsync") is None:
            pytest.skip("rsync is not installed")
        subprocess.run(["rsync", "-a", f"{source}/", f"{dest}/"], check=True)
    if how != "mv":
        shutil.rmtree(source / "runs")  # the original's files are gone: the copy must not read them
    runs = _cli("runs", "--warehouse", str(dest))
    assert runs.returncode == 0, runs.stderr
    assert str(dest.resolve()) in _shell(dest, "SELECT value FROM _meta WHERE key = 'root'")
    assert _shell(dest, "SELECT count(*) FROM study_versions") == str(30 + 8 + 4)
    assert check(dest.resolve(), deep=True).ok
    with FakeRegistry(_days()[2]).start() as registry:
        again = fast_sync(registry, dest, full=True, page_size=50)
    assert again["versions_written"] == 0
    assert _cli("backup", str(tmp_path / "bk"), "--warehouse", str(dest)).returncode == 0
    assert check((tmp_path / "bk").resolve(), deep=True).ok


def _as_written_by_a_newer_release(path: Path) -> None:
    doc = json.loads(path.read_bytes())
    del doc["digest"]
    doc["format"] = manifests.FORMAT + 1
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    path.write_text(json.dumps({**doc, "digest": manifests._digest(text)}, sort_keys=True, indent=1) + "\n")


def test_a_generation_of_a_newer_format_is_refused_by_every_command_and_never_repaired_away(copy: Path) -> None:
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

def test_every_committed_file_records_its_schema_and_the_views_need_not_unify_columns(copy: Path) -> None:
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


def test_a_file_of_an_earlier_release_without_a_column_is_read_by_name_with_nulls(copy: Path) -> None:
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


@pytest.mark.parametrize("how", ["differs", "missing"])
def test_a_catalog_copy_of_a_manifest_file_that_differs_or_is_missing_is_reported(copy: Path, how: str) -> None:
    """The quick check compares digests of the catalog's copies with the files (no copy parsed)."""
    import duckdb

    root = copy.resolve()
    assert Warehouse(root).refresh_catalog()  # the copy's catalog read the original's directory
    con = duckdb.connect(str(root / catalog.CATALOG_NAME))
    try:
        if how == "differs":
            con.execute("UPDATE _manifest_log SET doc = replace(doc, '\"meta\"', ' \"meta\"') WHERE generation = 2")
        else:
            con.execute("DELETE FROM _manifest_log WHERE generation = 2")
    finally:
        con.close()
    report = check(root)
    assert [(p.kind, p.generation) for p in report.problems] == [("catalog", 2)]
    assert "copy of manifest generation 2 is missing or differs" in report.problems[0].detail
    assert repair(root).rebuilt_catalog
    assert check(root).ok


# -- check --deep: the rows (versions never overlap; no child row without its version) -------------------

def _commit_rows(root: Path, run_id: str, tables: dict[str, Any]) -> None:
    """Commit a run that writes ``tables`` (name -> Arrow rows) as given: rows a defective writer left."""
    with Warehouse(root).writer(run_id) as run:
        for table, rows in tables.items():
            run.append(table, rows)
        run.commit()


def _version_rows(root: Path, table: str, nct_id: str, version: int) -> Any:
    import pyarrow.compute as pc

    rows = pq.read_table([root / p for p in manifests.fold(manifests.read_log(root)).files(table)])
    return rows.filter(pc.and_(pc.equal(rows["nct_id"], nct_id), pc.equal(rows["version"], version)))


def test_check_deep_names_a_version_stored_twice_in_two_runs_and_the_quick_check_does_not_read_rows(
        copy: Path, built: dict[str, Any]) -> None:
    """Two committed files both holding version 2 of a study (as a writer that staged a shard twice
    would leave): every file is intact, yet ``studies_as_of`` has two rows for it on some days. Deep
    check names the table, both runs and the study; exit 1 from the command."""
    root = copy.resolve()
    study = built["later"][0]
    second = manifests.read_log(root)[1].run_id
    twice = _version_rows(root, "study_versions", study, 2)
    assert twice.num_rows == 1
    _commit_rows(root, "20990101T000000Z-dup000", {"study_versions": twice.set_column(
        twice.schema.get_field_index("run_id"), "run_id", pa.array(["20990101T000000Z-dup000"]))})
    with Warehouse(root).connect() as con:  # what the user sees: two rows on one day
        assert con.execute("SELECT max(n) FROM (SELECT count(*) AS n FROM study_versions "
                           "WHERE nct_id = ? GROUP BY version)", [study]).fetchone() == (2,)
    assert check(root).ok  # quick: no rows read
    report = check(root, deep=True)
    assert [(p.kind, p.table, p.studies) for p in report.problems] == [("duplicate", "study_versions", (study,))]
    problem = report.problems[0]
    assert set(problem.run_id.split(", ")) == {second, "20990101T000000Z-dup000"}
    assert f"{study} version 2" in problem.line() and "versions overlap" in problem.line()
    assert report.summary().startswith("inconsistent (deep check): 1 problem(s)")
    bad = _cli("check", "--deep", "--warehouse", str(root))
    assert bad.returncode == 1 and bad.stdout.splitlines()[0] == problem.line()
    assert _cli("check", "--warehouse", str(root)).returncode == 0


def test_check_deep_names_a_row_written_twice_in_one_file_and_child_rows_without_their_version(
        copy: Path, built: dict[str, Any]) -> None:
    root = copy.resolve()
    study = built["later"][0]
    row = _version_rows(root, "study_versions", study, 2)
    new = row.set_column(row.schema.get_field_index("version"), "version", pa.array([7], pa.int32()))
    new = new.set_column(new.schema.get_field_index("run_id"), "run_id", pa.array(["20990101T000000Z-dup001"]))
    orphan = _version_rows(root, "conditions", study, 2)
    assert orphan.num_rows >= 1
    orphan = orphan.set_column(orphan.schema.get_field_index("version"), "version",
                               pa.array([9] * orphan.num_rows, pa.int32()))
    _commit_rows(root, "20990101T000000Z-dup001", {"study_versions": pa.concat_tables([new, new]),
                                                   "conditions": orphan})
    report = check(root, deep=True)
    found = {(p.kind, p.table): p for p in report.problems}
    assert sorted(found) == [("duplicate", "study_versions"), ("orphan", "conditions")]
    duplicate, orphaned = found["duplicate", "study_versions"], found["orphan", "conditions"]
    assert (duplicate.run_id, duplicate.studies) == ("20990101T000000Z-dup001", (study,))
    assert f"{study} version 7 x2" in duplicate.detail and "holds them twice" in duplicate.detail
    # the file: the run's own, or the file an automatic merge put its rows in (named by the merge's run)
    assert duplicate.path.startswith("runs/20990101T000000Z-dup001")
    assert orphaned.studies == (study,) and orphaned.run_id.startswith("20990101T000000Z-dup001")
    assert orphaned.path.startswith("runs/20990101T000000Z-dup001")
    assert f"1 (nct_id, version) with rows here but no study_versions row ({study} version 9)" in orphaned.detail


def test_check_deep_compares_no_rows_when_files_are_damaged_and_repair_does_not_run_the_row_checks(
        copy: Path) -> None:
    damage(copy / second_run_files(copy)["conditions"], "flip")
    report = check(copy, deep=True)
    assert {p.kind for p in report.problems} == {"checksum"} or {p.kind for p in report.problems} <= {
        "checksum", "decode", "footer"}
    assert "rows not compared: files are damaged" in report.notes
    assert report.summary().startswith("damaged (deep check)")
