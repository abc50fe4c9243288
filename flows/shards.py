"""One shard of a bulk load: read its members, plan versions, write its part files.

Kept free of Prefect so that worker processes start fast and only import what the work needs;
``flows.bulk`` wraps ``process_shard`` in a Prefect task.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import orjson
import pyarrow as pa

from pipeline.registry.bulk import Member, MemberReader, members
from pipeline.versioning import BatchPlan, Head, Quarantined, RunContext, plan_batch
from warehouse.heads import to_dict
from warehouse.parts import PartWriter, StagedFile

DEFAULT_BATCH_SIZE = 500
CANCEL_MARKER = ".cancelled"  # in the run's directory: the run failed, other shards stop


class ShardCancelled(Exception):
    """Another shard failed; this one stopped early (its files go with the failed run)."""


@dataclass(frozen=True)
class ShardJob:
    archive: str
    key: str
    members: pa.Table  # MEMBER_SCHEMA
    heads: pa.Table  # HEAD_SCHEMA: the committed heads of this shard's studies
    ctx: RunContext
    run_dir: str
    batch_size: int = DEFAULT_BATCH_SIZE


@dataclass
class ShardResult:
    key: str
    studies: int = 0
    new_studies: int = 0
    versions: int = 0
    unchanged: int = 0
    quarantined: int = 0
    stale: list[str] = field(default_factory=list)  # studies whose member was older than their head
    unknown_fields: dict[str, int] = field(default_factory=dict)  # keys the schema does not know -> records
    newest_update: date | None = None
    parts: list[StagedFile] = field(default_factory=list)
    seconds: float = 0.0


def process_shard(job: ShardJob) -> ShardResult:
    """Read, plan and stage one shard, batch by batch (the work of one task, in any process)."""
    clock = time.monotonic()
    result = ShardResult(job.key)
    heads = to_dict(job.heads)
    run_dir = Path(job.run_dir)
    writer = PartWriter(run_dir, job.key)
    try:
        with MemberReader(job.archive) as reader, _gc_paused():
            for start in range(0, job.members.num_rows, job.batch_size):
                if (run_dir / CANCEL_MARKER).exists():
                    raise ShardCancelled(f"shard {job.key}: the run was cancelled")
                batch = members(job.members.slice(start, job.batch_size))
                plan = _plan(reader, batch, heads, job.ctx)
                writer.append_plan(plan, job.ctx)
                heads.update(plan.heads)
                _count(result, plan, len(batch))
        result.parts = writer.close()
    except BaseException:
        writer.abort()
        raise
    result.seconds = round(time.monotonic() - clock, 3)
    return result


def _plan(reader: MemberReader, batch: list[Member], heads: dict[str, Head], ctx: RunContext) -> BatchPlan:
    records, raws, broken = [], [], []
    for member in batch:
        data = reader.read(member)
        try:
            records.append(orjson.loads(data))
        except orjson.JSONDecodeError as exc:
            # Kept as a JSON string, so the quarantine view can still cast raw to JSON.
            broken.append(Quarantined(member.nct_id, f"invalid JSON: {exc}",
                                      orjson.dumps(data.decode(errors="replace"))))
            continue
        # Compact members are stored as the registry wrote them; indented ones are compacted.
        raws.append(data if b"\n" not in data else orjson.dumps(records[-1]))
    plan = plan_batch(records, heads, ctx, raws=raws)
    plan.quarantined.extend(broken)
    return plan


def _count(result: ShardResult, plan: BatchPlan, studies: int) -> None:
    result.studies += studies
    result.new_studies += plan.new_studies
    result.versions += len(plan.versions)
    result.unchanged += plan.unchanged
    result.quarantined += len(plan.quarantined)
    result.stale += plan.stale
    for path, n in plan.unknown_fields.items():
        result.unknown_fields[path] = result.unknown_fields.get(path, 0) + n
    result.newest_update = max(filter(None, [result.newest_update, plan.newest_update]), default=None)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Parsed JSON is acyclic (reference counting frees it), yet building it triggers the cyclic
    collector over and over: pausing it makes planning ~2x faster (bench/RESULTS.md)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
