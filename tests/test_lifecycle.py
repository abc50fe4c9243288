"""Issue 13.8: SIGINT and SIGTERM, to a command or to its whole process group, stop it within 10 s,
commit nothing, and leave no child process behind (real processes, real signals, psutil)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from pipeline.registry.fake_server import FakeRegistry
from tests.conftest import FULL
from tests.test_cli import TRIALSYNC, run_cli

pytestmark = pytest.mark.prefect  # what these tests check is the Prefect side

STOP_SECONDS = 10.0
SIGNALS = {"INT": signal.SIGINT, "TERM": signal.SIGTERM}


def plain_env(**extra: str) -> dict[str, str]:
    """No Prefect server configured (the session's test server is left out)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "TRIALSYNC_ENGINE")}
    return {**env, **extra}


def start(args: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([str(TRIALSYNC), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=env, cwd=cwd)


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen[str], what: str, limit: float = 180) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the command ended before {what}: {proc.communicate()}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"no {what} within {limit:.0f}s")
        time.sleep(0.2)


def stop(proc: subprocess.Popen[str], signum: int, group: bool) -> tuple[float, str, list[psutil.Process]]:
    """Signal the command (or its group); returns the seconds it took to exit, its stderr, and the
    descendants it had just before the signal that are still alive."""
    children = psutil.Process(proc.pid).children(recursive=True)
    (os.killpg if group else os.kill)(proc.pid, signum)
    sent = time.monotonic()
    try:
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    took = time.monotonic() - sent
    survivors = []
    for child in children:
        try:
            if child.is_running() and child.status() != psutil.STATUS_ZOMBIE:
                survivors.append(child)
        except psutil.NoSuchProcess:
            pass
    for child in survivors:  # leave the machine clean for the next test
        child.kill()
    return took, stderr, survivors


@pytest.fixture
def slow_registry(records: list[dict[str, Any]]) -> Iterator[FakeRegistry]:
    with FakeRegistry(records[:60]).start() as registry:
        registry.faults.add("delay", delay=1.5, times=-1, path="/studies")
        yield registry


def sync_args(registry: FakeRegistry, warehouse: Path) -> list[str]:
    return ["sync", "-q", "--page-size", "5", "--request-interval", "0", "--api-url", registry.url,
            "--warehouse", str(warehouse)]


def listing_requested(registry: FakeRegistry) -> Callable[[], bool]:
    return lambda: any(path == "/studies" for path, _ in registry.requests)


# Each signal to the process and to its group under ``TRIALSYNC_FULL=1``; ``make test`` sends SIGINT to the
# process and SIGTERM to the group (both signals, both targets, in two cases).
EVERY_STOP = [("INT", False), ("TERM", False), ("TERM", True), ("INT", True)]
SHORT_STOPS = [("INT", False), ("TERM", True)]
STOPS = EVERY_STOP if FULL else SHORT_STOPS
STOP_IDS = [f"{name}-{'group' if group else 'process'}" for name, group in STOPS]


@pytest.mark.reliability
@pytest.mark.parametrize(("name", "group"), STOPS, ids=STOP_IDS)
def test_a_signalled_sync_stops_within_10s_commits_nothing_and_a_rerun_cleans_up(
        slow_registry: FakeRegistry, tmp_path: Path, name: str, group: bool) -> None:
    """SIGINT and SIGTERM, to the process or its group (``make test``: two of the four; see ``STOPS``)."""
    warehouse = tmp_path / "w"
    proc = start(sync_args(slow_registry, warehouse), plain_env())
    wait_for(listing_requested(slow_registry), proc, "page request")
    took, stderr, survivors = stop(proc, SIGNALS[name], group)
    assert took < STOP_SECONDS, stderr
    assert proc.returncode == 128 + SIGNALS[name], stderr
    what = "interrupted" if name == "INT" else "terminated"
    assert stderr.strip().splitlines()[-1] == (
        f"trialsync: {what} (an unfinished run commits nothing; the next run cleans up after it)")
    assert "Traceback" not in stderr and survivors == []
    assert not (warehouse / "warehouse.duckdb").exists()
    slow_registry.faults.clear()
    done = run_cli(*sync_args(slow_registry, warehouse), env=plain_env())
    assert done.returncode == 0, done.stderr
    assert len(list((warehouse / "runs").iterdir())) == 1  # the interrupted run's files are gone


@pytest.mark.reliability
@pytest.mark.parametrize("group", [True, False] if FULL else [True], ids=["group", "process"][:2 if FULL else 1])
def test_a_signalled_sync_run_on_a_prefect_server_stops_within_10s(
        prefect_api: str, slow_registry: FakeRegistry, tmp_path: Path, group: bool) -> None:
    """With a server configured the run is a Prefect flow run: Prefect records the crash, quickly.
    ``make test`` signals the group; ``TRIALSYNC_FULL=1`` the process alone too."""
    proc = start(sync_args(slow_registry, tmp_path / "w"), plain_env(PREFECT_API_URL=prefect_api))
    wait_for(listing_requested(slow_registry), proc, "page request")
    took, stderr, survivors = stop(proc, signal.SIGTERM, group)
    assert took < STOP_SECONDS, stderr
    assert proc.returncode == 143 and survivors == [], stderr
    assert not (tmp_path / "w" / "warehouse.duckdb").exists()
    runs = httpx.post(f"{prefect_api}/flow_runs/filter", json={"sort": "EXPECTED_START_TIME_DESC", "limit": 1}).json()
    assert runs[0]["state_type"] == "CRASHED", runs[0]["state"]


@pytest.mark.reliability
@pytest.mark.parametrize(("name", "group"), STOPS, ids=STOP_IDS)
def test_a_signalled_sync_on_prefects_temporary_server_leaves_no_server_behind(
        slow_registry: FakeRegistry, tmp_path: Path, name: str, group: bool) -> None:
    """The orphan of issue 13.8: a signal to the process alone used to leave Prefect's temporary
    server (a ~210 MB uvicorn) running. To the group, the server dies at once too: SIGTERM used to
    reach Prefect's own handler, whose crash report then retried the dead server for ~70 s.
    ``make test``: SIGINT to the process, SIGTERM to the group; all four under ``TRIALSYNC_FULL=1``
    (each starts a temporary Prefect server, ~15 s)."""
    proc = start(sync_args(slow_registry, tmp_path / "w"), plain_env(TRIALSYNC_ENGINE="prefect"))
    wait_for(listing_requested(slow_registry), proc, "page request")
    assert psutil.Process(proc.pid).children(recursive=True), "Prefect's temporary server is a child"
    took, stderr, survivors = stop(proc, SIGNALS[name], group=group)
    assert took < STOP_SECONDS, stderr
    assert proc.returncode == 128 + SIGNALS[name], stderr
    assert survivors == [], [p.cmdline() for p in survivors]
    assert not (tmp_path / "w" / "warehouse.duckdb").exists()


SERVE_STOPS = [("TERM", True), ("INT", True), ("TERM", False)]


@pytest.mark.reliability
@pytest.mark.parametrize(("name", "group"), SERVE_STOPS if FULL else SERVE_STOPS[:1],
                         ids=["TERM-group", "INT-group", "TERM-process"][:len(SERVE_STOPS) if FULL else 1])
def test_serve_stops_within_10s_and_takes_its_prefect_server_along(tmp_path: Path, name: str, group: bool) -> None:
    """systemd stops a service with SIGTERM to its group; Ctrl-C reaches the group too. Started from
    another directory, serve still finds deploy/ (it printed the server's address: it is serving).
    ``make test``: SIGTERM to the group (systemd's stop); SIGINT to the group and SIGTERM to serve alone
    under ``TRIALSYNC_FULL=1`` (each starts a Prefect server, ~7 s)."""
    proc = start(["serve"], plain_env(TRIALSYNC_WAREHOUSE=str(tmp_path / "w")), cwd=tmp_path)
    assert proc.stdout is not None
    lines: list[str] = []

    def serving() -> bool:
        line = proc.stdout.readline() if proc.stdout else ""
        lines.append(line)
        return "Prefect server (UI) at" in line

    wait_for(serving, proc, "Prefect server")
    took, stderr, survivors = stop(proc, SIGNALS[name], group)
    assert took < STOP_SECONDS, stderr
    assert survivors == [], [p.cmdline() for p in survivors]
    assert "Traceback" not in stderr and "ConnectError" not in stderr


def sigkill_leaves_no_descendant(proc: subprocess.Popen[str], limit: float = 20.0) -> None:
    """kill -9 the command alone (no handler runs, no exit hook): every process it had started must be
    gone within ``limit`` seconds (they watch their parent; nothing else would ever stop them)."""
    descendants = psutil.Process(proc.pid).children(recursive=True)
    assert descendants
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    deadline = time.monotonic() + limit
    while alive := [p for p in descendants if _running(p)]:
        if time.monotonic() > deadline:
            for p in alive:
                p.kill()
            pytest.fail(f"still running {limit:.0f}s after their parent was killed: {[p.cmdline() for p in alive]}")
        time.sleep(0.2)


def test_a_sync_killed_with_sigkill_leaves_no_prefect_temporary_server_behind(
        slow_registry: FakeRegistry, tmp_path: Path) -> None:
    """kill -9 (the OOM killer, a container's stop timeout) used to leave Prefect's temporary server
    (a ~250 MB uvicorn holding a port) under PID 1 for ever: one more after every such kill."""
    proc = start(sync_args(slow_registry, tmp_path / "w"), plain_env(TRIALSYNC_ENGINE="prefect"))
    wait_for(listing_requested(slow_registry), proc, "page request")
    sigkill_leaves_no_descendant(proc)
    assert not (tmp_path / "w" / "warehouse.duckdb").exists()


def test_serve_killed_with_sigkill_leaves_no_prefect_server_behind(tmp_path: Path) -> None:
    """serve's Prefect server runs in a session of its own (so a Ctrl-C to serve's group lets serve stop
    it cleanly); after a kill -9 of serve nothing stopped it: it stayed for ever."""
    proc = start(["serve"], plain_env(TRIALSYNC_WAREHOUSE=str(tmp_path / "w")), cwd=tmp_path)
    wait_for(lambda: "Prefect server (UI) at" in (proc.stdout.readline() if proc.stdout else ""), proc,
             "Prefect server")
    sigkill_leaves_no_descendant(proc)


def test_deployment_files_are_found_from_any_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.deployments import DEPLOY_FILE, ROOT, load

    monkeypatch.chdir(tmp_path)
    alerts = {d.name: d for d in load(DEPLOY_FILE)}["alerts-after-sync"]
    assert alerts.parameters["config"] == str(ROOT / "deploy" / "watchlists.yaml")
    assert Path(alerts.parameters["config"]).is_file()


REAP_SCRIPT = """
import json, multiprocessing, os, sys, time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import resource_tracker
from flows import lifecycle

pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
worker = pool.submit(os.getpid).result()
if sys.argv[1] == "busy":
    pool.submit(time.sleep, 600)  # a worker still running: it holds the tracker's pipe open
else:
    pool.shutdown()
tracker = resource_tracker._resource_tracker._pid
print(json.dumps({"tracker": tracker, "worker": worker, "stopped": lifecycle.reap(timeout=5)}), flush=True)
os._exit(0)
"""


def _reap(case: str) -> dict[str, Any]:
    import json
    import sys

    result = subprocess.run([sys.executable, "-c", REAP_SCRIPT, case], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr
    answer: dict[str, Any] = json.loads(result.stdout)
    assert isinstance(answer["tracker"], int)  # the pool started one
    assert not psutil.pid_exists(answer["tracker"]) and not psutil.pid_exists(answer["worker"])
    return answer


def test_exiting_after_a_process_pool_closes_the_resource_tracker_instead_of_killing_it() -> None:
    """multiprocessing's resource tracker ignores SIGTERM: terminated by ``reap`` it was killed only
    after REAP_SECONDS, at every exit of a `load-bulk`. Closed through its pipe, it leaves by itself."""
    assert _reap("done")["stopped"] == []  # nothing left to terminate: the tracker left through its pipe


def test_reaping_while_a_worker_still_runs_stops_the_worker_then_the_tracker() -> None:
    """The tracker's pipe stays open while a worker lives: closing it first (and waiting for the
    tracker) would block until the worker ended on its own, past the stop deadline."""
    answer = _reap("busy")
    assert answer["stopped"] == [answer["worker"]]


def _wait_until_it_takes_sigterm(proc: subprocess.Popen[str]) -> None:
    """Until the console script's first line has installed its handlers (Python catches no SIGTERM by
    itself): on a loaded machine a fixed delay sent the signal while the interpreter was starting."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            status = Path(f"/proc/{proc.pid}/status").read_text()
            caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
            if caught >> (signal.SIGTERM - 1) & 1:
                # installed before the commands' imports (which load DuckDB), not after them
                assert "duckdb" not in Path(f"/proc/{proc.pid}/maps").read_text()
                return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.005)
    pytest.fail("the command never installed its signal handlers")


# A signal that lands while DuckDB's C extension initialises: its initialisation sets attributes of enum
# classes through Python (``EnumType.__setattr__``), where the handler runs; the signal is sent from the
# first such call after the extension's import began.
_DURING_DUCKDB_IMPORT = """
import enum, os, signal, sys
armed = []
sys.addaudithook(lambda event, args: armed.append(1) if event == "import" and args[0] == "_duckdb" else None)
original = enum.EnumType.__setattr__
def shoot(cls, name, value):
    if armed:
        armed.clear()
        os.kill(os.getpid(), signal.SIG{name})
    original(cls, name, value)
enum.EnumType.__setattr__ = shoot
from flows import entry
sys.argv = ["trialsync", "runs", "--warehouse", {warehouse!r}]
entry.main()
"""


@pytest.mark.parametrize("name", list(SIGNALS))
def test_a_signal_while_duckdb_loads_ends_with_one_line_and_the_signals_code(tmp_path: Path, name: str) -> None:
    """Raised into DuckDB's extension as it loaded, the interrupt became 'ImportError: Encountered an error
    while initializing the extension' with a traceback (exit 1), or an abort (-6)."""
    import sys

    what = "interrupted" if name == "INT" else "terminated"
    for _ in range(2):
        code = _DURING_DUCKDB_IMPORT.format(name=name, warehouse=str(tmp_path / "none"))
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                              env=plain_env(), cwd=Path(__file__).resolve().parents[1])
        assert (proc.returncode, proc.stderr.strip().splitlines()) == (128 + SIGNALS[name], [
            f"trialsync: {what} (an unfinished run commits nothing; the next run cleans up after it)"]), proc.stderr


@pytest.mark.parametrize("delay", [0.15, 0.3])
@pytest.mark.parametrize("name", list(SIGNALS))
def test_a_signal_while_the_commands_are_still_importing_ends_with_one_line_and_the_signals_code(
        tmp_path: Path, name: str, delay: float) -> None:
    """The console script takes SIGINT and SIGTERM before it imports the commands (~0.5 s): a Ctrl-C
    in that time used to print a KeyboardInterrupt traceback and die of the signal."""
    proc = start(["runs", "--warehouse", str(tmp_path / "none")], plain_env())
    _wait_until_it_takes_sigterm(proc)  # Python's own start-up is before any handler of ours can be
    time.sleep(delay - 0.15)  # at once, or a little later: either way still importing
    os.kill(proc.pid, SIGNALS[name])
    _, stderr = proc.communicate(timeout=STOP_SECONDS)
    what = "interrupted" if name == "INT" else "terminated"
    assert proc.returncode == 128 + SIGNALS[name], stderr
    assert stderr.strip().splitlines() == [
        f"trialsync: {what} (an unfinished run commits nothing; the next run cleans up after it)"]


def test_pool_workers_leave_when_their_parent_is_killed_with_sigkill(tmp_path: Path) -> None:
    """kill -9 (or the OOM killer) runs no handler in the parent: its spawned workers, ~280 MB each in
    a bulk load, used to stay for ever under PID 1. They watch their parent and leave."""
    import sys
    import textwrap

    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent("""
        import time
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context
        from flows.lifecycle import worker_started
        if __name__ == "__main__":
            pool = ProcessPoolExecutor(2, mp_context=get_context("spawn"), initializer=worker_started)
            futures = [pool.submit(time.sleep, 120) for _ in range(2)]
            print("submitted", flush=True)
            time.sleep(120)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                            start_new_session=True, cwd=Path(__file__).resolve().parents[1])
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "submitted"
        deadline = time.monotonic() + 60
        while len(workers := [p for p in psutil.Process(proc.pid).children(recursive=True)
                              if "spawn_main" in " ".join(p.cmdline())]) < 2:
            assert time.monotonic() < deadline, "the pool's workers never started"
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while alive := [w for w in workers if _running(w)]:  # an orphan's zombie waits for PID 1: gone
            assert time.monotonic() < deadline, f"workers still running after their parent died: {alive}"
            time.sleep(0.2)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# A script whose signal lands while Python runs a ``weakref.finalize`` callback (as in a CI failure of
# `serve`), then runs ``body`` (indented for a ``try`` block; ``thing`` is deleted first).
_FINALIZER_SCRIPT = """
import os, signal, time, weakref
from flows import lifecycle
from warehouse import committing
lifecycle.install()
class Thing: pass
def finalizer():
    os.kill(os.getpid(), signal.SIGINT)
    for _ in range(100000):  # the handler runs here, inside the finalizer
        pass
thing = Thing()
weakref.finalize(thing, finalizer)
try:
    del thing
{body}
except KeyboardInterrupt:
    print("unwound", flush=True)
print("signalled", lifecycle.signalled(), flush=True)
os._exit(0)
"""


def _run_finalizer_script(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    import sys
    import textwrap

    script = tmp_path / "finalizer.py"
    script.write_text(_FINALIZER_SCRIPT.format(body=textwrap.indent(textwrap.dedent(body), "    ")))
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[1])


def test_a_signal_that_lands_inside_a_finalizer_still_interrupts_the_command(tmp_path: Path) -> None:
    """A signal handled while Python runs a finalizer raised ``KeyboardInterrupt`` where Python cannot
    propagate it: "Exception ignored in" with a traceback, and the command went on until the stop
    deadline. It is raised again, once."""
    began = time.monotonic()
    result = _run_finalizer_script(tmp_path, """
        time.sleep(5)
        print("went on", flush=True)
    """)
    assert result.stdout.split() == ["unwound", "signalled", str(int(signal.SIGINT))], result
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr
    assert time.monotonic() - began < 5, "the interrupt waited for the sleep"


def test_an_interrupt_swallowed_by_a_finalizer_does_not_interrupt_a_run_that_committed_meanwhile(
        tmp_path: Path) -> None:
    """The signal's interrupt is lost in a finalizer; before it is raised again the run passes its commit
    point. The interrupt raised again is the same stop: after a commit point it must not undo the run nor
    call it failed (a first signal there raises nothing): the stop stays pending, the command finishes."""
    result = _run_finalizer_script(tmp_path, """
        committing.passed("run-1")  # the commit point, before the interrupt is raised again
        time.sleep(1)
        print("finished", committing.stop_pending, flush=True)
    """)
    assert result.stdout.split() == ["finished", "True", "signalled", str(int(signal.SIGINT))], result
