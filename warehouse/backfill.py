"""What a backfill reads from the warehouse (stored versions, the studies to backfill) and the renumbering it writes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import duckdb
import pyarrow as pa

from pipeline.history import HistoryMerge, StoredVersion

_STORED = """
SELECT nct_id, version, content_hash, registry_updated, registry_version,
       CAST(timezone('UTC', observed_at) AS DATE) AS observed_on, is_removed
FROM raw_study_versions WHERE nct_id IN (SELECT unnest(CAST(? AS VARCHAR[])))
ORDER BY nct_id, version"""

MOVES = pa.schema([
    pa.field("nct_id", pa.string()),
    pa.field("old_version", pa.int32()),
    pa.field("new_version", pa.int32()),
    pa.field("registry_version", pa.int32()),
    pa.field("registry_updated", pa.date32()),
])


def stored_versions(con: duckdb.DuckDBPyConnection, nct_ids: Sequence[str]) -> dict[str, list[StoredVersion]]:
    """Every committed version of each study in ``nct_ids`` (removal markers included), in order."""
    out: dict[str, list[StoredVersion]] = {}
    for nct, version, digest, updated, registry_version, observed_on, removed in con.execute(
            _STORED, [list(nct_ids)]).fetchall():
        out.setdefault(nct, []).append(
            StoredVersion(version, digest, updated, registry_version, observed_on, bool(removed)))
    return out


def followed_studies(con: duckdb.DuckDBPyConnection) -> list[str]:
    """``--all``: every study the warehouse follows (its current version is not a removal)."""
    return [row[0] for row in con.execute("SELECT nct_id FROM studies ORDER BY nct_id").fetchall()]


def moves_table(merges: Mapping[str, HistoryMerge]) -> pa.Table:
    """(nct_id, old_version, new_version, registry_version, registry_updated) of every stored version."""
    rows = [(nct, m.stored.version, m.version, m.registry_version, m.registry_updated)
            for nct, merge in merges.items() for m in merge.renumbering() if m.stored is not None]
    return pa.table({name: [row[i] for row in rows] for i, name in enumerate(MOVES.names)}, schema=MOVES)
