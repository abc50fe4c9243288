"""FDAAA 801 inputs of one version: the typed columns the warehouse's ``fdaaa_as_of(d)`` judges.

Pure. The rules themselves (../shared/FDAAA_RULES.md) that depend on the date judged run in SQL over
these columns (``warehouse/analyses.py``); what depends only on the version is settled here, once, when
the version is stored:

- the phases as one text of their set (``PHASE1/PHASE2``), compared with the qualifying sets (§3);
- dates as the *end* of their period (``2017-01`` is 2017-01-31, ``2017`` is 2017-12-31: §2);
- whether any intervention is of a type the flag-less pACT path covers, and whether any site's
  country *equals* one of the six US names (§3, §6);
- the quality-control submission history as two date lists: the days submitted, and those of them
  cancelled (entries of one day merged, §5).
"""

from __future__ import annotations

import calendar
from collections.abc import Sequence
from datetime import date
from typing import Any

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


def qc_days(infos: list[s.SubmissionInfo] | None) -> tuple[list[date], list[date]]:
    """(submission days, the cancelled ones among them) of a QC history, oldest first (§5).

    Entries are keyed by ``releaseDate``; entries of one day merge, and the day is cancelled if any of
    them has ``unreleaseDate`` or ``unreleaseDateUnknown: true``. ``resetDate`` (returned to the sponsor)
    and ``mcpReleaseN`` do not matter. The warehouse scans these at the date judged (``counted_submission``
    is the same scan in Python, the reference its SQL is tested against).
    """
    cancelled: dict[date, bool] = {}
    for info in infos or ():
        if info.release_date is None:
            continue
        day = parse_full_date(info.release_date, field="submissionInfos.releaseDate")
        gone = info.unrelease_date is not None or bool(info.unrelease_date_unknown)
        cancelled[day] = cancelled.get(day, False) or gone
    days = sorted(cancelled)
    return days, [d for d in days if cancelled[d]]


def counted_submission(days: list[date], cancelled: list[date], as_of: date) -> tuple[date | None, bool | None]:
    """(the counted submission's date, whether the newest one was cancelled) among the submissions made
    by ``as_of`` (§5.3): scanning from the newest back, the oldest one reached before meeting a cancelled one."""
    made = sorted((d for d in days if d <= as_of), reverse=True)
    if not made:
        return None, None
    gone = set(cancelled)
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
    days, cancelled = qc_days(tracking.submission_infos if tracking else None)
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
        "qc_submission_dates": [days],
        "qc_cancelled_dates": [cancelled],
    }
