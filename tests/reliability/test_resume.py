"""Resumability: a run that stopped half-way (here: failed on page 4 of 5; killed runs are in
test_crash.py) leaves its fetched pages in the warehouse's spool, and a re-run of the same scope and
window replays them while the registry still serves the same data, fetching only the rest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipeline import mutate
from pipeline.errors import RegistryUnavailable
from pipeline.registry.fake_server import FakeRegistry
from tests.conftest import fast_sync, nct, real_records
from tests.reliability.support import leftovers, query, state
from warehouse.spool import SPOOL_DIR

pytestmark = [pytest.mark.reliability, pytest.mark.usefixtures("prefect_api")]
SIZE = 20


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def interrupt_at_page_4(registry: FakeRegistry, warehouse: Path, **options: Any) -> None:
    fault = registry.faults.add("status", status=503, times=-1, page=4)
    with pytest.raises(RegistryUnavailable):
        fast_sync(registry, warehouse, page_size=SIZE, max_attempts=1, **options)
    registry.faults.rules.remove(fault)
    spools = list((warehouse / SPOOL_DIR).iterdir())
    assert len(spools) == 1 and sorted(p.name for p in spools[0].glob("page-*")) == [
        "page-00001.zst", "page-00002.zst", "page-00003.zst"]
    registry.requests.clear()


def pages_asked(registry: FakeRegistry) -> list[int | None]:
    return [registry.page_of(p) for p in registry.study_requests()]


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The warehouse an uninterrupted run leaves."""
    warehouse = tmp_path_factory.mktemp("clean") / "wh"
    with FakeRegistry(real_records()[:100]).start() as registry:
        fast_sync(registry, warehouse, page_size=SIZE)
    return state(warehouse)


def test_a_rerun_replays_the_fetched_pages_and_commits_what_an_uninterrupted_run_would(
        clean: dict[str, Any], warehouse_dir: Path) -> None:
    with FakeRegistry(real_records()[:100]).start() as registry:
        interrupt_at_page_4(registry, warehouse_dir)
        summary = fast_sync(registry, warehouse_dir, page_size=SIZE)
        assert pages_asked(registry) == [4, 5]
    assert (summary["pages_replayed"], summary["pages"], summary["versions_written"]) == (3, 5, 100)
    assert state(warehouse_dir) == clean
    assert leftovers(warehouse_dir) == []


def test_nothing_is_replayed_once_the_registry_data_changed(warehouse_dir: Path) -> None:
    records = real_records()[:100]
    with FakeRegistry(records).start() as registry:
        interrupt_at_page_4(registry, warehouse_dir)
        registry.put(mutate.set_status(records[0], "SUSPENDED"))  # its next data refresh
        summary = fast_sync(registry, warehouse_dir, page_size=SIZE)
        assert pages_asked(registry) == [1, 2, 3, 4, 5]
    assert summary["pages_replayed"] == 0
    assert query(warehouse_dir, f"SELECT overall_status FROM studies WHERE nct_id = '{nct(records[0])}'") == [
        ("SUSPENDED",)]
    assert leftovers(warehouse_dir) == []  # the stale spool is gone too


def test_an_expired_token_in_the_spool_starts_the_walk_again_without_staging_a_page_twice(
        clean: dict[str, Any], warehouse_dir: Path) -> None:
    clock = Clock()
    with FakeRegistry(real_records()[:100], token_ttl=60, clock=clock).start() as registry:
        interrupt_at_page_4(registry, warehouse_dir)
        clock.now += 3600  # the re-run comes an hour later: the stored token for page 4 has expired
        summary = fast_sync(registry, warehouse_dir, page_size=SIZE)
        assert pages_asked(registry) == [4, 1, 2, 3, 4, 5]
    assert (summary["pages_replayed"], summary["restarts"]) == (3, 1)
    assert state(warehouse_dir) == clean
    assert leftovers(warehouse_dir) == []


def test_only_a_rerun_of_the_same_scope_and_window_replays(clean: dict[str, Any], warehouse_dir: Path) -> None:
    with FakeRegistry(real_records()[:100]).start() as registry:
        interrupt_at_page_4(registry, warehouse_dir, full=True)
        other = fast_sync(registry, warehouse_dir, page_size=SIZE, condition="cancer")  # another scope
        window = fast_sync(registry, warehouse_dir, page_size=SIZE, since="2026-01-01")  # another window
        registry.requests.clear()
        same = fast_sync(registry, warehouse_dir, page_size=SIZE, full=True)
        assert pages_asked(registry) == [4, 5]
    assert (other["pages_replayed"], window["pages_replayed"], same["pages_replayed"]) == (0, 0, 3)
    assert state(warehouse_dir)["versions"] == clean["versions"]
    assert leftovers(warehouse_dir) == []


def test_a_damaged_spool_page_is_fetched_again_with_everything_after_it(
        clean: dict[str, Any], warehouse_dir: Path) -> None:
    with FakeRegistry(real_records()[:100]).start() as registry:
        interrupt_at_page_4(registry, warehouse_dir)
        page2 = next((warehouse_dir / SPOOL_DIR).glob("*/page-00002.zst"))
        page2.write_bytes(page2.read_bytes()[:100])  # e.g. a power cut before the data reached the disk
        summary = fast_sync(registry, warehouse_dir, page_size=SIZE)
        assert pages_asked(registry) == [2, 3, 4, 5]
    assert summary["pages_replayed"] == 1
    assert state(warehouse_dir) == clean


@pytest.mark.parametrize("kind", ["a named pipe", "a directory", "a link to /dev/zero"])
def test_a_spool_page_that_is_not_a_file_is_fetched_again_and_never_blocks_the_run(
        kind: str, clean: dict[str, Any], warehouse_dir: Path) -> None:
    """A named pipe in a page's place blocked the resumed sync for ever (the writer lock held), a link
    to /dev/zero read until memory ran out, a directory failed every later sync with 'IsADirectoryError:
    [Errno 21] Is a directory: .../page-00002.zst' (the spool was never cleared)."""
    import os

    from tests.reliability.support import cli, sync_args

    with FakeRegistry(real_records()[:100]).start() as registry:
        interrupt_at_page_4(registry, warehouse_dir)
        page2 = next((warehouse_dir / SPOOL_DIR).glob("*/page-00002.zst"))
        page2.unlink()
        if kind == "a named pipe":
            os.mkfifo(page2)
        elif kind == "a directory":
            page2.mkdir()
        else:
            os.symlink("/dev/zero", page2)
        result = cli(*sync_args(registry.url, warehouse_dir, "--page-size", str(SIZE)), timeout=90)
        assert result.returncode == 0, result.stderr
        assert pages_asked(registry) == [2, 3, 4, 5]
    assert state(warehouse_dir) == clean
    assert leftovers(warehouse_dir) == []


def test_a_page_that_repeated_a_token_is_not_replayed_so_a_rerun_against_a_healthy_registry_succeeds(
        clean: dict[str, Any], warehouse_dir: Path) -> None:
    """The registry looped once (page 2 answered with its own token): the run stops, and the page that
    carried the loop must not be replayed from the spool, or every re-run fails the same way until the
    registry's data timestamp moves."""
    from pipeline.errors import RegistryError

    with FakeRegistry(real_records()[:100]).start() as registry:
        registry.faults.add("same_token", times=1, page=2)
        with pytest.raises(RegistryError, match="same page token again after page 2"):
            fast_sync(registry, warehouse_dir, page_size=SIZE)
        registry.requests.clear()
        summary = fast_sync(registry, warehouse_dir, page_size=SIZE)
        assert pages_asked(registry) == [2, 3, 4, 5]  # page 1 replayed, page 2 asked again
    assert (summary["pages_replayed"], summary["versions_written"]) == (1, 100)
    assert state(warehouse_dir) == clean
