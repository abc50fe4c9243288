"""What the issue-15 tables (results, registry details, site contacts, MeSH terms, ...) cost a bulk load,
and how fast ``aact.studies`` answers.

``python -m bench.results_cost ZIP [--shards K] [--warehouse DIR]`` prints one JSON line:

- ``shards``: the CPU seconds of ``process_shard`` (read, parse, hash, flatten, Arrow, Parquet) over the
  first K shards of the archive, with every child table, with only the tables that existed before issue
  15 (the new ones stripped from ``flatten``'s output and from the written tables), and without only the
  results tables (``tables_results.RESULTS_TABLES``), each best of two; ``added_pct`` /
  ``results_tables_added_pct`` are the extra CPU of the full run. A bulk load is this work on 2 workers plus
  a fixed commit, so the share of the whole load is at most this.
- ``queries`` (with ``--warehouse``, a loaded warehouse): wall seconds of queries over ``aact.studies``
  (best of three, a fresh read-only connection each time), current and as of a past date.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pipeline.versioning as versioning
import warehouse.rows as rows
from flows.shards import ShardJob, process_shard
from pipeline.registry.bulk import BulkArchive
from pipeline.versioning import RunContext
from warehouse.heads import HEAD_SCHEMA
from warehouse.tables_results import REGISTRY_TABLES, RESULTS_TABLES

NEW_TABLES = set(REGISTRY_TABLES) | set(RESULTS_TABLES) | {"study_summary"}
# An assumption, not a measured fact (no count in ../shared/data): about a tenth of the registry's
# studies have posted results, against 7 of the 326 real records (2%) the corpus samples.
REGISTRY_RESULTS_SHARE = 0.10
QUERIES = {
    "count by status": "SELECT overall_status, count(*) FROM aact.studies GROUP BY ALL",
    "one study, all columns": "SELECT * FROM aact.studies WHERE nct_id = (SELECT min(nct_id) FROM studies)",
    "phase 3 completed, with calculated_values": """SELECT count(*) FROM aact.studies s
        JOIN aact.calculated_values c USING (nct_id) WHERE s.phase LIKE '%PHASE3%' AND c.were_results_reported""",
}


@contextmanager
def without_new_tables(dropped: set[str] = NEW_TABLES) -> Iterator[None]:
    original_flatten, original_tables = versioning.flatten, rows.CHILD_TABLES

    def flatten(study: Any) -> Any:
        return {t: c for t, c in original_flatten(study).items() if t not in dropped}

    versioning.flatten = flatten
    rows.CHILD_TABLES = {t: s for t, s in original_tables.items() if t not in dropped}
    try:
        yield
    finally:
        versioning.flatten, rows.CHILD_TABLES = original_flatten, original_tables


def shard_cpu(archive: BulkArchive, keys: list[str]) -> tuple[float, int]:
    ctx = RunContext("bench", datetime.now(UTC), "bulk")
    cpu, studies = 0.0, 0
    for key in keys:
        with tempfile.TemporaryDirectory() as out:
            job = ShardJob(str(archive.path), key, archive.shards[key], HEAD_SCHEMA.empty_table(), ctx, out)
            start = time.process_time()
            result = process_shard(job)
            cpu += time.process_time() - start
            studies += result.studies
    return cpu, studies


def record_cpu(records: list[dict[str, Any]], repeat: int = 5) -> float:
    """CPU seconds per record of planning and tabulating ``records`` (as a first load)."""
    ctx = RunContext("bench", datetime.now(UTC), "bulk")

    def run() -> float:
        start = time.process_time()
        for _ in range(repeat):
            rows.plan_tables(versioning.plan_batch(records, {}, ctx), ctx)
        return (time.process_time() - start) / repeat / len(records)

    return best(3, run)


def per_record(data: Path) -> dict[str, Any]:
    """The same comparison on the real records, apart for those with posted results (the corpus keeps
    the real share, 7 of 326, lower than the registry's)."""
    import orjson

    records = [orjson.loads(p.read_bytes()) for p in sorted((data / "ctgov" / "studies").glob("*.json"))]
    out: dict[str, Any] = {}
    for name, subset in (("with results", [r for r in records if "resultsSection" in r]),
                         ("without results", [r for r in records if "resultsSection" not in r])):
        full = record_cpu(subset)
        with without_new_tables():
            before = record_cpu(subset)
        with without_new_tables(set(RESULTS_TABLES)):
            no_results = record_cpu(subset)
        out[name] = {"records": len(subset), "ms_full": round(1000 * full, 3),
                     "ms_without_new_tables": round(1000 * before, 3),
                     "ms_without_results_tables": round(1000 * no_results, 3),
                     "added_pct": round(100 * (full - before) / before, 1)}
    out["results tables at a registry-like share"] = projected(out["with results"], out["without results"])
    return out


def projected(with_results: dict[str, Any], without: dict[str, Any], share: float = REGISTRY_RESULTS_SHARE
              ) -> dict[str, Any]:
    """What the results tables would add to planning + tabulating at the registry's share of records
    with posted results (the corpus has the real records' 2%). Parse, hash and Parquet are left out
    of the base, so the share of a whole load is lower than this."""
    def cost(key: str) -> float:
        return float(share * with_results[key] + (1 - share) * without[key])

    base = cost("ms_without_results_tables")
    return {"share_with_results": share,
            "added_pct": round(100 * (cost("ms_full") - base) / base, 1)}


def best(times: int, run: Callable[[], float]) -> float:
    return min(run() for _ in range(times))


def query_seconds(directory: Path) -> dict[str, Any]:
    from warehouse import Warehouse

    out: dict[str, Any] = {}
    with Warehouse(directory).connect() as con:
        out["studies"] = con.execute("SELECT count(*) FROM aact.studies").fetchall()[0][0]
    for as_of in (None, "2020-01-01"):
        for name, sql in QUERIES.items():
            def once(sql: str = sql, as_of: str | None = as_of) -> float:
                with Warehouse(directory).connect() as con:
                    if as_of:
                        con.execute(f"SET VARIABLE as_of = DATE '{as_of}'")
                    start = time.perf_counter()
                    con.execute(sql).fetchall()
                    return time.perf_counter() - start
            out[f"{name}{' (as of ' + as_of + ')' if as_of else ''}"] = round(best(3, once), 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("zip")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--warehouse", type=Path)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    args = parser.parse_args()
    archive = BulkArchive.open(args.zip)
    keys = sorted(archive.shards)[: args.shards]
    report: dict[str, Any] = {}
    full = best(2, lambda: shard_cpu(archive, keys)[0])
    with without_new_tables():
        before = best(2, lambda: shard_cpu(archive, keys)[0])
    with without_new_tables(set(RESULTS_TABLES)):
        no_results = best(2, lambda: shard_cpu(archive, keys)[0])
    studies = sum(archive.shards[key].num_rows for key in keys)
    report["shards"] = {"shards": len(keys), "studies": studies, "cpu_full": round(full, 3),
                        "cpu_without_new_tables": round(before, 3),
                        "cpu_without_results_tables": round(no_results, 3),
                        "added_pct": round(100 * (full - before) / before, 1),
                        "results_tables_added_pct": round(100 * (full - no_results) / no_results, 1)}
    report["records"] = per_record(args.data)
    if args.warehouse:
        report["queries"] = query_seconds(args.warehouse)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
