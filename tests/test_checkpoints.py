"""Manifest checkpoints: a writer reads only the generations after the newest one; nothing is ever lost."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from warehouse import Warehouse, autocompact, checkpoints
from warehouse import manifest as manifests
from warehouse.catalog_file import open_catalog
from warehouse.check import WarehouseDamaged, check
from warehouse.checkpoints import Checkpoint, CheckpointDamaged
from warehouse.manifest import Generation, Manifest, ManifestEntry
from warehouse.repair import repair

EVERY = 4


@pytest.fixture(autouse=True)
def _often(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checkpoints, "EVERY", EVERY)


DaysCommitted = Callable[[int], Warehouse]
SNAPSHOT_DAYS = (5, 6, 9, 10)


@pytest.fixture(scope="module")
def _days_built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, Path]]:
    """One warehouse committed day by day (autocompact off, a checkpoint every EVERY generations), with a
    byte copy of it after each of ``SNAPSHOT_DAYS`` days: the tests below start from one of these
    instead of each committing the same days again."""
    base = tmp_path_factory.mktemp("days")
    root, copies, done = base / "warehouse", {}, 0
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(checkpoints, "EVERY", EVERY)
        patch.setenv(autocompact.ENV, "off")
        store = Warehouse(root)
        for days in SNAPSHOT_DAYS:
            commit_days(store, range(done + 1, days + 1))
            copies[days], done = shutil.copytree(root, base / f"after-day-{days}", symlinks=True), days
    return root, copies


@pytest.fixture
def days_committed(_days_built: tuple[Path, dict[int, Path]]) -> DaysCommitted:
    """``days_committed(n)``: the warehouse of days 1..n as committing them leaves it, put back at the
    very path it was committed at (its catalog names that place), so it is the same bytes at the same
    place as a warehouse the test had committed itself."""
    root, copies = _days_built

    def restore(days: int) -> Warehouse:
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(copies[days], root, symlinks=True)
        return Warehouse(root)

    return restore


def commit_days(store: Warehouse, days: range) -> None:
    """The cheapest commit, one per day: a sync_runs row."""
    for day in days:
        with store.writer(f"run{day:03d}") as run:
            at = datetime(2027, 1, 1, tzinfo=UTC).replace(day=1 + day % 28, month=1 + day // 28)
            run.append_rows("sync_runs", [{"run_id": run.run_id, "mode": "incremental", "scope": "s",
                                           "started_at": at, "finished_at": at, "status": "succeeded"}])
            run.commit()


def sync_run_ids(store: Warehouse) -> list[str]:
    with store.connect() as con:
        return [r[0] for r in con.execute("SELECT run_id FROM sync_runs ORDER BY run_id").fetchall()]


def assert_intact(store: Warehouse, days: list[int]) -> None:
    """The deep check passes and the runs of ``days`` are what the warehouse answers, in order."""
    assert check(store.root, deep=True).ok
    assert sync_run_ids(store) == [f"run{d:03d}" for d in days]


def catalog_copies(root: Path) -> list[int]:
    with open_catalog(root / "warehouse.duckdb") as con:
        return [r[0] for r in con.execute("SELECT generation FROM _manifest_log ORDER BY generation").fetchall()]


def flip_byte(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


# -- pure: a checkpoint and the generations after it give what the whole log gives -----------------

@st.composite
def logs(draw: st.DrawFn) -> list[Generation]:
    """Generations as writers make them: a merge merges consecutive file sets the state lists."""
    tables = ["study_versions", "changes", "sync_runs"]
    log: list[Generation] = []
    state = Manifest()
    for number in range(1, draw(st.integers(1, 40)) + 1):
        run = f"r{number}"
        entries = tuple(ManifestEntry(run, t, f"runs/{run}/{t}.parquet", number, f"c{number}", "s1")
                        for t in draw(st.lists(st.sampled_from(tables), min_size=1, max_size=3, unique=True)))
        runs = list(dict.fromkeys(e.run_id for e in state.entries))
        merges: tuple[str, ...] = ()
        if len(runs) >= 2 and draw(st.booleans()):
            at = draw(st.integers(0, len(runs) - 2))
            merges = tuple(runs[at:at + draw(st.integers(2, len(runs) - at))])
        replace = tuple(draw(st.lists(st.sampled_from(tables), max_size=1))) if not merges else ()
        log.append(Generation(number, run, entries, replace, {"last_run_id": run, "n": str(number)},
                              "2027-01-01T00:00:00+00:00", merges))
        state = state.then(log[-1])
    return log


@settings(max_examples=60, deadline=None)
@given(log=logs(), cuts=st.lists(st.integers(1, 40), max_size=4))
def test_a_chain_of_checkpoints_folds_and_weighs_as_the_whole_log_does(log: list[Generation], cuts: list[int]) -> None:
    base: Checkpoint | None = None
    for cut in sorted({c for c in cuts if c <= len(log)}):
        since = base.generation if base is not None else 0
        if cut <= since:
            continue
        chunk = log[since:cut]
        taken = checkpoints.following(manifests.fold(chunk, base), chunk, base)
        assert Checkpoint.from_bytes(taken.to_bytes(), cut) == taken  # what is written reads back equal
        assert taken.copies == {g.number: g.to_bytes() for g in chunk}
        assert taken.sizes == tuple(len(g.to_bytes()) for g in log[:cut])
        base = taken
    after = base.generation if base is not None else 0
    whole = manifests.fold(log)
    assert manifests.fold(log[after:], base) == whole
    runs = whole.run_ids
    weighed, expected = checkpoints.weights(log[after:], base), checkpoints.weights(log)
    assert {r: weighed.get(r, 1) for r in runs} == {r: expected[r] for r in runs}


def test_a_checkpoint_whose_bytes_changed_does_not_read() -> None:
    gen = Generation(1, "r1", (ManifestEntry("r1", "sync_runs", "runs/r1/sync_runs.parquet", 1, "c"),))
    data = checkpoints.following(Manifest().then(gen), [gen], None).to_bytes()
    changed = data.replace(b"runs/r1/sync_runs", b"runs/r2/sync_runs")
    with pytest.raises(CheckpointDamaged):
        Checkpoint.from_bytes(changed, 1)
    with pytest.raises(CheckpointDamaged):
        Checkpoint.from_bytes(data, 2)  # another generation's name


# -- a warehouse ----------------------------------------------------------------------------------

def test_a_writer_parses_only_the_generations_after_the_newest_checkpoint(
        warehouse_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(autocompact.ENV, "2")  # merges too: their weights must survive the checkpoint
    store = Warehouse(warehouse_dir)
    commit_days(store, range(1, 12))
    head = manifests.head(warehouse_dir)
    newest = checkpoints.newest(warehouse_dir, head)
    assert newest is not None and head - newest.generation < EVERY
    assert checkpoints.numbers(warehouse_dir)[0] == EVERY
    assert manifests.fold(manifests.read_log(warehouse_dir, newest.generation), newest) == store.manifest()
    assert autocompact.file_sets(store.manifest(), manifests.read_log(warehouse_dir, newest.generation), newest) == \
        autocompact.file_sets(store.manifest(), store.log())
    # The catalog copies the generations after the checkpoint its writer started from; the checkpoints
    # hold copies of the earlier ones, each of those since the one before it.
    copies = catalog_copies(warehouse_dir)
    assert copies == list(range(copies[0], head + 1)) and copies[0] - 1 in checkpoints.numbers(warehouse_dir)
    held = sorted(n for c in checkpoints.numbers(warehouse_dir) for n in checkpoints.read(warehouse_dir, c).copies)
    assert held == list(range(1, newest.generation + 1))
    assert check(warehouse_dir, deep=True).ok

    parsed: list[int] = []
    real = Generation._parse.__func__  # type: ignore[attr-defined]
    monkeypatch.setattr(Generation, "_parse", classmethod(lambda cls, data, n: parsed.append(n) or real(cls, data, n)))
    seen = 0
    for day in range(12, 18):
        start = checkpoints.newest(warehouse_dir, manifests.head(warehouse_dir))
        assert start is not None
        parsed.clear()
        manifests._parse_generation.cache_clear()  # as in a new process
        commit_days(store, range(day, day + 1))
        assert all(n > start.generation for n in parsed), (start.generation, parsed)
        seen += len(parsed)
    assert seen > 0
    assert_intact(store, list(range(1, 18)))


def test_a_damaged_generation_before_a_checkpoint_is_restored_from_the_checkpoints_copy(
        days_committed: DaysCommitted, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(autocompact.ENV, "off")
    store = days_committed(10)
    warehouse_dir = store.root
    second = manifests.generation_path(warehouse_dir, 2)
    original = second.read_bytes()
    flip_byte(second, len(original) // 2)
    report = check(warehouse_dir)
    assert [(p.kind, p.generation) for p in report.problems] == [("manifest", 2)]
    assert "a good copy is kept" in report.problems[0].detail
    # A writer reads only what follows the newest checkpoint: it goes on, and its catalog does not copy
    # generation 2 (the checkpoint holds its copy).
    commit_days(store, range(11, 12))
    assert 2 not in catalog_copies(warehouse_dir)
    result = repair(warehouse_dir)
    assert result.restored_manifest == [2] and result.rolled_back == []
    assert second.read_bytes() == original
    assert_intact(store, list(range(1, 12)))


def test_a_damaged_checkpoint_is_passed_over_by_writers_and_taken_again_by_repair(
        days_committed: DaysCommitted, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(autocompact.ENV, "off")
    store = days_committed(10)  # checkpoints at 4 and 8
    warehouse_dir = store.root
    assert checkpoints.numbers(warehouse_dir) == [4, 8]
    eighth = checkpoints.path(warehouse_dir, 8)
    original = eighth.read_bytes()
    flip_byte(eighth, len(original) // 2)
    newest = checkpoints.newest(warehouse_dir, manifests.head(warehouse_dir))
    assert newest is not None and newest.generation == 4
    commit_days(store, range(11, 12))  # reads from checkpoint 4; its catalog copies 5..11 again
    assert catalog_copies(warehouse_dir) == list(range(5, 12))
    report = check(warehouse_dir)
    assert [(p.kind, p.path) for p in report.problems] == [("checkpoint", "checkpoints/00000008.json")]
    result = repair(warehouse_dir)
    assert result.checkpoints_taken == [8] and result.rolled_back == []
    assert eighth.read_bytes() == original
    assert_intact(store, list(range(1, 12)))


def test_a_missing_generation_file_before_a_checkpoint_still_stops_a_writer(
        days_committed: DaysCommitted, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(autocompact.ENV, "off")
    store = days_committed(6)
    warehouse_dir = store.root
    manifests.generation_path(warehouse_dir, 1).unlink()
    with pytest.raises(WarehouseDamaged, match=r"00000001\.json: manifest file missing"):
        commit_days(store, range(7, 8))
    assert manifests.head(warehouse_dir) == 6


def test_a_checkpoint_beyond_a_rollback_is_moved_aside_and_never_read_again(
        days_committed: DaysCommitted, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(autocompact.ENV, "off")
    store = days_committed(10)  # checkpoints at 4 and 8
    warehouse_dir = store.root
    victim = next(e for e in store.manifest().entries if e.run_id == "run006")
    path = warehouse_dir / victim.path
    flip_byte(path, path.stat().st_size // 2)  # run 6's data: repair rolls back to generation 5
    result = repair(warehouse_dir)
    assert result.generation == 5
    assert "checkpoints/00000008.json" in result.moved
    assert checkpoints.numbers(warehouse_dir) == [4]
    commit_days(store, range(11, 15))  # generations 6..9 again: another history, a new checkpoint at 8
    assert checkpoints.numbers(warehouse_dir) == [4, 8]
    assert_intact(store, [*range(1, 6), *range(11, 15)])


def test_a_writer_after_the_checkpoints_were_deleted_copies_every_generation_into_its_catalog(
        days_committed: DaysCommitted, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(autocompact.ENV, "off")
    store = days_committed(10)
    warehouse_dir = store.root
    assert catalog_copies(warehouse_dir)[0] > 1
    for number in checkpoints.numbers(warehouse_dir):
        checkpoints.path(warehouse_dir, number).unlink()
    report = check(warehouse_dir)  # generations 1..8 have no second copy now: check says so
    assert [p.kind for p in report.problems] == ["catalog"] and "generation 1 " in report.problems[0].detail
    commit_days(store, range(11, 12))  # a writer reads every generation then, and copies each
    assert catalog_copies(warehouse_dir) == list(range(1, 12))
    assert checkpoints.numbers(warehouse_dir) == [11]
    assert check(warehouse_dir, deep=True).ok


def test_a_copied_warehouse_whose_checkpoints_were_deleted_is_reported_before_any_command_runs_there(
        days_committed: DaysCommitted, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """At a new place the catalog still names the old one (the next command rewrites it): its copies
    of the manifest are as good as ever, and a generation with neither that copy nor a checkpoint's
    must still be reported, not passed over with the catalog."""
    monkeypatch.setenv(autocompact.ENV, "off")
    warehouse_dir = days_committed(10).root
    moved = tmp_path / "moved"
    shutil.copytree(warehouse_dir, moved)
    assert check(moved, deep=True).ok
    checkpoints.path(moved, max(checkpoints.numbers(moved))).unlink()
    report = check(moved, deep=True)
    assert any("the next command rewrites it" in note for note in report.notes)
    assert [p.kind for p in report.problems] == ["catalog"] and "generation 5 " in report.problems[0].detail
    assert repair(moved).changed
    assert check(moved, deep=True).ok and sync_run_ids(Warehouse(moved)) == [f"run{d:03d}" for d in range(1, 11)]


@pytest.mark.parametrize("damage", ["truncated", "emptied"])
def test_a_generation_file_before_a_checkpoint_that_changed_size_stops_a_writer(
        damage: str, days_committed: DaysCommitted, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(autocompact.ENV, "off")
    store = days_committed(6)  # a checkpoint at 4
    warehouse_dir = store.root
    path = manifests.generation_path(warehouse_dir, 2)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"")
    with pytest.raises(WarehouseDamaged, match=r"00000002\.json: manifest file is \d+ bytes, \d+ at checkpoint 4"):
        commit_days(store, range(7, 8))
    assert manifests.head(warehouse_dir) == 6
    assert repair(warehouse_dir).restored_manifest == [2]
    assert path.read_bytes() == data
    commit_days(store, range(7, 8))
    assert check(warehouse_dir, deep=True).ok


def test_a_writer_passes_over_its_only_checkpoint_when_it_is_damaged(
        days_committed: DaysCommitted, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(autocompact.ENV, "off")
    store = days_committed(5)  # one checkpoint, at 4
    warehouse_dir = store.root
    fourth = checkpoints.path(warehouse_dir, 4)
    original = fourth.read_bytes()
    fourth.write_bytes(original[:-20])  # unreadable now
    commit_days(store, range(6, 7))  # reads every generation, copies each into its catalog
    assert catalog_copies(warehouse_dir) == list(range(1, 7))
    assert [p.kind for p in check(warehouse_dir).problems] == ["checkpoint"]
    assert repair(warehouse_dir).checkpoints_taken == [4]
    assert fourth.read_bytes() == original
    assert_intact(store, list(range(1, 7)))


def test_a_checkpoint_half_written_when_the_writer_died_is_ignored_and_cleaned_up(
        days_committed: DaysCommitted, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(autocompact.ENV, "off")
    store = days_committed(5)  # a checkpoint at 4
    warehouse_dir = store.root
    leftover = checkpoints.directory(warehouse_dir) / ".00000005.json.tmp-4242"
    leftover.write_bytes(checkpoints.path(warehouse_dir, 4).read_bytes()[:100])  # killed mid-write
    assert checkpoints.numbers(warehouse_dir) == [4]
    assert check(warehouse_dir, deep=True).ok
    commit_days(store, range(6, 7))
    assert not leftover.exists()
    assert sync_run_ids(store) == [f"run{d:03d}" for d in range(1, 7)]


def second_copies(root: Path) -> set[int]:
    """The generations a copy exists of, in the catalog or a checkpoint."""
    held = {n for c in checkpoints.numbers(root) for n in checkpoints.read(root, c).copies}
    return held | set(catalog_copies(root))


def test_a_deleted_checkpoint_below_the_newest_is_taken_again_so_no_generation_loses_its_copy(
        days_committed: DaysCommitted, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(autocompact.ENV, "off")
    store = days_committed(9)  # checkpoints at 4 and 8; the catalog copies 9
    warehouse_dir = store.root
    checkpoints.path(warehouse_dir, 4).unlink()
    assert not second_copies(warehouse_dir) >= set(range(1, 10))
    assert "checkpoint" in {p.kind for p in check(warehouse_dir).problems}
    result = repair(warehouse_dir)
    assert result.rolled_back == [] and result.checkpoints_taken == [8]
    assert sorted(checkpoints.read(warehouse_dir, 8).copies) == list(range(1, 9))  # taken again, copying all
    assert check(warehouse_dir, deep=True).ok
    commit_days(store, range(10, 12))  # writers copy only what follows the newest checkpoint again
    assert second_copies(warehouse_dir) >= set(range(1, manifests.head(warehouse_dir) + 1))
    assert check(warehouse_dir, deep=True).ok


def test_a_lost_manifest_directory_is_restored_whole_from_the_catalog_and_the_checkpoints(
        days_committed: DaysCommitted, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(autocompact.ENV, "off")
    store = days_committed(10)  # checkpoints at 4 and 8; the catalog copies 9 and 10
    warehouse_dir = store.root
    before = {n: manifests.generation_path(warehouse_dir, n).read_bytes() for n in range(1, 11)}
    shutil.rmtree(manifests.directory(warehouse_dir))
    assert store.manifest().run_ids == {f"run{d:03d}" for d in range(1, 11)}  # readers see every run
    with pytest.raises(WarehouseDamaged):
        commit_days(store, range(11, 12))
    result = repair(warehouse_dir)
    assert result.restored_manifest == list(range(1, 11)) and result.rolled_back == []
    assert {n: manifests.generation_path(warehouse_dir, n).read_bytes() for n in range(1, 11)} == before
    assert check(warehouse_dir, deep=True).ok
    commit_days(store, range(11, 12))
    assert sync_run_ids(store) == [f"run{d:03d}" for d in range(1, 12)]


def test_a_run_committed_while_check_reads_is_not_reported_as_a_missing_manifest_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """check lists manifest/ and reads the catalog before the runs' markers: a writer that publishes
    the next generation in between left a marker of a generation check had not listed. That is not
    damage (its manifest file is there now): check passes."""
    from warehouse import markers

    monkeypatch.setenv("TRIALSYNC_AUTOCOMPACT", "off")
    store = Warehouse(tmp_path / "w")

    def commit(run_id: str, day: int) -> None:
        with store.writer(run_id) as run:
            at = datetime(2027, 1, day, tzinfo=UTC)
            run.append_rows("sync_runs", [{"run_id": run_id, "mode": "incremental", "scope": "s",
                                           "started_at": at, "finished_at": at, "status": "succeeded"}])
            run.commit()

    commit("run001", 1)
    real, pending = markers.read_into, ["run002"]

    def a_writer_commits_first(root: Path, state: Any, after: int) -> None:
        if pending:
            commit(pending.pop(), 2)
        real(root, state, after)

    monkeypatch.setattr(markers, "read_into", a_writer_commits_first)
    report = check(store.root)
    assert pending == []  # the writer did commit in between
    assert report.ok, [(p.path, p.detail) for p in report.problems]
    assert report.generation == 1
    monkeypatch.setattr(markers, "read_into", real)
    assert check(store.root).generation == 2


def test_a_failed_marker_write_still_puts_the_runs_catalog_in_place(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The marker and the catalog after the commit point fail apart: a marker that cannot be written
    does not leave the previous catalog in place."""
    from warehouse import catalog_file, run_writer

    monkeypatch.setenv("TRIALSYNC_AUTOCOMPACT", "off")
    store = Warehouse(tmp_path / "w")

    def no_marker(run_dir: Path, gen: Generation) -> None:
        raise OSError("disk full")

    for day in (1, 2):
        if day == 2:
            monkeypatch.setattr(run_writer, "write_marker", no_marker)
        with store.writer(f"run00{day}") as run:
            at = datetime(2027, 1, day, tzinfo=UTC)
            run.append_rows("sync_runs", [{"run_id": run.run_id, "mode": "incremental", "scope": "s",
                                           "started_at": at, "finished_at": at, "status": "succeeded"}])
            run.commit()
    assert catalog_file.read_catalog_state(store.root / "warehouse.duckdb", legacy=False).generation == 2
    assert not (store.root / "runs" / "run002" / "_COMMITTED").exists()


def test_deep_check_compares_the_rows_when_only_a_manifest_file_is_missing_with_a_good_copy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIALSYNC_AUTOCOMPACT", "off")
    store = Warehouse(tmp_path / "w")
    for day in (1, 2):
        with store.writer(f"run00{day}") as run:
            at = datetime(2027, 1, day, tzinfo=UTC)
            run.append_rows("sync_runs", [{"run_id": run.run_id, "mode": "incremental", "scope": "s",
                                           "started_at": at, "finished_at": at, "status": "succeeded"}])
            run.commit()
    manifests.generation_path(store.root, 2).unlink()
    report = check(store.root, deep=True)
    assert [(p.path, p.generation) for p in report.problems] == [("manifest/00000002.json", 2)]
    assert "a good copy is kept" in report.problems[0].detail
    assert not any(n.startswith("rows not compared") for n in report.notes), report.notes
