"""A sync's scope (which studies) and window (which update dates), as registry query parameters."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta

from pipeline.enums import STATUSES
from pipeline.errors import UsageError
from pipeline.parse import NCT_ID

MAX_PAGE_SIZE = 1000
MAX_QUERY_LENGTH = 1000
_ISO_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
# The registry's daily refresh can post a record dated the day before we see it: overlap a day.
WATERMARK_OVERLAP = timedelta(days=1)


@dataclass(frozen=True)
class Scope:
    """Which studies a sync follows. The empty scope is the whole registry."""

    query: str | None = None
    condition: str | None = None
    sponsor: str | None = None
    ids: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for flag, text in (("--query", self.query), ("--condition", self.condition), ("--sponsor", self.sponsor)):
            if text and any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
                raise UsageError(f"{flag} must not contain control characters (newlines, tabs, ...)")
            if text and len(text) > MAX_QUERY_LENGTH:
                raise UsageError(f"{flag} is longer than {MAX_QUERY_LENGTH} characters")
        for nct in self.ids:
            if not NCT_ID.match(nct):
                raise UsageError(f"invalid NCT id {nct!r} (expected NCT followed by 8 digits)")
        for status in self.statuses:
            if status not in STATUSES:
                raise UsageError(f"unknown status {status!r}; one of: {', '.join(STATUSES)}")

    @classmethod
    def build(
        cls,
        *,
        query: str | None = None,
        condition: str | None = None,
        sponsor: str | None = None,
        ids: str | list[str] | tuple[str, ...] | None = None,
        statuses: str | list[str] | tuple[str, ...] | None = None,
    ) -> Scope:
        """From user input: comma/space separated ids and statuses, case-insensitive."""
        return cls(
            query=_blank_to_none(query),
            condition=_blank_to_none(condition),
            sponsor=_blank_to_none(sponsor),
            ids=tuple(sorted({s.upper() for s in _split(ids)})),
            statuses=tuple(sorted({s.upper() for s in _split(statuses)})),
        )

    def params(self) -> dict[str, str]:
        """The API v2 ``/studies`` parameters that select this scope."""
        params: dict[str, str] = {}
        if self.query:
            params["query.term"] = self.query
        if self.condition:
            params["query.cond"] = self.condition
        if self.sponsor:
            params["query.spons"] = self.sponsor
        if self.ids:
            params["filter.ids"] = ",".join(self.ids)
        if self.statuses:
            params["filter.overallStatus"] = ",".join(self.statuses)
        return params

    @property
    def key(self) -> str:
        """A stable name for the scope, stored with each run (its watermark is per scope)."""
        return "&".join(f"{k}={v}" for k, v in sorted(self.params().items())) or "all"


@dataclass(frozen=True)
class Window:
    mode: str  # "full" | "incremental"
    since: date | None

    def params(self) -> dict[str, str]:
        if self.since is None:
            return {}
        return {"filter.advanced": f"AREA[LastUpdatePostDate]RANGE[{self.since.isoformat()},MAX]"}


def resolve_window(*, full: bool, since: date | None, watermark: date | None) -> Window:
    """``--full`` or ``--since`` win; otherwise incremental from the watermark minus a day;
    a scope's first run (no watermark) is full."""
    if full and since:
        raise UsageError("--full and --since exclude each other")
    if full:
        return Window("full", None)
    if since:
        return Window("incremental", since)
    if watermark is None:
        return Window("full", None)
    return Window("incremental", watermark - WATERMARK_OVERLAP)


LOOKUP_BATCH = 200  # ids per filter.ids request: ~2.4 KB of query string, one page each


def lookup_params(ids: Sequence[str], batch: int = LOOKUP_BATCH) -> list[dict[str, str]]:
    """Requests that ask the registry which of ``ids`` it still publishes, without a scope's filters
    (a study that left a filtered scope is still in the registry)."""
    chunks = [ids[i:i + batch] for i in range(0, len(ids), batch)]
    return [{"filter.ids": ",".join(chunk), "pageSize": str(len(chunk))} for chunk in chunks]


def check_page_size(page_size: int) -> int:
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise UsageError(f"--page-size must be between 1 and {MAX_PAGE_SIZE} (the registry's limit)")
    return page_size


def parse_date_arg(text: str, flag: str) -> date:
    """Exactly ``YYYY-MM-DD`` (Python would also take ``20260101`` or ``2026-W01-1``)."""
    try:
        if not _ISO_DAY.fullmatch(text):
            raise ValueError(text)
        return date.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{flag} expects a date as YYYY-MM-DD, got {text!r}") from None


def _split(value: str | list[str] | tuple[str, ...] | None) -> list[str]:
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    return [part for item in items for part in re.split(r"[,|\s]+", item) if part]


def _blank_to_none(value: str | None) -> str | None:
    return value.strip() or None if value else None
