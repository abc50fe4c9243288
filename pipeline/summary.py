"""One row per version of what ``aact.studies`` and ``aact.calculated_values`` show beyond the core
columns (table ``study_summary``): copies of one-row tables' columns and counts over list tables.

Kept together so that a query over those views reads one table per version instead of joining ten
(at 600,000 studies the joins were most of a query's time). ``summary_row`` computes the row from the
rows ``flatten`` made; ``warehouse.summary`` computes the same with SQL from stored rows, for versions
stored before the table existed. Both follow ``COPIES`` and ``COUNTS`` below. Pure.
"""

from __future__ import annotations

from typing import Any

Columns = dict[str, list[Any]]

# (table, columns copied as they are). Names are unique across tables.
COPIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("registry_dates", (
        "status_verified_date_raw", "study_first_submitted", "study_first_submitted_qc", "study_first_posted",
        "study_first_posted_type", "results_first_submitted", "results_first_submitted_qc", "results_first_posted",
        "results_first_posted_type", "disp_first_submitted", "disp_first_submitted_qc", "disp_first_posted",
        "disp_first_posted_type", "last_update_submitted", "last_update_posted", "last_update_posted_type")),
    ("study_details", (
        "org_full_name", "org_class", "delayed_posting", "has_expanded_access", "expanded_access_nct_id",
        "expanded_access_status", "expanded_access_individual", "expanded_access_intermediate",
        "expanded_access_treatment", "oversight_has_dmc", "is_fda_regulated_drug", "is_fda_regulated_device",
        "is_unapproved_device", "is_ppsd", "is_us_export", "fdaaa801_violation", "ipd_sharing", "ipd_description",
        "ipd_time_frame", "ipd_access_criteria", "ipd_url")),
    ("design", ("target_duration", "bio_spec_retention", "bio_spec_description", "patient_registry")),
    ("results_details", ("baseline_population_description", "limitations_and_caveats",
                         "baseline_type_units_analyzed")),
    ("eligibility", ("minimum_age", "maximum_age")),
)

# The United States and its territories, as ``locations.country`` names them: AACT's rule for
# ``calculated_values.has_us_facility``.
US_COUNTRIES = (
    "United States", "Puerto Rico", "Guam", "U.S. Virgin Islands", "Virgin Islands (U.S.)",
    "Northern Mariana Islands", "American Samoa", "Midway Atoll", "Baker Island", "Howland Island",
    "Jarvis Island", "Johnston Atoll", "Kingman Reef", "Navassa Island", "Palmyra Atoll", "Wake Island",
    "Serranilla Bank", "Bajo Nuevo Bank")

# The counts: (column, SQL over the list table's rows of one version). NULL where SQL's aggregate over
# no rows is NULL (a sum, bool_or), a number otherwise; ``summary_row`` gives the same.
COUNTS: tuple[tuple[str, str, str], ...] = (
    ("arm_groups", "arm_groups", "count(*)"),
    ("facilities", "locations", "count(*)"),
    ("us_facility", "locations",
     "bool_or(country IN (" + ", ".join("'" + c.replace("'", "''") + "'" for c in US_COUNTRIES) + "))"),
    ("serious_subjects", "adverse_events", "sum(num_affected) FILTER (kind = 'serious' AND group_id IS NOT NULL)"),
    ("other_subjects", "adverse_events", "sum(num_affected) FILTER (kind = 'other' AND group_id IS NOT NULL)"),
    ("outcome_measures", "result_measures", "count(*) FILTER (module = 'outcome')"),
    ("primary_outcomes", "outcomes", "count(*) FILTER (outcome_type = 'primary')"),
    ("secondary_outcomes", "outcomes", "count(*) FILTER (outcome_type = 'secondary')"),
    ("other_outcomes", "outcomes", "count(*) FILTER (outcome_type = 'other')"),
)

COLUMNS: tuple[str, ...] = (*(c for _, names in COPIES for c in names), *(c for c, _, _ in COUNTS))
assert len(set(COLUMNS)) == len(COLUMNS), "study_summary column names must be unique"

_US = frozenset(US_COUNTRIES)


def summary_row(rows: dict[str, Columns]) -> Columns:
    """The ``study_summary`` row of one version, from its flattened rows (``pipeline.flatten``)."""
    out: Columns = {}
    for table, names in COPIES:
        for name in names:
            out[name] = [rows[table][name][0]]
    countries = rows["locations"]["country"]
    events = rows["adverse_events"]
    types = rows["outcomes"]["outcome_type"]
    out["arm_groups"] = [len(rows["arm_groups"]["ordinal"])]
    out["facilities"] = [len(countries)]
    out["us_facility"] = [_bool_or([None if c is None else c in _US for c in countries])]
    for column, kind in (("serious_subjects", "serious"), ("other_subjects", "other")):
        out[column] = [_sum(n for k, g, n in zip(events["kind"], events["group_id"], events["num_affected"],
                                                 strict=True) if k == kind and g is not None)]
    out["outcome_measures"] = [sum(1 for m in rows["result_measures"]["module"] if m == "outcome")]
    for column, kind in (("primary_outcomes", "primary"), ("secondary_outcomes", "secondary"),
                         ("other_outcomes", "other")):
        out[column] = [sum(1 for t in types if t == kind)]
    return out


def _bool_or(values: list[bool | None]) -> bool | None:
    """SQL's ``bool_or``: NULLs ignored, NULL over no values."""
    known = [v for v in values if v is not None]
    return any(known) if known else None


def _sum(values: Any) -> int | None:
    """SQL's ``sum``: NULLs ignored, NULL over no values."""
    known = [v for v in values if v is not None]
    return sum(known) if known else None
