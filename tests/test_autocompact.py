"""Automatic compaction: small file sets merge as runs accumulate, every view keeps its rows, nothing is lost."""

from __future__ import annotations

import logging
import math
import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flows.derive import rederive_changes
from pipeline import mutate
from pipeline.changes import VersionPair
from pipeline.errors import UsageError
from pipeline.registry.fake_server import FakeRegistry
from tests.conftest import FULL, fast_sync, nct
from tests.reliability.support import TRIALSYNC, leftovers, sync_args
from tests.test_backfill import HISTORY, observe_then_backfill
from tests.test_compact import every_view, run_dirs
from warehouse import Warehouse, autocompact
from warehouse import manifest as manifests
from warehouse.autocompact import FileSet, file_sets, plan_merge
from warehouse.check import check
from warehouse.manifest import Generation, Manifest, ManifestEntry
from warehouse.pairs import pair_rows, version_pairs

pytestmark = pytest.mark.usefixtures("prefect_api")


def _commit_day(store: Warehouse, day: int) -> None:
    """The cheapest commit: run ``run<day>`` with one sync_runs row, started on 2027-01-<day>."""
    with store.writer(f"run{day:03d}") as run:
        at = datetime(2027, 1, day, tzinfo=UTC)
        run.append_rows("sync_runs", [{"run_id": run.run_id, "mode": "incremental", "scope": "s",
                                       "started_at": at, "finished_at": at, "status": "succeeded"}])
        run.commit()


def _sets(store: Warehouse) -> list[FileSet]:
    return file_sets(store.manifest(), store.log())


@contextmanager
def logged(name: str) -> Iterator[list[str]]:
    """The messages ``name`` logs meanwhile. A handler of our own: the CLI's tests run in the same
    process may have set the logger not to propagate, onto a stream captured by an earlier test."""
    lines: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)


def merge_now(store: Warehouse, fanout: int, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setenv(autocompact.ENV, str(fanout))
    return autocompact.after_commit(store, store.manifest(), store.log(), "test")


def test_merging_keeps_every_view_identical_around_a_backfills_rewrite(
        warehouse_dir: Path, records: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(autocompact.ENV, "off")
    with FakeRegistry(records[:40]).start() as registry:
        observe_then_backfill(registry, warehouse_dir)  # two syncs, then a backfill that rewrites a study
        # After the rewrite: a new version of the rewritten study, then a retirement in a full run.
        registry.put(mutate.posted_on(mutate.set_status(HISTORY.records[9], "TERMINATED", "Sponsor decision"),
                                      date(2030, 1, 3)))
        fast_sync(registry, warehouse_dir)
        registry.remove(nct(records[4]))
        fast_sync(registry, warehouse_dir, full=True)
    rederive_changes(warehouse=str(warehouse_dir))
    store = Warehouse(warehouse_dir)
    before = every_view(warehouse_dir)
    sets_before = _sets(store)
    assert [s.mergeable for s in sets_before] == [True, True, False, True, True, True]

    merges = merge_now(store, 2, monkeypatch)

    sets_after = _sets(store)
    # [s1 s2] -> one set before the backfill's; [sync full] -> one set after it, in its place.
    assert merges == 2
    assert [s.weight for s in sets_after] == [2, 1, 2, 1]
    assert sets_after[1].run_id == sets_before[2].run_id
    assert every_view(warehouse_dir) == before  # sync_runs too: a merge adds no run row
    assert check(warehouse_dir, deep=True).ok
    # The merged runs' directories stay for readers of the previous catalog.
    retained = set(store.manifest().retained_until())
    assert retained == {s.run_id for s in sets_before if s.run_id not in {x.run_id for x in sets_after}}
    assert retained <= run_dirs(warehouse_dir)


def test_file_sets_stay_bounded_after_many_tiny_commits(warehouse_dir: Path, records: list[dict[str, Any]],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(autocompact.ENV, "2")
    store = Warehouse(warehouse_dir)
    for day in range(1, 14):
        _commit_day(store, day)
        sets = _sets(store)
        assert len(sets) == bin(day).count("1")  # fanout 2: the binary digits of the number of runs
        assert sum(s.weight for s in sets) == day
    with store.connect() as con:
        assert [r[0] for r in con.execute("SELECT run_id FROM sync_runs").fetchall()] == [
            f"run{d:03d}" for d in range(1, 14)]
    assert check(warehouse_dir, deep=True).ok
    # A merged file is one row group, not one per run merged: its footer, which every view build
    # reads, must not grow with the runs it holds.
    merged = [e for e in store.manifest().entries if e.table == "sync_runs" and "-m" in e.run_id]
    assert merged and all(pq.ParquetFile(warehouse_dir / e.path).metadata.num_row_groups == 1 for e in merged)


@pytest.mark.parametrize("keep_hours", ["0", ""])
def test_merged_runs_directories_stay_for_the_grace_period_the_setting_gives(
        keep_hours: str, warehouse_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(autocompact.ENV, "2")
    monkeypatch.setenv(autocompact.KEEP_ENV, keep_hours)
    store = Warehouse(warehouse_dir)
    for day in range(1, 6):
        _commit_day(store, day)
    with store.writer("next"):  # a writer's start removes the directories whose grace has passed
        pass
    listed = store.manifest().run_ids
    merged_away = {f"run{d:03d}" for d in range(1, 5)} | {"run002-m1", "run004-m1"}  # then m1 + m1 -> run004-m2
    assert listed == {"run004-m2", "run005"}
    if keep_hours == "0":
        assert run_dirs(warehouse_dir) == listed
    else:  # the default: 24 hours, for readers of an older catalog
        assert run_dirs(warehouse_dir) == listed | merged_away
    assert check(warehouse_dir, deep=True).ok


def simulate(kinds: list[bool], fanout: int) -> tuple[list[FileSet], dict[str, int], int]:
    """Append one set per run (``False``: a backfill's, never merged) and merge as after each commit;
    returns the sets, how often each run's rows were rewritten, and the most sets ever listed."""
    sets: list[FileSet] = []
    members: dict[str, list[str]] = {}
    rewrites: dict[str, int] = {}
    most = 0
    for i, mergeable in enumerate(kinds):
        run = f"r{i:04d}"
        sets.append(FileSet(run, 1000, 1, mergeable))
        members[run], rewrites[run] = [run], 0
        while group := plan_merge(sets, fanout):
            at = [s.run_id for s in sets].index(group[0])
            merged = FileSet(f"m{i}-{at}", sum(s.bytes for s in sets[at:at + fanout]),
                             sum(s.weight for s in sets[at:at + fanout]), True)
            members[merged.run_id] = [r for g in group for r in members[g]]
            for r in members[merged.run_id]:
                rewrites[r] += 1
            sets[at:at + fanout] = [merged]
        most = max(most, len(sets))
    return sets, rewrites, most


@settings(max_examples=40, deadline=None)
@given(runs=st.integers(1, 400), fanout=st.integers(2, 6))
def test_a_year_of_daily_runs_lists_logarithmically_many_sets(runs: int, fanout: int) -> None:
    sets, rewrites, most = simulate([True] * runs, fanout)
    tiers = int(math.log(runs, fanout) + 1e-9) + 1
    assert most <= (fanout - 1) * tiers + 1
    assert max(rewrites.values()) <= tiers
    assert sum(s.weight for s in sets) == runs


@settings(max_examples=40, deadline=None)
@given(kinds=st.lists(st.booleans(), min_size=1, max_size=120), fanout=st.integers(2, 5))
def test_sets_holding_a_rewrite_are_never_merged_and_keep_their_place(kinds: list[bool], fanout: int) -> None:
    sets, _, _ = simulate(kinds, fanout)
    kept = [s.run_id for s in sets if not s.mergeable]
    assert kept == [f"r{i:04d}" for i, k in enumerate(kinds) if not k]
    assert sum(s.weight for s in sets if s.mergeable) == sum(kinds)


def test_a_merge_generation_puts_its_files_in_the_merged_runs_place() -> None:
    def entries(run: str) -> tuple[ManifestEntry, ...]:
        return (ManifestEntry(run, "study_versions", f"runs/{run}/study_versions.parquet", 1, "x"),
                ManifestEntry(run, "changes", f"runs/{run}/changes.parquet", 1, "x"))

    log = [Generation(n, run, entries(run)) for n, run in enumerate(["a", "b", "c", "d"], start=1)]
    merge = Generation(5, "m", entries("m"), merges=("b", "c"))
    manifest = Manifest()
    for gen in [*log, merge]:
        manifest = manifest.then(gen)
    assert [e.run_id for e in manifest.entries] == ["a", "a", "m", "m", "d", "d"]
    again = Generation.from_bytes(merge.to_bytes(), 5)
    assert again.merges == ("b", "c") and again == merge
    # Generations without merges keep the exact bytes earlier releases wrote (no "merges" key).
    assert b"merges" not in log[0].to_bytes()


def test_the_setting_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    for value, fanout in [("", autocompact.FANOUT), ("off", None), ("0", None), ("3", 3)]:
        monkeypatch.setenv(autocompact.ENV, value)
        assert autocompact.fanout_setting() == fanout
    for bad in ("1", "9" * 5000):  # 5000 digits: int() itself refuses them (a ValueError, exit 1, before)
        monkeypatch.setenv(autocompact.ENV, bad)
        with pytest.raises(UsageError, match="TRIALSYNC_AUTOCOMPACT must be 'off' or a whole number of 2 or more"):
            autocompact.fanout_setting()
    for value, keep in [("", timedelta(hours=24)), ("0", timedelta(0)), ("1.5", timedelta(minutes=90))]:
        monkeypatch.setenv(autocompact.KEEP_ENV, value)
        assert autocompact.keep_setting() == keep
    for bad in ("-1", "nan", "soon", "1e9"):
        monkeypatch.setenv(autocompact.KEEP_ENV, bad)
        with pytest.raises(Exception, match="TRIALSYNC_AUTOCOMPACT_KEEP_HOURS must be a number of hours from 0"):
            autocompact.keep_setting()


MERGE_CRASH_POINTS = ["manifest-published", "catalog-tmp-written"]


@pytest.mark.reliability
@pytest.mark.parametrize("point", MERGE_CRASH_POINTS if FULL else MERGE_CRASH_POINTS[:1])
def test_a_crash_during_an_automatic_merge_loses_nothing(point: str, tmp_path: Path, records: list[dict[str, Any]],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The sync commits, then its merge is SIGKILLed before (or just after) its own commit point. The
    syncs before and after the killed one run in this process (the same flow, without a process start).
    ``make test`` kills it just after its commit point; ``TRIALSYNC_FULL=1`` also just before it (each
    case ~20 s; a merge's crash points are the sync's own, which tests/reliability/test_crash.py kills at)."""
    warehouse_dir = tmp_path / "wh"
    env = {**os.environ, "TRIALSYNC_ENGINE": "plain", autocompact.ENV: "2"}
    monkeypatch.setenv(autocompact.ENV, "2")
    with FakeRegistry(records[:30]).start() as registry:
        fast_sync(registry, warehouse_dir)
        registry.put(mutate.posted_on(mutate.set_status(records[2], "TERMINATED", "Funding"), date(2030, 1, 2)))
        # The second commit point this process passes is the merge's (the first is the sync's).
        killed = subprocess.run([str(TRIALSYNC), *sync_args(registry.url, warehouse_dir)], capture_output=True,
                                text=True, timeout=180, env={**env, "TRIALSYNC_CRASH_AT": f"{point}:2"})
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        store = Warehouse(warehouse_dir)
        with store.connect() as con:
            assert con.execute("SELECT count(*), max(version) FROM study_versions WHERE nct_id = ?",
                               [nct(records[2])]).fetchall() == [(2, 2)]
            assert con.execute("SELECT count(*) FROM sync_runs").fetchall() == [(2,)]
        assert [s.weight for s in _sets(store)] == ([2] if point == "manifest-published" else [1, 1])
        assert check(warehouse_dir, deep=True).ok
        before = every_view(warehouse_dir)
        again = fast_sync(registry, warehouse_dir)  # a failed run raises
    after = every_view(warehouse_dir)
    assert again["run_id"] in {row[0] for row in after["sync_runs"]}
    assert len(after.pop("sync_runs")) == len(before.pop("sync_runs")) + 1
    assert after["study_versions"] == before["study_versions"] and after["changes"] == before["changes"]
    assert sum(s.weight for s in _sets(store)) == 3
    assert leftovers(warehouse_dir) == []


def test_a_runs_change_derivation_reads_only_the_files_of_its_own_pairs(
        warehouse_dir: Path, records: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(autocompact.ENV, "off")
    first, second = records[5], records[6]
    with FakeRegistry(records[:20]).start() as registry:
        runs = [fast_sync(registry, warehouse_dir)["run_id"]]
        registry.put(mutate.posted_on(mutate.set_status(first, "TERMINATED", "Funding"), date(2030, 1, 2)))
        runs.append(fast_sync(registry, warehouse_dir)["run_id"])
        registry.put(mutate.posted_on(mutate.set_enrollment(second, 999), date(2030, 1, 3)))
        runs.append(fast_sync(registry, warehouse_dir)["run_id"])
    store = Warehouse(warehouse_dir)
    manifest = store.manifest()
    with store.committed() as con:
        files, _ = pair_rows(con, store.root, manifest, runs[2])
        # The second study's first version (run 1) and its new one (run 3); nothing of run 2.
        assert files == sorted(str(store.root / f"runs/{r}/study_versions.parquet") for r in (runs[0], runs[2]))
        for run_id in runs:
            narrow = [p for batch in version_pairs(con, run_id=run_id, source=(store.root, manifest)) for p in batch]
            whole = [p for batch in version_pairs(con, run_id=run_id) for p in batch]
            assert sorted(narrow, key=_pair_key) == sorted(whole, key=_pair_key)
        last = [p for batch in version_pairs(con, run_id=runs[2], source=(store.root, manifest)) for p in batch]
    assert [(p.nct_id, p.from_version, p.to_version) for p in last] == [(nct(second), 1, 2)]


def _pair_key(pair: VersionPair) -> tuple[str, int]:
    return pair.nct_id, pair.to_version


def _flip_a_data_byte(path: Path) -> None:
    """One byte in the middle of the file: size and footer stay as they were, the quick check passes."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_silently_damaged_file_is_never_merged_or_compacted_into_a_file_that_vouches_for_it(
        warehouse_dir: Path, records: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch,
        ) -> None:
    from flows.compact import compact_warehouse
    from pipeline.errors import WarehouseError

    monkeypatch.setenv(autocompact.ENV, "off")
    with FakeRegistry(records[:30]).start() as registry:
        fast_sync(registry, warehouse_dir)
        registry.put(mutate.set_status(records[3], "TERMINATED", "Sponsor decision"))
        fast_sync(registry, warehouse_dir)
    store = Warehouse(warehouse_dir)
    sets_before = _sets(store)
    assert len(sets_before) == 2
    [victim] = [e for e in store.manifest().entries
                if e.table == "study_versions" and e.run_id == sets_before[0].run_id]
    _flip_a_data_byte(warehouse_dir / victim.path)
    assert check(warehouse_dir).ok  # the quick check cannot see it; only the checksum can

    with logged("trialsync.warehouse") as lines:
        assert merge_now(store, 2, monkeypatch) == 0
    assert _sets(store) == sets_before
    warning = "\n".join(lines)
    assert f"not merging the file sets of {sets_before[0].run_id}" in warning
    assert f"{victim.path} (study_versions, run {victim.run_id}): checksum differs" in warning

    monkeypatch.setenv(autocompact.ENV, "off")
    generation = store.log()[-1].number
    with pytest.raises(WarehouseError, match=f"not compacting: {victim.path} .*checksum differs"):
        compact_warehouse(warehouse=str(warehouse_dir))
    assert store.log()[-1].number == generation  # nothing committed
    [problem] = check(warehouse_dir, deep=True).problems
    assert (problem.kind, problem.path) == ("checksum", victim.path)


def test_folding_a_longer_log_continues_the_last_fold_and_gives_what_a_fresh_fold_gives() -> None:
    def gen(number: int, merges: tuple[str, ...] = ()) -> Generation:
        entries = (ManifestEntry(f"r{number}", "sync_runs", f"runs/r{number}/sync_runs.parquet", 10, "c"),)
        return Generation(number, f"r{number}", entries, (), {"n": str(number)}, "2027-01-01T00:00:00+00:00", merges)

    log = [gen(n) for n in range(1, 5)]
    fresh = Manifest()
    for g in log:
        fresh = fresh.then(g)
    assert manifests.fold(log) == fresh
    longer = [*log, gen(5, merges=("r1", "r2"))]
    assert manifests.fold(longer) == fresh.then(longer[-1])
    assert [e.run_id for e in manifests.fold(longer).entries] == ["r5", "r3", "r4"]
    other = [gen(1), *log[1:]]  # an equal generation that is another object (read again): folded afresh
    assert manifests.fold(other) == fresh
    assert manifests.fold(log[:2]) == Manifest().then(log[0]).then(log[1])  # a shorter log


def test_no_merge_begins_once_a_signal_asked_the_command_to_stop(warehouse_dir: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from warehouse import committing

    monkeypatch.setenv(autocompact.ENV, "off")
    store = Warehouse(warehouse_dir)
    for day in range(1, 5):
        _commit_day(store, day)
        assert not committing.finishing  # the writer ended: a signal now interrupts what follows
    monkeypatch.setattr(committing, "stop_pending", True)  # a signal came while the last run was finishing
    assert merge_now(store, 2, monkeypatch) == 0
    assert len(_sets(store)) == 4
    monkeypatch.setattr(committing, "stop_pending", False)
    assert merge_now(store, 2, monkeypatch) > 0
    assert len(_sets(store)) == 1
