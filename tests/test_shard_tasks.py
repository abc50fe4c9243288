"""A bulk load's tasks: the registry's 100 folders, grouped while they are small (fewer, fuller files)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench import corpus
from flows.bulk import shard_tasks
from pipeline.registry.bulk import BulkArchive, group_shards
from tests.conftest import STUDIES_DIR
from warehouse.heads import HEAD_SCHEMA, HeadIndex

SIZES = st.lists(st.integers(0, 50), min_size=1, max_size=100).map(
    lambda sizes: {f"{i:02d}": n for i, n in enumerate(sizes)})


@given(SIZES, st.integers(1, 200), st.integers(1, 4))
def test_groups_are_consecutive_folders_cut_where_their_share_of_the_whole_is_reached(
        sizes: dict[str, int], target: int, multiple: int) -> None:
    groups = group_shards(sizes, target, multiple)
    assert [key for group in groups for key in group] == list(sizes)  # every folder once, in order
    assert all(groups)
    total = sum(sizes.values())
    wanted = min(len(sizes), -(-max(1, -(-total // target)) // multiple) * multiple)
    assert len(groups) <= wanted
    done = 0
    for group in groups[:-1]:  # each cut: at the first folder with which the members reach the next share
        next_share = done * wanted // total + 1
        before = done + sum(sizes[k] for k in group[:-1])
        done += sum(sizes[k] for k in group)
        assert done * wanted >= next_share * total > before * wanted


@given(st.integers(1, 100), st.integers(1, 600), st.integers(1, 3000), st.integers(1, 8))
def test_equal_folders_make_a_multiple_of_the_workers_in_tasks_of_nearly_equal_size(
        folders: int, per_folder: int, target: int, workers: int) -> None:
    """25 equal tasks on 2 workers would leave one worker idle for the whole last task."""
    groups = group_shards({f"{i:02d}": per_folder for i in range(folders)}, target, workers)
    wanted = min(folders, -(-max(1, -(-folders * per_folder // target)) // workers) * workers)
    assert len(groups) == wanted
    assert max(map(len, groups)) - min(map(len, groups)) <= 1


def test_tasks_start_biggest_first_and_are_even_in_number_for_two_workers(tmp_path: Path) -> None:
    folder = pa.table({"n": list(range(500))})  # 50,000 members: 25 tasks of 2,000 would be odd
    archive = BulkArchive(tmp_path / "x.zip", {f"{i:02d}": folder for i in range(100)}, 50_000, 0, 0)
    tasks = shard_tasks(archive, {}, workers=2)
    sizes = [members.num_rows for _, members, _ in tasks]
    assert len(tasks) == 26
    assert sizes == sorted(sizes, reverse=True) and set(sizes) == {2_000, 1_500}
    assert sum(sizes[0::2]) == sum(sizes[1::2]) == 25_000  # taken in turn, the two workers get the same


def test_a_registry_sized_archive_keeps_one_task_per_folder(tmp_path: Path) -> None:
    """At ~6,000 studies a folder, each folder is a task of its own (the registry's layout)."""
    folder = pa.table({"n": list(range(6_000))})
    archive = BulkArchive(tmp_path / "x.zip", {f"{i:02d}": folder for i in range(100)}, 600_000, 0, 0)
    tasks = shard_tasks(archive, {}, workers=2)
    assert [key for key, _, _ in tasks] == [f"{i:02d}" for i in range(100)]


def test_a_cluster_with_no_worker_yet_gets_one_task_per_folder(tmp_path: Path) -> None:
    folder = pa.table({"n": list(range(10))})
    archive = BulkArchive(tmp_path / "x.zip", {f"{i:02d}": folder for i in range(100)}, 1_000, 0, 0)
    assert len(shard_tasks(archive, {}, workers=None)) == 100
    assert len(shard_tasks(archive, {}, workers=2)) == 4


def test_a_small_archive_is_read_in_a_few_tasks_that_keep_every_member_and_head(tmp_path: Path) -> None:
    corpus.generate(STUDIES_DIR, 1_000, tmp_path, seed=3)
    archive = BulkArchive.open(tmp_path / "base.zip")
    ids = sorted(n for shard in archive.shards.values() for n in shard["nct_id"].to_pylist())
    index = HeadIndex(pa.table({"nct_id": ids[::7], "version": [1] * len(ids[::7]),
                                "content_hash": ids[::7], "is_removed": [False] * len(ids[::7]),
                                "registry_updated": [None] * len(ids[::7]), "member_key": [None] * len(ids[::7]),
                                "as_of": [None] * len(ids[::7])},
                               schema=HEAD_SCHEMA))
    tasks = shard_tasks(archive, index.shards(), workers=2)
    # 1,000 members, 2 workers: groups of about 250 (two tasks a worker), not 100 tasks of ~10.
    assert len(tasks) == 4
    assert sorted(key for key, _, _ in tasks)[0].startswith("00-")
    assert all(200 <= members.num_rows <= 300 for _, members, _ in tasks)
    assert sorted(n for _, members, _ in tasks for n in members["nct_id"].to_pylist()) == ids
    for _, members, heads in tasks:  # each task has the heads of its own studies, and only those
        assert set(heads["nct_id"].to_pylist()) == set(members["nct_id"].to_pylist()) & set(ids[::7])


def test_the_directory_keeps_study_files_only_in_directory_order_per_folder(tmp_path: Path) -> None:
    import zipfile

    path = tmp_path / "ctg-studies.json.zip"
    names = ["README.txt", "01/NCT00000101.json", "NCT00000202.json", "NCT0000010\u0661.json", "01/NCT00000101.json",
             "folder/", "NCT00000301.json"]
    with zipfile.ZipFile(path, "w") as zf, pytest.warns(UserWarning, match="Duplicate name"):
        for index, name in enumerate(names):
            zf.writestr(name, b"{}" if name.endswith(".json") else b"" if name.endswith("/") else b"x" * index)
    archive = BulkArchive.open(path)
    # A name with a non-ASCII digit is not a study file; a study listed twice keeps both, in order.
    assert (archive.members, archive.skipped) == (4, 3)
    assert {key: t["nct_id"].to_pylist() for key, t in archive.shards.items()} == {
        "01": ["NCT00000101", "NCT00000101", "NCT00000301"], "02": ["NCT00000202"]}
    first, second = archive.shards["01"]["header_offset"].to_pylist()[:2]
    assert first < second


def test_a_run_records_where_its_shards_were_hashed() -> None:
    """Dask workers installed without a compiler hash in Python (same values, slower): the run says so."""
    from flows.bulk import ReadCounts
    from flows.shards import ShardResult
    from pipeline import hashing

    assert ShardResult("00").canonicaliser == hashing.implementation()
    counts = ReadCounts()
    assert counts.params(False)["canonicaliser"] == hashing.implementation()  # no shard (an empty zip)
    for implementation in ("C", "Python", "C"):
        counts.add(ShardResult("00", canonicaliser=implementation))
    assert counts.params(False)["canonicaliser"] == "C+Python"


_SHARD_IN_A_NEW_PROCESS = """
import sys, tempfile, zipfile
from datetime import UTC, datetime
from pathlib import Path
import pyarrow as pa
from flows.bulk import shard_tasks
from flows.shards import ShardJob, process_shard
from pipeline.registry.bulk import BulkArchive
from pipeline.versioning import RunContext
from warehouse.heads import HEAD_SCHEMA

out = Path(tempfile.mkdtemp())
with zipfile.ZipFile(out / "bulk.zip", "w") as zf:
    for path in sorted(Path(sys.argv[1]).glob("*.json"))[:5]:
        zf.writestr(f"{path.stem[-2:]}/{path.name}", path.read_bytes())
archive = BulkArchive.open(out / "bulk.zip")
key, members, _ = shard_tasks(archive, {}, workers=1)[0]
before = pa.default_memory_pool().backend_name
ctx = RunContext("r", datetime(2026, 1, 1, tzinfo=UTC), "bulk")
result = process_shard(ShardJob(str(archive.path), key, members, HEAD_SCHEMA.empty_table(), ctx, str(out)))
print(before, pa.default_memory_pool().backend_name, result.versions == members.num_rows > 0)
"""


@pytest.mark.parametrize(("chosen", "expected"), [(None, "system"), ("jemalloc", "jemalloc")])
def test_shard_work_allocates_arrow_buffers_with_the_system_allocator_unless_the_user_chose_a_pool(
        chosen: str | None, expected: str) -> None:
    """mimalloc (pyarrow's default on Linux) gave a task's freed pages back to the kernel and faulted
    them in again: ~10% of a worker's CPU as system time (bench/RESULTS.md)."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    if chosen:
        env["ARROW_DEFAULT_MEMORY_POOL"] = chosen
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run([sys.executable, "-c", _SHARD_IN_A_NEW_PROCESS, str(STUDIES_DIR)], env=env,
                          capture_output=True, text=True, check=True, timeout=120)
    before, after, versions = done.stdout.split()
    assert (after, versions) == (expected, "True")
    # The user's choice was in force from the start; without one, pyarrow's own default was, and the
    # shard work switched it (a default that is already "system" would make this test prove nothing).
    assert before == chosen if chosen else before != "system"
