"""``trialsync history``'s text: when each version was stored, and what a removal marker means."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from rich.console import Console

from flows.history import print_history
from pipeline.versioning import RunContext
from tests.conftest import snapshot_pairs
from tests.fdaaa_support import store
from warehouse.rows import tombstones_table


@pytest.fixture
def los_angeles(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A machine in Los Angeles: DuckDB gives TIMESTAMPTZ values in the process's local zone."""
    monkeypatch.setenv("TZ", "America/Los_Angeles")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def _history(tmp_path: Path) -> str:
    older, _ = snapshot_pairs()["NCT05766735"]
    warehouse = store(tmp_path, [older])  # stored 2026-01-01 00:00 UTC
    ctx = RunContext("run-removal", datetime(2026, 12, 7, 5, 20, tzinfo=UTC), "api")
    with warehouse.writer(ctx.run_id) as run:
        run.append("study_versions", tombstones_table([("NCT05766735", 2, "removed")], ctx))
        run.commit()
    console = Console(record=True, width=200)
    print_history(tmp_path, "NCT05766735", "text", console)
    return console.export_text()


@pytest.mark.usefixtures("los_angeles")
def test_history_prints_when_each_version_was_stored_in_utc_whatever_the_local_zone(tmp_path: Path) -> None:
    text = _history(tmp_path)
    assert "(stored 2026-01-01 00:00 UTC, api, run run-1)" in text
    assert "(stored 2026-12-07 05:20 UTC, api, run run-removal)" in text


def test_a_removal_marker_says_the_registry_no_longer_has_the_study(tmp_path: Path) -> None:
    text = _history(tmp_path)
    assert "scope" not in text
    assert "\n  removed: the registry no longer has this study (404)\n" in text
