"""Table ``study_summary`` for versions stored before it existed, computed with SQL from their stored
rows (``pipeline.summary`` says what each column copies or counts; ``flatten`` computes the same for
new versions), and the manifest's mark that every version has its row.

The mark (meta ``study_summary`` = ``complete``) is what lets the ``aact`` views read the summary
instead of joining the tables it copies (``warehouse.aact.summary``). A warehouse begun by this
release gets it at its first commit; an earlier one at its first writing command, by one ``migrate``
run that fills the summary of every stored version (``upgrade``, from ``migrations.upgrade``).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from pipeline import summary

if TYPE_CHECKING:
    from warehouse.manifest import Manifest
    from warehouse.store import Warehouse

SUMMARY_KEY = "study_summary"
COMPLETE = "complete"
BATCH_ROWS = 20_000


def is_complete(manifest: Manifest) -> bool:
    return manifest.meta.get(SUMMARY_KEY) == COMPLETE


def fill_sql() -> str:
    """The ``study_summary`` rows of the stored versions that have none (removal markers have no rows)."""
    aliases = {table: f"c{i}" for i, (table, _) in enumerate(summary.COPIES)}
    exprs = {name: f"{aliases[table]}.{name}" for table, names in summary.COPIES for name in names}
    joins = [f"LEFT JOIN raw_{table} AS {alias} ON {alias}.nct_id = v.nct_id AND {alias}.version = v.version"
             for table, alias in aliases.items()]
    by_table: dict[str, list[tuple[str, str]]] = {}
    for column, table, aggregate in summary.COUNTS:
        by_table.setdefault(table, []).append((column, aggregate))
    for i, (table, counts) in enumerate(by_table.items()):
        alias = f"n{i}"
        inner = ", ".join(f"{aggregate} AS {column}" for column, aggregate in counts)
        joins.append(f"LEFT JOIN (SELECT nct_id, version, {inner} FROM raw_{table} GROUP BY ALL) AS {alias} "
                     f"ON {alias}.nct_id = v.nct_id AND {alias}.version = v.version")
        for column, aggregate in counts:
            # count(*) over no rows is 0, but a version without rows has no group: the join gives NULL
            exprs[column] = (f"CAST(coalesce({alias}.{column}, 0) AS INTEGER)" if aggregate.startswith("count(")
                             else f"CAST({alias}.{column} AS BIGINT)" if aggregate.startswith("sum(")
                             else f"{alias}.{column}")
    select = ", ".join(f"{exprs[name]} AS {name}" for name in summary.COLUMNS)
    return (f"SELECT v.nct_id, v.version, {select}\nFROM raw_study_versions AS v\n" + "\n".join(joins)
            + "\nWHERE NOT v.is_removed AND NOT EXISTS (SELECT 1 FROM raw_study_summary AS s "
              "WHERE s.nct_id = v.nct_id AND s.version = v.version)")  # unordered: streams


def upgrade(warehouse: Warehouse, run_id: str, manifest: Manifest) -> Manifest:
    """``manifest`` marked complete: stamped when it holds no versions yet, else after a committed
    ``migrate`` run that fills the summary of every stored version."""
    from warehouse.manifest import Manifest

    if is_complete(manifest):
        return manifest
    if not manifest.files("study_versions"):
        return Manifest(manifest.entries, {**manifest.meta, SUMMARY_KEY: COMPLETE}, manifest.generation)
    fill(warehouse, f"{run_id}-summary", manifest)
    return warehouse.manifest()


def fill(warehouse: Warehouse, run_id: str, manifest: Manifest) -> int:
    """Commit one run with the summary rows of every stored version that has none; returns how many."""
    from warehouse.run_writer import RunWriter

    started = datetime.now(UTC)
    run = RunWriter(warehouse, run_id, manifest)
    try:
        with run.before() as con:
            reader = con.sql(fill_sql()).to_arrow_reader(BATCH_ROWS)
            run.append_batches("study_summary", reader)
        filled = run.rows.get("study_summary", 0)
        run.append_rows("sync_runs", [{
            "run_id": run_id, "mode": "migrate", "scope": "all", "started_at": started,
            "finished_at": datetime.now(UTC), "status": "succeeded", "pages": 0, "studies_seen": 0,
            "new_studies": 0, "versions_written": 0, "unchanged": 0, "changes_written": 0, "quarantined": 0,
            "retired": 0, "left_scope": 0, "stale": 0,
            "params": json.dumps({"study_summary": "filled", "versions": filled}),
        }])
        run.commit({SUMMARY_KEY: COMPLETE})
    finally:
        if not run.committed:
            run.abort()
    return filled
