"""Read consecutive stored versions as ``VersionPair``s, in bounded batches (for change derivation)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import duckdb
import orjson

from pipeline.changes import VersionPair, version_identity
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
FROM raw_study_versions n
LEFT JOIN raw_study_versions o ON o.nct_id = n.nct_id AND o.version = n.version - 1
{where}
ORDER BY n.nct_id, n.version
"""


def version_pairs(con: duckdb.DuckDBPyConnection, *, run_id: str | None = None,
                  baseline_runs: frozenset[str] = frozenset(), batch_size: int = 500,
                  nct_ids: Sequence[str] | None = None) -> Iterator[list[VersionPair]]:
    """Each stored version with its predecessor; only ``run_id``'s versions, or ``nct_ids``' when given.

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
    relation = con.sql(_PAIRS.format(where=("WHERE " + " AND ".join(where)) if where else ""),
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
