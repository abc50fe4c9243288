"""Automatic compaction: small file sets are merged as runs accumulate, so a run's cost does not grow.

Every run adds a file set (one Parquet file per table it touched). Each view reads every file and
every writer's quick check opens every footer, so without merging the 365th daily run of a year
would pay for 365 sets. After each commit, with the writer lock still held, the writer merges the
oldest ``fanout`` consecutive sets of one tier into one set (size-tiered, like an LSM tree): a set's
weight is how many runs it holds, its tier ``floor(log_fanout(weight))``. The number of sets then
grows with the logarithm of the number of runs (at most ``fanout - 1`` per tier), and each run's rows
are rewritten about ``log_fanout(runs)`` times in all.

A merge is a committed run of its own that keeps every view's rows identical: its files hold exactly
the rows of the merged files (their own ``run_id`` columns included; it adds no ``sync_runs`` row) and
take the merged runs' place in commit order (the manifest generation's ``merges``). Sets holding a
backfill's ``study_rewrites`` are never merged (their place in commit order hides older rows), nor is
a merge bigger than ``MAX_MERGE_BYTES`` made (a bulk load stays as it is: ``trialsync compact``
rewrites everything). The merged runs' directories stay for ``KEEP`` like ``trialsync compact``'s,
for readers that still hold the previous catalog.

``TRIALSYNC_AUTOCOMPACT``: ``off`` (or ``0``) disables it; a number >= 2 sets the fanout.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from pipeline.errors import UsageError
from warehouse import catalog, checkpoints, committing
from warehouse.check import first_damaged
from warehouse.compact import BATCH_ROWS, retention_meta
from warehouse.manifest import Generation, Manifest
from warehouse.run_writer import RunWriter
from warehouse.tables import TABLES

if TYPE_CHECKING:
    from warehouse.checkpoints import Checkpoint
    from warehouse.store import Warehouse

logger = logging.getLogger("trialsync.warehouse")

ENV = "TRIALSYNC_AUTOCOMPACT"
FANOUT = 4
MAX_MERGE_BYTES = 256 * 1024 * 1024
KEEP = timedelta(hours=24)
KEEP_ENV = "TRIALSYNC_AUTOCOMPACT_KEEP_HOURS"
MAX_MERGES_PER_COMMIT = 8  # a cascade (tier 0 fills tier 1 fills tier 2 ...) is log-bounded anyway


@dataclass(frozen=True)
class FileSet:
    run_id: str
    bytes: int
    weight: int  # runs it holds
    mergeable: bool

    def tier(self, fanout: int) -> int:
        return int(math.log(self.weight, fanout) + 1e-9)


def fanout_setting() -> int | None:
    """The fanout from ``TRIALSYNC_AUTOCOMPACT`` (None: disabled)."""
    value = (os.environ.get(ENV) or "").strip().lower()
    if not value:
        return FANOUT
    if value in ("off", "0", "false", "no"):
        return None
    if not (value.isascii() and value.isdigit()) or len(value) > 6 or int(value) < 2:  # 5000 digits: int() fails
        raise UsageError(f"{ENV} must be 'off' or a whole number of 2 or more, not {value!r}")
    return int(value)


def keep_setting() -> timedelta:
    """How long merged runs' directories stay for readers of an older catalog (``TRIALSYNC_AUTOCOMPACT_KEEP_HOURS``)."""
    value = (os.environ.get(KEEP_ENV) or "").strip()
    if not value:
        return KEEP
    try:
        hours = float(value)
    except ValueError:
        hours = -1.0
    if not 0 <= hours <= 24 * 365:  # also NaN
        raise UsageError(f"{KEEP_ENV} must be a number of hours from 0 to 8760, not {value!r}")
    return timedelta(hours=hours)


def file_sets(manifest: Manifest, log: Sequence[Generation], base: Checkpoint | None = None) -> list[FileSet]:
    """The manifest's file sets in commit order, with their size and weight (from the log's merges;
    ``log`` follows ``base``, a checkpoint, when given)."""
    weights = checkpoints.weights(log, base)
    sizes: dict[str, int] = {}
    rewrites: set[str] = set()
    for entry in manifest.entries:
        sizes[entry.run_id] = sizes.get(entry.run_id, 0) + (entry.size or 0)
        if entry.table == "study_rewrites":
            rewrites.add(entry.run_id)
    return [FileSet(run, size, weights.get(run, 1), run not in rewrites) for run, size in sizes.items()]


def plan_merge(sets: Sequence[FileSet], fanout: int, max_bytes: int = MAX_MERGE_BYTES) -> list[str]:
    """The oldest ``fanout`` consecutive mergeable sets of one tier whose merge stays within
    ``max_bytes``; empty when there is none. Pure."""
    for i in range(len(sets) - fanout + 1):
        group = sets[i:i + fanout]
        if (all(s.mergeable for s in group) and len({s.tier(fanout) for s in group}) == 1
                and sum(s.bytes for s in group) <= max_bytes):
            return [s.run_id for s in group]
    return []


def merge_sql(root: catalog.Path, table: str, files: Sequence[str]) -> str:
    """The rows of ``files`` as they are, in the table's column order (the schema file supplies
    columns that older files lack)."""
    columns = ", ".join(f'"{name}"' for name in TABLES[table].names)
    listed = catalog._sql_list(root, [catalog.schema_file(table), *files])
    return f"SELECT {columns} FROM read_parquet({listed}, union_by_name = true)"


class DamagedInput(Exception):
    """A file a merge would read no longer matches its manifest entry: merging would bless the damage."""


def merge(warehouse: Warehouse, run_id: str, manifest: Manifest, log: Sequence[Generation],
          runs: Sequence[str], now: datetime, base: Checkpoint | None = None) -> Generation:
    """Commit one run whose files hold exactly the rows of ``runs``' files, in their place."""
    merged = set(runs)
    damage = first_damaged(warehouse.root, [e for e in manifest.entries if e.run_id in merged])
    if damage is not None:
        raise DamagedInput(damage)
    run = RunWriter(warehouse, run_id, manifest, list(log), base=base)
    try:
        with run.cursor() as con:
            for table in TABLES:
                files = [e.path for e in manifest.entries if e.run_id in merged and e.table == table]
                if files:
                    rows = con.sql(merge_sql(warehouse.root, table, files)).to_arrow_reader(BATCH_ROWS)
                    run.append_batches(table, rows)
        run.commit(retention_meta(manifest, merged, now, keep_setting()), merges=tuple(runs))
    finally:
        if not run.committed:
            run.abort()
    assert run.published is not None
    return run.published


def after_commit(warehouse: Warehouse, manifest: Manifest, log: Sequence[Generation], run_id: str,
                 base: Checkpoint | None = None) -> int:
    """Call with the writer lock held, after ``run_id`` committed ``manifest`` (``log`` its generations,
    after ``base`` when given): merge while the policy finds a group. Returns how many merges committed."""
    fanout = fanout_setting()
    if fanout is None:
        return 0
    log = list(log)
    done = 0
    while done < MAX_MERGES_PER_COMMIT:
        if committing.stop_pending:  # a signal asked the command to stop: the next run merges instead
            logger.info("not merging small file sets after %s: the command was asked to stop", run_id)
            break
        group = plan_merge(file_sets(manifest, log, base), fanout)
        if not group:
            break
        try:
            gen = merge(warehouse, f"{run_id}-m{done + 1}", manifest, log, group, datetime.now(UTC), base)
        except DamagedInput as exc:  # never merge damage into a file whose checksum would vouch for it
            logger.warning("not merging the file sets of %s .. %s: %s; run `trialsync check --deep`, then "
                           "`trialsync repair`", group[0], group[-1], exc)
            break
        done += 1
        log.append(gen)
        manifest = manifest.then(gen)
        logger.info("merged the file sets of %d runs (%s .. %s) into %s", len(group), group[0], group[-1],
                    gen.run_id)
    return done
