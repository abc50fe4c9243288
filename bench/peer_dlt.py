"""The peer: dlt 1.x loading the same bulk zip with ``merge`` / ``scd2`` into DuckDB.

Runs in its own venv (``bench.run`` creates it); imports nothing from trialsync. One invocation is one
load (like one ``trialsync load-bulk``): read every member of the zip (or the first ``--limit``),
parse it, and let dlt normalise and merge it as an SCD2 table keyed by the row hash, with the whole
extract as the snapshot (absent rows are retired, like a full bulk file). ``--nesting 0`` keeps nested
data as JSON columns; the default lets dlt unnest into child tables. Prints one JSON line of counts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import zipfile
from collections.abc import Iterator
from typing import Any

os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")  # offline

import dlt
import orjson


def studies(path: str, limit: int | None) -> Iterator[dict[str, Any]]:
    with zipfile.ZipFile(path) as zf:
        names = [n for n in zf.namelist() if n.endswith(".json")][:limit]
        for name in names:
            record: dict[str, Any] = orjson.loads(zf.read(name))
            record["nct_id"] = record["protocolSection"]["identificationModule"]["nctId"]
            yield record


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--zip", required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--pipelines-dir", required=True)
    parser.add_argument("--limit", type=int)
    parser.add_argument("--nesting", type=int, help="max_table_nesting (default: dlt's)")
    args = parser.parse_args()
    started = time.monotonic()
    resource = dlt.resource(studies(args.zip, args.limit), name="studies",
                            write_disposition={"disposition": "merge", "strategy": "scd2"},
                            max_table_nesting=args.nesting)
    pipeline = dlt.pipeline(pipeline_name="ctgov_bench", destination=dlt.destinations.duckdb(args.db),
                            dataset_name="ctgov", pipelines_dir=args.pipelines_dir)
    info = pipeline.run(resource)
    with pipeline.sql_client() as client:
        rows = client.execute_sql("SELECT count(*), count(*) FILTER (WHERE _dlt_valid_to IS NULL) FROM studies")
        tables = client.execute_sql("SELECT count(*) FROM information_schema.tables "
                                    "WHERE table_schema = 'ctgov' AND table_name NOT LIKE '_dlt%'")
    json.dump({"seconds": round(time.monotonic() - started, 3), "rows": rows[0][0], "current": rows[0][1],
               "tables": tables[0][0], "failed_jobs": bool(info.has_failed_jobs)}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
