"""Compaction: every view shows the same rows from one file per table; superseded files go after a grace."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import pytest

from flows.compact import compact_warehouse
from flows.derive import rederive_changes
from pipeline import mutate
from pipeline.registry.fake_server import FakeRegistry
from tests.conftest import copy_warehouse, fast_sync, nct
from tests.test_backfill import HISTORY, NCT, observe_then_backfill
from tests.test_cli import run_cli
from warehouse import Warehouse
from warehouse.store import RUNS_DIR

pytestmark = pytest.mark.usefixtures("prefect_api")


def rows(warehouse_dir: Path, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    with Warehouse(warehouse_dir).connect() as con:
        return con.execute(sql, params or []).fetchall()


def every_view(warehouse_dir: Path) -> dict[str, list[tuple[Any, ...]]]:
    """The rows of every public view (schema ``aact`` too), sorted (raw JSON as text)."""
    with Warehouse(warehouse_dir).connect() as con:  # one connection: opening the catalog takes ~50 ms
        names = [r[1] if r[0] == "main" else f"{r[0]}.{r[1]}" for r in con.execute(
            "SELECT schema_name, view_name FROM duckdb_views() WHERE NOT internal "
            "AND view_name NOT LIKE 'raw\\_%' ESCAPE '\\' AND view_name NOT LIKE '\\_%' ESCAPE '\\'").fetchall()]
        return {name: con.execute(f"SELECT * FROM {name} ORDER BY ALL").fetchall() for name in sorted(names)}


def run_dirs(warehouse_dir: Path) -> set[str]:
    return {d.name for d in (warehouse_dir / RUNS_DIR).iterdir() if d.is_dir()}


@pytest.fixture(scope="module")
def busy_built(prefect_api: str, records: list[dict[str, Any]],
               tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """Many runs: syncs, a backfill that rewrote a study, a rederive that replaced the changes, a retirement."""
    built = tmp_path_factory.mktemp("busy") / "warehouse"
    with FakeRegistry(records[:40]).start() as registry:
        runs = observe_then_backfill(registry, built)
        registry.put(mutate.posted_on(mutate.set_status(records[3], "TERMINATED", "Funding"), date(2030, 1, 2)))
        registry.remove(nct(records[4]))
        runs["full"] = fast_sync(registry, built, full=True)
    rederive_changes(warehouse=str(built))
    return built, runs


@pytest.fixture
def busy_warehouse(busy_built: tuple[Path, dict[str, Any]], warehouse_dir: Path) -> dict[str, Any]:
    """A copy of the busy warehouse at ``warehouse_dir``, for one test to change."""
    copy_warehouse(busy_built[0], warehouse_dir)
    return busy_built[1]


def test_compaction_keeps_every_view_identical_in_one_file_per_table(
        busy_warehouse: dict[str, Any], warehouse_dir: Path) -> None:
    before = every_view(warehouse_dir)
    assert {"studies", "changes", "current_locations", "scope_exits", "study_rewrites"} <= set(before)
    assert before["study_rewrites"] and before["scope_exits"] and len(before["sync_runs"]) == 5
    files_before = len(Warehouse(warehouse_dir).manifest().entries)
    dirs_before = run_dirs(warehouse_dir)

    result = compact_warehouse(warehouse=str(warehouse_dir))
    after = every_view(warehouse_dir)
    compact_row = [r for r in after["sync_runs"] if r[0] == result["run_id"]]
    assert [(r[1], r[2]) for r in compact_row] == [("compact", "warehouse")]
    assert [r for r in after["sync_runs"] if r not in compact_row] == before.pop("sync_runs")
    after.pop("sync_runs")
    assert after == before
    manifest = Warehouse(warehouse_dir).manifest()
    assert {e.run_id for e in manifest.entries} == {result["run_id"]}
    assert len(manifest.entries) == len({e.table for e in manifest.entries}) < files_before
    assert (result["files_before"], result["files_after"]) == (files_before, len(manifest.entries))
    # Hidden rows are gone from disk, not just from the views: one row per stored version of the study.
    assert result["rows"]["study_versions"] == rows(warehouse_dir, "SELECT count(*) FROM study_versions")[0][0]
    # The superseded directories stay for readers that still hold the old catalog, even across a run.
    assert run_dirs(warehouse_dir) == dirs_before | {result["run_id"]}
    assert result["deleted_runs"] == 0


def test_syncs_and_backfills_after_a_compaction_continue_the_history(
        busy_warehouse: dict[str, Any], warehouse_dir: Path, records: list[dict[str, Any]]) -> None:
    compact_warehouse(warehouse=str(warehouse_dir))
    with FakeRegistry(records[:40]).start() as registry:
        registry.remove(nct(records[4]))
        registry.put(mutate.posted_on(mutate.set_status(records[3], "TERMINATED", "Funding"), date(2030, 1, 2)))
        registry.put_history(HISTORY)
        registry.put(mutate.posted_on(mutate.set_status(HISTORY.records[9], "TERMINATED", "Sponsor decision"),
                                      date(2030, 1, 3)))
        again = fast_sync(registry, warehouse_dir)
        assert (again["mode"], again["versions_written"], again["changes_written"] > 0) == ("incremental", 1, True)
        full = fast_sync(registry, warehouse_dir, full=True)
        assert (full["versions_written"], full["retired"], full["left_scope"]) == (0, 0, 0)
    assert rows(warehouse_dir, "SELECT version, overall_status FROM studies WHERE nct_id = ?", [NCT]) == [
        (11, "TERMINATED")]
    assert rows(warehouse_dir, "SELECT from_version, to_version FROM changes WHERE nct_id = ? AND "
                               "event = 'status_changed' AND to_version = 11", [NCT]) == [(10, 11)]


def test_keep_hours_zero_deletes_the_superseded_directories_at_once(
        busy_warehouse: dict[str, Any], warehouse_dir: Path) -> None:
    before = every_view(warehouse_dir)
    first = compact_warehouse(warehouse=str(warehouse_dir), keep_hours=24)
    second = compact_warehouse(warehouse=str(warehouse_dir), keep_hours=0)
    assert second["deleted_runs"] == len(before["sync_runs"]) + 1  # every earlier run, the first compaction too
    assert run_dirs(warehouse_dir) == {second["run_id"]}
    after = every_view(warehouse_dir)
    assert [r[1] for r in after.pop("sync_runs")] == [r[1] for r in before.pop("sync_runs")] + ["compact"] * 2
    assert after == before
    assert first["run_id"] != second["run_id"]


def test_the_compact_command_reports_and_refuses_bad_input(busy_warehouse: dict[str, Any],
                                                           warehouse_dir: Path, tmp_path: Path) -> None:
    done = run_cli("compact", "--warehouse", str(warehouse_dir))
    assert done.returncode == 0, done.stderr
    assert "(compact):" in done.stdout and "files ->" in done.stdout
    bad = run_cli("compact", "--keep-hours", "-1", "--warehouse", str(warehouse_dir))
    assert (bad.returncode, bad.stderr.strip()) == (
        2, "trialsync: error: --keep-hours must be a number of hours from 0 to 8760, not -1.0")
    missing = run_cli("compact", "--warehouse", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "no warehouse at" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_checks_summary_counts_the_runs_sync_runs_lists_also_after_a_compaction(
        busy_warehouse: dict[str, Any], warehouse_dir: Path) -> None:
    """It counted the runs with files in the manifest: after a compaction (or an automatic merge) a
    warehouse of 6 runs said "1 runs"."""
    from warehouse.check import check

    for step in ("before", "after"):
        if step == "after":
            compact_warehouse(warehouse=str(warehouse_dir))
        report = check(warehouse_dir)
        [(listed,)] = rows(warehouse_dir, "SELECT count(*) FROM sync_runs")
        assert report.ok and report.runs == listed == (5 if step == "before" else 6)
        assert f", {listed} runs, " in report.summary()
    shown = run_cli("check", "--warehouse", str(warehouse_dir))
    assert shown.returncode == 0 and ", 6 runs, " in shown.stdout, shown.stderr
