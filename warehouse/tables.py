"""Arrow schemas of the Parquet tables a run writes (one file set per run and table)."""

from __future__ import annotations

import pyarrow as pa

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
        pa.field("total_count", pa.int64()),
        pa.field("since", pa.date32()),
        pa.field("watermark", pa.date32()),
        pa.field("api_url", pa.string()),
        pa.field("params", pa.string()),
    ]
)

RUN_STUDIES = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("nct_id", pa.string(), nullable=False),
        pa.field("version", pa.int32(), nullable=False),
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

TABLES: dict[str, pa.Schema] = {
    "study_versions": STUDY_VERSIONS,
    "sync_runs": SYNC_RUNS,
    "run_studies": RUN_STUDIES,
    "quarantine": QUARANTINE,
    "changes": CHANGES,
}
