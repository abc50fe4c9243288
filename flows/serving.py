"""``trialsync serve``: the deployments of ``deploy/prefect.yaml`` served from this process.

Prefect's scheduler runs in a Prefect server, not in the temporary one a lone flow starts, so when no
server is configured (``PREFECT_API_URL``) this starts one on 127.0.0.1 for as long as it serves
(its database lives in ``PREFECT_HOME``, so schedules and run history survive a restart). One serve
at a time uses a ``PREFECT_HOME``; a run an earlier serve left running when it was stopped or killed
is marked crashed before serving: it held its deployment's concurrency slot (``concurrency_limit``),
and the server keeps the lease that would free it only in memory, so after a restart every later run
of the deployment was cancelled ('Deployment concurrency limit reached'), for ever.
"""

from __future__ import annotations

import fcntl
import logging
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
LOCK_NAME = "trialsync-serve.lock"

logger = logging.getLogger("trialsync.serve")


def serve(*served: Any, own_server: bool = False) -> None:
    """Prefect's ``serve``, with SIGTERM handled like SIGINT (``flows.lifecycle``: the run unwinds and a
    deadline bounds the stop) instead of the runner's own handler, whose graceful shutdown has no bound.
    ``own_server``: the server is serve's own (nobody else runs its deployments)."""
    import asyncio

    from prefect.runner import Runner

    from flows import lifecycle

    runner = Runner(pause_on_shutdown=True)
    ids = [runner.add_deployment(deployment) for deployment in served]
    crashed = 0
    if own_server:
        try:
            crashed = crash_left_running(ids)
        except Exception as exc:  # serving matters more; the UI shows what is left
            logger.warning("could not look for flow runs an earlier serve left running (%s: %s)",
                           type(exc).__name__, " ".join(str(exc).split())[:200])
    if crashed:
        logger.warning("%d flow run(s) an earlier serve left running when it stopped are marked crashed (a sync "
                       "commits all or nothing; the next run catches up)", crashed)
    runner.handle_sigterm = lambda *args: lifecycle.on_signal(signal.SIGTERM, None)  # type: ignore[method-assign]
    with suppress(KeyboardInterrupt):  # the CLI's main() reports the signal
        asyncio.run(_quietly_stopped(runner.start()))


async def _quietly_stopped(start: Any) -> None:
    """The runner, on a loop that says nothing of the tasks a stop cancels: a signal while a flow run
    went on printed asyncio's 'Exception in callback ...' and two tracebacks (the run's control
    connection, cancelled) before the command's one line."""
    import asyncio

    from flows import lifecycle

    loop = asyncio.get_running_loop()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if lifecycle.signalled() and isinstance(context.get("exception"), (asyncio.CancelledError, KeyboardInterrupt)):
            return
        loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
    await start


def crash_left_running(deployment_ids: list[Any]) -> int:
    """Mark crashed the flow runs of these deployments (and their subflow runs) that are still pending,
    running or cancelling: on serve's own server, before its runner starts, no process runs them. The
    transition frees the deployment's concurrency slot. Returns how many runs were marked."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterDeploymentId,
        FlowRunFilterParentFlowRunId,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    if not deployment_ids:
        return 0
    active = FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PENDING, StateType.RUNNING,
                                                                  StateType.CANCELLING]))
    marked = 0
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            deployment_id=FlowRunFilterDeploymentId(any_=deployment_ids), state=active))
        parents = [run.id for run in runs]
        while parents:  # subflow runs first: a parent's end is recorded after its children's
            children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=parents), state=active))
            runs = [*children, *runs]
            parents = [child.id for child in children if child.id not in parents]
        for run in {run.id: run for run in runs}.values():
            result: Any = client.set_flow_run_state(run.id, Crashed(
                message="trialsync serve stopped while this run went on (a sync commits all or nothing)"))
            marked += result.status.value == "ACCEPT"
    return marked


@contextmanager
def one_serve_per_home() -> Iterator[None]:
    """Hold ``PREFECT_HOME/trialsync-serve.lock`` while serving from its database: a second serve there
    would start a second scheduler on the same database, and take the first one's runs for leftovers."""
    home = _home()
    try:
        home.mkdir(parents=True, exist_ok=True)
        fd = os.open(home / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:  # the server's database could not be there either
        raise _unusable_home(home, exc) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            raise TrialsyncError(f"another trialsync serve{f' (pid {holder})' if holder.isdigit() else ''} serves "
                                 f"from PREFECT_HOME={home} (its Prefect server's database): stop it first, or "
                                 "give this one another PREFECT_HOME") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        except OSError as exc:
            raise _unusable_home(home, exc) from None
        yield
    finally:
        os.close(fd)


def _unusable_home(home: Path, exc: OSError) -> TrialsyncError:
    return TrialsyncError(f"PREFECT_HOME={home} cannot be used ({exc.strerror or exc}): serve keeps its Prefect "
                          "server's database there; make it writable with room to spare or point PREFECT_HOME "
                          "elsewhere")


def _home() -> Path:
    """Prefect's home as its server sees it: ``PREFECT_HOME``, or the active profile's, or ``~/.prefect``."""
    from prefect.settings import get_current_settings

    return Path(get_current_settings().home).expanduser()


def serve_deployments(deployments: list[Deployment], console: Console) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    served = runner_deployments(deployments)
    if url := PREFECT_API_URL.value():
        from flows import prefect_api

        direct_to_loopback(str(url))
        prefect_api.check_server(str(url))  # one line naming the setting, within seconds
        serve(*served)
        return
    with one_serve_per_home(), local_server(console) as url, temporary_settings({PREFECT_API_URL: url}):
        os.environ["PREFECT_API_URL"] = url  # for the flow-run processes serve starts
        direct_to_loopback(url)
        serve(*served, own_server=True)


@contextmanager
def local_server(console: Console) -> Iterator[str]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    log_path = _home() / "trialsync-server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        start = os.fstat(log.fileno()).st_size  # what earlier servers wrote is not this one's
        # Its own session: a Ctrl-C or SIGTERM to serve's process group must not kill the server while
        # serve still needs it to stop cleanly (without it, stopping hung for a minute retrying the API).
        # Watched (flows.parent_watch): a kill -9 of serve must not leave the server behind for ever.
        server = subprocess.Popen(parent_watch.command("prefect", "server", "start", "--host", "127.0.0.1", "--port",
                                                       str(port)),
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_healthy(url, server, log_path, start)
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


def _wait_healthy(url: str, server: subprocess.Popen[Any], log_path: Path, start: int = 0) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            cause = ""
            with suppress(OSError), log_path.open("rb") as log:
                cause = parent_watch.last_error(log, start)
            raise TrialsyncError(f"the Prefect server exited with code {server.returncode}"
                                 f"{f' ({cause})' if cause else ''}; see {log_path}")
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
