"""Keep secrets out of messages and logs: credentials in URLs and secret-looking query parameters."""

from __future__ import annotations

import re

_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@'\"]+@")
# A presigned URL's (S3's X-Amz-Signature, X-Amz-Credential, X-Amz-Security-Token; GCS's X-Goog-*) too:
# the secret word may follow a prefix ending in - or _.
_SECRET_PARAM = re.compile(r"(?i)([?&;](?:[a-z0-9]+[-_])*(?:api[_-]?key|key|token|access[_-]?token|secret|password"
                           r"|passwd|pwd|auth|signature|sig|credential)=)[^&;\s'\"]+")


def redact(text: str) -> str:
    """``https://user:pw@host/x?api_key=1`` -> ``https://***@host/x?api_key=***``."""
    return _SECRET_PARAM.sub(r"\1***", _USERINFO.sub(r"\1***@", text))
