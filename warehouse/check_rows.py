"""``check --deep``, the rows: what intact files can still hold wrong.

Every file can be whole (size, checksum, row groups) and the warehouse still break the promise that
versions never overlap: two committed files both holding version 3 of a study, or one row written
twice, give ``studies_as_of`` two rows for that study on some days and make the version after it start
a day late. Rows of a version-keyed table (a child table, ``run_studies``) for an ``(nct_id, version)``
that ``study_versions`` does not hold are orphans: ``current_<table>`` never shows them and a rewrite
cannot renumber them. Both are found only by reading every key, so they belong to the deep check (the
quick one reads no data); they are committed rows, not damaged files, so ``repair`` does not change
them.

The rows are those the catalog's views show (a rewritten study's superseded rows are not counted),
read in a DuckDB of this module's own over the committed files (the catalog may be the damaged part).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import duckdb

from warehouse import catalog
from warehouse.catalog import version_locations_sql
from warehouse.manifest import Manifest
from warehouse.problems import Problem
from warehouse.tables import version_keyed_tables

__all__ = ["row_problems"]

SHOWN_KEYS = 3  # (nct_id, version) pairs named in a problem's line


def row_problems(root: Path, manifest: Manifest) -> list[Problem]:
    """Duplicate and overlapping versions in ``study_versions``, orphan rows in the version-keyed tables."""
    with duckdb.connect() as con:
        catalog.build(con, root, manifest, analyses=False, children=False)
        run_of = {str(root / e.path): (e.run_id, e.path) for e in manifest.entries}
        return (_duplicates(con, root, manifest, run_of) + _overlaps(con)
                + _orphans(con, root, manifest, run_of))


def _duplicates(con: duckdb.DuckDBPyConnection, root: Path, manifest: Manifest,
                run_of: dict[str, tuple[str, str]]) -> list[Problem]:
    """Runs are the rows' own (``run_id``): a merged file (``compact``) holds the rows of many runs."""
    rows = con.execute(f"""SELECT nct_id, version, list(DISTINCT _file ORDER BY _file),
            list(DISTINCT run_id ORDER BY run_id), count(*)
        FROM ({version_locations_sql(root, manifest)}) GROUP BY nct_id, version HAVING count(*) > 1
        ORDER BY nct_id, version""").fetchall()
    found: dict[tuple[tuple[str, ...], tuple[str, ...]], list[tuple[str, int, int]]] = defaultdict(list)
    for nct_id, version, files, runs, count in rows:
        found[tuple(run_of.get(f, ("?", f))[1] for f in files), tuple(runs)].append((nct_id, version, count))
    problems = []
    for (files, runs), keys in found.items():
        where = f"{files[0]} holds them twice" if len(files) == 1 else "each also in " + ", ".join(files[1:])
        problems.append(Problem(
            "duplicate", files[0], f"{len(keys)} (nct_id, version) stored more than once "
            f"({_keys(keys)}; {where}): versions overlap", "study_versions", ", ".join(runs),
            studies=tuple(sorted({k[0] for k in keys}))))
    return problems


def _overlaps(con: duckdb.DuckDBPyConnection) -> list[Problem]:
    """Versions whose validity does not end after it starts (``warehouse.validity`` makes each start
    at least a day after the one before; a guard on that rule)."""
    rows = con.execute("""SELECT nct_id, version, run_id FROM study_versions
        WHERE valid_to IS NOT NULL AND valid_to <= valid_from ORDER BY nct_id, version""").fetchall()
    if not rows:
        return []
    return [Problem("overlap", "study_versions", f"{len(rows)} version(s) valid for no day or overlapping the "
                    f"next ({_keys([(n, v, 1) for n, v, _ in rows])})", "study_versions",
                    ", ".join(sorted({r for _, _, r in rows})), studies=tuple(sorted({n for n, _, _ in rows})))]


def _orphans(con: duckdb.DuckDBPyConnection, root: Path, manifest: Manifest,
             run_of: dict[str, tuple[str, str]]) -> list[Problem]:
    problems = []
    for table in version_keyed_tables():
        if table == "study_versions" or not manifest.files(table):
            continue
        con.execute(f"""CREATE OR REPLACE TEMP TABLE _orphan_keys AS
            SELECT DISTINCT nct_id, version FROM raw_{table} AS t
            WHERE NOT EXISTS (SELECT 1 FROM raw_study_versions AS v
                              WHERE v.nct_id = t.nct_id AND v.version = t.version)""")
        count = con.execute("SELECT count(*) FROM _orphan_keys").fetchone()
        if not count or not count[0]:
            continue
        shown = con.execute(f"SELECT nct_id, version FROM _orphan_keys ORDER BY ALL LIMIT {SHOWN_KEYS}").fetchall()
        studies = [r[0] for r in con.execute("SELECT DISTINCT nct_id FROM _orphan_keys ORDER BY 1").fetchall()]
        listed = ", ".join("'" + str(root / p).replace("'", "''") + "'" for p in manifest.files(table))
        # the file column by a name no table uses (provided_documents has ``filename``)
        files = [r[0] for r in con.execute(f"""SELECT DISTINCT _trialsync_file FROM read_parquet([{listed}],
            union_by_name = true, filename = '_trialsync_file') AS t SEMI JOIN _orphan_keys USING (nct_id, version)
            ORDER BY 1""").fetchall()]
        places = [run_of.get(f, ("?", f)) for f in files] or [("?", table)]
        problems.append(Problem(
            "orphan", places[0][1], f"{count[0]} (nct_id, version) with rows here but no study_versions row "
            f"({_keys([(n, v, 1) for n, v in shown], count[0])})", table,
            ", ".join(sorted({run for run, _ in places})), studies=tuple(studies)))
    return problems


def _keys(keys: list[tuple[str, int, int]], total: int | None = None) -> str:
    """The first ``SHOWN_KEYS`` of ``keys`` (of ``total``, default all of them)."""
    total = len(keys) if total is None else total
    shown = ", ".join(f"{n} version {v}" + (f" x{c}" if c > 1 else "") for n, v, c in keys[:SHOWN_KEYS])
    return shown + (f" and {total - SHOWN_KEYS} more" if total > SHOWN_KEYS else "")
