"""Parse one API v2 study record into the typed core columns of the ``studies`` view.

msgspec validates types and enum values while converting; a record that does not fit raises
``RecordInvalid`` (the caller quarantines it). Nothing is lost: the raw JSON is stored beside.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date
from typing import Any

import msgspec

from pipeline.dates import PartialDate, parse_full_date, parse_partial_date
from pipeline.enums import AgencyClass, DateType, EnrollmentType, Phase, Status, StudyType
from pipeline.errors import RecordInvalid

NCT_ID = re.compile(r"^NCT\d{8}$")


class _Struct(msgspec.Struct, rename="camel", forbid_unknown_fields=False):
    pass


class _PartialDateStruct(_Struct):
    date: str
    type: DateType | None = None


class _DateStruct(_Struct):
    date: str
    type: DateType | None = None


class _Identification(_Struct):
    nct_id: str
    brief_title: str | None = None
    official_title: str | None = None
    acronym: str | None = None


class _Status(_Struct):
    overall_status: Status | None = None
    last_known_status: Status | None = None
    why_stopped: str | None = None
    start_date_struct: _PartialDateStruct | None = None
    primary_completion_date_struct: _PartialDateStruct | None = None
    completion_date_struct: _PartialDateStruct | None = None
    study_first_post_date_struct: _DateStruct | None = None
    last_update_post_date_struct: _DateStruct | None = None
    results_first_post_date_struct: _DateStruct | None = None


class _Sponsor(_Struct):
    name: str | None = None
    class_: AgencyClass | None = msgspec.field(default=None, name="class")


class _SponsorCollaborators(_Struct):
    lead_sponsor: _Sponsor | None = None


class _Conditions(_Struct):
    conditions: list[str] = []


class _EnrollmentInfo(_Struct):
    count: int | None = None
    type: EnrollmentType | None = None


class _Design(_Struct):
    study_type: StudyType | None = None
    phases: list[Phase] = []
    enrollment_info: _EnrollmentInfo | None = None


class _Protocol(_Struct):
    identification_module: _Identification
    status_module: _Status | None = None
    sponsor_collaborators_module: _SponsorCollaborators | None = None
    conditions_module: _Conditions | None = None
    design_module: _Design | None = None


class _Study(_Struct):
    protocol_section: _Protocol
    has_results: bool = False


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


def record_nct_id(record: Mapping[str, Any]) -> str | None:
    """The record's NCT id if it has one where the API puts it (for quarantine rows)."""
    try:
        nct = record["protocolSection"]["identificationModule"]["nctId"]
    except (KeyError, TypeError):
        return None
    return nct if isinstance(nct, str) else None


def parse_study(record: Mapping[str, Any]) -> StudyCore:
    """Typed core columns of one record, or ``RecordInvalid`` with a one-line reason."""
    nct_hint = record_nct_id(record)
    if not isinstance(record, Mapping) or "protocolSection" not in record:
        raise RecordInvalid("record has no protocolSection", nct_id=nct_hint)
    try:
        study = msgspec.convert(record, _Study)
    except msgspec.ValidationError as exc:
        raise RecordInvalid(f"schema: {exc}", nct_id=nct_hint) from None
    protocol = study.protocol_section
    nct_id = protocol.identification_module.nct_id
    if not NCT_ID.match(nct_id):
        raise RecordInvalid(f"invalid NCT id {nct_id!r}", nct_id=nct_hint)
    try:
        return _core(study, nct_id)
    except RecordInvalid as exc:
        raise RecordInvalid(exc.reason, nct_id=nct_id) from None


def _core(study: _Study, nct_id: str) -> StudyCore:
    protocol = study.protocol_section
    ident = protocol.identification_module
    status = protocol.status_module or _Status()
    design = protocol.design_module or _Design()
    enrollment = design.enrollment_info or _EnrollmentInfo()
    lead = (protocol.sponsor_collaborators_module or _SponsorCollaborators()).lead_sponsor or _Sponsor()
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
        phases=list(design.phases),
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
        has_results=study.has_results,
        lead_sponsor=lead.name,
        lead_sponsor_class=lead.class_,
        conditions=list((protocol.conditions_module or _Conditions()).conditions),
    )


def _partial(struct: _PartialDateStruct | None, field: str) -> PartialDate | None:
    return parse_partial_date(struct.date, field=field) if struct else None


def _full(struct: _DateStruct | None, field: str) -> date | None:
    return parse_full_date(struct.date, field=field) if struct else None


def _type(struct: _PartialDateStruct | None) -> str | None:
    return struct.type if struct else None
