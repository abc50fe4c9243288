"""Warehouse care: ``check`` names damage and ``repair`` restores or rolls back (the damage matrix of data
files, manifest files, markers and the catalog), and readers keep answering meanwhile.

Each case copies the small three-run warehouse of tests/care_support.py (built once per process),
damages the copy and checks what ``check`` says and what ``repair`` restores, against the intact reference.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import WarehouseError
from tests.care_support import (  # noqa: F401 - fixtures: built, copy
    KINDS,
    _cli,
    _days,
    built,
    copy,
    damage,
    files_of,
    second_run_files,
    survived,
)
from tests.conftest import nct
from tests.reliability.support import FULL, state
from warehouse import Warehouse, catalog
from warehouse import manifest as manifests
from warehouse.check import WarehouseDamaged, check
from warehouse.repair import DAMAGED_DIR, repair

# -- item 3 and 5: check, repair, the damage matrix ----------------------------------------------------

def test_an_intact_warehouse_checks_ok_in_one_line(built: dict[str, Any]) -> None:  # noqa: F811
    for deep in (False, True):
        report = check(built["path"], deep=deep)
        assert report.ok and report.generation == 3 and report.runs == 3
        assert report.summary().startswith(f"ok ({'deep' if deep else 'quick'} check): generation 3, 3 runs")


def test_check_racing_a_writer_that_publishes_after_the_listing_reports_no_missing_file(
        copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
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
        table: str, kind: str, copy: Path, built: dict[str, Any]) -> None:  # noqa: F811
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
        copy: Path, built: dict[str, Any], moves: int, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
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
        copy: Path, table: str) -> None:  # noqa: F811
    """Rolling back to before the first run would take every run out of the warehouse for one file:
    repair refuses, like it does when a merged file holds the first run, and moves nothing."""

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


def test_a_writer_refuses_a_damaged_footer_in_any_committed_file_and_names_it(copy: Path) -> None:  # noqa: F811
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


def kinds(short: tuple[str, ...]) -> tuple[str, ...]:
    """Every kind of damage under ``TRIALSYNC_FULL=1``; ``make test``: two (the manifest's and the catalog's
    tests below take two each, so together they still see every kind)."""
    return KINDS if FULL else short


@pytest.mark.reliability
@pytest.mark.parametrize("kind", kinds(("truncate", "delete")))
def test_a_damaged_manifest_file_is_restored_from_the_catalog_and_nothing_is_lost(
        kind: str, copy: Path, built: dict[str, Any]) -> None:  # noqa: F811
    """Each kind of damage under ``TRIALSYNC_FULL=1``; ``make test``: see ``kinds``."""
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


@pytest.mark.reliability
@pytest.mark.parametrize("kind", kinds(("flip", "zero")))
def test_a_damaged_manifest_file_without_the_catalogs_copy_rolls_back_to_before_it(
        copy: Path, built: dict[str, Any], kind: str) -> None:  # noqa: F811
    """(Each kind of damage under ``TRIALSYNC_FULL=1``; ``make test``: see ``kinds``.)
    The catalog is gone too, and run 2's marker (of an earlier release) holds no copy, so generation 2
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
        copy: Path, built: dict[str, Any]) -> None:  # noqa: F811
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
        copy: Path, built: dict[str, Any], tmp_path: Path) -> None:  # noqa: F811
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
        copy: Path, built: dict[str, Any]) -> None:  # noqa: F811
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
        copy: Path, built: dict[str, Any]) -> None:  # noqa: F811
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


@pytest.mark.reliability
@pytest.mark.parametrize("kind", kinds(("flip", "zero")))
def test_a_damaged_catalog_is_rebuilt_from_the_manifest_and_nothing_is_lost(
        kind: str, copy: Path, built: dict[str, Any]) -> None:  # noqa: F811
    """Each kind of damage under ``TRIALSYNC_FULL=1``; ``make test``: see ``kinds``."""
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


def test_readers_keep_answering_from_tables_a_damaged_file_does_not_belong_to(copy: Path) -> None:  # noqa: F811
    root = copy.resolve()
    (root / second_run_files(root)["locations"]).unlink()
    with Warehouse(root).connect() as con:
        assert con.execute("SELECT count(*) FROM studies").fetchall()[0][0] == 32
        assert con.execute("SELECT count(*) FROM changes").fetchall()[0][0] > 0


@pytest.mark.parametrize("how", ["differs", "missing"])
def test_a_catalog_copy_of_a_manifest_file_that_differs_or_is_missing_is_reported(copy: Path, how: str) -> None:  # noqa: F811
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


