"""Turn planned versions into Arrow tables in the warehouse's schemas (column-wise, no per-row dicts)."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from pipeline.parse import CORE_COLUMNS
from pipeline.versioning import BatchPlan, NewVersion, RunContext
from warehouse.tables import QUARANTINE, RUN_STUDIES, STUDY_VERSIONS


def plan_tables(plan: BatchPlan, ctx: RunContext) -> dict[str, pa.Table]:
    """Every table's rows for one planned batch (each writer appends exactly these)."""
    return {
        "study_versions": versions_table(plan.versions, ctx),
        "run_studies": run_studies_table(plan, ctx),
        "quarantine": quarantine_table(plan, ctx),
    }


def versions_table(versions: Sequence[NewVersion], ctx: RunContext) -> pa.Table:
    n = len(versions)
    columns: dict[str, list[object]] = {
        "nct_id": [v.core.nct_id for v in versions],
        "version": [v.version for v in versions],
        "content_hash": [v.content_hash for v in versions],
        "registry_updated": [v.registry_updated for v in versions],
        "registry_version": [v.registry_version for v in versions],
        "observed_at": [ctx.observed_at] * n,
        "run_id": [ctx.run_id] * n,
        "source": [ctx.source] * n,
        "is_removed": [False] * n,
    }
    for name in CORE_COLUMNS:
        if name != "nct_id":
            columns[name] = [getattr(v.core, name) for v in versions]
    arrays = {name: pa.array(values, STUDY_VERSIONS.field(name).type) for name, values in columns.items()}
    arrays["raw"] = _json_text([v.raw for v in versions])
    return pa.table([arrays[f.name] for f in STUDY_VERSIONS], schema=STUDY_VERSIONS)


def _json_text(docs: list[bytes]) -> pa.Array:
    """JSON documents as a string column without a Python ``str`` per document. Every one was
    either written by orjson or read by it (which rejects invalid UTF-8), so it is valid UTF-8."""
    return pa.array(docs, pa.binary()).view(pa.string())


def run_studies_table(plan: BatchPlan, ctx: RunContext) -> pa.Table:
    return pa.table(
        {
            "run_id": [ctx.run_id] * len(plan.seen),
            "nct_id": [nct for nct, _ in plan.seen],
            "version": [version for _, version in plan.seen],
        },
        schema=RUN_STUDIES,
    )


def quarantine_table(plan: BatchPlan, ctx: RunContext) -> pa.Table:
    q = plan.quarantined
    return pa.table(
        {
            "run_id": [ctx.run_id] * len(q),
            "nct_id": [item.nct_id for item in q],
            "observed_at": [ctx.observed_at] * len(q),
            "reason": [item.reason for item in q],
            "raw": _json_text([item.raw for item in q]),
        },
        schema=QUARANTINE,
    )
