"""How the client reads an answer it cannot use: its ``Retry-After``, whether it is a web page (a
firewall's, a proxy's, a CDN's) rather than the registry's JSON or plain text, its first line, and one
line for a transport error."""

from __future__ import annotations

import html
import re
import time
from email.utils import parsedate_to_datetime

import requests

from pipeline.redact import redact


def retry_after_seconds(value: str | None, cap: float) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date), capped."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return max(0.0, min(seconds, cap))


def text_of(content: bytes) -> str:
    return content.decode("utf-8", errors="replace")


def is_html(response: requests.Response, content: bytes) -> bool:
    """The answer is a web page (a firewall's, a proxy's, a CDN's), not the registry's JSON or plain text."""
    return "html" in response.headers.get("Content-Type", "").lower() or text_of(content).lstrip()[:1] == "<"


def not_plain_text(response: requests.Response, content: bytes) -> bool:
    """The answer is not the plain text the registry's errors are (its spec: ``text/plain``): a web page
    (a proxy's, a CDN's) or a JSON document (an API gateway's ``{"message": "Not Found"}``)."""
    kind = response.headers.get("Content-Type", "").lower()
    return is_html(response, content) or "json" in kind or text_of(content).lstrip()[:1] in ("{", "[")


def body_line(response: requests.Response, content: bytes) -> str:
    """The body's first line; for an HTML page (a firewall's, a proxy's) its title or first text."""
    body = text_of(content)
    if is_html(response, content):
        title = re.search(r"<title[^>]*>(.*?)</title>", body, re.I | re.S)
        body = title.group(1) if title and title.group(1).strip() else re.sub(
            r"<(script|style)[^>]*>.*?</\1>|<[^>]+>", "\n", body, flags=re.I | re.S)
        body = html.unescape(body)
    body = _CONTROL.sub("", body)  # a binary body's NULs and escapes are no text to show in a terminal or log
    text = [line.strip() for line in body.strip().splitlines() if line.strip()]
    return redact(" ".join(text[0].split())[:200]) if text else response.reason or ""


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\x80-\x9f]")


def short_error(exc: Exception, limit: int = 200) -> str:
    """One line for a transport error: the root reason (``[Errno 111] Connection refused``) rather
    than urllib3's wrapper text with the whole URL, cut at a word if still long."""
    reason = getattr(exc.args[0], "reason", None) if exc.args else None  # MaxRetryError -> its cause
    text = (str(reason) if reason is not None else str(exc)).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    line = re.sub(r"^<[^>]+>: ", "", line)  # "<urllib3.connection.HTTPConnection object at 0x..>: "
    line = f"{type(exc).__name__}: {line}"  # ProxyError, ConnectTimeout, ... say where it failed
    if len(line) > limit:
        line = line[:limit].rsplit(" ", 1)[0] + " ..."
    return redact(line)
