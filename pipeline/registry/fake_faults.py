"""Misbehaviour the fake registry can be told to show, each for ``times`` requests (-1: forever),
optionally on one page or only on requests that carry one query parameter (``param="filter.ids"``):

- ``status``: an error status (429 with ``retry_after``, 5xx, a firewall's 403) with a body, plain text
  unless ``content_type`` says otherwise (``text/html`` for a proxy's or firewall's page), and a
  ``Location`` header when ``location`` is set (a 302 to itself: a proxy's redirect loop); a 200 with
  another study's JSON as ``body`` is a cache answering for the wrong study;
- ``delay``: answer after ``delay`` seconds (a client timeout when longer than its read timeout);
- ``reset``: drop the connection without an answer;
- ``truncate``: a 200 whose body is the first half of the JSON (Content-Length matches the half);
- ``cut``: a 200 that announces the whole body's Content-Length but the connection closes halfway;
- ``empty``: a page with an empty ``studies`` array that still carries a ``nextPageToken`` to the
  studies it would have held (the spec allows empty pages);
- ``shift``: the page starts ``shift`` studies early, repeating the end of the previous page, as
  offset paging does when studies are inserted before the cursor between two requests;
- ``same_token``: the page's ``nextPageToken`` is the token the request carried (a registry stuck on
  one page: a client must not loop forever);
- ``stuck``: the page's ``nextPageToken`` is a fresh token to the same page again (a stuck cursor
  that a client cannot tell by its tokens);
- ``drop``: the page leaves out the studies ``nct_ids`` though ``totalCount`` counts them (an index
  that lags its pages);
- ``ignore_filter``: the listing ignores the request's ``param`` filter (e.g. ``filter.overallStatus``),
  as a registry bug or a rewriting proxy would;
- ``extra``: the page also holds the records ``records`` (JSON bodies), after its own: a study listed
  again from another replica (the same id, other content) within one listing.

Listing gaps (studies the listing leaves out while ``GET /studies/{id}`` still serves them) are not a
fault of one request but a state: ``FakeRegistry.omit_from_listings``.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

FAULT_KINDS = ("status", "delay", "reset", "truncate", "cut", "empty", "shift", "same_token", "stuck", "drop",
               "ignore_filter", "extra")


@dataclass
class Fault:
    """One injected misbehaviour. ``times`` < 0 means forever; ``page`` limits it to one page."""

    kind: str
    status: int = 503
    retry_after: str | None = None
    delay: float = 0.0
    times: int = 1
    page: int | None = None
    path: str = "/studies"
    body: str = "Service Unavailable"
    content_type: str = "text/plain"
    shift: int = 1
    param: str | None = None  # only requests that carry this query parameter (e.g. "filter.ids")
    nct_ids: tuple[str, ...] = ()  # the studies a ``drop`` leaves out
    location: str | None = None  # a ``status`` answer's Location header (a redirect)
    records: tuple[bytes, ...] = ()  # the records an ``extra`` adds to the page
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
