"""Answers whose bodies are not worth reading: a redirect's (requests read it whole, decompressed, before
following it) and an error's (only its first line is shown). A large, endless or gzip-bomb body there
must cost neither the run's memory nor its time, nor put binary bytes in the error line."""

from __future__ import annotations

import gzip
import http.server
import threading
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest

from pipeline.errors import RegistryError, RegistryUnavailable
from pipeline.registry.client import RegistryClient, RetryPolicy

BOMB_MB = 100
VERSION = b'{"apiVersion": "2.0.5", "dataTimestamp": "2026-01-05T06:00:00"}'


class _Server:
    """``/api/v2/version`` answers ``status`` with a body that is ``kind``: ``bomb`` (100 MB of zeros,
    gzip-encoded: ~100 KB on the wire) or ``endless`` (zeros until the client hangs up); a redirect
    points at ``/final/api/v2/version``, which answers the registry's JSON."""

    def __init__(self, status: int, kind: str) -> None:
        bomb = gzip.compress(b"\0" * (BOMB_MB << 20), compresslevel=9)
        self.sent = 0
        self.location = "/final/api/v2/version"
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path.startswith("/final/"):
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(VERSION)))
                    self.end_headers()
                    self.wfile.write(VERSION)
                    return
                self.send_response(status)
                self.send_header("Location", owner.location)
                self.send_header("Content-Type", "text/plain")
                if kind == "bomb":
                    self.send_header("Content-Encoding", "gzip")
                    self.send_header("Content-Length", str(len(bomb)))
                self.end_headers()
                try:
                    if kind == "bomb":
                        self.wfile.write(bomb)
                        return
                    self.close_connection = True
                    while owner.sent < 4 << 30:  # zeros until the client hangs up
                        self.wfile.write(b"\0" * 65536)
                        owner.sent += 65536
                except OSError:
                    self.close_connection = True

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/v2"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Peak:
    """The peak of Python's allocations (MB) since ``reset()`` (after the server made its bomb)."""

    def reset(self) -> None:
        tracemalloc.reset_peak()

    def __call__(self) -> float:
        return tracemalloc.get_traced_memory()[1] / (1 << 20)


@pytest.fixture
def peak_mb() -> Iterator[_Peak]:
    tracemalloc.start()
    try:
        yield _Peak()
    finally:
        tracemalloc.stop()


def _client(url: str) -> RegistryClient:
    return RegistryClient(url, min_interval=0, timeout=(5.0, 5.0),
                          retry=RetryPolicy(attempts=1, budget_seconds=5.0))


@pytest.mark.parametrize("status", [301, 302, 307])
def test_a_redirects_gzip_bomb_body_is_never_inflated(status: int, peak_mb: _Peak) -> None:
    server = _Server(status, "bomb")
    peak_mb.reset()
    try:
        with _client(server.url) as client:
            assert client.version()["apiVersion"] == "2.0.5"
    finally:
        server.close()
    assert peak_mb() < BOMB_MB / 4  # it was 100 MB: the whole body, inflated


def test_a_redirect_with_an_endless_body_is_followed_at_once(peak_mb: _Peak) -> None:
    """Its body read to the end, the redirect was never followed: the try timed out (or memory ran out)."""
    server = _Server(302, "endless")
    peak_mb.reset()
    try:
        with _client(server.url) as client:
            assert client.version()["dataTimestamp"] == "2026-01-05T06:00:00"
    finally:
        server.close()
    assert server.sent < 64 << 20 and peak_mb() < 32


@pytest.mark.parametrize("kind", ["bomb", "endless"])
def test_an_errors_answer_is_read_only_as_far_as_its_line_needs_and_shows_no_binary_bytes(
        kind: str, peak_mb: _Peak) -> None:
    server = _Server(503, kind)
    peak_mb.reset()
    try:
        with _client(server.url) as client, pytest.raises(RegistryUnavailable) as info:
            client.version()
    finally:
        server.close()
    assert str(info.value) == "HTTP 503: Service Unavailable"  # the reason: the body has no text
    assert peak_mb() < 32  # the bomb: 100 MB (up to 1 GB, the cap on a page); the endless body: 5 s of zeros


@pytest.mark.parametrize("location", ["ftp://mirror.example/studies", "http://[bad/studies"])
def test_a_redirect_to_a_url_that_cannot_be_fetched_is_one_error_not_retried(location: str) -> None:
    """It was retried as a broken response until the retry budget ran out (31 s by default)."""
    server = _Server(302, "bomb")
    server.location = location
    try:
        with RegistryClient(server.url, min_interval=0, retry=RetryPolicy(attempts=4, backoff_base=0.5)) as client, \
                pytest.raises(RegistryError) as info:
            client.version()
    finally:
        server.close()
    assert not info.value.retryable and client.retries == 0
    assert str(info.value).startswith(f"cannot fetch {server.url}/version: ") and str(info.value).endswith(
        "; not retried")
