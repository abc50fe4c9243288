"""Text markup: history versions' HTML turned into the markdown API v2 sends. Pure.

API v2 (``markupFormat=markdown``, its default) sends long texts as markdown: paragraphs apart by a
blank line, list items as ``* item`` or ``1. item`` on their own lines (nested ones indented by two
spaces), ``**bold**``, ``*italic*``, ``^sup^``, ``~sub~``, and the characters markdown would read
escaped with a backslash: ``\\ < > [ ] & ^ ~ *``, a ``_`` opening a word, a list marker opening a
line (real records: 382 ``\\<`` and not one bare ``<`` in their long texts). The website's history
API can send the same text as HTML (``<ul><li>...``; the one real capture does). ``api_form``
rewrites every such text of a record into the API's form, so the same registry version has one
content hash whichever API it came from. Text without HTML is left as it is. Known limit: the
registry's escaping of a ``_`` inside a word follows no rule we could find, so such a text can still
differ by that backslash.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

_TAGS = "ul|ol|li|p|br|b|strong|i|em|sub|sup|mark|span|div|u"
_HAS_HTML = re.compile(rf"</?(?:{_TAGS})\b[^>]*>", re.I)
_ESCAPE = re.compile(r"([\\<>\[\]&^~*])")
_LINE_START = re.compile(r"^(\d+(?=[.)])|)([-+#]|(?<=\d)[.)])(?=\s|$)")  # a list or heading marker: escaped
_WORD_UNDERSCORE = re.compile(r"(^|\s)_(?=\S)")  # an underscore that would open emphasis
_INLINE = {"b": "**", "strong": "**", "i": "*", "em": "*", "sup": "^", "sub": "~"}


def api_form(value: Any) -> Any:
    """``value`` (a record or any part of it) with every HTML text rewritten as API markdown; the same
    object when nothing needed rewriting."""
    if isinstance(value, str):
        return html_to_api_markdown(value) if _HAS_HTML.search(value) else value
    if isinstance(value, dict):
        out = {k: api_form(v) for k, v in value.items()}
        return value if all(out[k] is value[k] for k in value) else out
    if isinstance(value, list):
        items = [api_form(v) for v in value]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
    return value


def html_to_api_markdown(text: str) -> str:
    parser = _Converter()
    parser.feed(text)
    parser.close()
    return parser.result()


class _Converter(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[tuple[str, str]] = []  # ("para" | "item", text)
        self.lists: list[list[Any]] = []  # [kind "ul"/"ol", items so far]
        self.current: list[str] = []
        self.kind = "para"
        self.prefix = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        tag = tag.lower()
        if tag in ("p", "div"):
            self._flush()
        elif tag == "br":
            self.current.append("\n")
        elif tag in ("ul", "ol"):
            self._flush()
            self.lists.append([tag, 0])
        elif tag == "li":
            self._flush()
            depth = max(1, len(self.lists))
            kind, count = self.lists[-1] if self.lists else ("ul", 0)
            if self.lists:
                self.lists[-1][1] = count + 1
            marker = f"{count + 1}. " if kind == "ol" else "* "
            self.kind, self.prefix = "item", "  " * (depth - 1) + marker
        elif tag in _INLINE:
            self.current.append(_INLINE[tag])

    def handle_endtag(self, tag: str) -> None:
        tag = tag.lower()
        if tag in ("p", "div", "li"):
            self._flush()
        elif tag in ("ul", "ol"):
            self._flush()
            if self.lists:
                self.lists.pop()
        elif tag in _INLINE:
            self.current.append(_INLINE[tag])

    def handle_data(self, data: str) -> None:
        text = _ESCAPE.sub(r"\\\1", re.sub(r"[ \t\r\n]+", " ", data))
        self.current.append(_WORD_UNDERSCORE.sub(r"\1\\_", text))

    def _flush(self) -> None:
        lines = (_LINE_START.sub(r"\1\\\2", line.strip()) for line in "".join(self.current).split("\n"))
        text = "\n".join(lines).strip()
        if text:
            self.blocks.append((self.kind, self.prefix + text))
        self.current, self.kind, self.prefix = [], "para", ""

    def result(self) -> str:
        self._flush()
        out = ""
        for i, (kind, text) in enumerate(self.blocks):
            if i:
                out += "\n" if kind == "item" and self.blocks[i - 1][0] == "item" else "\n\n"
            out += text
        return out
