"""Compaction: every table's committed rows rewritten into one Parquet file per table.

Each run adds a file per table it touched, so years of daily runs leave thousands of small files that
every query opens. Compaction copies what the views show (rows hidden by a backfill's rewrite and
``changes`` files a ``rederive`` replaced are left behind) into one new run and commits it as the
only source of every table. The superseded run directories stay on disk for a grace period, because
a reader may still hold the previous catalog; the writer deletes them once it has passed.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from warehouse.catalog import RETAINED_KEY, Manifest
from warehouse.store import RunWriter
from warehouse.tables import TABLES, version_keyed_tables

BATCH_ROWS = 50_000


def plan_copy(table: str) -> str:
    """The query that reads ``table`` as the views show it, in the table's own column order."""
    columns = ", ".join(f'"{name}"' for name in TABLES[table].names)
    # Sorted by study where that is cheap; study_versions carries every version's raw JSON (gigabytes
    # for the whole registry), which a sort would have to hold or spill, so it keeps its run order.
    sort = table in version_keyed_tables() and table != "study_versions"
    order = " ORDER BY nct_id, version" if sort else ""
    return f"SELECT {columns} FROM raw_{table}{order}"


def copy_tables(run: RunWriter) -> dict[str, int]:
    """Stage every table's committed rows in ``run``; returns rows per table."""
    copied: dict[str, int] = {}
    with run.before() as con:
        for table in TABLES:
            run.append_batches(table, con.sql(plan_copy(table)).to_arrow_reader(BATCH_ROWS))
            copied[table] = run.rows.get(table, 0)
    return copied


def retention_meta(manifest: Manifest, superseded: set[str], now: datetime, keep: timedelta) -> dict[str, str]:
    """Catalog meta for the runs this compaction supersedes, kept until ``now + keep``; runs earlier
    compactions superseded keep their time unless ``keep`` is shorter."""
    due = now + keep
    kept = {r: min(until, due) for r, until in manifest.retained_until().items() if min(until, due) > now}
    kept |= {r: now + keep for r in superseded}
    return {RETAINED_KEY: json.dumps({r: until.isoformat() for r, until in sorted(kept.items())})}
