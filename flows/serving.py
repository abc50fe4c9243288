"""``trialsync serve``: the deployments of ``deploy/prefect.yaml`` served from this process.

Prefect's scheduler runs in a Prefect server, not in the temporary one a lone flow starts, so when no
server is configured (``PREFECT_API_URL``) this starts one on 127.0.0.1 for as long as it serves
(its database lives in ``PREFECT_HOME``, so schedules and run history survive a restart).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import requests
from rich.console import Console

from flows import parent_watch
from flows.deployments import Deployment, runner_deployments
from flows.prefect_api import direct_to_loopback
from pipeline.errors import TrialsyncError
from pipeline.http_session import Session

STARTUP_SECONDS = 120.0
STOP_SECONDS = 4.0  # then SIGKILL: a stopped serve is gone within 10 s


def serve(*served: Any) -> None:
    """Prefect's ``serve``, with SIGTERM handled like SIGINT (``flows.lifecycle``: the run unwinds and a
    deadline bounds the stop) instead of the runner's own handler, whose graceful shutdown has no bound."""
    import asyncio

    from prefect.runner import Runner

    from flows import lifecycle

    runner = Runner(pause_on_shutdown=True)
    for deployment in served:
        runner.add_deployment(deployment)
    runner.handle_sigterm = lambda *args: lifecycle.on_signal(signal.SIGTERM, None)  # type: ignore[method-assign]
    with suppress(KeyboardInterrupt):  # the CLI's main() reports the signal
        asyncio.run(runner.start())


def serve_deployments(deployments: list[Deployment], console: Console) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    served = runner_deployments(deployments)
    if url := PREFECT_API_URL.value():
        from flows import prefect_api

        direct_to_loopback(str(url))
        prefect_api.check_server(str(url))  # one line naming the setting, within seconds
        serve(*served)
        return
    with local_server(console) as url, temporary_settings({PREFECT_API_URL: url}):
        os.environ["PREFECT_API_URL"] = url  # for the flow-run processes serve starts
        direct_to_loopback(url)
        serve(*served)


@contextmanager
def local_server(console: Console) -> Iterator[str]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    log_path = Path(os.environ.get("PREFECT_HOME", Path.home() / ".prefect")).expanduser() / "trialsync-server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        # Its own session: a Ctrl-C or SIGTERM to serve's process group must not kill the server while
        # serve still needs it to stop cleanly (without it, stopping hung for a minute retrying the API).
        # Watched (flows.parent_watch): a kill -9 of serve must not leave the server behind for ever.
        server = subprocess.Popen(parent_watch.command("prefect", "server", "start", "--host", "127.0.0.1", "--port",
                                                       str(port)),
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_healthy(url, server, log_path)
        console.print(f"Prefect server (UI) at http://127.0.0.1:{port}; its log: {log_path}", highlight=False,
                      markup=False)
        yield url
    finally:
        stop_server(server)


def stop_server(server: subprocess.Popen[Any]) -> None:
    """SIGTERM to the server's whole session (uvicorn and what it started), SIGKILL after a few seconds."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        with suppress(ProcessLookupError):
            os.killpg(server.pid, signum)
        try:
            server.wait(timeout=STOP_SECONDS)
            return
        except subprocess.TimeoutExpired:
            continue


def _wait_healthy(url: str, server: subprocess.Popen[Any], log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise TrialsyncError(f"the Prefect server exited with code {server.returncode}; see {log_path}")
        try:
            with Session() as http:  # the server is on loopback: never through the environment's proxy
                if http.get(f"{url}/health", timeout=2).ok:
                    return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TrialsyncError(f"the Prefect server did not answer within {STARTUP_SECONDS:.0f}s; see {log_path}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
