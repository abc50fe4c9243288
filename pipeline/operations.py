"""Scheduled operation, pure: which scopes a scheduled job syncs, and when a late run should stand down."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from pipeline.config import ConfigError, known
from pipeline.errors import UsageError
from pipeline.scope import Scope

SCOPE_KEYS = ("query", "condition", "sponsor", "ids", "status")
_TEXT_KEYS = ("query", "condition", "sponsor")  # one text each (a registry query)
_LIST_KEYS = ("ids", "status")  # a text (comma or space separated) or a list of texts
_WHOLE_REGISTRY = {"query": None, "condition": None, "sponsor": None, "ids": None, "status": None}


def scope_kwargs(specs: Any) -> list[dict[str, Any]]:
    """The ``sync_registry`` scope arguments of each configured scope (none configured: the whole registry).

    Every scope is checked before the first one is synced, so a typo fails the job at once; each
    problem is one ``UsageError`` line ``scopes[N].key: what is wrong`` (``check_scopes``).
    """
    with reading_scopes():
        return check_scopes(specs)


@contextmanager
def reading_scopes(prefix: str = "") -> Iterator[None]:
    """A ``ConfigError`` of ``check_scopes`` as one ``UsageError`` line (``prefix`` names the file)."""
    try:
        yield
    except ConfigError as exc:
        raise UsageError(f"{prefix}{exc}") from None


def check_scopes(specs: Any, key: str = "scopes") -> list[dict[str, Any]]:
    """``scope_kwargs`` raising ``ConfigError(key, what)``. Only a missing ``scopes`` (None) is the
    whole registry: whatever the user wrote that would widen to it by accident is refused (an empty
    list, a scope ``{}`` or one whose every key is empty, ``ids: []``), as are unknown keys, values of
    the wrong type (``ids: 1234`` or a list where a text is expected) and a scope given twice."""
    if specs is None:
        return [dict(_WHOLE_REGISTRY)]
    if not isinstance(specs, list | tuple):
        raise ConfigError(key, f"must be a list of scopes (each a mapping of {', '.join(SCOPE_KEYS)}), got "
                               f"{type(specs).__name__}")
    if not specs:
        raise ConfigError(key, "is empty, which would sync the whole registry; leave `scopes` out for that")
    out: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for i, spec in enumerate(specs, start=1):
        at = f"{key}[{i}]"
        if not isinstance(spec, Mapping):
            raise ConfigError(at, f"must be a mapping of {', '.join(SCOPE_KEYS)}, got {type(spec).__name__}")
        known(spec, SCOPE_KEYS, at)
        for name, value in spec.items():
            if value is None or (isinstance(value, str) and not value.strip()) or value in ([], ()):
                # An empty filter is no filter: ``ids: []`` would sync the whole registry.
                raise ConfigError(f"{at}.{name}", "is empty; leave the key out for no such filter")
            if name in _TEXT_KEYS and not isinstance(value, str):
                raise ConfigError(f"{at}.{name}", f"must be one text, got {type(value).__name__}")
            if name in _LIST_KEYS and not isinstance(value, str) and not (
                    isinstance(value, list | tuple) and all(isinstance(v, str) and v.strip() for v in value)):
                raise ConfigError(f"{at}.{name}", f"must be a text or a list of texts, got {type(value).__name__}")
        if not spec:
            raise ConfigError(at, f"is empty, which would sync the whole registry; give one or more of "
                                  f"{', '.join(SCOPE_KEYS)} (leave `scopes` out for the whole registry)")
        try:
            scope = Scope.build(query=spec.get("query"), condition=spec.get("condition"), sponsor=spec.get("sponsor"),
                                ids=spec.get("ids"), statuses=spec.get("status"))
        except UsageError as exc:
            raise ConfigError(at, str(exc)) from None
        same = scope.key.casefold()  # the registry's search ignores case: "AML" and "aml" are one scope
        if same in seen:
            raise ConfigError(at, f"is the same scope as {key}[{seen[same]}] ({scope.key})")
        seen[same] = i
        out.append({"query": scope.query, "condition": scope.condition, "sponsor": scope.sponsor,
                    "ids": list(scope.ids) or None, "status": list(scope.statuses) or None})
    return out


def stale_reason(scheduled: datetime | None, now: datetime, max_lateness: timedelta) -> str | None:
    """Why a run that starts at ``now`` but was due at ``scheduled`` should not run (None: it should).

    A missed day needs no run of its own: the next run's window starts at the scope's watermark
    (minus ``WATERMARK_OVERLAP``, 14 days), so one run catches up on every missed day. Runs that piled up while the
    machine or worker was down are therefore skipped, all but the one that is on time.
    """
    if scheduled is None:
        return None
    late = now - scheduled
    if late <= max_lateness:
        return None
    return (f"due at {scheduled:%Y-%m-%d %H:%M %Z}, started {_hours(late)} late (limit {_hours(max_lateness)}): "
            "skipped; the next run catches up from the watermark")


def _hours(delta: timedelta) -> str:
    return f"{delta.total_seconds() / 3600:.1f} h"
