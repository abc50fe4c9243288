"""Derive variants of a real record: the changes a registry update makes. Pure; returns copies.

The demo replays "next day" updates with these, and tests generate changes from real records
instead of inventing record shapes.
"""

from __future__ import annotations

import copy
from datetime import date, timedelta
from typing import Any

import orjson

from pipeline.dates import parse_partial_date

Record = dict[str, Any]


def _status(record: Record) -> dict[str, Any]:
    module: dict[str, Any] = record["protocolSection"].setdefault("statusModule", {})
    return module


def posted_on(record: Record, day: date) -> Record:
    """The record as the registry would post an update on ``day``."""
    out = copy.deepcopy(record)
    status = _status(out)
    status["lastUpdatePostDateStruct"] = {"date": day.isoformat(), "type": "ACTUAL"}
    status["lastUpdateSubmitDate"] = (day - timedelta(days=1)).isoformat()
    return out


def set_status(record: Record, new_status: str, why_stopped: str | None = None) -> Record:
    out = copy.deepcopy(record)
    status = _status(out)
    status["overallStatus"] = new_status
    if why_stopped is not None:
        status["whyStopped"] = why_stopped
    return out


def set_enrollment(record: Record, count: int, kind: str | None = None) -> Record:
    out = copy.deepcopy(record)
    info = out["protocolSection"].setdefault("designModule", {}).setdefault("enrollmentInfo", {})
    info["count"] = count
    if kind:
        info["type"] = kind
    return out


def shift_date(record: Record, field: str, days: int) -> Record:
    """Move ``startDate``/``primaryCompletionDate``/``completionDate`` by ``days``, keeping precision."""
    out = copy.deepcopy(record)
    struct = _status(out)[f"{field}Struct"]
    parsed = parse_partial_date(struct["date"])
    moved = parsed.value + timedelta(days=days)
    struct["date"] = moved.isoformat() if parsed.precision == "day" else moved.strftime(
        "%Y-%m" if parsed.precision == "month" else "%Y")
    return out


def set_date(record: Record, field: str, raw: str, kind: str | None = None) -> Record:
    out = copy.deepcopy(record)
    struct = _status(out).setdefault(f"{field}Struct", {})
    struct["date"] = raw
    if kind:
        struct["type"] = kind
    return out


def _locations(record: Record) -> list[dict[str, Any]]:
    module = record["protocolSection"].setdefault("contactsLocationsModule", {})
    locations: list[dict[str, Any]] = module.setdefault("locations", [])
    return locations


def set_site_status(record: Record, index: int, status: str) -> Record:
    out = copy.deepcopy(record)
    _locations(out)[index]["status"] = status
    return out


def remove_site(record: Record, index: int) -> Record:
    out = copy.deepcopy(record)
    del _locations(out)[index]
    return out


def add_site(record: Record, site: dict[str, Any]) -> Record:
    out = copy.deepcopy(record)
    _locations(out).append(copy.deepcopy(site))
    return out


def add_arm(record: Record, arm: dict[str, Any]) -> Record:
    out = copy.deepcopy(record)
    module = out["protocolSection"].setdefault("armsInterventionsModule", {})
    module.setdefault("armGroups", []).append(copy.deepcopy(arm))
    return out


def set_primary_outcome_measure(record: Record, index: int, measure: str) -> Record:
    out = copy.deepcopy(record)
    out["protocolSection"]["outcomesModule"]["primaryOutcomes"][index]["measure"] = measure
    return out


def with_derived(record: Record, derived: dict[str, Any]) -> Record:
    """Only ``derivedSection`` differs: the registry's own re-derivation, not a study change."""
    out = copy.deepcopy(record)
    out["derivedSection"] = copy.deepcopy(derived)
    return out


Path = tuple[str | int, ...]


def set_path(record: Record, path: Path, value: Any) -> Record:
    """A copy with the value at ``path`` (keys and list indices) replaced; e.g. a wrong type or enum."""
    out = copy.deepcopy(record)
    *parents, last = path
    node: Any = out
    for key in parents:
        node = node[key]
    node[last] = copy.deepcopy(value)
    return out


def drop_path(record: Record, path: Path) -> Record:
    """A copy without the value at ``path`` (a key or a list element)."""
    out = copy.deepcopy(record)
    *parents, last = path
    node: Any = out
    for key in parents:
        node = node[key]
    del node[last]
    return out


def enlarge_sites(record: Record, min_bytes: int) -> Record:
    """Repeat the record's own sites until its JSON is at least ``min_bytes`` (the registry's largest
    records, ~3.6 MB, are large because of their site lists)."""
    out = copy.deepcopy(record)
    sites = _locations(out)
    originals = copy.deepcopy(sites)
    if not originals:
        raise ValueError("enlarge_sites needs a record with sites")
    size = len(orjson.dumps(out))
    per_round = len(orjson.dumps(originals))
    while size < min_bytes:
        sites.extend(copy.deepcopy(originals))
        size += per_round
    return out
