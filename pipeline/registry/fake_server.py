"""A faithful local stand-in for ClinicalTrials.gov API v2, for tests and the offline demo.

It serves real records on 127.0.0.1 with the API's semantics: opaque page tokens that are only
valid with the first page's parameters, ``totalCount`` on the first page only (with
``countTotal=true``), ``pageSize`` default 10 and clamp at 1,000, ``filter.ids`` (NCTId and
NCTIdAlias), ``filter.overallStatus``, ``filter.advanced`` with ``AREA[LastUpdatePostDate]RANGE[a,b]``
(and simple ``AREA[Field]VALUE`` terms), ``query.cond/term/spons`` matching, 400/404 plain-text
errors, ``GET /studies/{alias}`` answering 301 to the study an NCTIdAlias belongs to, page tokens that
expire (``token_ttl``) and ``/version`` with a ``dataTimestamp`` that moves on whenever the data changes
(``put``/``remove``), like the registry's daily refresh.

As strict as the real API (``fake_matching``, ``fake_handler``): ids outside the spec's pattern, broken
Essie syntax and request lines over 8 KB are refused; a query of NCT ids only makes filters ignored;
bodies come gzip-encoded and, when large, chunked. ``trailing_empty_page=True`` gives an exactly full
last page a ``nextPageToken`` to one empty page, as the registry does.

``faults`` injects misbehaviour per request (``fake_faults``); ``omit_from_listings`` makes listings
leave studies out while ``GET /studies/{id}`` still serves them (the registry's listing gaps).

Under ``/api/int`` it serves the record history of the website's internal API for the studies given
to ``put_history`` (``/studies/{NCT}/history``, ``/studies/{NCT}?history=true``,
``/studies/{NCT}/history/{v}``); their version records are derived (see ``fake_history``). Requests
and faults name these paths with an ``/int`` prefix (``/int/studies/NCT03690141/history``).
Results are ordered by NCT id.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson

from pipeline.markup import api_form
from pipeline.registry.fake_faults import FAULT_KINDS, Fault, Faults
from pipeline.registry.fake_handler import API_PREFIX, INT_PREFIX, Handler
from pipeline.registry.fake_history import FakeHistory
from pipeline.registry.fake_matching import BadRequest, Entry, entry, matcher

__all__ = ["FAULT_KINDS", "FakeRegistry", "Fault", "Faults", "load_records"]

DEFAULT_PAGE_SIZE = 10
MAX_PAGE_SIZE = 1000
_DATA_EPOCH = datetime(2026, 1, 5, 6, 0, 0)
_PAGING = {"pageToken", "pageSize", "countTotal"}


class FakeRegistry:
    """The registry's records and behaviour; ``start()`` serves them over HTTP on loopback."""

    def __init__(self, records: Iterable[Mapping[str, Any]] = (), *, token_ttl: float | None = None,
                 clock: Callable[[], float] = time.monotonic, trailing_empty_page: bool = False) -> None:
        self._entries: dict[str, Entry] = {}
        self._histories: dict[str, FakeHistory] = {}
        self._omitted: set[str] = set()
        self._lock = threading.Lock()
        self.faults = Faults()
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.token_ttl = token_ttl
        self.trailing_empty_page = trailing_empty_page
        self._clock = clock
        self._server: _Server | None = None
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
        entries = [entry(dict(r)) for r in records]
        with self._lock:
            for item in entries:
                self._entries[item.nct_id] = item
            self.data_generation += 1

    def remove(self, *nct_ids: str) -> None:
        with self._lock:
            for nct in nct_ids:
                self._entries.pop(nct, None)
            self.data_generation += 1

    def omit_from_listings(self, *nct_ids: str) -> None:
        """A listing gap: ``/studies`` (every query, ``filter.ids`` included, and its ``totalCount``)
        leaves these studies out; ``GET /studies/{id}`` still answers 200 with them."""
        with self._lock:
            self._omitted.update(nct_ids)

    def restore_listings(self) -> None:
        """Listings hold every study again."""
        with self._lock:
            self._omitted.clear()

    @property
    def data_timestamp(self) -> str:
        """``/version``'s ``dataTimestamp`` (UTC ``yyyy-MM-dd'T'HH:mm:ss``): one day per data change."""
        return (_DATA_EPOCH + timedelta(days=self.data_generation)).strftime("%Y-%m-%dT%H:%M:%S")

    def put_history(self, history: FakeHistory) -> None:
        """Serve ``history`` under ``/api/int``; its last version becomes the study's current record, served
        by ``/api/v2`` in the API's own markup (markdown where the history has HTML, as the registry does)."""
        self.put(api_form(history.current))
        with self._lock:
            self._histories[history.nct_id] = history

    def history(self, nct_id: str) -> FakeHistory | None:
        with self._lock:
            return self._histories.get(nct_id)

    def record(self, nct_id: str) -> dict[str, Any]:
        return json.loads(self._entries[nct_id].body)

    def study_body(self, nct_id: str) -> bytes | None:
        """``GET /studies/{id}``: the record's body, listed or not; None when the registry lacks it."""
        with self._lock:
            found = self._entries.get(nct_id)
        return found.body if found else None

    def merged_into(self, nct_id: str) -> str | None:
        """The study whose ``nctIdAliases`` hold ``nct_id`` (the registry merged it there), if any."""
        with self._lock:
            return next((n for n, e in sorted(self._entries.items()) if nct_id in e.aliases), None)

    def nct_ids(self) -> list[str]:
        with self._lock:
            return sorted(self._entries)

    # -- serving -----------------------------------------------------------------------------
    def start(self, host: str = "127.0.0.1", port: int = 0) -> FakeRegistry:
        handler = type("Handler", (Handler,), {"registry": self})
        self._server = _Server((host, port), handler)
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
        scope = {k: v for k, v in params.items() if k not in _PAGING}
        offset, page = 0, 1
        if token := params.get("pageToken"):
            offset, page = self._decode_token(token, scope)
        kind = fault.kind if fault else None
        ignored = fault.param if fault and kind == "ignore_filter" else None
        test = matcher({k: v for k, v in scope.items() if k != ignored})
        with self._lock:
            matching = [self._entries[n] for n in sorted(self._entries)
                        if n not in self._omitted and test(self._entries[n])]
        if fault and kind == "shift":
            offset = max(0, offset - fault.shift)
        end = offset if kind == "empty" else offset + page_size
        chunk = matching[offset:end]
        if fault and kind == "drop":
            chunk = [e for e in chunk if e.nct_id not in fault.nct_ids]
        bodies = [e.body for e in chunk] + list(fault.records if fault and kind == "extra" else ())
        parts = [b'{"studies":[', b",".join(bodies), b"]"]
        if "pageToken" not in params and params.get("countTotal", "").lower() == "true":
            parts.append(b',"totalCount":%d' % len(matching))
        more = end < len(matching) or (self.trailing_empty_page and chunk and end == len(matching))
        if kind == "same_token" and token:
            parts.append(b',"nextPageToken":' + orjson.dumps(token))
        elif kind == "stuck":
            parts.append(b',"nextPageToken":' + orjson.dumps(self._encode_token(offset, page, scope)))
        elif more:
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


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-answer (a timed-out try, a killed sync) is normal here: no
        traceback on stderr (it landed in other tests' captured output); anything else is printed."""
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)
