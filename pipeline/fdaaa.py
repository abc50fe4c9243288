"""FDAAA 801 inputs of one version: the typed columns the warehouse's ``fdaaa_as_of(d)`` judges.

Pure. The rules themselves (../shared/FDAAA_RULES.md) that depend on the date judged run in SQL over
these columns (``warehouse/analyses.py``); what depends only on the version is settled here, once, when
the version is stored:

- the phases as one text of their set (``PHASE1/PHASE2``), compared with the qualifying sets (§3);
- dates as the *end* of their period (``2017-01`` is 2017-01-31, ``2017`` is 2017-12-31: §2);
- whether any intervention is of a type the flag-less pACT path covers, and whether any site's
  country *equals* one of the six US names (§3, §6);
- the quality-control submission history as date lists: the days submitted, those of them cancelled,
  and the day each was cancelled (entries of one day merged, §5).
"""

from __future__ import annotations

import calendar
from collections.abc import Sequence
from datetime import date
from typing import Any, NamedTuple

from pipeline import schema as s
from pipeline.dates import parse_full_date, parse_partial_date

# §3: the intervention types and site countries of the flag-less pACT path (XML-era spellings).
COVERED_INTERVENTION_TYPES = frozenset(
    {"DRUG", "DEVICE", "BIOLOGICAL", "GENETIC", "RADIATION", "COMBINATION_PRODUCT", "DIAGNOSTIC_TEST"})
US_COUNTRIES = frozenset({"United States", "American Samoa", "Guam", "Northern Mariana Islands", "Puerto Rico",
                          "Virgin Islands (U.S.)"})



def phase_set(phases: Sequence[str] | None) -> str | None:
    """The phases as a set, written sorted and joined by "/" (``PHASE1/PHASE2``); NULL without phases."""
    return "/".join(sorted(set(phases))) if phases else None


def end_of_period(raw: str | None, field: str) -> date | None:
    """A registry PartialDate as the last day of its period (FDAAA_RULES §2)."""
    if raw is None:
        return None
    parsed = parse_partial_date(raw, field=field)
    if parsed.precision == "day":
        return parsed.value
    year = parsed.value.year
    month = parsed.value.month if parsed.precision == "month" else 12
    return date(year, month, calendar.monthrange(year, month)[1])


class QcHistory(NamedTuple):
    """A QC history as ``fdaaa_inputs`` stores it, oldest first: the days submitted, those of them
    cancelled, and the day each of those was cancelled (parallel to ``cancelled``)."""

    days: list[date]
    cancelled: list[date]
    cancelled_on: list[date]


def qc_days(infos: list[s.SubmissionInfo] | None) -> QcHistory:
    """The QC history of a version (§5): entries keyed by ``releaseDate``; entries of one day merge, and
    the day is cancelled if any of them has ``unreleaseDate`` or ``unreleaseDateUnknown: true``.

    A cancellation is dated by its ``unreleaseDate`` (the earliest among a day's entries), so a day judged
    before it still counts the submission; one of unknown date (or dated before its submission) counts
    from the submission's day, the earliest it can have happened. ``resetDate`` (returned to the sponsor)
    and ``mcpReleaseN`` do not matter. The warehouse scans these at the date judged
    (``counted_submission`` is the same scan in Python, the reference its SQL is tested against).
    """
    made: set[date] = set()
    gone_on: dict[date, date] = {}
    for info in infos or ():
        if info.release_date is None:
            continue
        day = parse_full_date(info.release_date, field="submissionInfos.releaseDate")
        made.add(day)
        if info.unrelease_date is not None:
            on = max(day, parse_full_date(info.unrelease_date, field="submissionInfos.unreleaseDate"))
        elif info.unrelease_date_unknown:
            on = day
        else:
            continue
        gone_on[day] = min(on, gone_on.get(day, on))
    cancelled = sorted(gone_on)
    return QcHistory(sorted(made), cancelled, [gone_on[d] for d in cancelled])


def counted_submission(qc: QcHistory, as_of: date) -> tuple[date | None, bool | None]:
    """(the counted submission's date, whether the newest one was cancelled) as they stood on ``as_of``
    (§5.3): of the submissions made by then, scanning from the newest back, the oldest one reached before
    meeting one cancelled by then."""
    made = sorted((d for d in qc.days if d <= as_of), reverse=True)
    if not made:
        return None, None
    gone = {d for d, on in zip(qc.cancelled, qc.cancelled_on, strict=True) if on <= as_of}
    counted = None
    for day in made:
        if day in gone:
            break
        counted = day
    return counted, made[0] in gone


def fdaaa_inputs(study: s.Study) -> dict[str, list[Any]]:
    """The one row of ``fdaaa_inputs`` for a version, column-wise (as ``pipeline.flatten`` returns)."""
    p = study.protocol_section or s.ProtocolSection()
    oversight = p.oversight_module or s.OversightModule()
    status = p.status_module or s.StatusModule()
    design = p.design_module or s.DesignModule()
    arms = p.arms_interventions_module
    contacts = p.contacts_locations_module
    misc = study.derived_section.misc_info_module if study.derived_section else None
    tracking = misc.submission_tracking if misc else None
    qc = qc_days(tracking.submission_infos if tracking else None)
    interventions = (arms.interventions if arms else None) or ()
    sites = (contacts.locations if contacts else None) or ()

    def plan(struct: s.PartialDateStruct | None, field: str) -> date | None:
        return end_of_period(struct.date if struct else None, field)

    def day(raw: str | None, field: str) -> date | None:
        return None if raw is None else parse_full_date(raw, field=field)

    return {
        "study_type": [design.study_type],
        "overall_status": [status.overall_status],
        "phase_set": [phase_set(design.phases)],
        "is_fda_regulated_drug": [oversight.is_fda_regulated_drug],
        "is_fda_regulated_device": [oversight.is_fda_regulated_device],
        "primary_purpose": [design.design_info.primary_purpose if design.design_info else None],
        "start_date": [plan(status.start_date_struct, "startDate")],
        "primary_completion_date": [plan(status.primary_completion_date_struct, "primaryCompletionDate")],
        "completion_date": [plan(status.completion_date_struct, "completionDate")],
        "covered_intervention": [any(i.type in COVERED_INTERVENTION_TYPES for i in interventions)],
        "us_site": [any(x.country in US_COUNTRIES for x in sites)],
        "certificate_date": [day(status.disp_first_submit_date, "dispFirstSubmitDate")],
        "results_first_submitted": [day(status.results_first_submit_date, "resultsFirstSubmitDate")],
        "qc_submission_dates": [qc.days],
        "qc_cancelled_dates": [qc.cancelled],
        "qc_cancelled_on": [qc.cancelled_on],
    }
