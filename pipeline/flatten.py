"""Flatten one validated record (``schema.Study``) into the rows of the child tables, column-wise.

Pure, and run only for new versions: ``plan_batch`` calls ``flatten`` for each version it adds and
gathers the rows into its batch's ``ChildRows`` (with ``nct_id`` and ``version``), so they are written
in the same run's files and commit with it. Each table comes back as ``{column: [values]}`` (no per-row
dicts); ``warehouse.rows`` converts the batch's lists to Arrow. Column names match
``warehouse.tables``; ``docs/data-dictionary.md`` says what each one means and where it comes from.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from itertools import repeat
from typing import Any

from pipeline import schema as s
from pipeline.dates import parse_full_date
from pipeline.fdaaa import fdaaa_inputs
from pipeline.flatten_registry import registry_rows
from pipeline.flatten_results import results_rows
from pipeline.summary import summary_row

Columns = dict[str, list[Any]]
StudyRows = dict[str, Columns]

# One row per version in these; the others have one row per list item (possibly none).
ONE_ROW_TABLES = ("descriptions", "eligibility", "design", "results_summary", "registry_dates", "study_details",
                  "results_details", "fdaaa_inputs", "study_summary")
CHILD_TABLES: tuple[str, ...] = (
    "conditions", "keywords", "interventions", "arm_groups", "locations", "sponsors", "outcomes",
    "eligibility", "identifiers", "design", "study_references", "contacts", "officials", "results_summary",
    "descriptions",
    # pipeline.flatten_registry
    "registry_dates", "study_details", "site_contacts", "see_also_links", "ipd_documents", "removed_countries",
    "browse_terms",
    # pipeline.flatten_results
    "results_details", "result_groups", "result_measures", "result_measurements", "result_denoms",
    "result_analyses", "participant_flow", "adverse_events", "pending_results", "violation_events",
    "provided_documents",
    # pipeline.fdaaa
    "fdaaa_inputs",
    # pipeline.summary (from the rows above)
    "study_summary",
)

# Days per unit of the registry's age texts ("18 Years", "6 Months"); a year is 365.25 days.
DAYS_PER_YEAR = 365.25
_UNIT_DAYS = {"Year": DAYS_PER_YEAR, "Month": DAYS_PER_YEAR / 12, "Week": 7.0, "Day": 1.0,
              "Hour": 1 / 24, "Minute": 1 / 1440}

_P = s.ProtocolSection()
_STATUS = s.StatusModule()
_RESULTS = s.ResultsSection()


def flatten(study: s.Study) -> StudyRows:
    """The child-table rows of one version. Raises ``RecordInvalid`` only for a calendar-invalid date."""
    p = study.protocol_section or _P
    arms = p.arms_interventions_module
    conditions = p.conditions_module
    contacts = p.contacts_locations_module
    rows: StudyRows = {
        "conditions": _texts(conditions.conditions if conditions else None, "condition"),
        "keywords": _texts(conditions.keywords if conditions else None, "keyword"),
        "interventions": _interventions(arms.interventions if arms else None),
        "arm_groups": _arm_groups(arms.arm_groups if arms else None),
        "locations": _locations(contacts.locations if contacts else None),
        "sponsors": _sponsors(p.sponsor_collaborators_module),
        "outcomes": _outcomes(p.outcomes_module),
        "eligibility": _eligibility(p.eligibility_module or s.EligibilityModule()),
        "identifiers": _identifiers(p.identification_module or s.IdentificationModule()),
        "design": _design(p.design_module or s.DesignModule()),
        "study_references": _references(p.references_module),
        "contacts": _contacts(contacts.central_contacts if contacts else None),
        "officials": _officials(contacts.overall_officials if contacts else None),
        "results_summary": _results(study, p.status_module or _STATUS),
        "descriptions": _descriptions(p.description_module or s.DescriptionModule()),
        **registry_rows(study),
        **results_rows(study),
        "fdaaa_inputs": fdaaa_inputs(study),
    }
    rows["study_summary"] = summary_row(rows)
    return rows


class ChildRows:
    """A batch's child-table rows, column-wise over all its versions, with ``nct_id`` and ``version``.

    Each version's rows are added right after ``flatten`` made them, while its values are still in the
    CPU's caches: gathering them later, table by table over the whole batch, touched every value a
    second time from memory (~100 µs a study, ~15% of a bulk load's planning; bench/RESULTS.md)."""

    def __init__(self) -> None:
        self.keys: dict[str, tuple[list[str], list[int]]] = {}  # table -> (nct_id, version) per row
        self.columns: dict[str, Columns] = {}  # table -> column -> values, in row order

    def add(self, nct_id: str, version: int, rows: StudyRows) -> None:
        for table, columns in rows.items():
            count = len(next(iter(columns.values()))) if columns else 0
            if not count:
                continue
            gathered = self.columns.get(table)
            if gathered is None:
                gathered = self.columns[table] = {name: [] for name in columns}
                self.keys[table] = ([], [])
            ncts, versions = self.keys[table]
            ncts.extend(repeat(nct_id, count))
            versions.extend(repeat(version, count))
            for name, values in columns.items():
                gathered[name].extend(values)

    def add_version(self, rows: ChildRows, version: int) -> None:
        """Add ``rows``, one version's, under the number ``version`` (a backfill plans each history
        record on its own and numbers the versions when it merges them into the study's history)."""
        for table, columns in rows.columns.items():
            count = len(rows.keys[table][0])
            if table not in self.columns:
                self.columns[table] = {name: [] for name in columns}
                self.keys[table] = ([], [])
            ncts, versions = self.keys[table]
            ncts.extend(rows.keys[table][0])
            versions.extend(repeat(version, count))
            for name, values in columns.items():
                self.columns[table][name].extend(values)


# -- keys and conversions other code may reuse (e.g. diffing sites) ----------------------------------
SiteIdentity = tuple[str | None, str | None, str | None, str | None, str | None]


def site_keys(sites: Iterable[SiteIdentity]) -> list[str]:
    """A stable key per site: a digest of (facility, city, state, zip, country), in that order.

    The key does not depend on the site's position, so reordering the list keeps every key. Sites of
    one study that share all five get ``-2``, ``-3``, ... in list order (the order breaks the tie).
    """
    seen: dict[str, int] = {}
    keys = []
    for identity in sites:
        text = "\x1f".join(part or "" for part in identity)
        digest = hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
        n = seen[digest] = seen.get(digest, 0) + 1
        keys.append(digest if n == 1 else f"{digest}-{n}")
    return keys


def age_days(text: str | None) -> float | None:
    """``"18 Years"`` -> 6574.5 days (schema-checked text: a whole number and a unit)."""
    if text is None:
        return None
    number, unit = text.split(" ")
    return int(number) * _UNIT_DAYS[unit.removesuffix("s")]


# -- one function per table ----------------------------------------------------------------------------
def _texts(items: Sequence[str] | None, name: str) -> Columns:
    values = list(items or ())
    return {"ordinal": list(range(len(values))), name: values}


def _interventions(items: Sequence[s.Intervention] | None) -> Columns:
    rows = items or ()
    return {
        "ordinal": list(range(len(rows))),
        "intervention_type": [i.type for i in rows],
        "name": [i.name for i in rows],
        "description": [i.description for i in rows],
        "other_names": [i.other_names for i in rows],
        "arm_group_labels": [i.arm_group_labels for i in rows],
    }


def _arm_groups(items: Sequence[s.ArmGroup] | None) -> Columns:
    rows = items or ()
    return {
        "ordinal": list(range(len(rows))),
        "label": [a.label for a in rows],
        "arm_group_type": [a.type for a in rows],
        "description": [a.description for a in rows],
        "intervention_names": [a.intervention_names for a in rows],
    }


def _locations(items: Sequence[s.Location] | None) -> Columns:
    rows = items or ()
    return {
        "ordinal": list(range(len(rows))),
        "site_key": site_keys((x.facility, x.city, x.state, x.zip, x.country) for x in rows),
        "facility": [x.facility for x in rows],
        "city": [x.city for x in rows],
        "state": [x.state for x in rows],
        "zip": [x.zip for x in rows],
        "country": [x.country for x in rows],
        "status": [x.status for x in rows],
        "lat": [x.geo_point.lat if x.geo_point else None for x in rows],
        "lon": [x.geo_point.lon if x.geo_point else None for x in rows],
    }


def _sponsors(module: s.SponsorCollaboratorsModule | None) -> Columns:
    lead = [module.lead_sponsor] if module and module.lead_sponsor else []
    collaborators = list(module.collaborators or ()) if module else []
    rows = lead + collaborators
    return {
        "role": ["lead"] * len(lead) + ["collaborator"] * len(collaborators),
        "ordinal": [0] * len(lead) + list(range(len(collaborators))),
        "name": [x.name for x in rows],
        "agency_class": [x.class_ for x in rows],
    }


def _outcomes(module: s.OutcomesModule | None) -> Columns:
    groups = [("primary", module.primary_outcomes), ("secondary", module.secondary_outcomes),
              ("other", module.other_outcomes)] if module else []
    kinds: list[str] = []
    ordinals: list[int] = []
    rows: list[s.Outcome] = []
    for kind, items in groups:
        items = items or []
        kinds += [kind] * len(items)
        ordinals += range(len(items))
        rows += items
    return {
        "outcome_type": kinds,
        "ordinal": ordinals,
        "measure": [o.measure for o in rows],
        "description": [o.description for o in rows],
        "time_frame": [o.time_frame for o in rows],
    }


def _eligibility(e: s.EligibilityModule) -> Columns:
    low, high = age_days(e.minimum_age), age_days(e.maximum_age)
    return {
        "criteria": [e.eligibility_criteria],
        "healthy_volunteers": [e.healthy_volunteers],
        "sex": [e.sex],
        "gender_based": [e.gender_based],
        "gender_description": [e.gender_description],
        "minimum_age": [e.minimum_age],
        "minimum_age_days": [low],
        "minimum_age_years": [None if low is None else low / DAYS_PER_YEAR],
        "maximum_age": [e.maximum_age],
        "maximum_age_days": [high],
        "maximum_age_years": [None if high is None else high / DAYS_PER_YEAR],
        "std_ages": [e.std_ages],
        "study_population": [e.study_population],
        "sampling_method": [e.sampling_method],
    }


def _identifiers(ident: s.IdentificationModule) -> Columns:
    org = [ident.org_study_id_info] if ident.org_study_id_info else []
    secondary = list(ident.secondary_id_infos or ())
    aliases = list(ident.nct_id_aliases or ())
    return {
        "id_kind": ["org_study_id"] * len(org) + ["secondary_id"] * len(secondary) + ["nct_alias"] * len(aliases),
        "ordinal": [*range(len(org)), *range(len(secondary)), *range(len(aliases))],
        "identifier": [x.id for x in org] + [x.id for x in secondary] + aliases,
        "id_type": [x.type for x in org] + [x.type for x in secondary] + [None] * len(aliases),
        "domain": [None] * len(org) + [x.domain for x in secondary] + [None] * len(aliases),
        "link": [x.link for x in org] + [x.link for x in secondary] + [None] * len(aliases),
    }


def _design(d: s.DesignModule) -> Columns:
    info = d.design_info or s.DesignInfo()
    masking = info.masking_info or s.MaskingBlock()
    bio = d.bio_spec or s.BioSpec()
    return {
        "allocation": [info.allocation],
        "intervention_model": [info.intervention_model],
        "intervention_model_description": [info.intervention_model_description],
        "primary_purpose": [info.primary_purpose],
        "observational_model": [info.observational_model],
        "time_perspective": [info.time_perspective],
        "masking": [masking.masking],
        "masking_description": [masking.masking_description],
        "who_masked": [masking.who_masked],
        "patient_registry": [d.patient_registry],
        "target_duration": [d.target_duration],
        "bio_spec_retention": [bio.retention],
        "bio_spec_description": [bio.description],
    }


def _references(module: s.ReferencesModule | None) -> Columns:
    rows = (module.references if module else None) or ()
    return {
        "ordinal": list(range(len(rows))),
        "pmid": [r.pmid for r in rows],
        "reference_type": [r.type for r in rows],
        "citation": [r.citation for r in rows],
        "retraction_pmids": [[x.pmid for x in r.retractions] if r.retractions is not None else None for r in rows],
        "retraction_sources": [[x.source for x in r.retractions] if r.retractions is not None else None
                               for r in rows],
    }


def _contacts(items: Sequence[s.Contact] | None) -> Columns:
    rows = items or ()
    return {
        "ordinal": list(range(len(rows))),
        "name": [c.name for c in rows],
        "role": [c.role for c in rows],
        "phone": [c.phone for c in rows],
        "phone_ext": [c.phone_ext for c in rows],
        "email": [c.email for c in rows],
    }


def _officials(items: Sequence[s.Official] | None) -> Columns:
    rows = items or ()
    return {
        "ordinal": list(range(len(rows))),
        "name": [o.name for o in rows],
        "affiliation": [o.affiliation for o in rows],
        "role": [o.role for o in rows],
    }


def _results(study: s.Study, status: s.StatusModule) -> Columns:
    results = study.results_section or _RESULTS
    posted = status.results_first_post_date_struct
    flow, baseline = results.participant_flow_module, results.baseline_characteristics_module
    measures, events = results.outcome_measures_module, results.adverse_events_module
    return {
        "has_results": [bool(study.has_results)],
        "results_first_submitted": [_date(status.results_first_submit_date, "resultsFirstSubmitDate")],
        "results_first_posted": [_date(posted.date if posted else None, "resultsFirstPostDate")],
        "results_first_posted_type": [posted.type if posted else None],
        "results_waived": [status.results_waived],
        "participant_flow_group_count": [_count(flow.groups if flow else None, flow)],
        "baseline_group_count": [_count(baseline.groups if baseline else None, baseline)],
        "outcome_measure_count": [_count(measures.outcome_measures if measures else None, measures)],
        "adverse_event_group_count": [_count(events.event_groups if events else None, events)],
        "serious_event_term_count": [_count(events.serious_events if events else None, events)],
        "other_event_term_count": [_count(events.other_events if events else None, events)],
    }


def _descriptions(d: s.DescriptionModule) -> Columns:
    return {"brief_summary": [d.brief_summary], "detailed_description": [d.detailed_description]}


def _count(items: Sequence[Any] | None, module: object) -> int | None:
    """The length of a results list; NULL when its module is absent (no results of that kind)."""
    return None if module is None else len(items or ())


def _date(raw: str | None, field: str) -> Any:
    return None if raw is None else parse_full_date(raw, field=field)
