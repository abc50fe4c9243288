"""A faithful local stand-in for ClinicalTrials.gov API v2, for tests and the offline demo.

It serves real records on 127.0.0.1 with the API's semantics: opaque page tokens that are only
valid with the first page's parameters, ``totalCount`` on the first page only (with
``countTotal=true``), ``pageSize`` default 10 and clamp at 1,000, ``filter.ids`` (NCTId and
NCTIdAlias), ``filter.overallStatus``, ``filter.advanced`` with ``AREA[LastUpdatePostDate]RANGE[a,b]``
(and simple ``AREA[Field]VALUE`` terms), ``query.cond/term/spons`` matching, 400/404 plain-text
errors, page tokens that expire (``token_ttl``) and ``/version`` with a ``dataTimestamp`` that moves
on whenever the data changes (``put``/``remove``), like the registry's daily refresh.

``faults`` injects misbehaviour, each for ``times`` requests (-1: forever), optionally on one page
or only on requests that carry one query parameter (``param="filter.ids"``):

- ``status``: an error status (429 with ``retry_after``, 5xx) with a plain-text body;
- ``delay``: answer after ``delay`` seconds (a client timeout when longer than its read timeout);
- ``reset``: drop the connection without an answer;
- ``truncate``: a 200 whose body is the first half of the JSON (Content-Length matches the half);
- ``cut``: a 200 that announces the whole body's Content-Length but the connection closes halfway;
- ``empty``: a page with an empty ``studies`` array that still carries a ``nextPageToken`` to the
  studies it would have held (the spec allows empty pages);
- ``shift``: the page starts ``shift`` studies early, repeating the end of the previous page, as
  offset paging does when studies are inserted before the cursor between two requests.

Under ``/api/int`` it serves the record history of the website's internal API for the studies given
to ``put_history`` (``/studies/{NCT}/history``, ``/studies/{NCT}?history=true``,
``/studies/{NCT}/history/{v}``); their version records are derived (see ``fake_history``). Requests
and faults name these paths with an ``/int`` prefix (``/int/studies/NCT03690141/history``).

Query matching is simpler than the registry's Essie engine: every word of the query must occur
(case-insensitively) in the searched text. Results are ordered by NCT id.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from pipeline.enums import STATUSES
from pipeline.registry.fake_history import INDEX_MEMBERS, FakeHistory

API_PREFIX = "/api/v2"
INT_PREFIX = "/api/int"  # the website's internal API (record history)
DEFAULT_PAGE_SIZE = 10
MAX_PAGE_SIZE = 1000
_NCT_PATH = re.compile(r"^[Nn][Cc][Tt]0*[1-9]\d{0,7}$")
_AREA_RANGE = re.compile(r"^AREA\[(\w+)\]RANGE\[([^,\]]+),\s*([^\]]+)\]$")
_AREA_VALUE = re.compile(r"^AREA\[(\w+)\](\w+)$")
_INT_STUDY = re.compile(r"^/int/studies/([^/]+)(/history(?:/([^/]+))?)?$")


FAULT_KINDS = ("status", "delay", "reset", "truncate", "cut", "empty", "shift")
_DATA_EPOCH = datetime(2026, 1, 5, 6, 0, 0)


@dataclass
class Fault:
    """One injected misbehaviour. ``times`` < 0 means forever; ``page`` limits it to one page."""

    kind: str  # "status" | "delay" | "reset" | "truncate" | "cut" | "empty" | "shift"
    status: int = 503
    retry_after: str | None = None
    delay: float = 0.0
    times: int = 1
    page: int | None = None
    path: str = "/studies"
    body: str = "Service Unavailable"
    shift: int = 1
    param: str | None = None  # only requests that carry this query parameter (e.g. "filter.ids")
    hits: int = 0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; one of {', '.join(FAULT_KINDS)}")

    def matches(self, path: str, page: int | None, params: Mapping[str, str] | None = None) -> bool:
        if self.times == 0 or not path.startswith(self.path):
            return False
        if self.param is not None and self.param not in (params or {}):
            return False
        return self.page is None or self.page == page


@dataclass
class Faults:
    rules: list[Fault] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, **kwargs: Any) -> Fault:
        fault = Fault(kind=kind, **kwargs)
        with self.lock:
            self.rules.append(fault)
        return fault

    def clear(self) -> None:
        with self.lock:
            self.rules.clear()

    def take(self, path: str, page: int | None, params: Mapping[str, str] | None = None) -> Fault | None:
        with self.lock:
            for fault in self.rules:
                if fault.matches(path, page, params):
                    fault.times -= 1 if fault.times > 0 else 0
                    fault.hits += 1
                    return fault
        return None


class BadRequest(Exception):
    pass


@dataclass
class _Entry:
    record: dict[str, Any]
    body: bytes
    nct_id: str
    aliases: frozenset[str]
    status: str | None
    last_update: str | None
    cond_text: str
    spons_text: str
    fields: Mapping[str, frozenset[str]]

    @cached_property
    def term_text(self) -> str:  # the whole record's words; built on first query.term
        return " ".join(_words(self.body.decode()))


class FakeRegistry:
    """The registry's records and behaviour; ``start()`` serves them over HTTP on loopback."""

    def __init__(self, records: Iterable[Mapping[str, Any]] = (), *, token_ttl: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._entries: dict[str, _Entry] = {}
        self._histories: dict[str, FakeHistory] = {}
        self._lock = threading.Lock()
        self.faults = Faults()
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.token_ttl = token_ttl
        self._clock = clock
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.data_generation = 0  # one "daily refresh" per put/remove after construction
        self.put(*records)
        self.data_generation = 0

    # -- records -----------------------------------------------------------------------------
    @classmethod
    def from_directory(cls, directory: Path, **kwargs: Any) -> FakeRegistry:
        return cls(load_records(directory), **kwargs)

    def put(self, *records: Mapping[str, Any]) -> None:
        """Add or replace records (keyed by NCT id)."""
        entries = [_entry(dict(r)) for r in records]
        with self._lock:
            for entry in entries:
                self._entries[entry.nct_id] = entry
            self.data_generation += 1

    def remove(self, *nct_ids: str) -> None:
        with self._lock:
            for nct in nct_ids:
                self._entries.pop(nct, None)
            self.data_generation += 1

    @property
    def data_timestamp(self) -> str:
        """``/version``'s ``dataTimestamp`` (UTC ``yyyy-MM-dd'T'HH:mm:ss``): one day per data change."""
        return (_DATA_EPOCH + timedelta(days=self.data_generation)).strftime("%Y-%m-%dT%H:%M:%S")

    def put_history(self, history: FakeHistory) -> None:
        """Serve ``history`` under ``/api/int``; its last version becomes the study's current record."""
        self.put(history.current)
        with self._lock:
            self._histories[history.nct_id] = history

    def history(self, nct_id: str) -> FakeHistory | None:
        with self._lock:
            return self._histories.get(nct_id)

    def record(self, nct_id: str) -> dict[str, Any]:
        return json.loads(self._entries[nct_id].body)

    def nct_ids(self) -> list[str]:
        with self._lock:
            return sorted(self._entries)

    # -- serving -----------------------------------------------------------------------------
    def start(self, host: str = "127.0.0.1", port: int = 0) -> FakeRegistry:
        handler = type("Handler", (_Handler,), {"registry": self})
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="fake-registry",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeRegistry:
        return self if self._server else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server, "not started"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}{API_PREFIX}"

    @property
    def int_url(self) -> str:
        return self.url[: -len(API_PREFIX)] + INT_PREFIX

    def study_requests(self) -> list[dict[str, str]]:
        return [params for path, params in self.requests if path == "/studies"]

    # -- API semantics -----------------------------------------------------------------------
    def list_studies(self, params: Mapping[str, str], fault: Fault | None = None) -> tuple[bytes, int | None]:
        """The body of ``GET /studies`` and the page number answered (for faults)."""
        page_size = _page_size(params.get("pageSize"))
        scope = {k: v for k, v in params.items() if k not in {"pageToken", "pageSize", "countTotal"}}
        offset, page = 0, 1
        if token := params.get("pageToken"):
            offset, page = self._decode_token(token, scope)
        matcher = _matcher(scope)
        with self._lock:
            matching = [self._entries[n] for n in sorted(self._entries) if matcher(self._entries[n])]
        kind = fault.kind if fault else None
        if fault and kind == "shift":
            offset = max(0, offset - fault.shift)
        end = offset if kind == "empty" else offset + page_size
        chunk = matching[offset:end]
        parts = [b'{"studies":[', b",".join(e.body for e in chunk), b"]"]
        if "pageToken" not in params and params.get("countTotal", "").lower() == "true":
            parts.append(b',"totalCount":%d' % len(matching))
        if end < len(matching):
            parts.append(b',"nextPageToken":' + orjson.dumps(self._encode_token(end, page + 1, scope)))
        parts.append(b"}")
        return b"".join(parts), page

    def page_of(self, params: Mapping[str, str]) -> int | None:
        token = params.get("pageToken")
        if not token:
            return 1
        try:
            return int(_unpack(token)["p"])
        except Exception:
            return None

    def _encode_token(self, offset: int, page: int, scope: Mapping[str, str]) -> str:
        payload = {"o": offset, "p": page, "s": _scope_digest(scope), "t": self._clock()}
        return base64.urlsafe_b64encode(orjson.dumps(payload)).decode().rstrip("=")

    def _decode_token(self, token: str, scope: Mapping[str, str]) -> tuple[int, int]:
        try:
            payload = _unpack(token)
            offset, page = int(payload["o"]), int(payload["p"])
        except Exception:
            raise BadRequest("Invalid pageToken") from None
        if payload.get("s") != _scope_digest(scope):
            raise BadRequest("pageToken does not match the query parameters of the first page")
        if self.token_ttl is not None and self._clock() - float(payload["t"]) > self.token_ttl:
            raise BadRequest("pageToken has expired")
        return offset, page


def load_records(directory: Path) -> list[dict[str, Any]]:
    return [orjson.loads(p.read_bytes()) for p in sorted(Path(directory).glob("NCT*.json"))]


def _unpack(token: str) -> dict[str, Any]:
    data = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    if not isinstance(data, dict):
        raise ValueError(token)
    return data


def _scope_digest(scope: Mapping[str, str]) -> str:
    return hashlib.sha1(orjson.dumps(sorted(scope.items()))).hexdigest()[:12]


def _page_size(raw: str | None) -> int:
    if raw in (None, ""):
        return DEFAULT_PAGE_SIZE
    try:
        size = int(raw)
    except ValueError:
        raise BadRequest(f"Invalid pageSize value: {raw}") from None
    if size < 0:
        raise BadRequest(f"pageSize must be non-negative: {raw}")
    return DEFAULT_PAGE_SIZE if size == 0 else min(size, MAX_PAGE_SIZE)


def _split_list(raw: str) -> list[str]:
    return [part.strip() for part in re.split(r"[,|]", raw) if part.strip()]


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def _matcher(scope: Mapping[str, str]) -> Callable[[_Entry], bool]:
    tests: list[Callable[[_Entry], bool]] = []
    for key, value in scope.items():
        if key == "query.cond":
            tests.append(_text_test(value, lambda e: e.cond_text))
        elif key == "query.term":
            tests.append(_text_test(value, lambda e: e.term_text))
        elif key == "query.spons":
            tests.append(_text_test(value, lambda e: e.spons_text))
        elif key == "filter.ids":
            ids = {i.upper() for i in _split_list(value)}
            tests.append(lambda e, ids=ids: e.nct_id in ids or bool(e.aliases & ids))  # type: ignore[misc]
        elif key == "filter.overallStatus":
            statuses = {s.upper() for s in _split_list(value)}
            if unknown := statuses - set(STATUSES):
                raise BadRequest(f"Invalid filter.overallStatus value: {sorted(unknown)[0]}")
            tests.append(lambda e, s=statuses: e.status in s)  # type: ignore[misc]
        elif key == "filter.advanced":
            tests.extend(_advanced(value))
        elif key in {"format", "markupFormat"}:
            if value not in {"json", "markdown"}:
                raise BadRequest(f"fake registry serves only JSON/markdown, not {key}={value!s}")
        else:
            raise BadRequest(f"Unknown parameter: {key}")
    return lambda entry: all(test(entry) for test in tests)


def _text_test(query: str, text_of: Callable[[_Entry], str]) -> Callable[[_Entry], bool]:
    words = _words(query)
    return lambda entry: all(word in text_of(entry) for word in words)


_ADVANCED_FIELDS = {"StudyType": "studyType", "Phase": "phases", "OverallStatus": "overallStatus"}


def _advanced(expression: str) -> list[Callable[[_Entry], bool]]:
    tests: list[Callable[[_Entry], bool]] = []
    for term in re.split(r"\s+AND\s+", expression.strip()):
        if match := _AREA_RANGE.match(term.strip()):
            area, low, high = match.groups()
            if area != "LastUpdatePostDate":
                raise BadRequest(f"fake registry: RANGE only on LastUpdatePostDate, not {area}")
            low, high = low.strip(), high.strip()
            for bound in (low, high):
                if bound not in {"MIN", "MAX"} and not re.match(r"^\d{4}-\d{2}-\d{2}$", bound):
                    raise BadRequest(f"Invalid date in RANGE: {bound}")
            tests.append(lambda e, lo=low, hi=high: e.last_update is not None  # type: ignore[misc]
                         and (lo == "MIN" or e.last_update >= lo) and (hi == "MAX" or e.last_update <= hi))
        elif match := _AREA_VALUE.match(term.strip()):
            area, value = match.groups()
            if area not in _ADVANCED_FIELDS:
                raise BadRequest(f"fake registry: unsupported AREA[{area}]")
            name = _ADVANCED_FIELDS[area]
            tests.append(lambda e, n=name, v=value: v in e.fields.get(n, frozenset()))  # type: ignore[misc]
        else:
            raise BadRequest(f"fake registry: unsupported filter.advanced expression: {term}")
    return tests


def _entry(record: dict[str, Any]) -> _Entry:
    """Index one record. Malformed records (for quarantine tests) are served as they are: wrong shapes
    index as empty, and a record without a string NCT id is keyed by a digest (unfiltered lists only)."""
    protocol = _dict(record.get("protocolSection"))
    ident = _dict(protocol.get("identificationModule"))
    status = _dict(protocol.get("statusModule"))
    conditions = _dict(protocol.get("conditionsModule"))
    sponsors = _dict(protocol.get("sponsorCollaboratorsModule"))
    design = _dict(protocol.get("designModule"))
    browse = _dict(_dict(record.get("derivedSection")).get("conditionBrowseModule"))
    body = orjson.dumps(record)
    nct_id = ident.get("nctId")
    if not isinstance(nct_id, str):
        nct_id = "~" + hashlib.sha1(body).hexdigest()[:12]
    cond_words = [*_strs(conditions.get("conditions")), *_strs(conditions.get("keywords")),
                  *(_dict(m).get("term", "") for m in _list(browse.get("meshes")))]
    spons_words = [_dict(sponsors.get("leadSponsor")).get("name", ""),
                   *(_dict(c).get("name", "") for c in _list(sponsors.get("collaborators")))]
    last_update = _dict(status.get("lastUpdatePostDateStruct")).get("date")
    overall = status.get("overallStatus")
    return _Entry(
        record=record,
        body=body,
        nct_id=nct_id,
        aliases=frozenset(_strs(ident.get("nctIdAliases"))),
        status=overall if isinstance(overall, str) else None,
        last_update=last_update if isinstance(last_update, str) else None,
        cond_text=" ".join(_words(" ".join(cond_words))),
        spons_text=" ".join(_words(" ".join(spons_words))),
        fields={
            "studyType": frozenset([str(design.get("studyType", ""))]),
            "phases": frozenset(_strs(design.get("phases"))),
            "overallStatus": frozenset([overall if isinstance(overall, str) else ""]),
        },
    )


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _strs(value: Any) -> list[str]:
    return [v for v in _list(value) if isinstance(v, str)]


class _Handler(BaseHTTPRequestHandler):
    registry: FakeRegistry
    protocol_version = "HTTP/1.1"
    server_version = "FakeCTGov/2.0.5"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path.startswith(INT_PREFIX + "/"):
            path = "/int" + url.path[len(INT_PREFIX):]
        elif url.path.startswith(API_PREFIX):
            path = url.path[len(API_PREFIX):] or "/"
        else:
            return self._text(404, "Not Found")
        params = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        self.registry.requests.append((path, params))
        page = self.registry.page_of(params) if path == "/studies" else None
        fault = self.registry.faults.take(path, page, params)
        if fault and self._inject(fault):
            return None
        try:
            status, body, ctype, headers = self._answer(path, params, fault)
        except BadRequest as exc:
            return self._text(400, str(exc))
        if fault and fault.kind == "truncate":
            return self._send(status, body[: max(1, len(body) // 2)], ctype, headers)
        if fault and fault.kind == "cut":
            return self._send(status, body, ctype, headers, cut=True)
        return self._send(status, body, ctype, headers)

    def _answer(self, path: str, params: Mapping[str, str], fault: Fault | None = None,
                ) -> tuple[int, bytes, str, dict[str, str]]:
        if path.startswith("/int/"):
            return self._route_int(path, params)
        return (*self._route(path, params, fault), {})

    def _route_int(self, path: str, params: Mapping[str, str]) -> tuple[int, bytes, str, dict[str, str]]:
        """The record history of the website's internal API (shapes from HISTORY_NOTES.md)."""
        match = _INT_STUDY.match(path)
        if not match:
            return 404, b"Not Found", "text/plain", {}
        nct, history_part, version = match.groups()
        if not _NCT_PATH.match(nct):
            raise BadRequest(f"Invalid NCT ID: {nct}")
        wanted = "NCT" + nct[3:].lstrip("0").rjust(8, "0")
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
            self._text(fault.status, fault.body, headers)
            return True
        return False

    def _route(self, path: str, params: Mapping[str, str], fault: Fault | None = None) -> tuple[int, bytes, str]:
        if path == "/studies":
            body, _ = self.registry.list_studies(params, fault)
            return 200, body, "application/json"
        if path == "/version":
            version = {"apiVersion": "2.0.5", "dataTimestamp": self.registry.data_timestamp}
            return 200, orjson.dumps(version), "application/json"
        if path.startswith("/studies/"):
            nct = path.rsplit("/", 1)[-1]
            if not _NCT_PATH.match(nct):
                raise BadRequest(f"Invalid NCT ID: {nct}")
            wanted = "NCT" + nct[3:].lstrip("0").rjust(8, "0")
            with self.registry._lock:
                entry = self.registry._entries.get(wanted)
            if entry is None:
                return 404, f"Study not found: {wanted}".encode(), "text/plain"
            return 200, entry.body, "application/json"
        return 404, b"Not Found", "text/plain"

    def _text(self, status: int, text: str, headers: Mapping[str, str] | None = None) -> None:
        self._send(status, text.encode(), "text/plain", headers)

    def _send(self, status: int, body: bytes, ctype: str, headers: Mapping[str, str] | None = None,
              *, cut: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype + ("; charset=utf-8" if ctype.startswith("text") else ""))
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
        self.wfile.write(body)
