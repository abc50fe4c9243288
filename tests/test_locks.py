"""The writer lock's refusal names who holds it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.errors import WarehouseBusy
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
