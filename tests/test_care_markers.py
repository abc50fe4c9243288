"""The runs' ``_COMMITTED`` markers on a bad day: with ``warehouse.duckdb`` and ``manifest/`` both
lost, ``repair`` rebuilds them from the markers when these hold every generation, and otherwise says
which generation none holds; a reader warns about a committed run whose marker does not parse."""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from pipeline import mutate
from pipeline.registry.fake_server import FakeRegistry
from tests.conftest import Record, copy_warehouse, fast_sync
from tests.test_cli import run_cli
from warehouse import Warehouse
from warehouse import manifest as manifests
from warehouse.catalog import CATALOG_NAME
from warehouse.markers import COMMITTED_MARKER, RUNS_DIR

pytestmark = pytest.mark.usefixtures("prefect_api")


@pytest.fixture(scope="module")
def four_runs(prefect_api: str, records: list[Record], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four syncs of ten real studies, three of them terminating one each (an automatic merge among them)."""
    built = tmp_path_factory.mktemp("markers") / "warehouse"
    few = records[:10]
    with FakeRegistry(few).start() as registry:
        fast_sync(registry, built)
        for n, record in enumerate(few[3:6]):
            registry.put(mutate.posted_on(mutate.set_status(record, "TERMINATED", "Funding"), date(2030, 1, 2 + n)))
            fast_sync(registry, built)
    return built


def _views(directory: Path) -> dict[str, list[tuple[Any, ...]]]:
    with Warehouse(directory).connect() as con:
        return {view: con.execute(f"SELECT * FROM {view} ORDER BY ALL").fetchall()
                for view in ("sync_runs", "study_versions", "changes", "locations")}


def _lose_catalog_and_manifest(directory: Path) -> None:
    (directory / CATALOG_NAME).unlink()
    shutil.rmtree(manifests.directory(directory))


def _run_of_generation(directory: Path, number: int) -> str:
    return manifests.Generation.from_bytes(manifests.generation_path(directory, number).read_bytes(), number).run_id


def test_repair_rebuilds_the_catalog_and_manifest_from_the_runs_markers_when_they_hold_every_generation(
        four_runs: Path, tmp_path: Path) -> None:
    """It refused: "warehouse.duckdb and manifest/ are both missing ...: restore them from a backup",
    though every run's marker held its generation."""
    directory = copy_warehouse(four_runs, tmp_path / "warehouse")
    before, head = _views(directory), manifests.head(directory)
    _lose_catalog_and_manifest(directory)
    told = run_cli("runs", "--warehouse", str(directory))
    assert told.returncode == 2
    assert told.stderr.strip() == (f"trialsync: error: {directory}: {CATALOG_NAME} and manifest/ are both missing, but "
                                   f"the runs' {COMMITTED_MARKER} markers hold every generation (1 to {head}): "
                                   "`trialsync repair` rebuilds them")
    repaired = run_cli("repair", "--warehouse", str(directory))
    assert repaired.returncode == 0, repaired.stderr
    assert f"manifest generation(s) {list(range(1, head + 1))} restored" in repaired.stdout
    checked = run_cli("check", "--deep", "--warehouse", str(directory))
    assert checked.returncode == 0 and checked.stdout.startswith(f"ok (deep check): generation {head}, 4 runs")
    assert _views(directory) == before


def test_repair_says_which_generation_no_marker_holds_and_changes_nothing(four_runs: Path, tmp_path: Path) -> None:
    directory = copy_warehouse(four_runs, tmp_path / "warehouse")
    head = manifests.head(directory)
    gone = _run_of_generation(directory, 2)
    _lose_catalog_and_manifest(directory)
    shutil.rmtree(directory / RUNS_DIR / gone)
    listing = sorted(p.relative_to(directory) for p in directory.rglob("*"))
    refused = run_cli("repair", "--warehouse", str(directory))
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        f"trialsync: error: {directory}: {CATALOG_NAME} and manifest/ are both missing and neither the runs' "
        f"{COMMITTED_MARKER} markers nor checkpoints/ hold generation 2 of 1 to {head} (a run's directory is gone: a "
        "merged run's is removed a day after the merge): `trialsync repair` cannot rebuild them; restore them from "
        "a backup")
    assert sorted(p.relative_to(directory) for p in directory.rglob("*") if "lock" not in p.name) == [
        p for p in listing if "lock" not in p.name]


def test_a_reader_warns_about_a_committed_run_whose_marker_does_not_parse(four_runs: Path, tmp_path: Path) -> None:
    """The newest manifest file and the catalog lost, the newest run's marker damaged: check named the run,
    but every reader answered from the older generation without a word."""
    directory = copy_warehouse(four_runs, tmp_path / "warehouse")
    head = manifests.head(directory)
    newest = _run_of_generation(directory, head)
    (directory / CATALOG_NAME).unlink()
    manifests.generation_path(directory, head).unlink()
    (directory / RUNS_DIR / newest / COMMITTED_MARKER).write_bytes(b"{\"generation\": 9")
    answered = run_cli("sql", "SELECT count(*) FROM sync_runs", "--format", "csv", "--warehouse", str(directory))
    assert answered.returncode == 0, answered.stderr
    assert (f"trialsync: warning: {RUNS_DIR}/{newest}/{COMMITTED_MARKER} holds no readable manifest generation: a "
            "committed run no generation lists, whose rows this answer may lack; run `trialsync check`, then "
            "`trialsync repair`") in answered.stderr
    checked = run_cli("check", "--warehouse", str(directory))
    assert checked.returncode == 1 and f"{RUNS_DIR}/{newest}/{COMMITTED_MARKER}: this run committed" in checked.stdout


def test_repair_from_the_markers_refuses_while_a_run_holds_files_but_no_marker(four_runs: Path,
                                                                              tmp_path: Path) -> None:
    """The newest run committed, then its writer was killed before it wrote its marker (the marker comes
    after the commit point); later the catalog and manifest/ were lost. Repair rebuilt from the other
    markers without a word: one generation early, and the next writer deleted the newest run's files."""
    directory = copy_warehouse(four_runs, tmp_path / "warehouse")
    head = manifests.head(directory)
    newest = _run_of_generation(directory, head)
    (directory / RUNS_DIR / newest / COMMITTED_MARKER).unlink()
    _lose_catalog_and_manifest(directory)
    listing = sorted(p.relative_to(directory) for p in directory.rglob("*"))

    repaired = run_cli("repair", "--warehouse", str(directory))
    assert repaired.returncode == 2, repaired.stdout
    assert f"{RUNS_DIR}/{newest} hold files and no marker" in repaired.stderr
    assert "restore them from a backup, or move those directories out" in repaired.stderr
    assert sorted(p.relative_to(directory) for p in directory.rglob("*")) == listing  # nothing changed
    told = run_cli("runs", "--warehouse", str(directory))
    assert told.returncode == 2 and f"{RUNS_DIR}/{newest} hold files and no marker" in told.stderr

    shutil.move(directory / RUNS_DIR / newest, tmp_path / newest)  # the user's choice: without it
    again = run_cli("repair", "--warehouse", str(directory))
    assert again.returncode == 0, again.stderr
    assert manifests.head(directory) == head - 1
