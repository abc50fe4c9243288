"""A sync's scope (which studies) and window (which update dates), as registry query parameters."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta

from pipeline.dates import latest_plausible
from pipeline.enums import STATUSES
from pipeline.errors import UsageError

MAX_PAGE_SIZE = 1000
MAX_QUERY_LENGTH = 1000
_ISO_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
# The spec's pattern for an NCT id (OpenAPI 2.0.5, filter.ids and /studies/{nctId}); the registry answers
# 400 for the whole request when one id breaks it (NCT00000000 does). Stored ids are NCT + 8 digits.
SPEC_NCT_ID = re.compile(r"^[Nn][Cc][Tt]0*[1-9]\d{0,7}$")
_ONLY_IDS = re.compile(r"^[Nn][Cc][Tt]\d+(?:[,\s]+[Nn][Cc][Tt]\d+)*$")
# An incremental run asks for records posted since the newest posting date seen minus this overlap.
# A record can appear days after its lastUpdatePostDate (a third of real records carry an ESTIMATED
# posting date; real postings fall on Sundays too), so one day is not enough. Unchanged records cost
# only a hash (~0.4 ms each, measured on the 326 real records): at 1,000 updates a day, 14 days of overlap
# refetch ~13,000 records, ~14 pages of 1,000 (~20 s at the default pace, ~5 s of hashing) per run.
# The registry's /version dataTimestamp is no better anchor: it says when the data was refreshed, not
# that a record appearing in a later refresh is posted on or after that day.
WATERMARK_OVERLAP = timedelta(days=14)


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
            if text and _ONLY_IDS.match(text.strip()):
                raise UsageError(f"{flag} holds only NCT ids, for which the registry ignores every filter "
                                 f"(--status, the incremental window): use --ids {','.join(text.split())}")
        for nct in self.ids:
            if not re.fullmatch(r"NCT\d{8}", nct):
                raise UsageError(f"invalid NCT id {nct!r} (expected NCT followed by 8 digits, not all zeros)")
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
        """From user input: comma/space separated ids and statuses, case-insensitive. A value given
        blank is refused, not taken as absent: ``ids=""`` would widen the scope to the whole registry."""
        return cls(
            query=_given("--query", query),
            condition=_given("--condition", condition),
            sponsor=_given("--sponsor", sponsor),
            ids=tuple(sorted({canonical_id(s) for s in _split_given("--ids", ids)})),
            statuses=tuple(sorted({s.upper() for s in _split_given("--status", statuses)})),
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

    def batches(self, extra: dict[str, str]) -> list[dict[str, str]]:
        """The requests of a walk over the scope: one, or for a large ids scope one per ``IDS_BATCH``
        ids (a single ``filter.ids`` of ~550 ids passes the usual 8 KB URL limit: 414)."""
        params = {**self.params(), **extra}
        if len(self.ids) <= IDS_BATCH:
            return [params]
        return [{**params, "filter.ids": ",".join(self.ids[i:i + IDS_BATCH])}
                for i in range(0, len(self.ids), IDS_BATCH)]

    def admits(self, status: str | None, nct_id: str) -> bool | None:
        """Whether a record with this overall status and id passes the scope's filters: True/False
        where the scope's filters can be checked here (ids, statuses), None where only the registry's
        search can tell (a text query)."""
        if self.ids and nct_id not in self.ids:
            return False
        if self.statuses and status not in self.statuses:
            return False
        return None if (self.query or self.condition or self.sponsor) else True

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


def next_watermark(previous: date | None, newest: date | None, today: date) -> date | None:
    """The scope's watermark after a run that saw records up to ``newest``: never back, and never past
    the run's next day (registry dates are US Eastern). A record dated in the future (a damaged bulk
    file's) would otherwise move every later incremental window past the registry's real updates; a
    watermark stored past it before is brought back to it."""
    latest = max(filter(None, [previous, newest]), default=None)
    return None if latest is None else min(latest, latest_plausible(today))


def resolve_window(*, full: bool, since: date | None, watermark: date | None) -> Window:
    """``--full`` or ``--since`` win; otherwise incremental from the watermark minus ``WATERMARK_OVERLAP``;
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
IDS_BATCH = 200  # ids per filter.ids request of an ids scope's walk


def lookup_params(ids: Sequence[str], batch: int = LOOKUP_BATCH) -> list[dict[str, str]]:
    """Requests that ask the registry which of ``ids`` it still publishes, without a scope's filters
    (a study that left a filtered scope is still in the registry)."""
    chunks = [ids[i:i + batch] for i in range(0, len(ids), batch)]
    return [{"filter.ids": ",".join(chunk), "pageSize": str(len(chunk))} for chunk in chunks]


def canonical_id(text: str) -> str:
    """An id as the spec allows it (``nct1234``, ``NCT001234567``) -> ``NCT00001234``; an id the spec
    refuses is a usage error (the registry would answer 400 to the whole request)."""
    if (nct := spec_id(text)) is None:
        raise UsageError(f"invalid NCT id {text!r} (expected NCT followed by up to 8 digits, not all zeros)")
    return nct


def spec_id(text: str) -> str | None:
    """``text`` as the registry's own form of an id the spec allows (``nct1234`` -> ``NCT00001234``), or
    None. One rule for every place a user writes ids (flags, watchlists)."""
    if not SPEC_NCT_ID.match(text):
        return None
    return "NCT" + text[3:].lstrip("0").rjust(8, "0")


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


def _split_given(flag: str, value: str | list[str] | tuple[str, ...] | None) -> list[str]:
    parts = _split(value)
    if value is not None and not parts and (isinstance(value, str) or len(value)):
        raise UsageError(f"{flag} must not be empty")
    return parts


def _given(flag: str, value: str | None) -> str | None:
    if value is not None and not value.strip():
        raise UsageError(f"{flag} must not be empty")
    return value.strip() if value is not None else None
