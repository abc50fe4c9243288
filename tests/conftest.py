"""Shared fixtures: the real data in ../shared/data, a fake registry on loopback, Prefect's test harness."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

# Before Prefect is imported anywhere: a private PREFECT_HOME and offline settings (one per xdist
# worker: the workers inherit the controller's environment).
if worker := os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix=f"trialsync-prefect-{worker}-")
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="trialsync-prefect-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
# The work is the same code under both engines (flows/engine.py), and a Prefect flow run costs ~1.3 s
# more a sync here (plus the test server's CPU): tests run their flows in process, subprocesses too,
# unless marked ``prefect`` (the tests of what Prefect adds: flow runs, artifacts, logs, blocks,
# deployments). ``TRIALSYNC_TEST_ENGINE=auto make test`` runs every test's flows under Prefect.
TEST_ENGINE = os.environ.get("TRIALSYNC_TEST_ENGINE", "plain")
os.environ["TRIALSYNC_ENGINE"] = TEST_ENGINE

# ``TRIALSYNC_FULL=1`` (``make test-reliability``): every case of the exhaustive sweeps; ``make test`` runs
# fewer hypothesis examples, or a representative few cases, of the slowest ones (each says which).
FULL = os.environ.get("TRIALSYNC_FULL") == "1"


def examples(short: int, full: int) -> int:
    """A hypothesis test's ``max_examples``: ``full`` under ``TRIALSYNC_FULL=1``, ``short`` otherwise."""
    return full if FULL else short


REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("TRIALSYNC_SHARED_DATA", REPO.parent / "shared" / "data")).resolve()
STUDIES_DIR = DATA / "ctgov" / "studies"
SNAPSHOTS_DIR = DATA / "ctgov" / "snapshots"
PARTIAL_DIR = DATA / "ctgov" / "studies_partial"
CTRDATA_DIR = DATA / "ctgov" / "ctrdata_jsonlite_unboxed"
SPEC_FILE = DATA / "ctgov" / "spec" / "ctg-oas-v2_api-2.0.5.yaml"

if not STUDIES_DIR.is_dir():  # a clear message instead of 100 confusing failures
    raise RuntimeError(f"the real registry data is missing: expected {STUDIES_DIR} (../shared/data beside the clone)")

Record = dict[str, Any]


def load(path: Path) -> Record:
    record: Record = orjson.loads(path.read_bytes())
    return record


def nct(record: Record) -> str:
    return str(record["protocolSection"]["identificationModule"]["nctId"])


_REAL: list[Record] | None = None


def real_records() -> list[Record]:
    """The 326 real full records (read once; tests must copy before changing them)."""
    global _REAL
    if _REAL is None:
        _REAL = [load(p) for p in sorted(STUDIES_DIR.glob("NCT*.json"))]
    return _REAL


def snapshot_pairs() -> dict[str, tuple[Record, Record]]:
    """The 8 real version pairs, older first (file names start with lastUpdatePostDate__vh...)."""
    pairs = {}
    for directory in sorted(SNAPSHOTS_DIR.iterdir()):
        older, newer = sorted(directory.glob("*.json"))
        pairs[directory.name] = (load(older), load(newer))
    return pairs


def partial_records() -> list[Record]:
    """The 25 fields=-projected or trimmed records of studies_partial/ (not versions: quarantined)."""
    return [load(p) for p in sorted(PARTIAL_DIR.glob("NCT*.json"))]


def ctrdata_records() -> dict[str, Record]:
    """The ctrdata-decoded records (studies/ and snapshots/), by file path relative to CTRDATA_DIR."""
    paths = [*CTRDATA_DIR.glob("studies/*.json"), *CTRDATA_DIR.glob("snapshots/*/*.json")]
    return {str(p.relative_to(CTRDATA_DIR)): load(p) for p in sorted(paths)}


@pytest.fixture(scope="session")
def records() -> list[Record]:
    return real_records()


@pytest.fixture
def registry(records: list[Record]) -> Iterator[Any]:
    from pipeline.registry.fake_server import FakeRegistry

    with FakeRegistry(records).start() as fake:
        yield fake


# The longest test files (seconds of work in a clean-clone `make test`), started first: `--dist
# loadfile` hands whole files to the two workers in collection order, so a long file collected last
# leaves one worker running it alone at the end.
LONGEST_FIRST = ("test_autocompact.py", "test_warehouse_repair.py", "test_prefect_bad_day.py", "test_lifecycle.py",
                 "test_serve_bad_day.py", "test_prefect_home.py", "test_checkpoints.py",
                 "test_warehouse_backup.py", "test_read_bad_day.py", "test_change_feed.py", "test_cli.py",
                 "test_engine.py", "test_compact.py", "test_bulk.py", "test_bench.py", "test_warehouse_commit.py",
                 "test_alerts.py", "test_alert_bad_day.py", "test_wrong_clock.py", "test_disk_refusals.py",
                 "test_sync_model.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the files' own order, and each file's tests' order, stay


@pytest.fixture(autouse=True)
def _prefect_engine_when_marked(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.node.get_closest_marker("prefect") is not None:
        monkeypatch.setenv("TRIALSYNC_ENGINE", "auto")
        request.getfixturevalue("prefect_api")  # the session's server, so "auto" means a Prefect flow run


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """One Prefect test server for the session; its URL lets subprocesses use it too."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield str(PREFECT_API_URL.value())


@pytest.fixture
def warehouse_dir(tmp_path: Path) -> Path:
    return tmp_path / "warehouse"


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Iterator[Any]:
    """``trialsync ARGS`` in this process, as the console script runs it: (exit code, stdout, stderr)."""
    from flows.cli import main

    names = ("prefect.flow_runs", "prefect.task_runs", "prefect.flow_engine", "prefect.task_engine")
    levels = {name: logging.getLogger(name).level for name in names}

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    yield run
    for name, level in levels.items():  # the CLI quiets Prefect's failure logs
        logging.getLogger(name).setLevel(level)


def fast_sync(registry: Any, warehouse_dir: Path, **kwargs: Any) -> dict[str, Any]:
    """Run the real ``sync_registry`` flow against the fake registry, with fast retries."""
    from flows.sync import sync_registry

    params: dict[str, Any] = dict(api_url=registry.url, warehouse=str(warehouse_dir), request_interval=0.0,
                                  backoff_seconds=0.01, timeout_seconds=5.0, lock_timeout=5.0)
    params.update(kwargs)
    result: dict[str, Any] = sync_registry(**params)
    return result


def copy_warehouse(source: Path, dest: Path) -> Path:
    """A working copy of a warehouse a module built once (a copied warehouse works at its new place:
    tests/test_warehouse_backup.py), so tests that change it do not each pay for the syncs."""
    import shutil

    shutil.copytree(source, dest, symlinks=True)
    return dest


@pytest.fixture(scope="session")
def loaded_warehouse(prefect_api: str, records: list[Record], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A warehouse holding the 326 real records (one real sync); read-only for the tests that share it."""
    from pipeline.registry.fake_server import FakeRegistry

    directory = tmp_path_factory.mktemp("loaded") / "warehouse"
    with FakeRegistry(records).start() as registry:
        fast_sync(registry, directory)
    return directory
