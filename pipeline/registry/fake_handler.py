"""The fake registry's HTTP side: routing, faults, and the transport habits of the real server.

Like the real one it refuses a request line over 8 KB (414), answers gzip to a client that accepts
it (``Content-Encoding: gzip``) and sends large bodies chunked (``Transfer-Encoding: chunked``).
Error answers and fault answers keep a ``Content-Length`` (the ``truncate`` and ``cut`` faults are
about it).
"""

from __future__ import annotations

import gzip
import re
import socket
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import orjson

from pipeline.registry.fake_faults import Fault
from pipeline.registry.fake_history import INDEX_MEMBERS
from pipeline.registry.fake_matching import NCT_PATTERN, BadRequest, canonical_nct

if TYPE_CHECKING:
    from pipeline.registry.fake_server import FakeRegistry

API_PREFIX = "/api/v2"
INT_PREFIX = "/api/int"  # the website's internal API (record history)
MAX_URL_BYTES = 8192  # the usual request-line limit of the registry's front end
CHUNK_OVER = 16 * 1024  # bodies larger than this are sent chunked
_INT_STUDY = re.compile(r"^/int/studies/([^/]+)(/history(?:/([^/]+))?)?$")
Answer = tuple[int, bytes, str, dict[str, str]]


class Handler(BaseHTTPRequestHandler):
    registry: FakeRegistry
    protocol_version = "HTTP/1.1"
    server_version = "FakeCTGov/2.0.5"
    # The headers and the body go out in two writes: with Nagle's algorithm on, the body waits for the
    # client's delayed ACK of the headers (~40 ms a response on Linux), which is not the registry's pace.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        if len(self.path.encode()) > MAX_URL_BYTES:
            self.registry.requests.append(("<414>", {}))
            return self._send(414, b"URI Too Long", "text/plain")
        url = urlsplit(self.path)
        if url.path.startswith(INT_PREFIX + "/"):
            path = "/int" + url.path[len(INT_PREFIX):]
        elif url.path.startswith(API_PREFIX):
            path = url.path[len(API_PREFIX):] or "/"
        else:
            return self._send(404, b"Not Found", "text/plain")
        params = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        self.registry.requests.append((path, params))
        page = self.registry.page_of(params) if path == "/studies" else None
        fault = self.registry.faults.take(path, page, params)
        if fault and self._inject(fault):
            return None
        try:
            status, body, ctype, headers = self._answer(path, params, fault)
        except BadRequest as exc:
            return self._send(400, str(exc).encode(), "text/plain")
        if fault and fault.kind == "truncate":
            return self._send(status, body[: max(1, len(body) // 2)], ctype, headers)
        if fault and fault.kind == "cut":
            return self._send(status, body, ctype, headers, cut=True)
        return self._send(status, body, ctype, headers, encode=status == 200)

    def _answer(self, path: str, params: Mapping[str, str], fault: Fault | None = None) -> Answer:
        if path.startswith("/int/"):
            return self._route_int(path, params)
        if path == "/studies":
            body, _ = self.registry.list_studies(params, fault)
            return 200, body, "application/json", {}
        if path == "/version":
            version = {"apiVersion": "2.0.5", "dataTimestamp": self.registry.data_timestamp}
            return 200, orjson.dumps(version), "application/json", {}
        if path.startswith("/studies/"):
            nct = path.rsplit("/", 1)[-1]
            if not NCT_PATTERN.match(nct):
                raise BadRequest(f"Invalid NCT ID: {nct}")
            body_or_none = self.registry.study_body(canonical_nct(nct))
            if body_or_none is None and (merged := self.registry.merged_into(canonical_nct(nct))):
                # The spec: an id found in NCTIdAlias is answered 301, redirecting to the real study.
                location = f"{API_PREFIX}/studies/{merged}"
                return 301, b"Moved Permanently", "text/plain", {"Location": location}
            if body_or_none is None:
                return 404, f"Study not found: {canonical_nct(nct)}".encode(), "text/plain", {}
            return 200, body_or_none, "application/json", {}
        return 404, b"Not Found", "text/plain", {}

    def _route_int(self, path: str, params: Mapping[str, str]) -> Answer:
        """The record history of the website's internal API (shapes from HISTORY_NOTES.md)."""
        match = _INT_STUDY.match(path)
        if not match:
            return 404, b"Not Found", "text/plain", {}
        nct, history_part, version = match.groups()
        if not NCT_PATTERN.match(nct):
            raise BadRequest(f"Invalid NCT ID: {nct}")
        wanted = canonical_nct(nct)
        history = self.registry.history(wanted)
        if history is None:
            return 404, f"Study history not found: {wanted}".encode(), "text/plain", {}
        derived = {"X-Fake-Derived": "true"} if history.derived else {}
        if history_part is None:
            if params.get("history", "").lower() != "true":
                raise BadRequest("fake registry serves /api/int/studies/{NCT} only with history=true")
            body: dict[str, Any] = {"study": history.current, "history": {"changes": history.changes,
                                                                           **history.members}}
            if history.topics is not None:
                body["topics"] = history.topics
            return 200, orjson.dumps(body), "application/json", derived
        if version is None:
            members = {k: history.members[k] for k in INDEX_MEMBERS if k in history.members}
            return 200, orjson.dumps({"changes": history.changes, **members}), "application/json", {}
        if not version.isdigit():
            raise BadRequest(f"Invalid version: {version}")
        record = history.records.get(int(version))
        if record is None:
            return 404, f"Study version not found: {wanted} version {version}".encode(), "text/plain", {}
        return 200, orjson.dumps({"studyVersion": int(version), "study": record}), "application/json", derived

    def _inject(self, fault: Fault) -> bool:
        """Apply a fault; True when the response has been fully handled."""
        if fault.kind == "delay":
            time.sleep(fault.delay)
            return False
        if fault.kind == "reset":
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return True
        if fault.kind == "status":
            headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
            if fault.location is not None:
                headers["Location"] = fault.location
            self._send(fault.status, fault.body.encode(), fault.content_type, headers)
            return True
        return False

    def _send(self, status: int, body: bytes, ctype: str, headers: Mapping[str, str] | None = None,
              *, cut: bool = False, encode: bool = False) -> None:
        gzipped = encode and "gzip" in self.headers.get("Accept-Encoding", "")
        if gzipped:
            body = gzip.compress(body, compresslevel=1)
        chunked = encode and len(body) > CHUNK_OVER
        self.send_response(status)
        self.send_header("Content-Type", ctype + ("; charset=utf-8" if ctype.startswith("text") else ""))
        if gzipped:
            self.send_header("Content-Encoding", "gzip")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if cut:  # the connection drops halfway through the announced body
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        if chunked:
            for start in range(0, len(body), CHUNK_OVER):
                piece = body[start:start + CHUNK_OVER]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
            return
        self.wfile.write(body)
