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
    pa.field("observed_on", pa.date32()),  # the UTC day the head was stored (an older bulk file's is stale)
])

# registry_updated: the latest registry date any stored version of the study had (a removal marker
# has none of its own): a fetched record older than it is stale, also after a removal.
HEADS_SQL = ("SELECT nct_id, version, content_hash, is_removed, "
             "max(registry_updated) OVER (PARTITION BY nct_id) AS registry_updated, member_key, "
             "CAST(timezone('UTC', observed_at) AS DATE) AS observed_on FROM raw_study_versions "
             "QUALIFY row_number() OVER (PARTITION BY nct_id ORDER BY version DESC) = 1")


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
    return {nct: Head(version, digest, bool(removed), updated, key, observed)
            for nct, version, digest, removed, updated, key, observed in zip(*columns, strict=True)}
