"""What an SMTP server's reply means for an alert: a transient or a permanent refusal. Pure.

The reply's class says it first (4xx: try again later; 5xx: refused), but RFC 3463 names some
enhanced status codes "persistent transient" whatever the class they come with: a full mailbox
(``X.2.2``: the recipient can make room), a full mail system (``X.3.1``), congestion (``X.4.5``). A
``552 5.2.2`` at DATA (Gmail's "account over quota") used to mark the alert rejected: never sent again
once the recipient had made room. A 552 with no enhanced code is RFC 5321's "exceeded storage
allocation": storage, transient too, as it is at RCPT (RFC 5321 4.5.3.1.10). The message's own size
(``X.3.4`` "message too big", ``X.2.3`` "message length exceeds administrative limit") is for good.
"""

from __future__ import annotations

import re

_ENHANCED = re.compile(r"^\s*[245]\.(\d{1,3})\.(\d{1,3})(?![\d.])")
PERSISTENT_TRANSIENT = frozenset({("2", "2"), ("3", "1"), ("4", "5")})  # mailbox full, system full, congestion


def enhanced_code(text: str) -> tuple[str, str] | None:
    """The subject and detail of the reply's enhanced status code (``5.2.2``: ``("2", "2")``), if any."""
    found = _ENHANCED.match(text)
    return (found[1], found[2]) if found else None


def transient(code: int, text: str) -> bool:
    """Whether a refusal with this reply may succeed later unchanged (sent again on the next run)."""
    if 400 <= code < 500:
        return True
    enhanced = enhanced_code(text)
    if enhanced in PERSISTENT_TRANSIENT:
        return True
    return code == 552 and enhanced is None


def permanent(code: int, text: str) -> bool:
    """Whether the server refused for good (5xx, and not one of the transient ones above)."""
    return code >= 500 and not transient(code, text)
