"""Keep secret values out of every text that leaves a run: log lines, errors, artifacts, the ledger."""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

MASK = "***"
MIN_LENGTH = 6  # shorter fragments (a port, "/") would mask ordinary text


class Redactor:
    """Replaces each known secret, and the telling parts of a secret URL, with ``***``."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._values: set[str] = set()
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str) -> None:
        for part in _parts(secret):
            if len(part) >= MIN_LENGTH:
                self._values.add(part)

    def __call__(self, text: str) -> str:
        for value in sorted(self._values, key=len, reverse=True):  # longest first: a URL before its path
            if value in text:
                text = text.replace(value, MASK)
        return text

    def __bool__(self) -> bool:
        return bool(self._values)


def _parts(secret: str) -> list[str]:
    """A URL's secret is also in its path, query, user info or password alone (libraries log those)."""
    parts = [secret, secret.strip()]
    if "://" in secret:
        url = urlsplit(secret.strip())
        path_query = url.path + (f"?{url.query}" if url.query else "")
        parts += [path_query, url.path, url.query, url.netloc.rpartition("@")[0], url.password or ""]
        parts += [unquote(p) for p in parts[2:]]
        parts += [segment for segment in url.path.split("/") if len(segment) >= 16]  # tokens in the path
    return parts
