"""What a loaded (e.g. 600,000-study) warehouse costs to look after and to query: issues 14 and 15.

``python -m bench.at_scale WAREHOUSE [--skip-deep]`` prints one JSON object:

- ``checksum``: the CPU and wall seconds of the manifest's per-file checksum (``manifest.measure``, what
  a commit does for every file it wrote) over every committed file, and the bytes they hold;
- ``check``: ``check(root)`` (quick) and ``check(root, deep=True)``, each in-process;
- ``queries``: the issue-15 queries over ``aact.studies``, current and as of a past date, each on a
  fresh read-only connection, best of ``--repeat`` by wall time;
- ``joins`` (the peer of ``queries``, in the same run): the same queries over the views an earlier
  warehouse has until its ``study_summary`` is filled (``studies`` joining the ten tables the summary
  copies), built in memory from the same manifest without the summary's mark.

Every figure carries its CPU seconds (user + system of this process, all DuckDB/Arrow threads
included: the load-independent figure) beside its wall seconds, and the 1-minute load average when it
started (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb

from warehouse import Warehouse, catalog, summary
from warehouse import manifest as manifests
from warehouse.check import check

QUERIES = {
    "count by status": "SELECT overall_status, count(*) FROM aact.studies GROUP BY ALL",
    "one study, all columns": "SELECT * FROM aact.studies WHERE nct_id = (SELECT min(nct_id) FROM studies)",
    "phase 3 with results, with calculated_values": """SELECT count(*) FROM aact.studies s
        JOIN aact.calculated_values c USING (nct_id) WHERE s.phase LIKE '%PHASE3%' AND c.were_results_reported""",
}
AS_OF = "2020-01-01"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(run: Callable[[], Any]) -> dict[str, Any]:
    load = os.getloadavg()[0]
    cpu, wall = cpu_seconds(), time.perf_counter()
    value = run()
    return {"wall": round(time.perf_counter() - wall, 3), "cpu": round(cpu_seconds() - cpu, 3),
            "load": round(load, 1), "value": value}


def checksums(root: Path) -> dict[str, Any]:
    entries = manifests.fold(manifests.read_log(root)).entries

    def run() -> dict[str, int]:
        size = 0
        for entry in entries:
            size += manifests.measure(root, entry).size or 0
        return {"files": len(entries), "bytes": size}

    return timed(run)


def checks(root: Path, deep: bool) -> dict[str, Any]:
    out = {"quick": timed(lambda: check(root).summary()), "quick (again)": timed(lambda: check(root).summary())}
    if deep:
        out["deep"] = timed(lambda: check(root, deep=True).summary())
    return out


def summarised(root: Path) -> duckdb.DuckDBPyConnection:
    return Warehouse(root).connect()


def joined(root: Path) -> duckdb.DuckDBPyConnection:
    """Views built in memory as for a warehouse whose ``study_summary`` is not filled yet."""
    manifest = Warehouse(root).manifest()
    meta = {k: v for k, v in manifest.meta.items() if k != summary.SUMMARY_KEY}
    con = duckdb.connect()
    catalog.build(con, root, manifests.Manifest(manifest.entries, meta, manifest.generation))
    return con


def queries(root: Path, repeat: int, connect: Callable[[Path], duckdb.DuckDBPyConnection] = summarised
            ) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for as_of in (None, AS_OF):
        for name, sql in QUERIES.items():
            def once(sql: str = sql, as_of: str | None = as_of) -> dict[str, Any]:
                with connect(root) as con:
                    if as_of:
                        con.execute(f"SET VARIABLE as_of = DATE '{as_of}'")
                    return timed(lambda: con.execute(sql).fetchall()[:1])
            runs = [once() for _ in range(repeat)]
            best = min(runs, key=lambda r: r["wall"])
            out[f"{name}{f' (as of {as_of})' if as_of else ''}"] = {
                **best, "value": str(best["value"])[:80], "cpu_all": [r["cpu"] for r in runs],
                "wall_all": [r["wall"] for r in runs]}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("warehouse", type=Path)
    parser.add_argument("--skip-deep", action="store_true")
    parser.add_argument("--only", choices=["checksum", "check", "queries", "joins"], action="append")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    root = args.warehouse.resolve()
    only = set(args.only or ["checksum", "check", "queries"])
    report: dict[str, Any] = {"warehouse": str(root)}
    with Warehouse(root).connect() as con:
        report["studies"], report["versions"] = con.execute(
            "SELECT (SELECT count(*) FROM studies), (SELECT count(*) FROM study_versions)").fetchall()[0]
    if "checksum" in only:
        report["checksum"] = checksums(root)
    if "check" in only:
        report["check"] = checks(root, deep=not args.skip_deep)
    if "queries" in only:
        report["queries"] = queries(root, args.repeat)
    if "joins" in only:
        report["joins"] = queries(root, args.repeat, joined)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
