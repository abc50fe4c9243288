"""One shard of a bulk load: read its members, plan versions, write its part files.

Kept free of Prefect so that worker processes start fast and only import what the work needs;
``flows.bulk`` wraps ``process_shard`` in a Prefect task.

*Unread members.* A member whose key (``pipeline.registry.bulk.member_key``: size and CRC-32 from the
zip's directory) equals its study's head's was read for that version: same bytes, same record, so it
is neither inflated, parsed nor hashed; it is seen at the head's version. Anything else is read in
full, also a member whose ``lastUpdatePostDate`` did not move (the registry edits
``submissionTracking`` without moving it): its bytes changed. So is every member of a study the
archive lists more than once (read in order, the last is its head). Safeguard: each shard first re-hashes a
deterministic sample of the members it would skip (``ShardJob.sample``: a share, drawn anew each run);
one that does not match its head's hash means the shortcut cannot be trusted here, so this shard
and every shard that starts after it read everything (``VERIFY_MARKER``), and the run reports it.
``ShardJob.verify`` (``load-bulk --verify``) reads and hashes every member.
"""

from __future__ import annotations

import gc
import hashlib
import os
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import orjson
import pyarrow as pa

from pipeline.hashing import content_hash, implementation
from pipeline.parse import record_nct_id
from pipeline.registry.bulk import Member, MemberReader, member_key, members
from pipeline.versioning import BatchPlan, Head, Quarantined, RunContext, SameDay, plan_batch
from warehouse.heads import to_dict
from warehouse.parts import PartWriter, StagedFile

DEFAULT_BATCH_SIZE = 500
# The largest real record is ~3.6 MB; a member past this is not a record (a zip bomb, padding).
MAX_MEMBER_BYTES = 64 << 20
KEPT_INVALID_BYTES = 1 << 20  # of a member that is not JSON, the start is kept in quarantine
CANCEL_MARKER = ".cancelled"  # in the run's directory: the run failed, other shards stop
VERIFY_MARKER = ".verify"  # in the run's directory: a sampled re-hash failed, later shards read everything
DEFAULT_SAMPLE = 0.01  # the share of skippable members each run re-hashes anyway


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
    verify: bool = False  # read and hash every member (no member is skipped for its key)
    sample: float = DEFAULT_SAMPLE  # the share of skippable members re-hashed as a check
    same_day: SameDay = "new"  # a member with new content dated as its head (``plan_batch``): "hold" in a reload


@dataclass
class ShardResult:
    key: str
    studies: int = 0
    new_studies: int = 0
    versions: int = 0
    unchanged: int = 0
    unread: int = 0  # unchanged members skipped for their key: not inflated, parsed nor hashed
    sampled: int = 0  # skippable members re-hashed as the sampled check
    mismatched: list[str] = field(default_factory=list)  # sampled members whose hash was not their head's
    verified_all: bool = False  # every member was read (--verify, or after a sampled mismatch)
    quarantined: int = 0
    stale: list[str] = field(default_factory=list)  # studies whose member was older than their head
    repeated: list[str] = field(default_factory=list)  # studies new to the warehouse given 2+ versions here
    unknown_fields: dict[str, int] = field(default_factory=dict)  # keys the schema does not know -> records
    newest_update: date | None = None
    parts: list[StagedFile] = field(default_factory=list)
    held: list[int] = field(default_factory=list)  # members (header offsets) held back (``ShardJob.same_day``)
    seconds: float = 0.0
    canonicaliser: str = field(default_factory=implementation)  # of the process that ran the shard


def process_shard(job: ShardJob) -> ShardResult:
    """Read, plan and stage one shard, batch by batch (the work of one task, in any process)."""
    clock = time.monotonic()
    use_system_allocator()
    result = ShardResult(job.key)
    heads = to_dict(job.heads)
    run_dir = Path(job.run_dir)
    writer = PartWriter(run_dir, job.key)
    try:
        with MemberReader(job.archive) as reader, _gc_paused():
            twice = _listed_twice(job.members)
            skip = _skippable(reader, job, heads, result, twice)
            for start in range(0, job.members.num_rows, job.batch_size):
                if (run_dir / CANCEL_MARKER).exists():
                    raise ShardCancelled(f"shard {job.key}: the run was cancelled")
                _process_batch(reader, members(job.members.slice(start, job.batch_size)), skip, heads, job,
                               writer, result, twice)
        result.parts = writer.close()  # run_studies: one row per study (``warehouse.parts.one_row_per_study``)
        # A study listed twice is one; a held member's study is counted when it is decided (never listed twice).
        result.studies = len(set(job.members.column("nct_id").to_pylist())) - len(result.held)
    except BaseException:
        writer.abort()
        raise
    result.seconds = round(time.monotonic() - clock, 3)
    return result


def use_system_allocator() -> None:
    """Arrow's buffers from the C library's allocator (``pyarrow.system_memory_pool``) in this process,
    unless ``ARROW_DEFAULT_MEMORY_POOL`` chooses a pool. pyarrow's default on Linux, mimalloc, gave a
    task's freed memory back to the kernel and faulted it in again for the next batch: ~0.1–0.4 s of
    system CPU a 2,000-study task (1.3–1.7 s on a worker's first), ~10% of a shard's CPU
    (bench/RESULTS.md). What is stored does not change."""
    if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ and pa.default_memory_pool().backend_name != "system":
        pa.set_memory_pool(pa.system_memory_pool())


def _process_batch(reader: MemberReader, batch: list[Member], skip: set[int], heads: dict[str, Head],
                   job: ShardJob, writer: PartWriter, result: ShardResult, twice: set[str]) -> None:
    """Plan and stage one batch. A function of its own so that the batch's objects are freed when it
    returns: the cyclic collector, switched on again after the shard, would otherwise walk the last
    batch's ~100,000 objects (~30 ms a shard)."""
    ctx = job.ctx
    unread = [m for m in batch if m.header_offset in skip]
    plan, held = _plan(reader, [m for m in batch if m.header_offset not in skip] if unread else batch, heads, ctx,
                       job.same_day, twice)
    result.held += held
    for member in unread:
        head = heads[member.nct_id]
        plan.seen.append((member.nct_id, head.version))
        plan.unchanged += 1
        if head.registry_updated and (plan.newest_update is None or head.registry_updated > plan.newest_update):
            plan.newest_update = head.registry_updated
    result.unread += len(unread)
    writer.append_plan(plan, ctx)
    heads.update(plan.heads)
    _count(result, plan, len(batch) - len(held))


def _listed_twice(listed: pa.Table) -> set[str]:
    """Studies the shard lists more than once (their members are versions in turn)."""
    counts = Counter(listed["nct_id"].to_pylist())
    return {nct for nct, n in counts.items() if n > 1}


def _skippable(reader: MemberReader, job: ShardJob, heads: dict[str, Head], result: ShardResult,
               twice: set[str]) -> set[int]:
    """The members (by offset) that need not be read (see the module's doc), after the sampled check."""
    run_dir = Path(job.run_dir)
    if job.verify or (run_dir / VERIFY_MARKER).exists():
        result.verified_all = True
        return set()
    skip: set[int] = set()
    threshold = int(job.sample * 2 ** 32)
    # A study listed twice (a shard holds all of a study's members): its members are versions in turn,
    # so one that matches the head may still be the study's last word after one that does not.
    for member in members(job.members):
        head = heads.get(member.nct_id)
        if (head is None or head.is_removed or head.member_key != member_key(member)
                or member.nct_id in twice):
            continue
        if _drawn(job.ctx.run_id, member.nct_id, threshold):
            result.sampled += 1
            try:
                same = content_hash(orjson.loads(reader.read(member))) == head.content_hash
            except orjson.JSONDecodeError:
                same = False
            if not same:
                result.mismatched.append(member.nct_id)
            continue  # a sampled member is then read in full with the others
        skip.add(member.header_offset)
    if result.mismatched:
        (run_dir / VERIFY_MARKER).touch()
        result.verified_all = True
        return set()
    return skip


def _drawn(run_id: str, nct_id: str, threshold: int) -> bool:
    """Whether the sampled check re-hashes this study in this run (deterministic, different each run)."""
    digest = hashlib.blake2b(f"{run_id}/{nct_id}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") < threshold


def _plan(reader: MemberReader, batch: list[Member], heads: dict[str, Head], ctx: RunContext,
          same_day: SameDay = "new", twice: set[str] | frozenset[str] = frozenset()) -> tuple[BatchPlan, list[int]]:
    """The batch's plan, and the members it held back (header offsets; see ``ShardJob.same_day``)."""
    records, raws, keys, names, broken, planned = [], [], [], [], [], []
    for member in batch:
        if member.file_size > MAX_MEMBER_BYTES:  # not inflated: a zip bomb would fill memory
            broken.append(Quarantined(member.nct_id, f"the member inflates to {member.file_size} bytes, over the "
                                      f"{MAX_MEMBER_BYTES >> 20} MB a record may have", orjson.dumps(None)))
            continue
        data = reader.read(member)
        try:
            record = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            # Kept as a JSON string (its start only), so the quarantine view can still cast raw to JSON.
            broken.append(Quarantined(member.nct_id, f"invalid JSON: {exc}",
                                      orjson.dumps(data[:KEPT_INVALID_BYTES].decode(errors="replace"))))
            continue
        if (problem := _not_its_study(member, record)) is not None:
            broken.append(Quarantined(member.nct_id, problem, data if b"\n" not in data else orjson.dumps(record)))
            continue
        records.append(record)
        names.append(member.nct_id)
        # Compact members are stored as the registry wrote them; indented ones are compacted.
        raws.append(data if b"\n" not in data else orjson.dumps(records[-1]))
        keys.append(member_key(member))
        planned.append(member.header_offset)
    plan = plan_batch(records, heads, ctx, raws=raws, member_keys=keys, nct_ids=names, same_day=same_day,
                      always_new=twice)
    plan.quarantined.extend(broken)
    return plan, [planned[i] for i in plan.held]


def _not_its_study(member: Member, record: object) -> str | None:
    """Why a member cannot be planned as the study its file name says, or None. The file name picks
    the shard and so the stored heads the record is compared with: a record of another study there
    would be taken for a new study (a second version 1 of a stored one)."""
    own = record_nct_id(record) if isinstance(record, dict) else None
    if own is not None and own != member.nct_id:
        return f"the file {member.nct_id}.json holds study {own}: file name and record disagree"
    return None  # its own study, or no study id at all (``plan_batch`` says why it is quarantined)


def _count(result: ShardResult, plan: BatchPlan, studies: int) -> None:
    result.studies += studies
    result.new_studies += plan.new_studies
    result.versions += len(plan.versions)
    result.unchanged += plan.unchanged
    result.quarantined += len(plan.quarantined)
    result.stale += plan.stale
    result.repeated += [v.core.nct_id for v in plan.versions if not v.is_new_study and v.version == 2]
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
