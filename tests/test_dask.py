"""Issue 17: `load-bulk --dask ADDRESS` on a real cluster (a `dask scheduler` and `dask worker` processes):
the workers run the Prefect-free shard work, so none starts a temporary Prefect server, and the
shard task runs are reported to the flow's Prefect API from the flow's process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench import corpus
from tests.conftest import STUDIES_DIR
from tests.test_cli import run_cli
from tests.test_lifecycle import plain_env
from warehouse import Warehouse

pytestmark = pytest.mark.prefect  # what these tests check is the Prefect side

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def corpus_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dask-corpus")
    corpus.generate(STUDIES_DIR, 300, out)
    return out / "base.zip"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A scheduler and two single-threaded workers, with no Prefect setting in their environment."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    env = plain_env()
    log_path = tmp_path / "dask.log"
    with log_path.open("w") as log:
        procs = [subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                   "--no-dashboard"], stdout=log, stderr=subprocess.STDOUT, env=env,
                                  start_new_session=True)]
        procs.append(subprocess.Popen([str(BIN / "dask"), "worker", address, "--nworkers", "2", "--nthreads", "1",
                                       "--no-dashboard"], stdout=log, stderr=subprocess.STDOUT, env=env,
                                      start_new_session=True))
    try:
        from distributed import Client

        with Client(address, timeout=120) as client:
            client.wait_for_workers(2, timeout=180)
        yield address, log_path
    finally:
        for proc in reversed(procs):
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)


def test_dask_workers_do_the_shard_work_without_prefect_and_the_flow_reports_the_tasks(
        prefect_api: str, cluster: tuple[str, Path], corpus_zip: Path, tmp_path: Path) -> None:
    from distributed import Client
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterId

    address, log_path = cluster
    warehouse = tmp_path / "w"
    result = run_cli("load-bulk", str(corpus_zip), "--warehouse", str(warehouse), "--dask", address, "-q",
                     env=plain_env(PREFECT_API_URL=prefect_api), timeout=600)
    assert result.returncode == 0, result.stderr
    assert "300 seen, 300 new studies, 300 new versions" in result.stdout
    with Warehouse(warehouse).connect() as con:
        assert con.execute("SELECT count(*) FROM studies").fetchall() == [(300,)]
        [(shards,)] = con.execute("SELECT pages FROM sync_runs").fetchall()
    with Client(address) as client:
        # a builtin and a string: nothing of this test module has to be importable on the workers
        loaded: dict[str, Any] = client.run(eval, "'prefect' in __import__('sys').modules")
    assert loaded and not any(loaded.values())  # the workers never imported Prefect, let alone a server
    assert "temporary server" not in log_path.read_text()
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["load_bulk"])))
        [run] = [r for r in runs if r.parameters.get("warehouse") == str(warehouse)]
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
    shard_runs = [t for t in tasks if t.name.startswith("shard-")]
    assert run.state_name == "Completed" and len(shard_runs) == shards > 1
    assert all(t.state_name == "Completed" for t in shard_runs)


def test_a_failing_load_on_a_local_dask_cluster_ends_with_one_line_not_the_workers_tracebacks(
        corpus_zip: Path, tmp_path: Path) -> None:
    """Each local Dask worker logged "Compute Failed" with a traceback for the damaged member (some 40
    lines before ours); without --debug the command says one line, as with the local process pool."""
    damaged = tmp_path / "damaged.zip"
    data = bytearray(corpus_zip.read_bytes())
    for i in range(len(data) // 3, len(data) // 3 + 64):  # inside a member's compressed bytes
        data[i] ^= 0xFF
    damaged.write_bytes(bytes(data))
    result = run_cli("load-bulk", str(damaged), "--warehouse", str(tmp_path / "w"), "--dask", "local",
                     "--workers", "2", "-q", env=plain_env(), timeout=600)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"trialsync: error: {damaged}: NCT"), result.stderr
