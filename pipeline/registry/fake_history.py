"""Record histories for the fake registry: the one real index, and histories built from real records.

Only the change index of NCT03690141 is real: a browser capture of the website's
``/api/int/studies/NCT03690141?history=true`` (``../shared/data/ctgov/history/``, ~2023). No raw
``/history/{v}`` payload exists in any source we found, and the capture's ``study`` member is an
excerpt (long free-text modules left out; search highlighting ``<mark class="hl-term">`` in titles).
So the fake serves the real index verbatim and **derives** each version's record at run time
(``FakeHistory.derived`` is True and every derived version answer carries ``X-Fake-Derived: true``):

- the last version is the excerpt's record with the highlighting removed (the current record);
- every earlier version is that record with the index's ``status`` as ``overallStatus``, each field
  of ``originalData`` (``enrollmentInfo``, ``primaryOutcomes``) at its original value for versions
  before ``lastUpdateVersions[field]`` (assumed to have changed once, at that version), and the
  index's ``date`` as last update submitted and posted (the real posting date is unknown; it is
  usually a day or so later). Everything else is carried from the current record.

``history_from_records`` builds a history from records a test derived with ``pipeline.mutate``:
each record is served as its version, and the index's ``moduleLabels`` name the modules that differ
from the version before, with the labels seen in real indexes (HISTORY_NOTES.md).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import orjson

REAL_HISTORY_NCT = "NCT03690141"
Record = dict[str, Any]

# Module -> the label real indexes use for it. Modules whose label we have not seen are left out.
MODULE_LABELS = {
    "statusModule": "Study Status",
    "identificationModule": "Study Identification",
    "conditionsModule": "Conditions",
    "designModule": "Study Design",
    "armsInterventionsModule": "Arms and Interventions",
    "contactsLocationsModule": "Contacts/Locations",
    "descriptionModule": "Study Description",
    "outcomesModule": "Outcome Measures",
    "eligibilityModule": "Eligibility",
    "oversightModule": "Oversight",
}
# originalData members that hold a field's first value, and where that field lives in a record.
ORIGINAL_FIELDS = {
    "enrollmentInfo": ("designModule", "enrollmentInfo"),
    "primaryOutcomes": ("outcomesModule", "primaryOutcomes"),
}
INDEX_MEMBERS = ("lastUpdateVersions", "outcomesUpdateCount")  # what ``/history`` carries beside changes
_HIGHLIGHT = re.compile(r"</?mark\b[^>]*>")


@dataclass
class FakeHistory:
    """One study's history as the fake serves it."""

    changes: list[dict[str, Any]]  # the change index, served as is
    records: dict[int, Record]  # the record at each version
    members: dict[str, Any] = field(default_factory=dict)  # originalData, lastUpdateVersions, ...
    topics: dict[str, Any] | None = None
    derived: bool = True  # the version records are derived, not downloaded from the registry

    @property
    def current(self) -> Record:
        return self.records[max(self.records)]

    @property
    def nct_id(self) -> str:
        return str(self.current["protocolSection"]["identificationModule"]["nctId"])


def real_history(history_dir: Path) -> FakeHistory:
    """NCT03690141: the real index, and version records derived from it and the current record."""
    excerpt = orjson.loads(next(history_dir.glob(f"{REAL_HISTORY_NCT}__*study_member_excerpt.json")).read_bytes())
    members = orjson.loads(next(history_dir.glob(f"{REAL_HISTORY_NCT}__*history_members.json")).read_bytes())
    history = members["history"]
    current = strip_highlights(excerpt["study"])
    return FakeHistory(
        changes=history["changes"],
        records=derive_versions(current, history),
        members={k: v for k, v in history.items() if k != "changes"},
        topics=members.get("topics"),
    )


def strip_highlights(value: Any) -> Any:
    """The record without the website's search highlighting (``<mark class="hl-term">CRPC</mark>``)."""
    if isinstance(value, str):
        return _HIGHLIGHT.sub("", value)
    if isinstance(value, list):
        return [strip_highlights(v) for v in value]
    if isinstance(value, dict):
        return {k: strip_highlights(v) for k, v in value.items()}
    return value


def derive_versions(current: Record, history: Mapping[str, Any]) -> dict[int, Record]:
    """Each version's record from the current one and the index (see the module's docstring)."""
    changes = sorted(history["changes"], key=lambda c: c["version"])
    last = changes[-1]["version"]
    original = history.get("originalData", {})
    since = history.get("lastUpdateVersions", {})
    out: dict[int, Record] = {}
    for change in changes:
        record = copy.deepcopy(current)
        version = change["version"]
        if version != last:
            status = record["protocolSection"]["statusModule"]
            status["overallStatus"] = change["status"]
            status["lastUpdateSubmitDate"] = change["date"]
            status["lastUpdatePostDateStruct"] = {"date": change["date"], "type": "ACTUAL"}
            for key, (module, name) in ORIGINAL_FIELDS.items():
                if key in original and version < since.get(key, 0):
                    record["protocolSection"].setdefault(module, {})[name] = copy.deepcopy(original[key])
        out[version] = record
    return out


def history_from_records(dated: Sequence[tuple[date, Record]]) -> FakeHistory:
    """A history whose versions are ``dated`` records (oldest first); marked derived."""
    changes, records = [], {}
    previous: Record | None = None
    for version, (day, record) in enumerate(dated):
        protocol = record["protocolSection"]
        changes.append({
            "version": version,
            "date": day.isoformat(),
            "status": protocol.get("statusModule", {}).get("overallStatus"),
            "moduleLabels": [] if previous is None else module_labels(previous, record),
        })
        records[version] = copy.deepcopy(record)
        previous = record
    return FakeHistory(changes=changes, records=records)


def module_labels(old: Record, new: Record) -> list[str]:
    """The labels of the protocol modules that differ between two versions."""
    a, b = old["protocolSection"], new["protocolSection"]
    return [label for module, label in MODULE_LABELS.items() if a.get(module) != b.get(module)]
