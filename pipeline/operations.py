"""Scheduled operation, pure: which scopes a scheduled job syncs, and when a late run should stand down."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from pipeline.errors import UsageError
from pipeline.scope import Scope

SCOPE_KEYS = ("query", "condition", "sponsor", "ids", "status")


def scope_kwargs(specs: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """The ``sync_registry`` scope arguments of each configured scope (none configured: the whole registry).

    Every scope is checked before the first one is synced, so a typo fails the job at once.
    """
    out: list[dict[str, Any]] = []
    keys: set[str] = set()
    for i, spec in enumerate(specs or [{}], start=1):
        if not isinstance(spec, Mapping):
            raise UsageError(f"scope {i} must be a mapping of {', '.join(SCOPE_KEYS)}")
        if unknown := set(spec) - set(SCOPE_KEYS):
            raise UsageError(f"scope {i}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(SCOPE_KEYS)}")
        if empty := [key for key, value in spec.items() if value is None or value in ("", [], ())]:
            # An empty filter is no filter: ``ids: []`` would sync the whole registry.
            raise UsageError(f"scope {i}: {', '.join(empty)} is empty; leave the key out for no such filter")
        scope = Scope.build(query=spec.get("query"), condition=spec.get("condition"), sponsor=spec.get("sponsor"),
                            ids=spec.get("ids"), statuses=spec.get("status"))
        if scope.key in keys:
            raise UsageError(f"scope {i} repeats scope {scope.key}")
        keys.add(scope.key)
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
