"""Old and new values shortened for one line, so that where they differ stays in sight.

A long text (a reworded outcome description, a detailed description) is cut to a width; cut at the
same place, two versions that differ only further on looked the same ("* A ≥50% PSA decline…" →
"* A ≥50% PSA decline…"). When the first difference lies past what a plain cut shows, both values are
shown from a little before it, "…" marking what is left out on either side.

A value of several lines (the registry's descriptions are markdown, paragraphs and lists) is shown on
its one line: a line break as ``⏎``, a carriage return as ``␍``, a tab and the other control characters
as their Unicode control pictures (``␉``, ...). The history's one-line change, the report's and an
alert's ``old → new`` used to carry the value's line breaks into the middle of the line. Two different
values never look alike: where the pictures would make them so (one value holds a literal ``⏎`` where
the other breaks the line, ``\\r\\n`` against ``\\u2028``, ``∅`` against none), or where they differ
only in runs of spaces, which the HTML report, Markdown and chat clients show as one (an edit that made
a double space single read "a b → a b"), both are shown as quoted JSON strings instead, every special
character escaped and each space after a space as ``\\u0020``. Pure; used by the history, the HTML
report, alert messages and their artifacts.
"""

from __future__ import annotations

import json
import re

ELLIPSIS = "…"
NONE = "∅"
CONTEXT = 20  # characters shown before the first difference
LINE_BREAK = "⏎"
# Every character that ends a line (``str.splitlines``) or is invisible on one, as a visible one.
_PICTURES = {**{code: chr(0x2400 + code) for code in range(0x20)}, 0x7F: "␡", ord("\n"): LINE_BREAK,
             0x85: "␤", 0x2028: "␤", 0x2029: "¶"}
_ESCAPES = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029", 0x7F: "\\u007f"}  # json.dumps keeps them


def one_line(value: str) -> str:
    """``value`` with its line breaks and control characters as visible characters (``⏎``, ``␍``, ``␉``)."""
    return value.translate(_PICTURES)


def quoted(value: str) -> str:
    """``value`` as a quoted JSON string on one line: distinct for every distinct value."""
    return _SPACE_AFTER_SPACE.sub(r"\\u0020", json.dumps(value, ensure_ascii=False).translate(_ESCAPES))


_SPACE_AFTER_SPACE = re.compile("(?<= ) ")


def _as_rendered(shown: str) -> str:
    """``shown`` as HTML, Markdown and chat clients display it: runs of spaces as one, none at the ends."""
    return _SPACES.sub(" ", shown).strip(" ")


_SPACES = re.compile(" {2,}")


def shorten(value: str | None, width: int) -> str:
    """``value`` in at most ``width`` characters (``∅`` for none), cut at the end."""
    if value is None:
        return NONE
    return value if len(value) <= width else value[: width - 1] + ELLIPSIS


def abbreviate_pair(old: str | None, new: str | None, width: int) -> tuple[str, str]:
    """``old`` and ``new`` on one line each (``one_line``) in at most ``width`` (>= 5) characters. Where
    the values differ, the two results differ too, and each shows the first character that differs (or
    where it ends)."""
    shown = _abbreviate(None if old is None else one_line(old), None if new is None else one_line(new), width)
    if old != new and _as_rendered(shown[0]) == _as_rendered(shown[1]):  # the pictures or spaces make them alike
        shown = _abbreviate(None if old is None else quoted(old), None if new is None else quoted(new), width)
    return shown


def _abbreviate(old: str | None, new: str | None, width: int) -> tuple[str, str]:
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
