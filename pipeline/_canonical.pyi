"""Types of pipeline/_canonical.c (see its header comment)."""

from typing import Any

RULE: str

def canonical(value: Any, shape: dict[str, Any] | None, /) -> tuple[bytes, list[str]] | None: ...
