"""What an HTTP receiver's answer means for an alert: a transient or a permanent failure, how long it
asks to wait (``Retry-After``), whether a redirect stays on the same origin. No network; the clock
only for an HTTP-date ``Retry-After`` that came without a ``Date``."""

from __future__ import annotations

import math
import urllib.request
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

from pipeline.errors import DeliveryFailed

# timeout, conflict (under Idempotency-Key: "a request with this key is still being processed"),
# locked, too early, too many requests: try again later
TRANSIENT_4XX = (408, 409, 423, 425, 429)
# Forbidden: with a valid Retry-After, a rate limit (GitHub's secondary limits, API gateways); without, for good.
RATE_LIMIT_4XX = (403,)


def http_failure(status: int, body: str, headers: Mapping[str, str] | None = None) -> DeliveryFailed:
    """5xx, 408/409/423/425/429 and a 403 with a valid ``Retry-After`` (a rate limit) are transient
    (retried; ``Retry-After`` honoured); any other 4xx refuses the message for good (permanent: marked
    rejected, not re-sent on every run), whatever ``Retry-After`` it carries: a wrong token (401), URL
    (404, 410) or body (400, 413, 422) stays wrong however long one waits, and a receiver (or a proxy in
    front of it) that adds ``Retry-After`` to every answer made such a message fail for ever, tried on
    every run and never marked rejected."""
    detail = " ".join(body.split())[:120]
    headers = headers or {}
    retry_after = retry_after_seconds(headers.get("Retry-After"), headers.get("Date"))
    transient = status >= 500 or status in TRANSIENT_4XX or (status in RATE_LIMIT_4XX and retry_after is not None)
    return DeliveryFailed(f"HTTP {status}" + (f": {detail}" if detail else ""), retryable=transient,
                          permanent=400 <= status < 500 and not transient,
                          retry_after=retry_after if transient else None)


def retry_after_seconds(value: str | None, date: str | None = None) -> float | None:
    """A ``Retry-After`` header in seconds to wait: delta-seconds or an HTTP-date (measured from the
    response's ``Date``, else (none, or malformed) this host's clock; a date past is 0). Malformed: None (not asked); a
    number too long to read: infinite."""
    value = (value or "").strip()
    if not value:
        return None
    if value.isdigit() and value.isascii():
        return math.inf if len(value) > 15 else float(value)
    when = _http_date(value)
    if when is None:
        return None
    now = (_http_date(date) if date else None) or datetime.now(UTC)  # a malformed Date: this host's clock
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def _http_date(value: str) -> datetime | None:
    try:
        return parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    return parts.scheme.lower(), parts.hostname, port or {"http": 80, "https": 443}.get(parts.scheme.lower())


def redirect_allowed(source: str, target: str) -> bool:
    """Whether a 307/308 from ``source`` to ``target`` may be followed with the channel's headers: the
    same origin, or the same host upgraded from http to https (on the same port or the default ones).
    Never https to http (the headers would go in the clear), never another host or port."""
    (scheme, host, port), (to_scheme, to_host, to_port) = origin(source), origin(target)
    if to_host != host or to_host is None:
        return False
    if (to_scheme, to_port) == (scheme, port):
        return True
    return (scheme, to_scheme) == ("http", "https") and (to_port == port or (port, to_port) == (80, 443))




class NoRedirects(urllib.request.HTTPRedirectHandler):
    """urllib turns a redirected POST (301, 302, 303) into a bodiless GET and reports the landing page's
    200: the alert marked sent, never arrived. With this handler every redirect is answered as it is."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None
