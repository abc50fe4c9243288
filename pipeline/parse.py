"""Validate one API v2 study record and parse it into the core columns of the ``studies`` view.

The whole record is converted into the generated ``pipeline.schema.Study`` (every type, enum value
and pattern of the published spec); a record that does not fit raises ``RecordInvalid`` with a
one-line reason naming the JSON path (the caller quarantines it). Nothing is lost: the raw JSON is
stored beside the typed columns.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date
from typing import Any

import msgspec

from pipeline import schema
from pipeline.dates import PartialDate, parse_full_date, parse_partial_date
from pipeline.errors import RecordInvalid
from pipeline.hashing import numbers_by_value
from pipeline.schema import DateStruct, PartialDateStruct, Study

NCT_ID = re.compile(r"^NCT\d{8}$")


class StudyCore(msgspec.Struct, frozen=True):
    """The core columns of ``studies`` / ``study_versions`` for one record."""

    nct_id: str
    brief_title: str | None
    official_title: str | None
    acronym: str | None
    overall_status: str | None
    last_known_status: str | None
    why_stopped: str | None
    study_type: str | None
    phases: list[str]
    enrollment_count: int | None
    enrollment_type: str | None
    start_date: date | None
    start_date_raw: str | None
    start_date_type: str | None
    primary_completion_date: date | None
    primary_completion_date_raw: str | None
    primary_completion_date_type: str | None
    completion_date: date | None
    completion_date_raw: str | None
    completion_date_type: str | None
    first_posted: date | None
    last_update_posted: date | None
    results_first_posted: date | None
    has_results: bool
    lead_sponsor: str | None
    lead_sponsor_class: str | None
    conditions: list[str]


CORE_COLUMNS: tuple[str, ...] = StudyCore.__struct_fields__


def _at(record: Any, *keys: str) -> Any:
    """The value at ``keys`` of a record that may be malformed anywhere on the way (None then)."""
    for key in keys:
        if not isinstance(record, Mapping):
            return None
        record = record.get(key)
    return record


def record_nct_id(record: Mapping[str, Any]) -> str | None:
    """The record's NCT id if it has one where the API puts it (for quarantine rows)."""
    nct = _at(record, "protocolSection", "identificationModule", "nctId")
    return nct if isinstance(nct, str) else None


def record_ids(record: Mapping[str, Any]) -> set[str]:
    """The record's NCT id and its aliases (``filter.ids`` finds a study by either)."""
    aliases = _at(record, "protocolSection", "identificationModule", "nctIdAliases")
    ids = {a for a in aliases if isinstance(a, str)} if isinstance(aliases, list) else set()
    return ids | ({nct} if (nct := record_nct_id(record)) else set())


def record_status(record: Mapping[str, Any]) -> str | None:
    """The record's overall status if it has one where the API puts it."""
    status = _at(record, "protocolSection", "statusModule", "overallStatus")
    return status if isinstance(status, str) else None


# What every record the registry publishes carries and the pipeline cannot do without: the status
# (the heart of the change feed) and the last update date (it places a version in time and moves the
# watermark). A ``fields=`` projection or a hand-trimmed copy lacks them; it is not a version.
REQUIRED: tuple[tuple[str, ...], ...] = (
    ("statusModule", "overallStatus"),
    ("statusModule", "lastUpdatePostDateStruct", "date"),
)


class ParsedRecord(msgspec.Struct, frozen=True):
    core: StudyCore
    study: Study


def parse_study(record: Mapping[str, Any]) -> StudyCore:
    """Typed core columns of one record, or ``RecordInvalid`` with a one-line reason."""
    return parse_record(record).core


def parse_record(record: Mapping[str, Any]) -> ParsedRecord:
    """The validated record (``Study``) and its core columns, or ``RecordInvalid``."""
    if not isinstance(record, Mapping) or not isinstance(record.get("protocolSection"), Mapping):
        raise RecordInvalid("record has no protocolSection")
    ident = record["protocolSection"].get("identificationModule")
    value = ident.get("nctId") if isinstance(ident, Mapping) else None
    if value is None:
        raise RecordInvalid("record has no protocolSection.identificationModule.nctId")
    if not isinstance(value, str) or not NCT_ID.match(value):
        raise RecordInvalid(f"invalid NCT id {value!r}", nct_id=value if isinstance(value, str) else None)
    nct_id = value
    try:
        study = msgspec.convert(record, Study)
    except msgspec.ValidationError:
        # JSON numbers by value (pipeline.hashing): 100.0 where the schema wants an integer is 100.
        # Text stays as the registry wrote it (the typed columns are the record's own values).
        try:
            study = msgspec.convert(numbers_by_value(record), Study)
        except msgspec.ValidationError as exc:
            raise RecordInvalid(f"schema: {exc}", nct_id=nct_id) from None
    _require(record, nct_id)
    try:
        return ParsedRecord(_core(study, nct_id), study)
    except RecordInvalid as exc:
        raise RecordInvalid(exc.reason, nct_id=nct_id) from None


def _require(record: Mapping[str, Any], nct_id: str) -> None:
    protocol = record["protocolSection"]
    for path in REQUIRED:
        node: Any = protocol
        for key in path:
            node = node.get(key) if isinstance(node, Mapping) else None
        if node is None:
            raise RecordInvalid(f"incomplete record: no protocolSection.{'.'.join(path)} (every published "
                                f"record has it; a fields= projection or trimmed copy is not a version)",
                                nct_id=nct_id)


def _core(study: Study, nct_id: str) -> StudyCore:
    protocol = study.protocol_section
    assert protocol is not None  # parse_record checked it
    ident = protocol.identification_module or _EMPTY.ident
    status = protocol.status_module or _EMPTY.status
    design = protocol.design_module or _EMPTY.design
    enrollment = design.enrollment_info or _EMPTY.enrollment
    lead = (protocol.sponsor_collaborators_module or _EMPTY.sponsors).lead_sponsor or _EMPTY.sponsor
    start = _partial(status.start_date_struct, "startDate")
    primary = _partial(status.primary_completion_date_struct, "primaryCompletionDate")
    completion = _partial(status.completion_date_struct, "completionDate")
    return StudyCore(
        nct_id=nct_id,
        brief_title=ident.brief_title,
        official_title=ident.official_title,
        acronym=ident.acronym,
        overall_status=status.overall_status,
        last_known_status=status.last_known_status,
        why_stopped=status.why_stopped,
        study_type=design.study_type,
        phases=list(design.phases or ()),
        enrollment_count=enrollment.count,
        enrollment_type=enrollment.type,
        start_date=start.value if start else None,
        start_date_raw=start.raw if start else None,
        start_date_type=_type(status.start_date_struct),
        primary_completion_date=primary.value if primary else None,
        primary_completion_date_raw=primary.raw if primary else None,
        primary_completion_date_type=_type(status.primary_completion_date_struct),
        completion_date=completion.value if completion else None,
        completion_date_raw=completion.raw if completion else None,
        completion_date_type=_type(status.completion_date_struct),
        first_posted=_full(status.study_first_post_date_struct, "studyFirstPostDate"),
        last_update_posted=_full(status.last_update_post_date_struct, "lastUpdatePostDate"),
        results_first_posted=_full(status.results_first_post_date_struct, "resultsFirstPostDate"),
        has_results=bool(study.has_results),
        lead_sponsor=lead.name,
        lead_sponsor_class=lead.class_,
        conditions=list((protocol.conditions_module or _EMPTY.conditions).conditions or ()),
    )


class _Empty:
    """Absent modules read as empty ones (all fields None)."""

    ident = schema.IdentificationModule()
    status = schema.StatusModule()
    design = schema.DesignModule()
    enrollment = schema.EnrollmentInfo()
    sponsors = schema.SponsorCollaboratorsModule()
    sponsor = schema.Sponsor()
    conditions = schema.ConditionsModule()


_EMPTY = _Empty()


def _partial(struct: PartialDateStruct | None, field: str) -> PartialDate | None:
    return parse_partial_date(struct.date, field=field) if struct and struct.date is not None else None


def _full(struct: DateStruct | None, field: str) -> date | None:
    return parse_full_date(struct.date, field=field) if struct and struct.date is not None else None


def _type(struct: PartialDateStruct | None) -> str | None:
    return struct.type if struct else None
