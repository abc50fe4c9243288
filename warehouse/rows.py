"""Turn planned versions into Arrow tables in the warehouse's schemas (column-wise, no per-row dicts)."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from pipeline.changes import Change
from pipeline.flatten import ONE_ROW_TABLES, ChildRows
from pipeline.parse import CORE_COLUMNS
from pipeline.versioning import BatchPlan, NewVersion, RunContext
from warehouse.tables import CHANGES, CHILD_TABLES, QUARANTINE, RUN_STUDIES, STUDY_VERSIONS


def plan_tables(plan: BatchPlan, ctx: RunContext) -> dict[str, pa.Table]:
    """Every table's rows for one planned batch (each writer appends exactly these)."""
    for table in ONE_ROW_TABLES:  # every version has one row of each: child rows cannot go missing
        rows = len(plan.child_rows.keys.get(table, ((), ()))[0])
        if rows != len(plan.versions):
            raise RuntimeError(f"internal error: {len(plan.versions)} versions but {rows} {table} rows")
    return {
        "study_versions": versions_table(plan.versions, ctx),
        **child_tables(plan.child_rows),
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
    arrays["member_key"] = pa.array([v.member_key for v in versions], pa.int64())
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


def tombstones_table(retired: Sequence[tuple[str, int, str]], ctx: RunContext) -> pa.Table:
    """Removal markers: version n+1 of each retired study, ``is_removed`` and no content of its own."""
    n = len(retired)
    columns: dict[str, list[object]] = {f.name: [None] * n for f in STUDY_VERSIONS}
    columns.update({
        "nct_id": [nct for nct, _, _ in retired],
        "version": [version for _, version, _ in retired],
        "content_hash": [digest for _, _, digest in retired],
        "observed_at": [ctx.observed_at] * n,
        "run_id": [ctx.run_id] * n,
        "source": [ctx.source] * n,
        "is_removed": [True] * n,
        "phases": [[]] * n,
        "conditions": [[]] * n,
    })
    return pa.table({f.name: pa.array(columns[f.name], f.type) for f in STUDY_VERSIONS}, schema=STUDY_VERSIONS)


def changes_table(changes: Sequence[Change]) -> pa.Table:
    return pa.table({f.name: pa.array([getattr(c, f.name) for c in changes], f.type) for f in CHANGES},
                    schema=CHANGES)


def child_tables(rows: ChildRows) -> dict[str, pa.Table]:
    """A batch's child-table rows (``BatchPlan.child_rows``), one Arrow table per child table (an empty
    one for a table the batch has no rows of)."""
    out = {}
    for table, schema in CHILD_TABLES.items():
        columns = rows.columns.get(table)
        if columns is None:
            out[table] = schema.empty_table()
            continue
        ncts, versions = rows.keys[table]
        arrays = [pa.array(ncts, pa.string()), pa.array(versions, pa.int32())]
        arrays += [pa.array(columns[f.name], f.type) for f in list(schema)[2:]]
        out[table] = pa.Table.from_arrays(arrays, schema=schema)
    return out
