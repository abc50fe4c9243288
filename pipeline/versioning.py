"""Decide which versions a batch of fetched records adds: the pure middle of a sync.

``plan_batch`` takes records and the current head of each study (version number, content hash)
and returns what to write. It never touches disk or clock; ``RunContext`` carries time and ids.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import orjson

from pipeline.errors import RecordInvalid
from pipeline.flatten import StudyRows, flatten
from pipeline.hashing import content_hash
from pipeline.parse import StudyCore, parse_record, record_nct_id


@dataclass(frozen=True)
class Head:
    """The latest stored version of a study."""

    version: int
    content_hash: str
    is_removed: bool = False


@dataclass(frozen=True)
class RunContext:
    run_id: str
    observed_at: datetime
    source: str  # "api" | "bulk" | "history"


@dataclass(frozen=True)
class NewVersion:
    core: StudyCore
    version: int
    content_hash: str
    registry_updated: date | None
    registry_version: int | None
    raw: bytes
    is_new_study: bool
    rows: StudyRows = field(default_factory=dict)  # the child-table rows (pipeline.flatten), same version


@dataclass(frozen=True)
class Quarantined:
    nct_id: str | None
    reason: str
    raw: bytes


@dataclass
class BatchPlan:
    """What one batch adds to the run."""

    versions: list[NewVersion] = field(default_factory=list)
    quarantined: list[Quarantined] = field(default_factory=list)
    seen: list[tuple[str, int]] = field(default_factory=list)  # (nct_id, version it matched)
    unchanged: int = 0
    heads: dict[str, Head] = field(default_factory=dict)  # new heads, to overlay on the input
    newest_update: date | None = None  # the latest lastUpdatePostDate in the batch (the watermark)

    @property
    def new_studies(self) -> int:
        return sum(1 for v in self.versions if v.is_new_study)


def plan_batch(
    records: Iterable[Mapping[str, Any]],
    heads: Mapping[str, Head],
    ctx: RunContext,
    *,
    registry_versions: Mapping[str, int] | None = None,
) -> BatchPlan:
    """Versions to store for ``records`` given the current ``heads``.

    A record whose material content hash equals its study's head adds nothing; a study seen twice
    in one batch with different content gets two versions, in the order seen.
    """
    plan = BatchPlan()
    for record in records:
        try:
            parsed = parse_record(record)
        except RecordInvalid as exc:
            plan.quarantined.append(Quarantined(exc.nct_id or record_nct_id(record), exc.reason, _raw(record)))
            continue
        core = parsed.core
        digest = content_hash(record)
        head = plan.heads.get(core.nct_id) or heads.get(core.nct_id)
        if head is not None and head.content_hash == digest and not head.is_removed:
            plan.unchanged += 1
            plan.seen.append((core.nct_id, head.version))
            _advance_watermark(plan, core)
            continue
        try:
            rows = flatten(parsed.study)  # only for new versions: unchanged records cost no flattening
        except RecordInvalid as exc:
            plan.quarantined.append(Quarantined(core.nct_id, exc.reason, _raw(record)))
            continue
        version = head.version + 1 if head else 1
        plan.versions.append(
            NewVersion(
                core=core,
                version=version,
                content_hash=digest,
                registry_updated=core.last_update_posted,
                registry_version=(registry_versions or {}).get(core.nct_id),
                raw=_raw(record),
                is_new_study=head is None,
                rows=rows,
            )
        )
        plan.heads[core.nct_id] = Head(version, digest)
        plan.seen.append((core.nct_id, version))
        _advance_watermark(plan, core)
    return plan


def _advance_watermark(plan: BatchPlan, core: StudyCore) -> None:
    if core.last_update_posted and (plan.newest_update is None or core.last_update_posted > plan.newest_update):
        plan.newest_update = core.last_update_posted


def _raw(record: Any) -> bytes:
    return orjson.dumps(record)
