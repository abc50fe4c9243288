"""Read consecutive stored versions as ``VersionPair``s, in bounded batches (for change derivation)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import duckdb
import orjson

from pipeline.changes import VersionPair, version_identity
from warehouse.catalog import version_locations_sql, version_rows_sql
from warehouse.manifest import Manifest
from warehouse.run_writer import SYNCED

_PAIRS = """
SELECT n.nct_id, o.version AS from_version, n.version AS to_version,
       CASE WHEN o.version IS NOT NULL THEN o.raw END AS old_raw,
       CASE WHEN o.version IS NOT NULL OR n.version > 1 THEN n.raw
            ELSE json_object('protocolSection', json_object('identificationModule',
                 json_object('briefTitle', n.brief_title)))::VARCHAR END AS new_raw,
       n.run_id, n.observed_at, n.registry_updated, n.source,
       coalesce(o.is_removed, false) AS old_removed, n.is_removed AS new_removed,
       o.content_hash AS old_hash, o.observed_at AS old_observed_at, n.content_hash AS new_hash
FROM {source} n
LEFT JOIN {source} o ON o.nct_id = n.nct_id AND o.version = n.version - 1
{where}
ORDER BY n.nct_id, n.version
"""

# A run's versions and their predecessors, located by the cheap columns only (no ``raw``).
_LOCATE = """
WITH loc AS ({locations})
SELECT DISTINCT r._file, r._row FROM loc AS r
JOIN (SELECT nct_id, version FROM loc WHERE run_id = ?) AS n
  ON r.nct_id = n.nct_id AND (r.version = n.version OR r.version = n.version - 1)
"""


def pair_rows(con: duckdb.DuckDBPyConnection, root: Path, manifest: Manifest, run_id: str) -> tuple[list[str], str]:
    """The files holding ``run_id``'s versions or their predecessors, and a query of just those rows
    (all columns, ``raw`` too): a run's change derivation reads only its own pairs, not every
    stored version's JSON. The rows are located by ``nct_id``/``version``/``run_id`` alone."""
    located = con.sql(_LOCATE.format(locations=version_locations_sql(root, manifest)), params=[run_id]).to_arrow_table()
    files = sorted(set(located.column("_file").to_pylist()))
    con.register("_pair_rows", located)
    query = (f"SELECT * EXCLUDE (_file, _row) FROM ({version_rows_sql(root, files)}) AS t "
             "SEMI JOIN _pair_rows AS p ON p._file = t._file AND p._row = t._row")
    return files, query


def version_pairs(con: duckdb.DuckDBPyConnection, *, run_id: str | None = None,
                  baseline_runs: frozenset[str] = frozenset(), batch_size: int = 500,
                  nct_ids: Sequence[str] | None = None,
                  source: tuple[Path, Manifest] | None = None) -> Iterator[list[VersionPair]]:
    """Each stored version with its predecessor; only ``run_id``'s versions, or ``nct_ids``' when given.

    ``source`` (the warehouse root and the manifest ``con`` was built from), with ``run_id``: read
    only the files and rows of the run's pairs (``pair_rows``).

    A study's first version carries only its title (its diff is not needed), so a bulk load's
    600,000 first versions cost no raw JSON parsing. A first version from the registry's history
    (source ``history``) is, like a scope's first run, not news: no ``study_added``.
    """
    where: list[str] = []
    params: list[object] = []
    if run_id:
        where.append("n.run_id = ?")
        params.append(run_id)
    if nct_ids is not None:
        where.append("n.nct_id IN (SELECT unnest(CAST(? AS VARCHAR[])))")
        params.append(list(nct_ids))
    table = "raw_study_versions"
    if run_id and nct_ids is None and source is not None:
        _, picked = pair_rows(con, source[0], source[1], run_id)
        table = f"({picked})"
    relation = con.sql(_PAIRS.format(where=("WHERE " + " AND ".join(where)) if where else "", source=table),
                       params=params or None)
    reader = relation.to_arrow_reader(batch_size)
    for batch in reader:
        rows = batch.to_pylist()
        yield [
            VersionPair(
                nct_id=row["nct_id"], from_version=row["from_version"], to_version=row["to_version"],
                old_raw=orjson.loads(row["old_raw"]) if row["old_raw"] else None,
                new_raw=orjson.loads(row["new_raw"]) if row["new_raw"] else None,
                run_id=row["run_id"], detected_at=row["observed_at"], registry_updated=row["registry_updated"],
                old_removed=row["old_removed"], new_removed=row["new_removed"],
                baseline=row["run_id"] in baseline_runs or row["source"] == "history",
                old_identity=None if row["from_version"] is None else version_identity(
                    row["old_hash"], row["old_removed"], row["old_observed_at"]),
                new_identity=version_identity(row["new_hash"], row["new_removed"], row["observed_at"]),
            )
            for row in rows
        ]


def baseline_runs(con: duckdb.DuckDBPyConnection) -> frozenset[str]:
    """The first successful run of each scope: its studies' first versions are not news."""
    rows = con.execute(
        f"SELECT arg_min(run_id, started_at) FROM raw_sync_runs WHERE {SYNCED} GROUP BY scope"
    ).fetchall()
    return frozenset(r[0] for r in rows)
