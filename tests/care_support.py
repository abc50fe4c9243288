"""Shared by the warehouse care tests (tests/test_warehouse_commit.py, test_warehouse_repair.py,
test_warehouse_backup.py): one small warehouse built from real records (three runs: a first sync, a day
with status changes and new studies, a day with enrollment changes), built once per test process
(whichever of those modules asks first) and copied for each case that changes it; the kinds of damage.
"""

from __future__ import annotations

import shutil
import subprocess
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from pipeline import mutate
from pipeline.registry.fake_server import FakeRegistry
from tests.conftest import fast_sync, nct, real_records
from tests.reliability.support import DUCKDB_CLI, TRIALSYNC, state
from warehouse import manifest as manifests
from warehouse.repair import DAMAGED_DIR

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


_BUILT: dict[str, Any] = {}


@pytest.fixture(scope="session")
def built(prefect_api: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The three-run warehouse, the state after each run, and which studies runs 2 and 3 changed.
    Its run ids share one second and their names sort against commit order (as runs started within a
    second of each other may): nothing may take the order of runs from their ids. Built once per process:
    the modules that import this fixture share it (read-only; ``copy`` gives a test its own)."""
    if not _BUILT:
        _BUILT.update(_build(tmp_path_factory))
    return _BUILT


def _build(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
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


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(TRIALSYNC), *args], capture_output=True, text=True, timeout=180, cwd=cwd)



def _shell(warehouse: Path, sql: str) -> str:
    out = subprocess.run([str(DUCKDB_CLI), "-readonly", "-csv", "-noheader", str(warehouse / "warehouse.duckdb"),
                          "-c", sql], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()
