"""Whether two warehouses store the same rows: every table, every column but the run's own ids and times.

``python -m bench.same_tables WAREHOUSE_A WAREHOUSE_B`` prints one JSON line per table (rows in each, rows
of each the other lacks, as multisets: ``EXCEPT ALL`` both ways) and exits 1 if any table differs. For
proving that a change of the write path (e.g. a faster ``flatten``) stores what the code before it stored:
load the same zip with both (two git worktrees) and compare.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import duckdb

from warehouse import Warehouse
from warehouse.tables import TABLES

# Columns that name or time the run itself: different in every run of the same input.
RUN_COLUMNS = frozenset({"run_id", "observed_at", "started_at", "finished_at", "detected_at", "change_id"})


def compare(a: Path, b: Path) -> list[dict[str, object]]:
    """One entry per table: rows in ``a`` and ``b``, and the rows of each missing from the other."""
    out = []
    with Warehouse(a).connect() as left, Warehouse(b).connect() as right:
        for table, schema in TABLES.items():
            columns = [f.name for f in schema if f.name not in RUN_COLUMNS]
            select = f"SELECT {', '.join(_quoted(c) for c in columns)} FROM raw_{table}"
            one = left.sql(select).to_arrow_table()
            two = right.sql(select).to_arrow_table()
            con = duckdb.connect()
            con.register("one", one)
            con.register("two", two)
            only_a = con.execute("SELECT count(*) FROM (SELECT * FROM one EXCEPT ALL SELECT * FROM two)").fetchone()
            only_b = con.execute("SELECT count(*) FROM (SELECT * FROM two EXCEPT ALL SELECT * FROM one)").fetchone()
            con.close()
            out.append({"table": table, "rows_a": one.num_rows, "rows_b": two.num_rows,
                        "only_a": only_a[0] if only_a else None, "only_b": only_b[0] if only_b else None})
    return out


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def main() -> None:
    rows = compare(Path(sys.argv[1]), Path(sys.argv[2]))
    for row in rows:
        print(json.dumps(row))
    differ = [r["table"] for r in rows if r["only_a"] or r["only_b"] or r["rows_a"] != r["rows_b"]]
    print(json.dumps({"tables": len(rows), "rows": sum(int(str(r["rows_a"])) for r in rows), "differ": differ}))
    raise SystemExit(1 if differ else 0)


if __name__ == "__main__":
    main()
