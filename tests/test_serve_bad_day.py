"""``trialsync serve`` on a bad day: stopped or killed while a scheduled run goes on, started twice on one
Prefect home (real processes and signals: serve and its own Prefect server, the fake registry, the CLI)."""

from __future__ import annotations

import fcntl
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from flows.serving import LOCK_NAME
from pipeline.registry.fake_server import FakeRegistry
from tests.test_cli import run_cli
from tests.test_lifecycle import listing_requested, plain_env, start, stop, wait_for

pytestmark = pytest.mark.prefect  # what these tests check is the Prefect side

FINAL = ("COMPLETED", "FAILED", "CANCELLED", "CRASHED")


def _deployments_file(path: Path, registry: FakeRegistry, warehouse: Path) -> Path:
    """One deployment run on demand, with the shipped file's concurrency limit (one run at a time, a
    second one cancelled)."""
    path.write_text(f"""name: trialsync
deployments:
  - name: on-demand
    entrypoint: flows/scheduled.py:scheduled_sync
    parameters: {{full: true, page_size: 5, request_interval: 0, api_url: "{registry.url}", warehouse: "{warehouse}"}}
    schedules: []
    concurrency_limit: {{limit: 1, collision_strategy: CANCEL_NEW}}
""")
    return path


def _serving(file: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], str, str]:
    """serve started on its own Prefect server; its process, the server's API URL, the deployment's id."""
    proc = start(["serve", "--file", str(file)], env)
    found: list[str] = []

    def address() -> bool:
        line = proc.stdout.readline() if proc.stdout else ""
        found.extend(re.findall(r"Prefect server \(UI\) at (http://127\.0\.0\.1:\d+)", line))
        return bool(found)

    wait_for(address, proc, "Prefect server")
    url = f"{found[0]}/api"
    deployments: list[dict[str, Any]] = []

    def registered() -> bool:
        deployments[:] = httpx.post(f"{url}/deployments/filter", json={}, timeout=10).json()
        return bool(deployments) or bool(time.sleep(0.3))

    wait_for(registered, proc, "the deployment")
    return proc, url, deployments[0]["id"]


def _create_run(url: str, deployment: str) -> str:
    """A flow run of the deployment, asked for until the server takes it (serve may still be setting the
    deployment up when it is first listed: the answer then has no run id); the last answer on failure."""
    deadline = time.monotonic() + 30
    while True:
        answer = httpx.post(f"{url}/deployments/{deployment}/create_flow_run", json={}, timeout=10)
        if answer.is_success and "id" in (body := answer.json()):
            return str(body["id"])
        assert time.monotonic() < deadline, (answer.status_code, answer.text)
        time.sleep(0.3)


def _states(url: str) -> dict[str, str]:
    runs = httpx.post(f"{url}/flow_runs/filter", json={}, timeout=10).json()
    return {run["id"]: run["state_type"] for run in runs}


@pytest.mark.reliability
def test_a_serve_stopped_while_its_run_goes_on_leaves_no_concurrency_slot_taken_and_the_next_run_syncs(
        records: list[dict[str, Any]], tmp_path: Path) -> None:
    """systemd's stop (SIGTERM to serve's group) while a scheduled sync ran: the sync committed nothing
    (right), but its flow runs stayed 'Running' in serve's Prefect database and kept the deployment's
    concurrency slot (``concurrency_limit: 1``, as deploy/prefect.yaml has it). The server keeps the lease
    that frees it in memory only: after serve started again, every run of the deployment was cancelled
    ('Deployment concurrency limit reached'), for ever: no sync again, and nothing said so. The stop also
    printed asyncio's 'Exception in callback' and two tracebacks before its one line."""
    warehouse = tmp_path / "w"
    env = plain_env(PREFECT_HOME=str(tmp_path / "prefect-home"))
    with FakeRegistry(records[:40]).start() as registry:
        registry.faults.add("delay", delay=1.5, times=-1, path="/studies")
        file = _deployments_file(tmp_path / "prefect.yaml", registry, warehouse)
        proc, url, deployment = _serving(file, env)
        first = _create_run(url, deployment)
        wait_for(listing_requested(registry), proc, "the served run's first page request")
        assert _states(url)[first] == "RUNNING"
        took, stderr, survivors = stop(proc, signal.SIGTERM, group=True)
        assert took < 10 and survivors == [], stderr
        assert stderr.strip().splitlines() == [
            "trialsync: terminated (an unfinished run commits nothing; the next run cleans up after it)"]
        assert not (warehouse / "warehouse.duckdb").exists()

        registry.faults.clear()
        proc, url, deployment = _serving(file, env)
        try:
            wait_for(lambda: _states(url)[first] != "RUNNING" or bool(time.sleep(0.3)), proc, "the crash", 30)
            assert _states(url)[first] == "CRASHED"
            second = _create_run(url, deployment)
            wait_for(lambda: _states(url)[second] in FINAL or bool(time.sleep(0.5)), proc, "the next run's end", 120)
            assert _states(url)[second] == "COMPLETED"
        finally:
            _, stderr, _ = stop(proc, signal.SIGTERM, group=True)
    assert stderr.splitlines()[0] == (
        "trialsync: warning: 2 flow run(s) an earlier serve left running when it stopped are marked crashed "
        "(a sync commits all or nothing; the next run catches up)")  # the scheduled_sync run and its sync subflow
    check = run_cli("check", "--warehouse", str(warehouse))
    assert check.returncode == 0 and "1 run" in check.stdout, check.stdout + check.stderr


def test_a_second_serve_on_one_prefect_home_is_refused_in_one_line(tmp_path: Path) -> None:
    """Two serves on one PREFECT_HOME ran two schedulers on one database (each took the other's runs for
    its own), and the second would mark the first one's running runs crashed."""
    home = tmp_path / "prefect-home"
    home.mkdir()
    fd = os.open(home / LOCK_NAME, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, b"4242")
        began = time.monotonic()
        result = run_cli("serve", env=plain_env(PREFECT_HOME=str(home), TRIALSYNC_WAREHOUSE=str(tmp_path / "w")),
                         timeout=60)
    finally:
        os.close(fd)
    assert time.monotonic() - began < 30
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"trialsync: error: another trialsync serve (pid 4242) serves from PREFECT_HOME={home} (its Prefect "
        "server's database): stop it first, or give this one another PREFECT_HOME"]
    assert not (home / "trialsync-server.log").exists()  # no server was started
