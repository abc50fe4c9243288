"""The writer lock's refusal names who holds it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import WarehouseBusy
from pipeline.registry.fake_server import FakeRegistry
from tests.conftest import fast_sync, real_records
from warehouse.locks import READER, exclusive_lock
from warehouse.store import LOCK_NAME


def _refusal(path: Path, holder: str) -> str:
    """The error a second writer gets while ``holder`` holds the lock (flock: per open file, so one
    process can play both)."""
    with exclusive_lock(path / LOCK_NAME, holder, 0), pytest.raises(WarehouseBusy) as info, \
            exclusive_lock(path / LOCK_NAME, "20261207T050243Z-000000", 0):
        pass
    return str(info.value)


def test_a_writer_refused_while_a_reader_rewrites_the_catalog_is_told_so_not_that_a_sync_runs(tmp_path: Path) -> None:
    assert _refusal(tmp_path, READER) == (f"the warehouse {tmp_path} is busy: a reader rewriting the catalog is "
                                          f"running (pid {os.getpid()}); waited 0s")


def test_a_writer_refused_while_a_sync_runs_names_the_run(tmp_path: Path) -> None:
    assert _refusal(tmp_path, "20261207T050242Z-abcdef") == (
        f"the warehouse {tmp_path} is busy: a sync is running (run 20261207T050242Z-abcdef, pid {os.getpid()}); "
        "waited 0s")


@pytest.fixture(scope="module")
def synced(prefect_api: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    warehouse = tmp_path_factory.mktemp("locks") / "wh"
    with FakeRegistry(real_records()[:5]).start() as registry:
        fast_sync(registry, warehouse, full=True)
    return warehouse


@pytest.mark.parametrize("kind", ["a directory", "a link loop", "a dangling link", "a named pipe",
                                  "a link to /dev/null"])
@pytest.mark.parametrize("command", [["sync", "--api-url", "http://127.0.0.1:9", "--max-attempts", "1"],
                                     ["compact"], ["rederive"], ["backfill", "--all", "--api-url",
                                                                 "http://127.0.0.1:9/api/v2"]])
def test_a_lock_file_that_is_not_a_file_is_named_in_one_line_with_what_to_do(
        kind: str, command: list[str], synced: Path, tmp_path: Path, cli: Any) -> None:
    """A directory or a link loop at ``.writer.lock`` (a restore gone wrong, a careless ``mkdir``) made
    every writing command fail with 'IsADirectoryError: [Errno 21] Is a directory: ...' or 'OSError:
    [Errno 40] Too many levels of symbolic links ... (rerun with --debug for details)'."""
    warehouse = shutil.copytree(synced, tmp_path / "wh")
    lock = warehouse / LOCK_NAME
    lock.unlink()
    if kind == "a directory":
        lock.mkdir()
    elif kind == "a named pipe":  # it was 'OSError: [Errno 22] Invalid argument' (truncating it), as a device
        os.mkfifo(lock)
    else:
        os.symlink({"a link loop": LOCK_NAME, "a link to /dev/null": "/dev/null"}.get(kind, "/nonexistent-dir/x"), lock)
    code, _, err = cli(*command, "--warehouse", str(warehouse))
    assert code == 1
    [line] = err.splitlines()
    assert line.startswith(f"trialsync: error: the lock file {lock} is not a file but "), line
    assert line.endswith("remove it (it holds nothing; trialsync makes it again) and run the command again"), line
    assert {"a directory": "a directory", "a named pipe": "a named pipe"}.get(kind, "a symbolic link to ") in line


def test_readers_of_a_moved_warehouse_whose_lock_file_is_a_directory_still_answer(
        synced: Path, tmp_path: Path, cli: Any) -> None:
    """A reader rewrites a moved warehouse's catalog under the lock when it can; a lock file it cannot
    open is no reason to fail the read (its views go in memory)."""
    warehouse = shutil.copytree(synced, tmp_path / "moved")
    (warehouse / LOCK_NAME).unlink()
    (warehouse / LOCK_NAME).mkdir()
    code, out, err = cli("sql", "--warehouse", str(warehouse), "SELECT count(*) FROM study_versions")
    assert (code, err) == (0, ""), err
    assert "5" in out
