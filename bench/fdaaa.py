"""How fast the analyses answer at registry scale: ``fdaaa_status`` and friends over N studies.

``python -m bench.fdaaa --size 600000 --out DIR`` builds a warehouse of N studies derived from the 326
real records (each copy gets a new NCT id and its plan, results and QC dates shifted back by up to ten
years, so every FDAAA status occurs; every third study gets a second version 100 days later) by
writing the typed tables directly (no JSON: the analyses never read it), then times each query in a
fresh read-only connection, as a user runs it, and prints a markdown table.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import orjson
import pyarrow as pa

from pipeline.versioning import RunContext, plan_batch
from warehouse import Warehouse
from warehouse.rows import plan_tables

QUERIES = {
    "fdaaa_status: counts by status": "SELECT status, count(*) FROM fdaaa_status GROUP BY ALL",
    "fdaaa_status: every row": "SELECT * FROM fdaaa_status",
    "fdaaa_as_of('2022-06-30'): every row": "SELECT * FROM fdaaa_as_of(DATE '2022-06-30')",
    "fdaaa_sponsors(today)": "SELECT * FROM fdaaa_sponsors(current_date)",
    "fdaaa_newly_overdue(30 days)": "SELECT * FROM fdaaa_newly_overdue(current_date - 30, current_date)",
    "status_spans: every row": "SELECT * FROM status_spans",
    "registered_vs_current: every row": "SELECT * FROM registered_vs_current",
}
TABLES_USED = ("study_versions", "fdaaa_inputs", "outcomes", "arm_groups")  # what the analyses read
CHUNK = 200  # copies per query (bounded memory)
SHIFT = "CAST(k * 37 % 3650 AS INTEGER)"  # days copy k is moved back
SHIFTED = {
    "study_versions": ["start_date", "primary_completion_date", "completion_date", "first_posted",
                       "last_update_posted", "results_first_posted", "registry_updated"],
    "fdaaa_inputs": ["start_date", "primary_completion_date", "completion_date", "certificate_date",
                     "results_first_submitted"],
}


def build(root: Path, size: int, data: Path) -> None:
    ctx = RunContext("bench-fdaaa", datetime.now(UTC), "bulk")
    records = [orjson.loads(p.read_bytes()) for p in sorted((data / "ctgov" / "studies").glob("NCT*.json"))]
    base = plan_tables(plan_batch(records, {}, ctx), ctx)
    base["study_versions"] = base["study_versions"].set_column(
        base["study_versions"].schema.get_field_index("raw"), "raw", pa.nulls(len(base["study_versions"]), pa.string()))
    con = duckdb.connect()
    studies = len(base["study_versions"])
    copies = math.ceil(size / studies)
    with Warehouse(root).writer(ctx.run_id) as run:
        for table, rows in base.items():
            if table not in TABLES_USED:
                continue
            con.register("base", rows)
            shift = {c: f"CAST({c} - {SHIFT} AS DATE) AS {c}" for c in SHIFTED.get(table, [])}
            if table == "fdaaa_inputs":
                shift["qc_submission_dates"] = ("list_transform(qc_submission_dates, lambda x: "
                                                f"CAST(x - {SHIFT} AS DATE)) AS qc_submission_dates")
                for c in ("qc_cancelled_dates", "qc_cancelled_on"):
                    shift[c] = f"list_transform({c}, lambda x: CAST(x - {SHIFT} AS DATE)) AS {c}"
            for second in (False, True):
                exprs = dict(shift)
                if second and table == "study_versions":  # the second version: 100 days after the first
                    exprs["registry_updated"] = (f"CAST(registry_updated - {SHIFT} + 100 AS DATE) "
                                                 "AS registry_updated")
                columns = ", ".join(exprs.get(c, c) for c in rows.schema.names if c not in ("nct_id", "version"))
                for first in range(0, copies, CHUNK):
                    sql = f"""SELECT printf('NCT%08d', k * 1000 + n) AS nct_id, CAST(version + {int(second)} AS INT)
                                  AS version, {columns}
                              FROM (SELECT r.*, k, dense_rank() OVER (PARTITION BY k ORDER BY r.nct_id) AS n
                                    FROM base AS r, range({first}, {min(first + CHUNK, copies)}) AS t(k)) AS x
                              WHERE k * {studies} + n <= {size} {"AND (k + n) % 3 = 0" if second else ""}"""
                    out = con.sql(sql).to_arrow_table()
                    run.append(table, out.select(rows.schema.names).cast(rows.schema))
            con.unregister("base")
        run.commit()


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(root: Path) -> list[tuple[str, float, float, int]]:
    """(query, wall seconds, CPU seconds of all DuckDB threads, rows). On a shared machine the wall time
    grows with the load; the CPU seconds do not."""
    results = []
    for name, sql in QUERIES.items():
        with Warehouse(root).connect() as con:
            cpu, started = _cpu(), time.perf_counter()
            rows = con.sql(sql).to_arrow_table().num_rows
            results.append((name, time.perf_counter() - started, _cpu() - cpu, rows))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=600_000)
    parser.add_argument("--out", type=Path, required=True, help="a new warehouse directory")
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data",
                        help="the real data (../shared/data)")
    args = parser.parse_args(argv)
    if not (args.out / "warehouse.duckdb").exists():
        started = time.perf_counter()
        build(args.out, args.size, args.data)
        print(f"built {args.size} studies in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    with Warehouse(args.out).connect() as con:
        row = con.execute("SELECT count(DISTINCT nct_id), count(*) FROM study_versions").fetchone()
    studies, versions = row or (0, 0)
    load = os.getloadavg()[0]
    print(f"{studies:,} studies, {versions:,} versions; 1-minute load average {load:.1f} on {os.cpu_count()} cores"
          "\n\n| query | wall seconds | CPU seconds | rows |\n|---|---:|---:|---:|")
    for name, seconds, cpu, rows in measure(args.out):
        print(f"| {name} | {seconds:.2f} | {cpu:.2f} | {rows:,} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
