"""A local HTTP endpoint that keeps the JSON posted to it: the demo's alert inbox, and the tests' receiver.

``fail_status`` makes it answer every request with that status (and keep nothing) until it is
set back to ``None``: a receiver that is down on one run and up on the next. ``on_receive`` is
called with each request it keeps, before it answers (a test kills the sender there: the message
arrived, the sender never heard so). ``hold``, while not set, keeps every answer back: a receiver
that accepts a message and then times out. ``redirect_to`` answers other paths with a
``redirect_status`` (302: an http:// URL of an https:// site; 307/308 keep the POST);
``drip_seconds`` sends the answer's headers one at a time, each in time for a read timeout, the
whole taking that long.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: Any


class WebhookReceiver:
    def __init__(self, fail_status: int | None = None) -> None:
        self.fail_status = fail_status
        self.received: list[Received] = []
        self.requests = 0
        self.on_receive: Callable[[Received], None] | None = None
        self.hold: threading.Event | None = None
        self.redirect_to: str | None = None  # answer POSTs elsewhere with a redirect to this path
        self.redirect_status = 302  # 302 (GETs of the path get a 200) or 307/308 (POSTs to it are kept)
        self.drip_seconds: float | None = None  # send the headers one every 0.3 s for this long, then a 200
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self, host: str = "127.0.0.1", port: int = 0) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._reply(200, b"landing page")

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if receiver.redirect_to is not None and self.path != receiver.redirect_to:
                    with receiver._lock:
                        receiver.requests += 1
                    self.send_response(receiver.redirect_status)
                    self.send_header("Location", receiver.redirect_to)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if receiver.drip_seconds is not None:
                    self._drip(receiver.drip_seconds)
                    return
                kept = None
                with receiver._lock:
                    receiver.requests += 1
                    status = receiver.fail_status or 200
                    if status < 300:
                        kept = Received(self.path, dict(self.headers.items()), json.loads(body))
                        receiver.received.append(kept)
                if kept is not None and receiver.on_receive is not None:
                    receiver.on_receive(kept)
                if receiver.hold is not None:
                    receiver.hold.wait()
                reply = b"ok" if status < 300 else b"receiver unavailable"
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(reply)))
                    self.end_headers()
                    self.wfile.write(reply)
                except OSError:  # the sender is gone (killed, or it gave up waiting)
                    pass

            def _reply(self, status: int, reply: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def _drip(self, seconds: float) -> None:
                """Each read of the sender's gets a byte in time; the whole answer takes ``seconds``."""
                try:
                    self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                    for i in range(int(seconds / 0.3)):
                        self.wfile.write(f"X-Drip-{i}: x\r\n".encode())
                        self.wfile.flush()
                        time.sleep(0.3)
                    self.wfile.write(b"Content-Length: 2\r\n\r\nok")
                except OSError:
                    pass

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.hold is not None:
            self.hold.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> WebhookReceiver:
        return self if self._server else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
