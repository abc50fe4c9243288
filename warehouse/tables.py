"""Arrow schemas of the Parquet tables a run writes (one file set per run and table)."""

from __future__ import annotations

import pyarrow as pa

from pipeline import summary
from warehouse.tables_results import REGISTRY_TABLES, RESULTS_TABLES

UTC_TS = pa.timestamp("us", tz="UTC")

CORE_FIELDS: list[pa.Field] = [
    pa.field("brief_title", pa.string()),
    pa.field("official_title", pa.string()),
    pa.field("acronym", pa.string()),
    pa.field("overall_status", pa.string()),
    pa.field("last_known_status", pa.string()),
    pa.field("why_stopped", pa.string()),
    pa.field("study_type", pa.string()),
    pa.field("phases", pa.list_(pa.string())),
    pa.field("enrollment_count", pa.int64()),
    pa.field("enrollment_type", pa.string()),
    pa.field("start_date", pa.date32()),
    pa.field("start_date_raw", pa.string()),
    pa.field("start_date_type", pa.string()),
    pa.field("primary_completion_date", pa.date32()),
    pa.field("primary_completion_date_raw", pa.string()),
    pa.field("primary_completion_date_type", pa.string()),
    pa.field("completion_date", pa.date32()),
    pa.field("completion_date_raw", pa.string()),
    pa.field("completion_date_type", pa.string()),
    pa.field("first_posted", pa.date32()),
    pa.field("last_update_posted", pa.date32()),
    pa.field("results_first_posted", pa.date32()),
    pa.field("has_results", pa.bool_()),
    pa.field("lead_sponsor", pa.string()),
    pa.field("lead_sponsor_class", pa.string()),
    pa.field("conditions", pa.list_(pa.string())),
]

STUDY_VERSIONS = pa.schema(
    [
        pa.field("nct_id", pa.string(), nullable=False),
        pa.field("version", pa.int32(), nullable=False),
        pa.field("content_hash", pa.string(), nullable=False),
        pa.field("registry_updated", pa.date32()),
        pa.field("registry_version", pa.int32()),
        pa.field("observed_at", UTC_TS, nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("is_removed", pa.bool_(), nullable=False),
        *CORE_FIELDS,
        pa.field("raw", pa.string()),
        # The bulk member this version was read from: its uncompressed size << 32 | CRC-32, from the
        # zip's directory (warehouse.heads: a later load skips a member whose bytes did not change).
        pa.field("member_key", pa.int64()),
    ]
)

SYNC_RUNS = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("mode", pa.string(), nullable=False),
        pa.field("scope", pa.string(), nullable=False),
        pa.field("started_at", UTC_TS, nullable=False),
        pa.field("finished_at", UTC_TS, nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("pages", pa.int32()),
        pa.field("studies_seen", pa.int64()),
        pa.field("new_studies", pa.int64()),
        pa.field("versions_written", pa.int64()),
        pa.field("unchanged", pa.int64()),
        pa.field("changes_written", pa.int64()),
        pa.field("quarantined", pa.int64()),
        pa.field("retired", pa.int64()),
        pa.field("left_scope", pa.int64()),
        pa.field("total_count", pa.int64()),
        pa.field("since", pa.date32()),
        pa.field("watermark", pa.date32()),
        pa.field("api_url", pa.string()),
        pa.field("params", pa.string()),
        pa.field("stale", pa.int64()),  # records older than the stored version: no version (pipeline.versioning)
        pa.field("unknown_fields", pa.list_(pa.string())),  # keys the schema does not know (pipeline.hashing)
    ]
)

RUN_STUDIES = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("nct_id", pa.string(), nullable=False),
        pa.field("version", pa.int32(), nullable=False),
    ]
)

SCOPE_EXITS = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("scope", pa.string(), nullable=False),
        pa.field("nct_id", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),  # left_scope | removed
    ]
)

QUARANTINE = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("nct_id", pa.string()),
        pa.field("observed_at", UTC_TS, nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("raw", pa.string()),
    ]
)

CHANGES = pa.schema(
    [
        pa.field("change_id", pa.string(), nullable=False),
        pa.field("nct_id", pa.string(), nullable=False),
        pa.field("from_version", pa.int32()),
        pa.field("to_version", pa.int32(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("detected_at", UTC_TS, nullable=False),
        pa.field("registry_updated", pa.date32()),
        pa.field("path", pa.string(), nullable=False),
        pa.field("field", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
        pa.field("event", pa.string(), nullable=False),
        pa.field("old_value", pa.string()),
        pa.field("new_value", pa.string()),
        pa.field("severity", pa.string(), nullable=False),
        pa.field("shift_days", pa.int32()),
        pa.field("pct_change", pa.float64()),
    ]
)

# A run that rewrites a study (a backfill that renumbers its versions) lists it here: the study's rows in
# the tables keyed by study version (``rewritten_tables``) from files of runs committed before it are
# hidden by the catalog; the rewriting run has written the study's complete rows again.
STUDY_REWRITES = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("nct_id", pa.string(), nullable=False),
        pa.field("versions", pa.int32()),  # how many versions the study has after the rewrite
    ]
)

# Child tables: the flattened parts of each version (pipeline/flatten.py), keyed by (nct_id, version).
_STR, _INT, _F64, _BOOL, _DATE, _STRS = pa.string(), pa.int32(), pa.float64(), pa.bool_(), pa.date32(), \
    pa.list_(pa.string())
_DATES = pa.list_(pa.date32())


def _child(*columns: tuple[str, pa.DataType]) -> pa.Schema:
    return pa.schema([pa.field("nct_id", _STR, nullable=False), pa.field("version", _INT, nullable=False),
                      *(pa.field(name, kind) for name, kind in columns)])


CHILD_TABLES: dict[str, pa.Schema] = {
    "conditions": _child(("ordinal", _INT), ("condition", _STR)),
    "keywords": _child(("ordinal", _INT), ("keyword", _STR)),
    "interventions": _child(("ordinal", _INT), ("intervention_type", _STR), ("name", _STR), ("description", _STR),
                            ("other_names", _STRS), ("arm_group_labels", _STRS)),
    "arm_groups": _child(("ordinal", _INT), ("label", _STR), ("arm_group_type", _STR), ("description", _STR),
                         ("intervention_names", _STRS)),
    "locations": _child(("ordinal", _INT), ("site_key", _STR), ("facility", _STR), ("city", _STR), ("state", _STR),
                        ("zip", _STR), ("country", _STR), ("status", _STR), ("lat", _F64), ("lon", _F64)),
    "sponsors": _child(("role", _STR), ("ordinal", _INT), ("name", _STR), ("agency_class", _STR)),
    "outcomes": _child(("outcome_type", _STR), ("ordinal", _INT), ("measure", _STR), ("description", _STR),
                       ("time_frame", _STR)),
    "eligibility": _child(("criteria", _STR), ("healthy_volunteers", _BOOL), ("sex", _STR), ("gender_based", _BOOL),
                          ("gender_description", _STR), ("minimum_age", _STR), ("minimum_age_days", _F64),
                          ("minimum_age_years", _F64), ("maximum_age", _STR), ("maximum_age_days", _F64),
                          ("maximum_age_years", _F64), ("std_ages", _STRS), ("study_population", _STR),
                          ("sampling_method", _STR)),
    "identifiers": _child(("id_kind", _STR), ("ordinal", _INT), ("identifier", _STR), ("id_type", _STR),
                          ("domain", _STR), ("link", _STR)),
    "design": _child(("allocation", _STR), ("intervention_model", _STR), ("intervention_model_description", _STR),
                     ("primary_purpose", _STR), ("observational_model", _STR), ("time_perspective", _STR),
                     ("masking", _STR), ("masking_description", _STR), ("who_masked", _STRS),
                     ("patient_registry", _BOOL), ("target_duration", _STR), ("bio_spec_retention", _STR),
                     ("bio_spec_description", _STR)),
    "study_references": _child(("ordinal", _INT), ("pmid", _STR), ("reference_type", _STR), ("citation", _STR),
                               ("retraction_pmids", _STRS), ("retraction_sources", _STRS)),
    "contacts": _child(("ordinal", _INT), ("name", _STR), ("role", _STR), ("phone", _STR), ("phone_ext", _STR),
                       ("email", _STR)),
    "officials": _child(("ordinal", _INT), ("name", _STR), ("affiliation", _STR), ("role", _STR)),
    "results_summary": _child(("has_results", _BOOL), ("results_first_submitted", _DATE),
                              ("results_first_posted", _DATE), ("results_first_posted_type", _STR),
                              ("results_waived", _BOOL), ("participant_flow_group_count", _INT),
                              ("baseline_group_count", _INT), ("outcome_measure_count", _INT),
                              ("adverse_event_group_count", _INT), ("serious_event_term_count", _INT),
                              ("other_event_term_count", _INT)),
    "descriptions": _child(("brief_summary", _STR), ("detailed_description", _STR)),
    **REGISTRY_TABLES,
    **RESULTS_TABLES,
    # pipeline/fdaaa.py: the inputs of the FDAAA 801 judgement (warehouse/analyses.py), one row per version
    "fdaaa_inputs": _child(("study_type", _STR), ("overall_status", _STR), ("phase_set", _STR),
                           ("is_fda_regulated_drug", _BOOL), ("is_fda_regulated_device", _BOOL),
                           ("primary_purpose", _STR), ("start_date", _DATE), ("primary_completion_date", _DATE),
                           ("completion_date", _DATE), ("covered_intervention", _BOOL), ("us_site", _BOOL),
                           ("certificate_date", _DATE), ("results_first_submitted", _DATE),
                           ("qc_submission_dates", _DATES), ("qc_cancelled_dates", _DATES),
                           ("qc_cancelled_on", _DATES)),
}
# pipeline/summary.py: what aact.studies and aact.calculated_values read, one row per version.
CHILD_TABLES["study_summary"] = _child(
    *((name, CHILD_TABLES[table].field(name).type) for table, names in summary.COPIES for name in names),
    *((name, _BOOL if name == "us_facility" else pa.int64() if name.endswith("_subjects") else _INT)
      for name, _, _ in summary.COUNTS))

# The alert delivery ledger: one row per attempt to deliver (watch, change, channel).
ALERT_DELIVERIES = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("attempted_at", UTC_TS, nullable=False),
        pa.field("watch", pa.string(), nullable=False),
        pa.field("channel", pa.string(), nullable=False),
        pa.field("change_id", pa.string(), nullable=False),
        pa.field("nct_id", pa.string(), nullable=False),
        pa.field("severity", pa.string(), nullable=False),
        pa.field("message_id", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),  # sent | failed | rejected
        pa.field("attempt", pa.int32(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("retry_at", UTC_TS),  # the receiver asked (Retry-After) not to be tried before then
    ]
)

# The alert outbox: each message, written before it is sent (re-sent unchanged until delivered).
ALERT_MESSAGES = pa.schema(
    [
        pa.field("message_id", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("created_at", UTC_TS, nullable=False),
        pa.field("watch", pa.string(), nullable=False),
        pa.field("channel", pa.string(), nullable=False),
        pa.field("mode", pa.string(), nullable=False),
        pa.field("change_ids", pa.list_(pa.string()), nullable=False),
        pa.field("change_keys", pa.list_(pa.string()), nullable=False),
        pa.field("payload", pa.string(), nullable=False),
    ]
)

ALERT_RUNS = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("started_at", UTC_TS, nullable=False),
        pa.field("finished_at", UTC_TS, nullable=False),
        pa.field("watchlist", pa.string()),
        pa.field("watches", pa.list_(pa.string())),
        pa.field("matched", pa.int64()),
        pa.field("messages", pa.int64()),
        pa.field("sent", pa.int64()),
        pa.field("failed", pa.int64()),
        pa.field("already_sent", pa.int64()),
        pa.field("retried", pa.int64()),
        pa.field("resent", pa.int64()),
    ]
)

RECONCILIATION = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("scope", pa.string(), nullable=False),
        pa.field("mode", pa.string(), nullable=False),
        pa.field("checked_at", UTC_TS, nullable=False),
        pa.field("check", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("expected", pa.int64()),
        pa.field("observed", pa.int64()),
        pa.field("flagged", pa.int64()),
        pa.field("detail", pa.string(), nullable=False),
        pa.field("ids", pa.list_(pa.string())),
        pa.field("data", pa.string()),
    ]
)

TABLES: dict[str, pa.Schema] = {
    "study_versions": STUDY_VERSIONS,
    "sync_runs": SYNC_RUNS,
    "run_studies": RUN_STUDIES,
    "scope_exits": SCOPE_EXITS,
    "quarantine": QUARANTINE,
    "changes": CHANGES,
    "study_rewrites": STUDY_REWRITES,
    "alert_messages": ALERT_MESSAGES,
    "alert_deliveries": ALERT_DELIVERIES,
    "alert_runs": ALERT_RUNS,
    **CHILD_TABLES,
    "reconciliation": RECONCILIATION,
}


def version_keyed_tables() -> tuple[str, ...]:
    """Tables whose rows belong to one stored version (``nct_id`` and ``version`` columns): a rewrite
    copies them with the new numbers. ``study_versions`` first."""
    return tuple(t for t, schema in TABLES.items() if {"nct_id", "version"} <= set(schema.names))


def rewritten_tables() -> tuple[str, ...]:
    """Tables whose rows of a rewritten study are superseded: the version-keyed ones and ``changes``
    (recomputed across the study's merged history)."""
    return (*version_keyed_tables(), "changes")
