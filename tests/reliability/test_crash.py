"""Crash safety: ``kill -9`` a real ``trialsync sync`` process at many points of a run.

Each case builds a warehouse with one committed run, kills the next run (a full sync of 63 real
records in 7 pages, with changed, new and unparseable records) at one point, then checks that the
warehouse opens (in Python and in the ``duckdb`` shell), shows exactly the last committed run, has no
orphan rows, and that the next run converges to the state an uninterrupted run leaves, with no
temporary files left behind. The kills are SIGKILL: no ``finally`` block, no flush, no cleanup.
Points inside the process come from ``TRIALSYNC_CRASH_AT`` (warehouse/crashpoints.py); "request:N"
kills from outside while the registry is still answering the request for page N.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from pipeline import mutate
from pipeline.registry.fake_server import FakeRegistry
from tests.conftest import fast_sync, real_records
from tests.reliability.support import (
    leftovers,
    orphan_rows,
    pick,
    popen_sync,
    shell_counts,
    state,
)
from warehouse.crashpoints import CHECKPOINTS

pytestmark = pytest.mark.reliability
PAGE = ["--full", "--page-size", "10"]


@dataclass(frozen=True)
class KillPoint:
    crashes: tuple[str, ...]  # "<checkpoint>:<n>" or "request:<page>", one killed run each
    first_run: bool = False  # the killed run is the warehouse's first (nothing committed yet)
    commits: bool = False  # the kill comes after the commit point (the manifest generation is published)

    def __str__(self) -> str:
        return ("first-run " if self.first_run else "") + " then ".join(self.crashes)


KILL_POINTS = [
    KillPoint(("lock-acquired:1",)),
    KillPoint(("page-fetched:1",)),
    KillPoint(("page-fetched:4",)),
    KillPoint(("page-fetched:7",)),
    KillPoint(("request:1",)),
    KillPoint(("request:4",)),
    KillPoint(("spool-written:1",)),
    KillPoint(("spool-written:5",)),
    KillPoint(("parquet-written:1",)),
    KillPoint(("parquet-written:2",)),
    KillPoint(("parquet-written:9",)),
    KillPoint(("page-staged:1",)),
    KillPoint(("page-staged:6",)),
    KillPoint(("page-staged:7",)),
    KillPoint(("run-row-staged:1",)),
    KillPoint(("files-closed:1",)),
    KillPoint(("catalog-tmp-created:1",)),
    KillPoint(("catalog-tmp-written:1",)),
    KillPoint(("manifest-published:1",), commits=True),
    KillPoint(("catalog-replaced:1",), commits=True),
    KillPoint(("committed:1",), commits=True),
    KillPoint(("page-fetched:3",), first_run=True),
    KillPoint(("catalog-tmp-written:1",), first_run=True),
    KillPoint(("page-fetched:2", "page-fetched:5")),  # killed again while resuming
]
SHORT = [KILL_POINTS[i] for i in (2, 5, 9, 17, 18, 19)]


def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """60 real records, then the same registry a day later: 23 changed, 2 new studies and one whose
    status is a value the schema does not know (quarantined)."""
    real = real_records()
    old = real[::5][:60]
    day = max(date.fromisoformat(r["protocolSection"]["statusModule"]["lastUpdatePostDateStruct"]["date"])
              for r in old) + timedelta(days=1)
    changed = {**{_nct(r): mutate.set_status(r, "SUSPENDED") for r in old[::4]},
               **{_nct(r): mutate.set_enrollment(r, 777) for r in old[2::8]}}
    added = [real[1], real[2], mutate.set_status(real[3], "PAUSED_BY_SPONSOR")]
    new = [mutate.posted_on(changed[_nct(r)], day) if _nct(r) in changed else r for r in old]
    return old, new + [mutate.posted_on(r, day) for r in added]


def _nct(record: dict[str, Any]) -> str:
    return str(record["protocolSection"]["identificationModule"]["nctId"])


@pytest.fixture(scope="module")
def registries() -> Any:
    old, new = scenario()
    with FakeRegistry(old).start() as before, FakeRegistry(new).start() as after:
        yield before, after


@pytest.fixture(scope="module")
def reference(prefect_api: str, registries: tuple[FakeRegistry, FakeRegistry],
              tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What uninterrupted runs leave: the second run on top of the first, and a first run alone."""
    old, new = registries
    two, one = tmp_path_factory.mktemp("ref-two"), tmp_path_factory.mktemp("ref-one")
    fast_sync(old, two / "wh", full=True, page_size=10)
    second = fast_sync(new, two / "wh", full=True, page_size=10)
    fast_sync(new, one / "wh", full=True, page_size=10)
    assert (second["pages"], second["versions_written"], second["new_studies"], second["quarantined"]) == (
        7, 25, 2, 1)
    return {"second": state(two / "wh"), "first": state(one / "wh")}


def kill_run(spec: str, registry: FakeRegistry, warehouse: Path, prefect_api: str) -> None:
    """One ``trialsync sync`` subprocess, SIGKILLed at ``spec``."""
    env = {"PREFECT_API_URL": prefect_api}
    if spec.startswith("request:"):
        page = int(spec.split(":")[1])
        registry.faults.add("delay", delay=8.0, times=1, page=page)
        already = len(registry.requests)
        proc = popen_sync(registry.url, warehouse, *PAGE, env=env)
        deadline = time.monotonic() + 120
        while not any(path == "/studies" and registry.page_of(params) == page
                      for path, params in registry.requests[already:]):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the sync never asked for the page"
            time.sleep(0.02)
        proc.kill()
        registry.faults.clear()
    else:
        assert spec.split(":")[0] in CHECKPOINTS
        proc = popen_sync(registry.url, warehouse, *PAGE, env={**env, "TRIALSYNC_CRASH_AT": spec})
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == -signal.SIGKILL, f"not killed at {spec} (exit {proc.returncode}): {stderr[-2000:]}"


@pytest.mark.parametrize("point", pick(KILL_POINTS, SHORT), ids=str)
def test_a_sync_killed_at_any_point_keeps_the_last_commit_and_the_next_run_converges(
        point: KillPoint, registries: tuple[FakeRegistry, FakeRegistry], reference: dict[str, Any],
        prefect_api: str, tmp_path: Path) -> None:
    old, new = registries
    warehouse = tmp_path / "wh"
    before = None
    if not point.first_run:
        fast_sync(old, warehouse, full=True, page_size=10)
        before = state(warehouse)
    for spec in point.crashes:
        kill_run(spec, new, warehouse, prefect_api)
        shown = reference["second"] if point.commits else before
        if shown is None:  # nothing was ever committed: there is no catalog to open
            assert not (warehouse / "warehouse.duckdb").exists()
            continue
        assert state(warehouse) == shown
        assert set(orphan_rows(warehouse).values()) == {0}
        runs, versions, quarantined = (len(shown[k]) for k in ("runs", "versions", "quarantine"))
        assert shell_counts(warehouse) == f"{runs},{versions},{quarantined}"

    rerun = fast_sync(new, warehouse, full=True, page_size=10)
    last, _, n = point.crashes[-1].partition(":")
    replayable = {"page-fetched": int(n), "request": int(n) - 1, "spool-written": int(n) - 1}
    if last in replayable:  # the pages fetched before the kill were spooled and are not fetched again
        assert rerun["pages_replayed"] == replayable[last]
    expected = reference["first" if point.first_run else "second"]
    if point.commits:  # the killed run had committed (checked above): the re-run finds nothing new
        assert rerun["versions_written"] == 0
        assert state(warehouse)["versions"] == expected["versions"]
    else:
        assert state(warehouse) == expected
    assert leftovers(warehouse) == []


def test_every_checkpoint_is_a_kill_point() -> None:
    used = {spec.split(":")[0] for point in KILL_POINTS for spec in point.crashes}
    assert used == set(CHECKPOINTS) | {"request"}
