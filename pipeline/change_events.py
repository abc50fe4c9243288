"""What the leaf diff of two versions is, in events: ``classify`` turns changed leaves into typed events
(status, enrollment, plan dates, sites, arms, interventions, phases, primary outcomes, results
submissions) and ``field_changed`` for any other leaf. Pure; ``pipeline.changes`` adds ids and severity.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from pipeline.date_events import date_change, partial
from pipeline.diff import Key, Leaf, render_path
from pipeline.similarity import pair_by_text
from pipeline.sites import site_name
from pipeline.submissions import submission_events

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
class Event:
    path: str
    field: str
    category: str
    event: str
    old_value: str | None
    new_value: str | None
    shift_days: int | None = None
    pct_change: float | None = None



def classify(leaves: list[Leaf], old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Event]:
    """The events of ``leaves``, the diff of the records ``old`` and ``new`` (read whole where a leaf
    is one part of a list: a phase change names both phase lists)."""
    events: list[Event] = []
    phases = [leaf for leaf in leaves if _names(leaf)[-1:] == ["phases"] or _names(leaf)[-2:-1] == ["phases"]]
    primary = [leaf for leaf in leaves if "primaryOutcomes" in _names(leaf)]
    if phases:
        events.append(_phase_event(old, new))
    events += _primary_outcome_events(primary)
    for leaf in leaves:
        if leaf in phases or leaf in primary:
            continue
        events += _classify_leaf(leaf)
    return events


def _names(leaf: Leaf) -> list[str]:
    return [p for p in leaf.path if isinstance(p, str)]


def _classify_leaf(leaf: Leaf) -> list[Event]:
    names = _names(leaf)
    last = names[-1]
    path = leaf.text
    old, new = _value_text(leaf.old), _value_text(leaf.new)
    if names[:2] == ["protocolSection", "statusModule"]:
        return _status_module(leaf, names, path, old, new)
    if names[0] == "derivedSection":  # its only material part: miscInfoModule.submissionTracking
        return ([Event(p, f, "results", e, o, n) for p, f, e, o, n in submission_events(leaf)]
                or [Event(path, _friendly(leaf), "results", "field_changed", old, new)])
    if names[-2:] == ["enrollmentInfo", "count"]:
        return [Event(path, "enrollment", "enrollment", "enrollment_changed", old, new,
                       pct_change=_pct(leaf.old, leaf.new))]
    if names[-2:] == ["enrollmentInfo", "type"]:
        event = "enrollment_actualized" if (leaf.old, leaf.new) == ("ESTIMATED", "ACTUAL") else "field_changed"
        return [Event(path, "enrollment type", "enrollment", event, old, new)]
    if "locations" in names:
        return [_site_event(leaf, path)]
    if last in {"armGroups", "interventions"} and isinstance(leaf.path[-1], Key):
        return [_element_event(leaf, path)]
    if names[-2:] == ["leadSponsor", "name"]:
        return [Event(path, "lead sponsor", "sponsor", "sponsor_changed", old, new)]
    if names == ["hasResults"]:
        event = "results_posted" if leaf.new is True else "field_changed"
        return [Event(path, "has results", "results", event, old, new)]
    return [Event(path, _friendly(leaf), _category(names), "field_changed", old, new)]


def _status_module(leaf: Leaf, names: list[str], path: str, old: str | None, new: str | None) -> list[Event]:
    field_name = names[2]
    if field_name == "overallStatus":
        return [Event(path, "overall status", "status", "status_changed", old, new)]
    if field_name == "whyStopped":
        event = "why_stopped_set" if leaf.new else "field_changed"
        return [Event(path, "why stopped", "status", event, old, new)]
    if field_name == "lastKnownStatus":
        return [Event(path, "last known status", "status", "field_changed", old, new)]
    if field_name in PLAN_DATES:
        return [_plan_date_event(leaf, names, path, PLAN_DATES[field_name])]
    if field_name == "expandedAccessInfo":
        return [Event(path, _friendly(leaf), "other", "field_changed", old, new)]
    return [Event(path, _friendly(leaf), "registry", "field_changed", old, new)]  # bookkeeping dates


def _plan_date_event(leaf: Leaf, names: list[str], path: str, label: str) -> Event:
    part = names[3] if len(names) > 3 else None
    if part == "type":
        event = "date_actualized" if (leaf.old, leaf.new) == ("ESTIMATED", "ACTUAL") else "field_changed"
        return Event(path, f"{label} type", "dates", event, _value_text(leaf.old), _value_text(leaf.new))
    old_raw = leaf.old.get("date") if isinstance(leaf.old, dict) else leaf.old
    new_raw = leaf.new.get("date") if isinstance(leaf.new, dict) else leaf.new
    old_date, new_date = partial(old_raw), partial(new_raw)
    if old_date is None or new_date is None or part not in (None, "date"):
        return Event(path, label, "dates", "field_changed", _value_text(leaf.old), _value_text(leaf.new))
    change = date_change(old_date, new_date)
    return Event(path, label, "dates", change.event, old_date.raw, new_date.raw, shift_days=change.shift_days)


def _site_event(leaf: Leaf, path: str) -> Event:
    index = next(i for i, p in enumerate(leaf.path) if p == "locations")
    site_part = leaf.path[index + 1] if len(leaf.path) > index + 1 else None
    is_site = len(leaf.path) == index + 2 and isinstance(site_part, Key)
    if is_site and (leaf.old is None) != (leaf.new is None):
        site = leaf.new if leaf.old is None else leaf.old
        facility = site_name(site) if isinstance(site, dict) else None
        event = "site_added" if leaf.old is None else "site_removed"
        return Event(path, "site", "sites", event, None if leaf.old is None else facility,
                      facility if leaf.old is None else None)
    if len(leaf.path) == index + 3 and leaf.path[-1] == "status":
        facility = site_part.name if isinstance(site_part, Key) and site_part.name else _key_text(site_part)
        return Event(path, f"site status ({facility})", "sites", "site_status_changed",
                      _value_text(leaf.old), _value_text(leaf.new))
    return Event(path, _friendly(leaf), "sites", "field_changed", _value_text(leaf.old), _value_text(leaf.new))


def _element_event(leaf: Leaf, path: str) -> Event:
    kind = "arm" if "armGroups" in _names(leaf) else "intervention"
    name = _own(leaf, "label" if kind == "arm" else "name")
    if leaf.old is None:
        return Event(path, kind, "arms_interventions", f"{kind}_added", None, name)
    if leaf.new is None:
        return Event(path, kind, "arms_interventions", f"{kind}_removed", name, None)
    return Event(path, kind, "arms_interventions", "field_changed", _value_text(leaf.old), _value_text(leaf.new))


_PHASES = ("protocolSection", "designModule", "phases")


def _phase_event(old: Mapping[str, Any], new: Mapping[str, Any]) -> Event:
    """The phase lists before and after, whole (the diff only has the phases that came or went); an
    empty list is no phases, as null or no key is (``pipeline.hashing``: the same content)."""
    return Event(render_path(_PHASES), "phase", "design", "phase_changed",
                 _value_text(_member(old, _PHASES) or None), _value_text(_member(new, _PHASES) or None))


def _member(record: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = record
    for name in path:
        value = value.get(name) if isinstance(value, Mapping) else None
    return value


def _primary_outcome_events(leaves: list[Leaf]) -> list[Event]:
    """A measure renamed shows as one removed and one added outcome: pair them into one change, each
    removed measure with the added one most like it (not the one in its place)."""
    removed = [leaf for leaf in leaves if leaf.new is None and isinstance(leaf.path[-1], Key)]
    added = [leaf for leaf in leaves if leaf.old is None and isinstance(leaf.path[-1], Key)]
    pairs = pair_by_text([_measure(leaf) for leaf in removed], [_measure(leaf) for leaf in added])
    events = [_outcome_event(added[j].text, removed[i], added[j]) for i, j in pairs]
    paired_old, paired_new = {i for i, _ in pairs}, {j for _, j in pairs}
    events += [_outcome_event(leaf.text, leaf, None) for i, leaf in enumerate(removed) if i not in paired_old]
    events += [_outcome_event(leaf.text, None, leaf) for j, leaf in enumerate(added) if j not in paired_new]
    for leaf in leaves:
        if leaf not in removed and leaf not in added:
            events.append(Event(leaf.text, f"primary outcome {_friendly(leaf)}", "outcomes",
                                "primary_outcome_changed", _value_text(leaf.old), _value_text(leaf.new)))
    return events


def _measure(leaf: Leaf) -> str:
    """An added or removed outcome's measure ('' when it has none, as the view reads it)."""
    element = leaf.new if leaf.old is None else leaf.old
    value = element.get("measure") if isinstance(element, dict) else None
    return "" if value is None else str(value)


def _outcome_event(path: str, old: Leaf | None, new: Leaf | None) -> Event:
    return Event(path, "primary outcome", "outcomes", "primary_outcome_changed",
                 _own(old, "measure") if old else None, _own(new, "measure") if new else None)


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
