"""The latest committed version of every study, kept columnar.

The head index is the one piece of state that grows with the registry (one entry per study). As
Arrow columns it costs ~55 bytes a study (33 MB for 600,000); a dict of ``Head`` objects costs ~260
(158 MB; measured in bench/RESULTS.md). Syncs look heads up a page at a time
(``lookup``); a bulk load hands each shard its slice (``shards``).
"""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.registry.bulk import split_by_shard
from pipeline.versioning import Head

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
# has none of its own): a fetched record older than it is stale, also after a removal.
# as_of: the UTC day the head was stored, or for a version read from a bulk file the day after that
# file's newest registry date (``sync_runs.params.archive_newest``) if earlier.
HEADS_SQL = ("SELECT h.nct_id, h.version, h.content_hash, h.is_removed, h.registry_updated, h.member_key, "
             "least(CAST(timezone('UTC', h.observed_at) AS DATE), r.known) AS as_of FROM ("
             "SELECT nct_id, version, content_hash, is_removed, member_key, observed_at, run_id, "
             "max(registry_updated) OVER (PARTITION BY nct_id) AS registry_updated FROM raw_study_versions "
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
