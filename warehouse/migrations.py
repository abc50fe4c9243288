"""Bring a warehouse written by an earlier release up to this release's rules, on first use.

The one rule with stored consequences is the content hash (``pipeline.hashing``): a stored version's
``content_hash`` is compared with every fetched record's, so when the rule changes (what is material,
the canonical form) the stored hashes must follow, or the next sync would store a spurious new version
of every study. The warehouse's metadata records the rule its hashes follow (``hash_rule``; absent =
rule 1, the releases before it was recorded). A writer that finds an older rule first commits one
``migrate`` run that re-hashes every stored version from its raw JSON and replaces ``study_versions``'
files with one file holding the same rows and the new hashes (a tombstone keeps the hash of the
version it retired). Called from one place: ``Warehouse.writer``, with the writer lock held.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import orjson
import pyarrow as pa

from pipeline.hashing import content_hash
from pipeline.hashing import hash_rule as current_rule
from warehouse import summary
from warehouse.catalog import Manifest

if TYPE_CHECKING:
    from warehouse.store import Warehouse

HASH_RULE_KEY = "hash_rule"
UNRECORDED_RULE = "1"  # what a warehouse without the key was hashed by
BATCH_ROWS = 2000


def stored_rule(manifest: Manifest) -> str:
    return manifest.meta.get(HASH_RULE_KEY, UNRECORDED_RULE)


def upgrade(warehouse: Warehouse, run_id: str, manifest: Manifest) -> Manifest:
    """The manifest to write on: ``manifest`` itself when the warehouse follows the current rules
    (a new, empty one is stamped with them), else the manifest after committed migration runs (the
    content hash, then ``study_summary``: see ``warehouse.summary``)."""
    return summary.upgrade(warehouse, run_id, _rehashed_manifest(warehouse, run_id, manifest))


def _rehashed_manifest(warehouse: Warehouse, run_id: str, manifest: Manifest) -> Manifest:
    if manifest.meta.get(HASH_RULE_KEY) == current_rule():
        return manifest
    if not manifest.files("study_versions"):
        return Manifest(manifest.entries, {**manifest.meta, HASH_RULE_KEY: current_rule()}, manifest.generation)
    rehash(warehouse, f"{run_id}-migrate", manifest)
    return warehouse.manifest()


def rehash(warehouse: Warehouse, run_id: str, manifest: Manifest) -> int:
    """Commit one run that rewrites ``study_versions`` with hashes under the current rule; returns
    how many versions got a different hash."""
    from warehouse.store import RunWriter

    started = datetime.now(UTC)
    before = stored_rule(manifest)
    run = RunWriter(warehouse, run_id, manifest)
    try:
        moved = total = 0
        with run.staged() as con:
            reader = con.sql("SELECT * FROM raw_study_versions ORDER BY nct_id, version").to_arrow_reader(
                BATCH_ROWS)
            for batch, changed in _rehashed(reader):
                run.append("study_versions", pa.Table.from_batches([batch]))
                moved += changed
                total += batch.num_rows
        run.append_rows("sync_runs", [{
            "run_id": run_id, "mode": "migrate", "scope": "all", "started_at": started,
            "finished_at": datetime.now(UTC), "status": "succeeded", "pages": 0, "studies_seen": 0,
            "new_studies": 0, "versions_written": 0, "unchanged": 0, "changes_written": 0, "quarantined": 0,
            "retired": 0, "left_scope": 0, "stale": 0,
            "params": json.dumps({"hash_rule": f"{before} -> {current_rule()}", "versions": total, "rehashed": moved}),
        }])
        run.commit({HASH_RULE_KEY: current_rule()}, replace=frozenset({"study_versions"}))
    finally:
        if not run.committed:
            run.abort()
    return moved


def _rehashed(reader: pa.RecordBatchReader) -> Iterator[tuple[pa.RecordBatch, int]]:
    """Each batch with ``content_hash`` recomputed from ``raw`` (rows ordered by study and version:
    a removal marker, which has no raw JSON, takes the hash of the version before it)."""
    previous: tuple[str, str] | None = None  # (nct_id, new hash) of the last row seen
    for batch in reader:
        ids = batch.column("nct_id").to_pylist()
        raws = batch.column("raw").to_pylist()
        old = batch.column("content_hash").to_pylist()
        new = []
        for nct, raw, digest in zip(ids, raws, old, strict=True):
            if raw is not None:
                digest = content_hash(orjson.loads(raw))
            elif previous is not None and previous[0] == nct:
                digest = previous[1]
            new.append(digest)
            previous = (nct, digest)
        index = batch.schema.get_field_index("content_hash")
        column = pa.array(new, batch.schema.field(index).type)
        yield batch.set_column(index, batch.schema.field(index), column), sum(
            1 for a, b in zip(old, new, strict=True) if a != b)
