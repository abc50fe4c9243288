"""Warehouse care from the command line and beyond: the care commands against a damaged warehouse,
backups, copied and moved warehouses, and ``check --deep``'s row checks.

Each case copies the small three-run warehouse of tests/care_support.py (built once per process).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import WarehouseError
from pipeline.registry.fake_server import FakeRegistry
from tests.care_support import (  # noqa: F401 - fixtures: built, copy
    _cli,
    _days,
    _shell,
    built,
    copy,
    damage,
    second_run_files,
)
from tests.conftest import fast_sync
from tests.reliability.support import FULL, state
from warehouse import Warehouse, catalog_file
from warehouse import manifest as manifests
from warehouse.check import check


def test_a_query_that_needs_a_missing_file_names_it_and_points_at_repair_with_the_damage_exit_code(
        copy: Path) -> None:  # noqa: F811
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
        copy: Path, built: dict[str, Any]) -> None:  # noqa: F811
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


def test_repair_resync_fetches_the_lost_studies_again(prefect_api: str, copy: Path, built: dict[str, Any]) -> None:  # noqa: F811
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



def test_a_backup_is_a_working_warehouse_of_hard_links(copy: Path, built: dict[str, Any], tmp_path: Path) -> None:  # noqa: F811
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
        copy: Path, built: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
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


def test_a_backup_to_a_place_that_takes_no_directory_says_so_at_once(copy: Path) -> None:  # noqa: F811
    """/proc exists but takes no new directory (ENOENT): that is DEST's side, not a warehouse changing
    under the backup (which was retried five times and reported as such)."""
    from warehouse import backup as backups

    with pytest.raises(WarehouseError, match=r"^cannot write the backup at /proc/trialsync-backup: No such file"):
        backups.backup(copy.resolve(), Path("/proc/trialsync-backup"))


@pytest.mark.parametrize("how", ["hard links", "--copy"])
def test_a_backup_refuses_a_file_whose_bytes_differ_from_the_manifest_checksum_even_at_the_same_size(
        how: str, copy: Path, tmp_path: Path) -> None:  # noqa: F811
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


@pytest.mark.parametrize("how", ["hard links", "--copy"])
@pytest.mark.parametrize("kind", ["deleted", "a directory", "a link loop", "a named pipe"])
def test_a_backup_of_a_warehouse_missing_a_data_file_names_the_file_as_damage_at_once(
        kind: str, how: str, copy: Path, tmp_path: Path) -> None:  # noqa: F811
    """A deleted data file made the backup retry five times and say 'the warehouse kept changing under
    the backup; try again' (no retry ever helps); a directory or a link loop in its place was
    'IsADirectoryError: [Errno 21] ...' / a traceback-class line; a named pipe copied (--copy, or to
    another disk) was 'cannot write the backup at DEST: ... is a named pipe', blaming DEST."""
    root = copy.resolve()
    target = second_run_files(root)["conditions"]
    (root / target).unlink()
    if kind == "a directory":
        (root / target).mkdir()
    elif kind == "a link loop":
        os.symlink((root / target).name, root / target)
    elif kind == "a named pipe":
        os.mkfifo(root / target)
    dest = tmp_path / "backup"
    result = _cli("backup", str(dest), "--warehouse", str(root), *(["--copy"] if how == "--copy" else []))
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(f"trialsync: error: {target} ") and "the warehouse is damaged" in line, line
    assert line.endswith("nothing was backed up: run `trialsync check`"), line
    assert not dest.exists()
    assert [p.name for p in tmp_path.iterdir() if p != root] == []


@pytest.mark.parametrize("kind", ["deleted", "a link loop"])
def test_a_backup_of_a_warehouse_whose_manifest_directory_is_lost_says_to_repair_first(
        kind: str, copy: Path, tmp_path: Path) -> None:  # noqa: F811
    """Readers still answer from the catalog's copies, but a backup said '... has no committed run to
    back up (or its manifest is not migrated yet)', as of an empty warehouse."""
    root = copy.resolve()
    shutil.rmtree(root / "manifest")
    if kind == "a link loop":
        os.symlink("manifest", root / "manifest")
    dest = tmp_path / "backup"
    result = _cli("backup", str(dest), "--warehouse", str(root))
    assert result.returncode == 1
    assert result.stderr == (f"trialsync: error: {root / 'manifest'} has no manifest file: the warehouse is damaged; "
                             "run `trialsync repair` (it writes them again from their copies) before a backup\n")
    assert not dest.exists()
    if kind == "deleted":
        assert _cli("repair", "--warehouse", str(root)).returncode == 0
        assert _cli("backup", str(dest), "--warehouse", str(root)).returncode == 0
        assert _cli("check", "--deep", "--warehouse", str(dest)).returncode == 0


@pytest.mark.parametrize("hard_links", [True, False])
def test_a_backup_that_returns_has_fsynced_every_file_it_wrote_and_every_directory(
        hard_links: bool, copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
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
        prefect_api: str, built: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
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


MOVES = ("cp -r", "mv", "tar", "rsync")


@pytest.mark.reliability
@pytest.mark.parametrize("how", MOVES if FULL else MOVES[:2])
def test_a_copied_or_moved_warehouse_works_at_its_new_place_also_in_the_duckdb_shell(
        how: str, prefect_api: str, copy: Path, built: dict[str, Any], tmp_path: Path) -> None:  # noqa: F811
    """``make test`` copies with ``cp -r`` and moves with ``mv``; ``TRIALSYNC_FULL=1`` also through ``tar``
    and ``rsync -a`` (each case ~5 s: a sync, a backup, two deep checks)."""
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
        copy: Path, built: dict[str, Any]) -> None:  # noqa: F811
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
        copy: Path, built: dict[str, Any]) -> None:  # noqa: F811
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
        copy: Path) -> None:  # noqa: F811
    damage(copy / second_run_files(copy)["conditions"], "flip")
    report = check(copy, deep=True)
    assert {p.kind for p in report.problems} == {"checksum"} or {p.kind for p in report.problems} <= {
        "checksum", "decode", "footer"}
    assert "rows not compared: files are damaged" in report.notes
    assert report.summary().startswith("damaged (deep check)")


def test_a_backup_that_a_compaction_overtakes_starts_again_from_the_newer_manifest(
        copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """A file missing because a compaction committed (and removed what it superseded) after the backup
    read the manifest is no damage: the backup starts again (a file missing with no commit since is)."""
    from flows.compact import compact_warehouse
    from warehouse import backup as backups

    root = copy.resolve()
    fold, compacted = manifests.fold, []

    def fold_then_compact(log: list[manifests.Generation], base: Any = None) -> manifests.Manifest:
        folded = fold(log, base)
        if not compacted:  # once: between the backup's read of the manifest and its copies
            compacted.append({})  # (the compaction folds too)
            compacted[0] = compact_warehouse(warehouse=str(root), keep_hours=0)
        return folded

    monkeypatch.setattr(backups.manifests, "fold", fold_then_compact)
    before = manifests.head(root)
    result = backups.backup(root, tmp_path / "backup")
    monkeypatch.undo()
    assert compacted and compacted[0]["deleted_runs"] > 0
    assert result.generation == manifests.head(root) == before + 1  # the compaction's, not the one it overtook
    assert check(tmp_path / "backup", deep=True).problems == []
