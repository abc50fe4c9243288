"""Typed change events with severity, derived from the leaf diff of two stored versions.

Pure: ``derive_changes(pair, rules)`` gives the same rows for the same versions and rules, which is
what lets ``trialsync rederive`` recompute every change after a rule changes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from typing import Any

import orjson

from pipeline.change_events import Event, classify
from pipeline.diff import diff
from pipeline.errors import UsageError
from pipeline.submissions import SUBMISSION_EVENTS

SEVERITIES = ("info", "minor", "notable", "critical")
CATEGORIES = ("status", "enrollment", "dates", "sites", "design", "arms_interventions", "outcomes",
              "eligibility", "sponsor", "results", "identification", "registry", "other")
EVENTS = ("status_changed", "enrollment_changed", "enrollment_actualized", "date_slipped", "date_advanced",
          "date_actualized", "date_precision_refined", "date_precision_coarsened",
          "site_added", "site_removed", "site_status_changed",
          "arm_added", "arm_removed", "intervention_added", "intervention_removed", "primary_outcome_changed",
          "results_posted", "results_submitted", "results_returned", "results_submission_cancelled",
          "why_stopped_set", "phase_changed", "sponsor_changed", "study_added",
          "study_removed", "study_reappeared", "field_changed")


@dataclass(frozen=True)
class Rules:
    """Severity thresholds (defaults from SPEC.md); ``events`` overrides an event's severity."""

    critical_statuses: tuple[str, ...] = ("TERMINATED", "WITHDRAWN", "SUSPENDED")
    enrollment_pct_notable: float = 20.0
    date_shift_days_notable: int = 30
    events: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Rules:
        known = {"critical_statuses", "enrollment_pct_notable", "date_shift_days_notable", "events"}
        if unknown := set(data) - known:
            raise UsageError(f"unknown severity rule(s): {', '.join(sorted(unknown))}; "
                             f"known: {', '.join(sorted(known))}")
        rules = cls(
            critical_statuses=tuple(data.get("critical_statuses", cls.critical_statuses)),
            enrollment_pct_notable=float(data.get("enrollment_pct_notable", cls.enrollment_pct_notable)),
            date_shift_days_notable=int(data.get("date_shift_days_notable", cls.date_shift_days_notable)),
            events=dict(data.get("events", {})),
        )
        if bad := {v for v in rules.events.values() if v not in SEVERITIES}:
            raise UsageError(f"unknown severity {sorted(bad)[0]!r}; one of {', '.join(SEVERITIES)}")
        return rules

    def to_json(self) -> str:
        return orjson.dumps({
            "critical_statuses": list(self.critical_statuses),
            "enrollment_pct_notable": self.enrollment_pct_notable,
            "date_shift_days_notable": self.date_shift_days_notable,
            "events": dict(self.events),
        }, option=orjson.OPT_SORT_KEYS).decode()


@dataclass(frozen=True)
class VersionPair:
    """Two consecutive stored versions of one study (``old_raw`` is None for a study's first)."""

    nct_id: str
    from_version: int | None
    to_version: int
    old_raw: Mapping[str, Any] | None
    new_raw: Mapping[str, Any] | None  # None for a removal tombstone
    run_id: str
    detected_at: datetime
    registry_updated: date | None
    old_removed: bool = False
    new_removed: bool = False
    baseline: bool = False  # the first run of its scope: a first version is not news
    # What the two versions are (``version_identity``), for change ids that survive renumbering.
    old_identity: str | None = None
    new_identity: str | None = None


def version_identity(content_hash: str, is_removed: bool, observed_at: datetime | None) -> str:
    """What a stored version is, independent of its number: its content hash as stored. A removal
    marker repeats the content hash of the version it ends, so it is also named by when it was observed
    (two removals of the same content are two changes). Backfill renumbering, compaction and rederive
    keep both, so ``change_id``s survive them; a migration that rewrites stored hashes changes them."""
    if not is_removed:
        return content_hash
    if observed_at is None:
        return f"removed:{content_hash}"
    instant = (observed_at if observed_at.tzinfo else observed_at.replace(tzinfo=UTC)).astimezone(UTC)
    return f"removed:{content_hash}@{instant.isoformat()}"  # in UTC, whatever the session's time zone


@dataclass(frozen=True)
class Change:
    change_id: str
    nct_id: str
    from_version: int | None
    to_version: int
    run_id: str
    detected_at: datetime
    registry_updated: date | None
    path: str
    field: str
    category: str
    event: str
    old_value: str | None
    new_value: str | None
    severity: str
    shift_days: int | None = None
    pct_change: float | None = None



def derive_changes(pair: VersionPair, rules: Rules) -> list[Change]:
    """The typed events and field changes from ``pair.from_version`` to ``pair.to_version``."""
    if pair.new_removed:
        events = [Event("$", "study", "registry", "study_removed", pair.nct_id, None)]
    elif pair.old_raw is None or pair.old_removed:
        kind = "study_reappeared" if pair.old_removed else "study_added"
        events = [] if kind == "study_added" and pair.baseline else [
            Event("$", "study", "registry", kind, None, _title(pair.new_raw))]
        if pair.old_removed and pair.old_raw is not None and pair.new_raw is not None:
            events += classify(diff(pair.old_raw, pair.new_raw), pair.old_raw, pair.new_raw)
    else:
        assert pair.new_raw is not None
        events = classify(diff(pair.old_raw, pair.new_raw), pair.old_raw, pair.new_raw)
    seen: dict[tuple[str, str], int] = {}
    rows = []
    for e in events:
        occurrence = seen[e.event, e.path] = seen.get((e.event, e.path), -1) + 1
        rows.append(_row(pair, e, rules, occurrence))
    return rows


def _title(raw: Mapping[str, Any] | None) -> str | None:
    ident = ((raw or {}).get("protocolSection") or {}).get("identificationModule") or {}
    title = ident.get("briefTitle")
    return title if isinstance(title, str) else None


def change_id(nct_id: str, old_identity: str | None, new_identity: str | None, event: str, path: str,
              occurrence: int = 0) -> str:
    """What the change is, not where it sits: the study, the two versions' identities (not their
    numbers, which a backfill renumbers), the event and path, and which of two equal events on one path."""
    key = f"{nct_id}|{old_identity or ''}|{new_identity or ''}|{event}|{path}"
    if occurrence:
        key += f"|{occurrence}"
    return hashlib.blake2b(key.encode(), digest_size=10).hexdigest()


def _row(pair: VersionPair, e: Event, rules: Rules, occurrence: int) -> Change:
    return Change(
        change_id=change_id(pair.nct_id, pair.old_identity, pair.new_identity, e.event, e.path, occurrence),
        nct_id=pair.nct_id, from_version=pair.from_version, to_version=pair.to_version, run_id=pair.run_id,
        detected_at=pair.detected_at, registry_updated=pair.registry_updated, path=e.path, field=e.field,
        category=e.category, event=e.event, old_value=e.old_value, new_value=e.new_value,
        severity=severity(e, rules), shift_days=e.shift_days, pct_change=e.pct_change,
    )


def severity(e: Event | Change, rules: Rules) -> str:
    if e.event in rules.events:
        return rules.events[e.event]
    if e.event == "study_removed" or (e.event == "status_changed" and e.new_value in rules.critical_statuses):
        return "critical"
    if e.event in {"status_changed", "primary_outcome_changed", "results_posted", *SUBMISSION_EVENTS.values()}:
        return "notable"
    if e.event == "enrollment_changed":
        pct = _exact_pct(e)
        return "notable" if pct is None or abs(pct) >= rules.enrollment_pct_notable else "minor"
    if e.event in {"date_slipped", "date_advanced"}:
        return "notable" if abs(e.shift_days or 0) >= rules.date_shift_days_notable else "minor"
    if e.event == "field_changed":
        return "info"
    return "minor"


def _exact_pct(e: Event | Change) -> float | None:
    """The percentage from the counts themselves: ``pct_change`` is rounded for display, and 19.9993%
    rounds to the 20.0 that would make a minor change notable."""
    if e.pct_change is None:  # not two numbers
        return None
    try:
        before, after = float(e.old_value or ""), float(e.new_value or "")
    except ValueError:
        return e.pct_change
    return (after - before) * 100.0 / before if before else e.pct_change


def rescore(changes: Iterable[Change], rules: Rules) -> list[Change]:
    return [replace(c, severity=severity(c, rules)) for c in changes]
