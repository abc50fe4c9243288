"""Old and new values shortened for one line, so that where they differ stays in sight.

A long text (a reworded outcome description, a detailed description) is cut to a width; cut at the
same place, two versions that differ only further on looked the same ("* A ≥50% PSA decline…" →
"* A ≥50% PSA decline…"). When the first difference lies past what a plain cut shows, both values are
shown from a little before it, "…" marking what is left out on either side. Pure; used by the
history, the HTML report and alert messages.
"""

from __future__ import annotations

ELLIPSIS = "…"
NONE = "∅"
CONTEXT = 20  # characters shown before the first difference


def shorten(value: str | None, width: int) -> str:
    """``value`` in at most ``width`` characters (``∅`` for none), cut at the end."""
    if value is None:
        return NONE
    return value if len(value) <= width else value[: width - 1] + ELLIPSIS


def abbreviate_pair(old: str | None, new: str | None, width: int) -> tuple[str, str]:
    """``old`` and ``new`` in at most ``width`` (>= 5) characters each. Where the values differ, the
    two results differ too, and each shows the first character that differs (or where it ends)."""
    if old is None or new is None or (len(old) <= width and len(new) <= width):
        return shorten(old, width), shorten(new, width)
    context = max(1, min(CONTEXT, (width - 3) // 2))
    same = _common_prefix(old, new)
    if same + context <= width - 1:  # a plain cut shows the difference and some of what follows it
        return shorten(old, width), shorten(new, width)
    start = same - context
    return _window(old, start, width), _window(new, start, width)


def _window(value: str, start: int, width: int) -> str:
    rest = value[start:]
    room = width - 1  # the leading "…"
    return ELLIPSIS + (rest if len(rest) <= room else rest[: room - 1] + ELLIPSIS)


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
