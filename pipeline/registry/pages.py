"""A listing page of ``GET /studies``: its parsing, and the checks that stop a walk that would never end."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from pipeline.errors import RegistryError

WALK_SLACK_PAGES = 5  # pages past what totalCount needs before a walk is taken for a loop (at least)
MAX_IDLE_PAGES = 5  # pages in a row without a study not seen before: the cursor is stuck


@dataclass(frozen=True)
class Page:
    number: int  # 1-based
    studies: list[dict[str, Any]]
    next_token: str | None
    total_count: int | None  # the first page only
    body: bytes = b""  # the response body as received (the spool keeps it)


def check_token_progress(token: str, seen: set[str], number: int, url: str) -> None:
    """A ``nextPageToken`` met before in the same walk would loop forever: stop with the reason."""
    if token in seen:
        raise RegistryError(f"the registry sent the same page token again after page {number}: "
                            "stopping the walk instead of looping", url=url)
    seen.add(token)


def check_walk_length(pages: int, idle: int, total: int | None, per_page: int, url: str) -> None:
    """A registry whose cursor is stuck but sends a fresh token each time would be walked for ever:
    stop past the pages its own ``totalCount`` needs at the first page's size (plus slack for studies
    posted while paging), or after ``MAX_IDLE_PAGES`` pages in a row without a study not seen before."""
    if total is not None:
        needed = -(-total // max(per_page, 1))
        if pages > needed + max(WALK_SLACK_PAGES, needed // 10):
            raise RegistryError(f"the registry sent {pages} pages for a listing of {total} studies at "
                                f"{per_page} a page: stopping the walk instead of looping", url=url)
    if idle >= MAX_IDLE_PAGES:
        raise RegistryError(f"the registry sent {idle} pages in a row without a study not seen before "
                            f"(page {pages}): stopping the walk instead of looping", url=url)


def page_from_body(raw: bytes, number: int, url: str) -> Page:
    """A page from a stored body (the spool)."""
    return page_from_json(orjson.loads(raw), number, url, raw)


def page_from_json(body: Any, number: int, url: str, raw: bytes = b"") -> Page:
    if not isinstance(body, dict) or not isinstance(body.get("studies"), list):
        raise RegistryError("unexpected /studies body: no 'studies' array", url=url)
    token = body.get("nextPageToken")
    if token is not None and not isinstance(token, str):  # not the end of the listing: a broken answer
        raise RegistryError(f"unexpected /studies body: nextPageToken is a {type(token).__name__}, "
                            "not a string", url=url)
    total = body.get("totalCount")
    return Page(
        number=number,
        studies=body["studies"],
        next_token=token or None,
        total_count=total if isinstance(total, int) and not isinstance(total, bool) and total >= 0 else None,
        body=raw,
    )
