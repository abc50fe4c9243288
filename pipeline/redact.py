"""Keep secrets out of messages and logs: credentials in URLs and secret-looking query parameters."""

from __future__ import annotations

import re

_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@'\"]+@")
_SECRET_PARAM = re.compile(r"(?i)([?&;](?:api[_-]?key|key|token|access[_-]?token|secret|password|passwd|pwd"
                           r"|auth|signature|sig)=)[^&;\s'\"]+")


def redact(text: str) -> str:
    """``https://user:pw@host/x?api_key=1`` -> ``https://***@host/x?api_key=***``."""
    return _SECRET_PARAM.sub(r"\1***", _USERINFO.sub(r"\1***@", text))
