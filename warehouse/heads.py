"""The latest committed version of every study, kept columnar.

The head index is the one piece of state that grows with the registry (one entry per study). As
Arrow columns it costs ~55 bytes a study (33 MB for 600,000); a dict of ``Head`` objects costs ~260
(158 MB; measured in bench/RESULTS.md). Syncs look heads up a page at a time
(``lookup``); a bulk load hands each shard its slice (``shards``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.registry.bulk import split_by_shard
from pipeline.versioning import BatchPlan, Head, holder_predates, older_than

if TYPE_CHECKING:
    from warehouse.run_writer import RunWriter

HEAD_SCHEMA = pa.schema([
    pa.field("nct_id", pa.string()),
    pa.field("version", pa.int32()),
    pa.field("content_hash", pa.string()),
    pa.field("is_removed", pa.bool_()),
    pa.field("registry_updated", pa.date32()),  # a fetched record older than this is stale
    pa.field("member_key", pa.int64()),  # the bulk member the head was read from (size << 32 | CRC-32)
    pa.field("as_of", pa.date32()),  # when the head was known true (``pipeline.versioning.Head.as_of``)
])

# registry_updated: the latest registry date any stored version of the study had (a removal marker
# has none of its own): a fetched record older than it is stale, also after a removal. A date later
# than the day after the version was observed (``pipeline.dates.latest_plausible``: a damaged record's
# 2099) counts for nothing: it would leave the study's head dated in the future for good, and with it no
# record stale (``pipeline.versioning._is_stale``): a lagging replica's old record became a new version.
# as_of: the UTC day the head was stored, or for a version read from a bulk file the day after that
# file's newest registry date (``sync_runs.params.archive_newest``) if earlier.
HEADS_SQL = ("SELECT h.nct_id, h.version, h.content_hash, h.is_removed, h.registry_updated, h.member_key, "
             "least(CAST(timezone('UTC', h.observed_at) AS DATE), r.known) AS as_of FROM ("
             "SELECT nct_id, version, content_hash, is_removed, member_key, observed_at, run_id, "
             "max(CASE WHEN registry_updated <= CAST(timezone('UTC', observed_at) AS DATE) + 1 "
             "THEN registry_updated END) OVER (PARTITION BY nct_id) AS registry_updated FROM raw_study_versions "
             "QUALIFY row_number() OVER (PARTITION BY nct_id ORDER BY version DESC) = 1) h "
             # a run's bulk file's date, read once a run (not once a version), one row a run
             "LEFT JOIN (SELECT run_id, max(TRY_CAST(json_extract_string(params, '$.archive_newest') AS DATE)) + 1 "
             "AS known FROM raw_sync_runs GROUP BY run_id) r USING (run_id)")


class HeadIndex:
    def __init__(self, table: pa.Table) -> None:
        self.table = table.select(HEAD_SCHEMA.names).cast(HEAD_SCHEMA).combine_chunks()

    @classmethod
    def empty(cls) -> HeadIndex:
        return cls(HEAD_SCHEMA.empty_table())

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def nbytes(self) -> int:
        return self.table.nbytes

    def lookup(self, nct_ids: Iterable[str]) -> dict[str, Head]:
        """The heads of these studies (those that have one)."""
        wanted = pa.array(list(dict.fromkeys(nct_ids)), pa.string())
        if len(wanted) == 0 or len(self) == 0:
            return {}
        hits = self.table.filter(pc.is_in(self.table["nct_id"], value_set=wanted))
        return to_dict(hits)

    def shards(self) -> dict[str, pa.Table]:
        """The index by shard key (the NCT id's last two digits), for a bulk load."""
        return split_by_shard(self.table)


def to_dict(table: pa.Table) -> dict[str, Head]:
    columns = [table[name].to_pylist() for name in HEAD_SCHEMA.names]
    return {nct: Head(version, digest, bool(removed), updated, key, as_of)
            for nct, version, digest, removed, updated, key, as_of in zip(*columns, strict=True)}


HOLDER_SQL = ("SELECT nct_id, json_extract_string(raw, '$.derivedSection.miscInfoModule.versionHolder') "
              "FROM raw_study_versions WHERE nct_id = ? AND version = ?")


def stored_holder(con: duckdb.DuckDBPyConnection, nct_id: str, version: int) -> str | None:
    """The ``versionHolder`` of a stored version's raw record (the snapshot day it was served from), or
    None. One study at a time: asked only for a record with new content dated as its head (rare)."""
    row = con.execute(HOLDER_SQL, [nct_id, version]).fetchone()
    return str(row[1]) if row and row[1] else None


class SnapshotDays:
    """What ``plan_batch``'s ``lags`` needs to tell a lagging replica's record: the ``versionHolder`` of each
    study's head (a record with new content dated as its head but served from an older snapshot of the
    registry's data is a lagging replica's), and the content this run's versions replaced (met again
    later in the same listing, from no newer snapshot, it is an older copy, not an edit undone). The
    heads this run wrote are remembered (``note``); a committed head's holder is read from its raw record."""

    def __init__(self, run: RunWriter, today: date) -> None:
        self.run = run
        self.today = today  # the run's UTC day: a holder later than a snapshot can be is a damaged one
        self.written: dict[str, str | None] = {}
        self.replaced: dict[str, set[str]] = {}

    def note(self, plan: BatchPlan) -> None:
        """After a batch is staged: the holders of the records that made its new heads, and what they replaced."""
        self.written.update(plan.holders)
        for nct, hashes in plan.replaced.items():
            self.replaced.setdefault(nct, set()).update(hashes)

    def lags(self, nct_id: str, record: Mapping[str, Any], head: Head, digest: str | None) -> bool:
        if nct_id in self.written:
            return older_than(record, digest, self.written[nct_id], self.replaced.get(nct_id, ()), self.today)
        with self.run.before() as con:
            return holder_predates(record, stored_holder(con, nct_id, head.version), self.today)
