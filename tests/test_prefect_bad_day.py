"""A configured Prefect server on a bad day: one that hangs, one that is not Prefect, one that dies while
a sync runs (real processes: a real ``prefect server start`` on loopback, the fake registry, the CLI)."""

from __future__ import annotations

import contextlib
import http.server
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from pipeline.registry.fake_server import FakeRegistry
from tests.test_cli import TRIALSYNC, run_cli

pytestmark = pytest.mark.prefect  # what these tests check is the Prefect side


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def silent_server() -> Iterator[str]:
    """Takes connections and never answers (a hung server, a firewall that swallows the request)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    taken: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                taken.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/api"
    stop.set()
    thread.join()
    for conn in [*taken, listener]:
        conn.close()


class _WebPage(http.server.BaseHTTPRequestHandler):
    def _answer(self) -> None:
        body = b"<html><head><title>Welcome to nginx!</title></head><body>It works</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PATCH = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def web_page_server() -> Iterator[str]:
    """A web server answering 200 with an HTML page at every path (not Prefect)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _WebPage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/api"
    server.shutdown()
    server.server_close()


def _sync(url: str, warehouse: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    return run_cli("sync", "--ids", "NCT07011004", "--warehouse", str(warehouse), "--api-url",
                   "http://127.0.0.1:9/api/v2", env={"PREFECT_API_URL": url, "TRIALSYNC_ENGINE": "auto"},
                   timeout=timeout)


def test_a_configured_prefect_server_that_never_answers_is_named_in_one_line_within_seconds(
        silent_server: str, tmp_path: Path) -> None:
    """Prefect's own client waited ~7 minutes (a minute's timeout, retried) before 'Failed to reach API'."""
    began = time.monotonic()
    result = _sync(silent_server, tmp_path / "w", timeout=90)
    assert time.monotonic() - began < 60
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"trialsync: error: the Prefect server at {silent_server}/ (PREFECT_API_URL) does not answer within 10s: "
        "start it, or unset PREFECT_API_URL to run without one"]
    assert not (tmp_path / "w").exists()


def test_a_web_page_where_the_prefect_api_should_be_is_named_as_one(web_page_server: str, tmp_path: Path) -> None:
    """It was 'does not answer' (Prefect's 'Failed to reach API'), though a server answered every request."""
    result = _sync(web_page_server, tmp_path / "w", timeout=90)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"trialsync: error: the Prefect server at {web_page_server}/ (PREFECT_API_URL) answered, but not as a "
        'Prefect server (HTTP 200, text/html "Welcome to nginx!"): start it, or unset PREFECT_API_URL to run '
        "without one"]
    assert not (tmp_path / "w").exists()


@pytest.fixture
def prefect_server(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A real Prefect server of its own on loopback (this test kills it)."""
    port = _free_port()
    home = tmp_path / "prefect-home"
    home.mkdir()
    env = {**os.environ, "PREFECT_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)
    with (home / "server.log").open("wb") as log:
        server = subprocess.Popen([str(TRIALSYNC.parent / "prefect"), "server", "start", "--host", "127.0.0.1",
                                   "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env,
                                  start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 150
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).json() is True:
                    break
            except (httpx.HTTPError, ValueError):
                pass
            assert server.poll() is None and time.monotonic() < deadline, (home / "server.log").read_text()
            time.sleep(0.5)
        yield url, server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)


@pytest.mark.reliability
def test_a_sync_whose_prefect_server_dies_mid_run_reports_its_committed_run_and_leaves_in_bounded_time(
        prefect_server: tuple[str, subprocess.Popen[bytes]], records: list[dict[str, Any]], tmp_path: Path) -> None:
    """The run committed, then Prefect could not record the flow run's end: the command said
    'ConnectError: [Errno 111] Connection refused', exit 1, after retrying every queued event for ~7 s
    each (5 minutes for this 12-page sync; hours for a large one). Now: the summary, exit 0, a warning
    that the UI may show the run as running, and at most 10 s for the events left."""
    url, server = prefect_server
    warehouse = tmp_path / "w"
    with FakeRegistry(records[:60]).start() as registry:
        registry.faults.add("delay", delay=1.0, times=-1, path="/studies")
        # Prefect's client retries the flow run's state for ~1 minute a proposal, whatever the run's size: not
        # what this test is about (left at its default, the command leaves ~3 minutes after the death).
        env = {**os.environ, "PREFECT_API_URL": url, "TRIALSYNC_ENGINE": "auto", "PREFECT_CLIENT_MAX_RETRIES": "0"}
        proc = subprocess.Popen([str(TRIALSYNC), "sync", "--page-size", "5", "--request-interval", "0",
                                 "--api-url", registry.url, "--warehouse", str(warehouse)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while sum(path == "/studies" for path, _ in registry.requests) < 3:
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
                time.sleep(0.1)
            os.killpg(server.pid, signal.SIGKILL)  # the Prefect server dies while the sync goes on
            killed = time.monotonic()
            stdout, stderr = proc.communicate(timeout=200)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    took = time.monotonic() - killed
    assert proc.returncode == 0, stderr
    assert stdout.startswith("run ") and "60 new versions" in stdout, stdout
    ours = [line for line in stderr.splitlines() if line.startswith("trialsync:")]
    assert ours[0].startswith("trialsync: warning: sync_registry finished, but Prefect could not record its end"), ours
    assert f"the Prefect server at {url} may show its flow run as still running" in ours[0]
    # The queued events no longer take ~7 s each (minutes here, hours for a large sync): 10 s in all.
    assert any(line.startswith("trialsync: warning: the Prefect server at") and "leaving without them" in line
               for line in ours), ours
    assert took < 90, f"{took:.0f}s after the server died"
    runs = run_cli("runs", "--warehouse", str(warehouse), "--format", "json", env={"TRIALSYNC_ENGINE": "plain"})
    assert runs.returncode == 0 and '"succeeded"' in runs.stdout, runs.stdout


@pytest.mark.parametrize("server", ["nothing listening", "never answers", "a web page"])
def test_serve_names_a_configured_prefect_server_it_cannot_use_in_one_line(
        server: str, silent_server: str, web_page_server: str, tmp_path: Path) -> None:
    """serve said 'ConnectError: All connection attempts failed (rerun with --debug for details)' for a
    port nobody listens on, and waited minutes on a server that never answers."""
    url = {"nothing listening": f"http://127.0.0.1:{_free_port()}/api", "never answers": silent_server,
           "a web page": web_page_server}[server]
    result = run_cli("serve", env={"PREFECT_API_URL": url, "TRIALSYNC_WAREHOUSE": str(tmp_path / "w")}, timeout=90)
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"trialsync: error: the Prefect server at {url}/ (PREFECT_API_URL) "), last
    assert last.endswith("start it, or unset PREFECT_API_URL to run without one"), last
    assert not (tmp_path / "w").exists()


def test_prefects_default_retries_in_the_environment_never_multiply_max_attempts(
        prefect_api: str, registry: FakeRegistry, tmp_path: Path) -> None:
    """SPEC: --max-attempts is the total number of tries of a request; task retries do not multiply it.
    PREFECT_TASKS_DEFAULT_RETRIES / PREFECT_FLOWS_DEFAULT_RETRIES (set for a user's other flows) made
    Prefect retry every task and the flow itself: 3 tries became (1 + 2) x (1 + 1) x 3 = 18 requests."""
    registry.faults.add("status", status=503, times=-1, path="/studies")
    result = run_cli("sync", "--api-url", registry.url, "--warehouse", str(tmp_path / "w"), "--max-attempts", "3",
                     "--backoff", "0.01", "--quiet",
                     env={"PREFECT_API_URL": prefect_api, "TRIALSYNC_ENGINE": "auto",
                          "PREFECT_TASKS_DEFAULT_RETRIES": "2", "PREFECT_TASK_DEFAULT_RETRY_DELAY_SECONDS": "0",
                          "PREFECT_FLOWS_DEFAULT_RETRIES": "1", "PREFECT_FLOW_DEFAULT_RETRY_DELAY_SECONDS": "0"},
                     timeout=300)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1].endswith("(3 tries)"), result.stderr
    assert sum(path == "/studies" for path, _ in registry.requests) == 3
    assert not (tmp_path / "w" / "warehouse.duckdb").exists()


class _Gated(http.server.BaseHTTPRequestHandler):
    """A Prefect health endpoint behind what sits in front of real servers: a redirect to where it lives,
    a proxy that wants Prefect's API key (a login page without it), a server that words its health in JSON."""

    seen: ClassVar[list[tuple[str, str | None]]] = []

    def do_GET(self) -> None:
        self.seen.append((self.path, self.headers.get("Authorization")))
        if self.path == "/moved/api/health":
            self._send(307, b"", "text/html", location="/real/api/health")
        elif self.path == "/json/api/health":
            self._send(200, b'{"status": "healthy"}', "application/json")
        elif self.path == "/keyed/api/health" and self.headers.get("Authorization") != "Bearer the-key":
            self._send(200, b"<html><title>Sign in</title></html>", "text/html")
        else:
            self._send(200, b"true", "application/json")

    def _send(self, status: int, body: bytes, kind: str, location: str | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        if location:
            self.send_header("Location", location)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize("where", ["moved", "json", "keyed"])
def test_a_prefect_server_that_prefects_client_can_use_is_not_refused_by_the_health_check(where: str) -> None:
    """check_server refused servers Prefect's own client works with: a redirect (Prefect follows it) was
    'answered, but not as a Prefect server (HTTP 307 ...)', a health answer in other JSON words too, and
    a proxy that lets Prefect's API key through saw no key (its login page: 'not a Prefect server')."""
    from prefect.settings import PREFECT_API_KEY, temporary_settings

    from flows.prefect_api import check_server

    _Gated.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Gated)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{where}/api"
    try:
        with temporary_settings({PREFECT_API_KEY: "the-key"}):
            assert check_server(url, timeout=5) is None
        assert _Gated.seen == [(f"/{where}/api/health", "Bearer the-key")]
    finally:
        server.shutdown()
        server.server_close()


def test_every_command_reaches_a_prefect_server_on_loopback_whatever_proxy_the_environment_names(
        prefect_api: str, registry: FakeRegistry, records: list[dict[str, Any]], tmp_path: Path) -> None:
    """Prefect's client (httpx) follows HTTP_PROXY for 127.0.0.1 too; only serve listed its loopback server in
    NO_PROXY. A sync with a proxy in the environment passed the health check (ours goes to loopback directly)
    and then its flow run went to the proxy: 'ConnectError', exit 1."""
    nct = records[0]["protocolSection"]["identificationModule"]["nctId"]
    dead_proxy = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    env = {name: dead_proxy for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy",
                                         "ALL_PROXY", "all_proxy")}
    result = run_cli("sync", "--ids", nct, "--api-url", registry.url, "--warehouse", str(tmp_path / "w"),
                     "--request-interval", "0",
                     env={**env, "NO_PROXY": "", "no_proxy": "", "PREFECT_API_URL": prefect_api,
                          "TRIALSYNC_ENGINE": "auto", "PREFECT_CLIENT_MAX_RETRIES": "0"}, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("run ") and "1 new version" in result.stdout, result.stdout
    assert "trialsync: warning" not in result.stderr, result.stderr


_IN_PROCESS = """
import os, signal, sys, threading
from flows import prefect_api
from flows.cli.main import main
from prefect.logging.handlers import APILogWorker

if sys.argv[2] == "interrupted":  # Ctrl-C while the command, done, waits for Prefect's queued logs
    threading.Timer(4.0, os.kill, (os.getpid(), signal.SIGINT)).start()
else:
    prefect_api.settle.__defaults__ = (1.0,)  # the bound, shortened: what is at stake is what follows it
APILogWorker.instance().send({"message": "a log line the server never takes", "level": 20, "name": "x",
                              "timestamp": "2026-01-01T00:00:00Z", "flow_run_id": None, "task_run_id": None})
try:
    main(["runs", "--warehouse", sys.argv[1], "--format", "json"])
except SystemExit as exc:
    print(f"main returned to its caller: {exc.code}", flush=True)
import os
os._exit(0)  # the log line would still be waited for at exit (Prefect's hook): not this test's subject
"""


def test_main_called_in_process_returns_to_its_caller_when_prefects_events_cannot_be_sent(
        silent_server: str, tmp_path: Path) -> None:
    """The bounded leave (os._exit) is the console script's: a program (or a test) that called main() in
    process was ended by it, without its own finalizers, when any Prefect service of that process (its own
    too: the drain is global) could not reach its server within the bound."""
    result = _in_process(silent_server, tmp_path, "returns")
    assert any(line.startswith("main returned to its caller: ") for line in result.stdout.splitlines()), (
        result.stdout, result.stderr)
    assert "leaving without them" in result.stderr, result.stderr


def _in_process(server: str, tmp_path: Path, how: str) -> subprocess.CompletedProcess[str]:
    import sys

    root = Path(__file__).resolve().parents[1]
    return subprocess.run([sys.executable, "-c", _IN_PROCESS, str(tmp_path / "w"), how], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(root), "PREFECT_API_URL": server,
                               "TRIALSYNC_ENGINE": "plain"})


def test_ctrl_c_while_prefects_last_events_wait_is_a_stop_like_any_other(silent_server: str, tmp_path: Path) -> None:
    """The command had finished and waits (up to 10 s) for Prefect's queued events and logs: a Ctrl-C there
    printed a KeyboardInterrupt traceback (the wait is outside the command's own handling)."""
    result = _in_process(silent_server, tmp_path, "interrupted")
    assert result.returncode == 130, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("trialsync: interrupted"), result.stderr


@pytest.mark.parametrize(("setting", "value", "line"), [
    ("PREFECT_LOGGING_LEVEL", "nonsense", "PREFECT_LOGGING_LEVEL is not a setting Prefect can use: Input should be "
     "'DEBUG', 'INFO', 'WARNING', 'ERROR' or 'CRITICAL'"),
    ("PREFECT_API_URL", "http://alice:s3cret@[bad/api", "PREFECT_API_URL is not a setting Prefect can use: Value "
     "error, Invalid IPv6 URL"),
    ("PREFECT_API_URL", "ftp://127.0.0.1/api", "PREFECT_API_URL must be an http:// or https:// URL of a Prefect "
     "server's API, not 'ftp://127.0.0.1/api'"),
    ("PREFECT_API_REQUEST_TIMEOUT", "0", "PREFECT_API_REQUEST_TIMEOUT must be more than 0 seconds, not 0 (every "
     "request to the Prefect server would time out)"),
    # A setting Prefect reads as JSON: 'SettingsError: error parsing value for field "custom_headers" ...'.
    ("PREFECT_CLIENT_CUSTOM_HEADERS", "X-Token: s3cret", "PREFECT_CLIENT_CUSTOM_HEADERS is not a setting Prefect can "
     "use: it is read as JSON (Expecting value: line 1 column 1 (char 0))"),
    # The variable set, not the name Prefect's report gives: an alias, a key inside a JSON value.
    ("PREFECT_API_DATABASE_TIMEOUT", "soon", "PREFECT_API_DATABASE_TIMEOUT is not a setting Prefect can use: Input "
     "should be a valid number, unable to parse string as a number"),
    ("PREFECT_CLIENT_CUSTOM_HEADERS", '{"X-Retries": 3}', "PREFECT_CLIENT_CUSTOM_HEADERS is not a setting Prefect "
     "can use: Input should be a valid string"),
], ids=["level", "bad-url", "ftp", "timeout-0", "not-json", "alias", "json-key"])
def test_a_prefect_setting_prefect_cannot_use_is_one_line_naming_it(
        setting: str, value: str, line: str, tmp_path: Path) -> None:
    """Prefect printed 'Failed to initialize plugins:' and pydantic's report on import, then the command
    said 'ValidationError: 2 validation errors for LoggingSettings (rerun with --debug for details)', exit
    1; an ftp:// API URL or a request timeout of 0 was 'the Prefect server ... does not answer' (after
    ~20 s for the timeout: Prefect's temporary server started, then every request timed out)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    result = subprocess.run([str(TRIALSYNC), "sync", "--ids", "NCT07011004", "--api-url", "http://127.0.0.1:9/api/v2",
                             "--warehouse", str(tmp_path / "w")], capture_output=True, text=True, timeout=120,
                            env={**env, "TRIALSYNC_ENGINE": "prefect", setting: value})
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [f"trialsync: error: {line}"]
    assert "s3cret" not in result.stderr and not (tmp_path / "w").exists()


def test_serve_refuses_a_prefect_setting_prefect_cannot_use_in_one_line(tmp_path: Path) -> None:
    result = run_cli("serve", "--list", env={"PREFECT_LOGGING_LEVEL": "loud"})
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "trialsync: error: PREFECT_LOGGING_LEVEL is not a setting Prefect can use: Input should be 'DEBUG', 'INFO', "
        "'WARNING', 'ERROR' or 'CRITICAL'"]
