"""Typed change events with severity, derived from the leaf diff of two stored versions.

Pure: ``derive_changes(pair, rules)`` gives the same rows for the same versions and rules, which is
what lets ``trialsync rederive`` recompute every change after a rule changes.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from typing import Any

import orjson

from pipeline.date_events import date_change, partial
from pipeline.diff import Key, Leaf, diff, render_path
from pipeline.errors import UsageError
from pipeline.sites import site_name
from pipeline.submissions import SUBMISSION_EVENTS, submission_events

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
PLAN_DATES = {
    "startDateStruct": "start date",
    "primaryCompletionDateStruct": "primary completion date",
    "completionDateStruct": "completion date",
}
_MODULE_CATEGORY = {
    "identificationModule": "identification",
    "sponsorCollaboratorsModule": "sponsor",
    "armsInterventionsModule": "arms_interventions",
    "outcomesModule": "outcomes",
    "eligibilityModule": "eligibility",
    "designModule": "design",
}


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


@dataclass(frozen=True)
class _Event:
    path: str
    field: str
    category: str
    event: str
    old_value: str | None
    new_value: str | None
    shift_days: int | None = None
    pct_change: float | None = None


def derive_changes(pair: VersionPair, rules: Rules) -> list[Change]:
    """The typed events and field changes from ``pair.from_version`` to ``pair.to_version``."""
    if pair.new_removed:
        events = [_Event("$", "study", "registry", "study_removed", pair.nct_id, None)]
    elif pair.old_raw is None or pair.old_removed:
        kind = "study_reappeared" if pair.old_removed else "study_added"
        events = [] if kind == "study_added" and pair.baseline else [
            _Event("$", "study", "registry", kind, None, _title(pair.new_raw))]
        if pair.old_removed and pair.old_raw is not None and pair.new_raw is not None:
            events += classify(diff(pair.old_raw, pair.new_raw))
    else:
        assert pair.new_raw is not None
        events = classify(diff(pair.old_raw, pair.new_raw))
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


def _row(pair: VersionPair, e: _Event, rules: Rules, occurrence: int) -> Change:
    return Change(
        change_id=change_id(pair.nct_id, pair.old_identity, pair.new_identity, e.event, e.path, occurrence),
        nct_id=pair.nct_id, from_version=pair.from_version, to_version=pair.to_version, run_id=pair.run_id,
        detected_at=pair.detected_at, registry_updated=pair.registry_updated, path=e.path, field=e.field,
        category=e.category, event=e.event, old_value=e.old_value, new_value=e.new_value,
        severity=severity(e, rules), shift_days=e.shift_days, pct_change=e.pct_change,
    )


def severity(e: _Event | Change, rules: Rules) -> str:
    if e.event in rules.events:
        return rules.events[e.event]
    if e.event == "study_removed" or (e.event == "status_changed" and e.new_value in rules.critical_statuses):
        return "critical"
    if e.event in {"status_changed", "primary_outcome_changed", "results_posted", *SUBMISSION_EVENTS.values()}:
        return "notable"
    if e.event == "enrollment_changed":
        return "notable" if e.pct_change is None or abs(e.pct_change) >= rules.enrollment_pct_notable else "minor"
    if e.event in {"date_slipped", "date_advanced"}:
        return "notable" if abs(e.shift_days or 0) >= rules.date_shift_days_notable else "minor"
    if e.event == "field_changed":
        return "info"
    return "minor"


def rescore(changes: Iterable[Change], rules: Rules) -> list[Change]:
    return [replace(c, severity=severity(c, rules)) for c in changes]


# -- classification ----------------------------------------------------------------------------
def classify(leaves: list[Leaf]) -> list[_Event]:
    events: list[_Event] = []
    phases = [leaf for leaf in leaves if _names(leaf)[-1:] == ["phases"] or _names(leaf)[-2:-1] == ["phases"]]
    primary = [leaf for leaf in leaves if "primaryOutcomes" in _names(leaf)]
    if phases:
        events.append(_phase_event(phases))
    events += _primary_outcome_events(primary)
    for leaf in leaves:
        if leaf in phases or leaf in primary:
            continue
        events += _classify_leaf(leaf)
    return events


def _names(leaf: Leaf) -> list[str]:
    return [p for p in leaf.path if isinstance(p, str)]


def _classify_leaf(leaf: Leaf) -> list[_Event]:
    names = _names(leaf)
    last = names[-1]
    path = leaf.text
    old, new = _value_text(leaf.old), _value_text(leaf.new)
    if names[:2] == ["protocolSection", "statusModule"]:
        return _status_module(leaf, names, path, old, new)
    if names[0] == "derivedSection":  # its only material part: miscInfoModule.submissionTracking
        return ([_Event(p, f, "results", e, o, n) for p, f, e, o, n in submission_events(leaf)]
                or [_Event(path, _friendly(leaf), "results", "field_changed", old, new)])
    if names[-2:] == ["enrollmentInfo", "count"]:
        return [_Event(path, "enrollment", "enrollment", "enrollment_changed", old, new,
                       pct_change=_pct(leaf.old, leaf.new))]
    if names[-2:] == ["enrollmentInfo", "type"]:
        event = "enrollment_actualized" if (leaf.old, leaf.new) == ("ESTIMATED", "ACTUAL") else "field_changed"
        return [_Event(path, "enrollment type", "enrollment", event, old, new)]
    if "locations" in names:
        return [_site_event(leaf, path)]
    if last in {"armGroups", "interventions"} and isinstance(leaf.path[-1], Key):
        return [_element_event(leaf, path)]
    if names[-2:] == ["leadSponsor", "name"]:
        return [_Event(path, "lead sponsor", "sponsor", "sponsor_changed", old, new)]
    if names == ["hasResults"]:
        event = "results_posted" if leaf.new is True else "field_changed"
        return [_Event(path, "has results", "results", event, old, new)]
    return [_Event(path, _friendly(leaf), _category(names), "field_changed", old, new)]


def _status_module(leaf: Leaf, names: list[str], path: str, old: str | None, new: str | None) -> list[_Event]:
    field_name = names[2]
    if field_name == "overallStatus":
        return [_Event(path, "overall status", "status", "status_changed", old, new)]
    if field_name == "whyStopped":
        event = "why_stopped_set" if leaf.new else "field_changed"
        return [_Event(path, "why stopped", "status", event, old, new)]
    if field_name == "lastKnownStatus":
        return [_Event(path, "last known status", "status", "field_changed", old, new)]
    if field_name in PLAN_DATES:
        return [_plan_date_event(leaf, names, path, PLAN_DATES[field_name])]
    if field_name == "expandedAccessInfo":
        return [_Event(path, _friendly(leaf), "other", "field_changed", old, new)]
    return [_Event(path, _friendly(leaf), "registry", "field_changed", old, new)]  # bookkeeping dates


def _plan_date_event(leaf: Leaf, names: list[str], path: str, label: str) -> _Event:
    part = names[3] if len(names) > 3 else None
    if part == "type":
        event = "date_actualized" if (leaf.old, leaf.new) == ("ESTIMATED", "ACTUAL") else "field_changed"
        return _Event(path, f"{label} type", "dates", event, _value_text(leaf.old), _value_text(leaf.new))
    old_raw = leaf.old.get("date") if isinstance(leaf.old, dict) else leaf.old
    new_raw = leaf.new.get("date") if isinstance(leaf.new, dict) else leaf.new
    old_date, new_date = partial(old_raw), partial(new_raw)
    if old_date is None or new_date is None or part not in (None, "date"):
        return _Event(path, label, "dates", "field_changed", _value_text(leaf.old), _value_text(leaf.new))
    change = date_change(old_date, new_date)
    return _Event(path, label, "dates", change.event, old_date.raw, new_date.raw, shift_days=change.shift_days)


def _site_event(leaf: Leaf, path: str) -> _Event:
    index = next(i for i, p in enumerate(leaf.path) if p == "locations")
    site_part = leaf.path[index + 1] if len(leaf.path) > index + 1 else None
    is_site = len(leaf.path) == index + 2 and isinstance(site_part, Key)
    if is_site and (leaf.old is None) != (leaf.new is None):
        site = leaf.new if leaf.old is None else leaf.old
        facility = site_name(site) if isinstance(site, dict) else None
        event = "site_added" if leaf.old is None else "site_removed"
        return _Event(path, "site", "sites", event, None if leaf.old is None else facility,
                      facility if leaf.old is None else None)
    if len(leaf.path) == index + 3 and leaf.path[-1] == "status":
        facility = site_part.name if isinstance(site_part, Key) and site_part.name else _key_text(site_part)
        return _Event(path, f"site status ({facility})", "sites", "site_status_changed",
                      _value_text(leaf.old), _value_text(leaf.new))
    return _Event(path, _friendly(leaf), "sites", "field_changed", _value_text(leaf.old), _value_text(leaf.new))


def _element_event(leaf: Leaf, path: str) -> _Event:
    kind = "arm" if "armGroups" in _names(leaf) else "intervention"
    name = _own(leaf, "label" if kind == "arm" else "name")
    if leaf.old is None:
        return _Event(path, kind, "arms_interventions", f"{kind}_added", None, name)
    if leaf.new is None:
        return _Event(path, kind, "arms_interventions", f"{kind}_removed", name, None)
    return _Event(path, kind, "arms_interventions", "field_changed", _value_text(leaf.old), _value_text(leaf.new))


def _phase_event(leaves: list[Leaf]) -> _Event:
    path = render_path(tuple(p for p in leaves[0].path if p != leaves[0].path[-1]) if isinstance(
        leaves[0].path[-1], Key) else leaves[0].path)
    old = sorted(_key_text(leaf.path[-1]) for leaf in leaves if leaf.old is not None and isinstance(leaf.path[-1], Key))
    new = sorted(_key_text(leaf.path[-1]) for leaf in leaves if leaf.new is not None and isinstance(leaf.path[-1], Key))
    if not isinstance(leaves[0].path[-1], Key):  # the whole phases list appeared or vanished
        old = list(leaves[0].old or [])
        new = list(leaves[0].new or [])
    return _Event(path, "phase", "design", "phase_changed", ", ".join(old) or None, ", ".join(new) or None)


def _primary_outcome_events(leaves: list[Leaf]) -> list[_Event]:
    """A measure renamed shows as one removed and one added outcome: pair them into one change."""
    removed = [leaf for leaf in leaves if leaf.new is None and isinstance(leaf.path[-1], Key)]
    added = [leaf for leaf in leaves if leaf.old is None and isinstance(leaf.path[-1], Key)]
    events = []
    for old_leaf, new_leaf in zip(removed, added, strict=False):
        events.append(_Event(new_leaf.text, "primary outcome", "outcomes", "primary_outcome_changed",
                             _own(old_leaf, "measure"), _own(new_leaf, "measure")))
    for leaf in removed[len(added):]:
        events.append(_Event(leaf.text, "primary outcome", "outcomes", "primary_outcome_changed",
                             _own(leaf, "measure"), None))
    for leaf in added[len(removed):]:
        events.append(_Event(leaf.text, "primary outcome", "outcomes", "primary_outcome_changed",
                             None, _own(leaf, "measure")))
    for leaf in leaves:
        if leaf not in removed and leaf not in added:
            events.append(_Event(leaf.text, f"primary outcome {_friendly(leaf)}", "outcomes",
                                 "primary_outcome_changed", _value_text(leaf.old), _value_text(leaf.new)))
    return events


def _category(names: list[str]) -> str:
    if names[0] in {"resultsSection", "hasResults"}:
        return "results"
    if names[0] == "annotationSection":
        return "registry"
    module = names[1] if len(names) > 1 else ""
    return _MODULE_CATEGORY.get(module, "other")


def _own(leaf: Leaf, name: str) -> str:
    """An added or removed element's own ``name`` field (its path key may carry a ``#2`` tie-break)."""
    element = leaf.new if leaf.old is None else leaf.old
    value = element.get(name) if isinstance(element, dict) else None
    return str(value) if value is not None else _key_text(leaf.path[-1])


def _key_text(part: str | Key | None) -> str:
    return part.value if isinstance(part, Key) else str(part)


def _value_text(value: Any) -> str | None:
    """The registry's own text: strings as written, numbers and booleans as JSON, objects as JSON."""
    if value is None or isinstance(value, str):
        return value
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def _pct(old: Any, new: Any) -> float | None:
    if isinstance(old, int | float) and isinstance(new, int | float) and old:
        return round((new - old) * 100.0 / old, 2)
    return None


def _friendly(leaf: Leaf) -> str:
    """The leaf's own name in words: ``lastUpdatePostDateStruct.date`` -> ``last update post date``."""
    names = [n for n in _names(leaf) if n not in {"date", "type"} or n == _names(leaf)[-1]]
    name = names[-1]
    if name in {"date"} and len(names) > 1:
        name = names[-2]
    words = re.sub(r"(?<!^)(?=[A-Z])", " ", name.removesuffix("Struct")).lower()
    return words
