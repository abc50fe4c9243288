"""Decide which versions a batch of fetched records adds: the pure middle of a sync.

``plan_batch`` takes records and the current head of each study (version number, content hash,
registry date) and returns what to write. It never touches disk or clock; ``RunContext`` carries
time and ids.

A record whose ``lastUpdatePostDate`` is earlier than its study's stored head's ``registry_updated``
is *stale* (a lagging cache or replica answered): it makes no version and no change, and is counted
(``BatchPlan.stale``). A record with the head's registry date but new content (the registry edits
``submissionTracking`` without moving the date) is a new version; the warehouse dates it by its
observation day so that versions never overlap (``warehouse.validity``). Unless it comes from an older
data snapshot than the head (``derivedSection.miscInfoModule.versionHolder``, the day of the registry's
data the record was served from, is earlier: ``holder_predates``): then a lagging replica answered
with the record as it was before the edit, and it is stale too (``plan_batch``'s ``lags``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Literal

import orjson

from pipeline.dates import latest_plausible, parse_full_date, utc_day
from pipeline.errors import RecordInvalid
from pipeline.flatten import ChildRows, flatten
from pipeline.hashing import content_hash, hash_and_unknown
from pipeline.parse import StudyCore, parse_record, record_nct_id

# What becomes of a record with new content dated the same day as its study's head (``plan_batch``).
SameDay = Literal["new", "hold"] | date
# Whether such a record (nct_id, record, head, content hash) is a lagging replica's (``plan_batch``).
Lags = Callable[[str, Mapping[str, Any], "Head", "str | None"], bool]


@dataclass(frozen=True)
class Head:
    """The latest stored version of a study."""

    version: int
    content_hash: str
    is_removed: bool = False
    registry_updated: date | None = None  # the stored version's lastUpdatePostDate
    member_key: int | None = None  # the bulk member it was read from (pipeline.registry.bulk.member_key)
    # The day it was known true: the (UTC) day it was stored, or for a version read from a bulk file,
    # the day after that file's newest registry date if earlier (files are written nightly).
    as_of: date | None = None


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
    member_key: int | None = None  # the bulk member it was read from, if any


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
    stale: list[str] = field(default_factory=list)  # studies whose record was older than their head
    unknown_fields: dict[str, int] = field(default_factory=dict)  # paths the schema does not know -> records
    heads: dict[str, Head] = field(default_factory=dict)  # new heads, to overlay on the input
    newest_update: date | None = None  # the latest lastUpdatePostDate in the batch (the watermark)
    child_rows: ChildRows = field(default_factory=ChildRows)  # the new versions' child-table rows
    held: list[int] = field(default_factory=list)  # indexes of records held back (``same_day="hold"``)
    # With ``lags``: the ``versionHolder`` of the record that made each new head, and the content hashes of
    # the versions the batch's new versions replaced (``warehouse.heads.SnapshotDays`` carries both on)
    holders: dict[str, str | None] = field(default_factory=dict)
    replaced: dict[str, set[str]] = field(default_factory=dict)

    @property
    def new_studies(self) -> int:
        return sum(1 for v in self.versions if v.is_new_study)


def plan_batch(
    records: Iterable[Mapping[str, Any]],
    heads: Mapping[str, Head],
    ctx: RunContext,
    *,
    registry_versions: Mapping[str, int] | None = None,
    raws: Sequence[bytes] | None = None,
    member_keys: Sequence[int] | None = None,
    nct_ids: Sequence[str] | None = None,
    same_day: SameDay = "new",
    always_new: Collection[str] = (),
    lags: Lags | None = None,
) -> BatchPlan:
    """Versions to store for ``records`` given the current ``heads``.

    A record whose material content hash equals its study's head adds nothing and is not parsed
    again (that content was validated when its version was stored); a study seen twice in one batch
    with different content gets two versions, in the order seen. ``raws``: the records' own compact
    JSON text, stored as is instead of serialising the record again (a bulk file's members);
    ``member_keys``: the members' keys (``pipeline.registry.bulk.member_key``), stored with each version;
    ``nct_ids``: the study each record was found under (a member's file name), for the quarantine row of a
    record that does not say its own; ``same_day``: what becomes of a record with new content (or of a
    removed study) dated the same day as its study's head: a new version (``new``: a live registry
    edits records without moving the date, and serves a study it 404'd by mistake again), ``hold``
    (not decided yet: its index goes to ``held``; see ``flows.bulk``), or, given the newest registry
    date of the bulk file it comes from, stale where that file predates the head (``archive_predates``);
    ``always_new``: studies whose such records are new versions whatever ``same_day`` says (a bulk
    file that lists a study twice: its members are its versions in turn, so none may wait for the others);
    ``lags(nct_id, record, head, digest)``: whether a record with new content dated the same day as its
    study's (not removed) head is a lagging replica's: stale, not a new version (``SnapshotDays.lags``:
    from an older snapshot of the registry's data than the head, see ``holder_predates``; or, within one
    run, the content of a version the run already replaced, from no newer snapshot). Within the batch the
    same rule is applied here, against the batch's own new heads: a study listed twice on one page, its
    newer record first, must not have the older one undo it.
    """
    plan = BatchPlan()
    today = utc_day(ctx.observed_at)
    for index, record in enumerate(records):
        raw = raws[index] if raws is not None else None
        key = member_keys[index] if member_keys is not None else None
        nct_hint = record_nct_id(record) if isinstance(record, Mapping) else None
        digest, unknown = hash_and_unknown(record) if nct_hint else (None, frozenset[str]())
        head = (plan.heads.get(nct_hint) or heads.get(nct_hint)) if nct_hint else None
        same = nct_hint and head is not None and head.content_hash == digest and not head.is_removed
        if (not same and nct_hint and head is not None and same_day == "hold" and nct_hint not in always_new
                and _is_same_day(record, head, ctx)):
            plan.held.append(index)  # counted (unknown fields too) when it is decided, but its date is the
            _note_update(plan, head.registry_updated)  # archive's now: it may be the newest, which decides it
            continue
        for path in unknown:
            plan.unknown_fields[path] = plan.unknown_fields.get(path, 0) + 1
        if same and nct_hint and head is not None:
            plan.unchanged += 1
            plan.seen.append((nct_hint, head.version))
            _note_update(plan, _last_update(record))
            continue
        if nct_hint and head is not None and (
                _is_stale(record, head, ctx)  # removed heads too: a lagging replica's old record of a
                # study the registry removed is no reappearance
                or (isinstance(same_day, date) and nct_hint not in always_new and archive_predates(same_day, head)
                    and _is_same_day(record, head, ctx))
                or (lags is not None and not head.is_removed and _is_same_day(record, head, ctx)
                    and (older_than(record, digest, plan.holders[nct_hint], plan.replaced.get(nct_hint, ()), today)
                         if nct_hint in plan.holders else lags(nct_hint, record, head, digest)))):
            plan.stale.append(nct_hint)
            plan.seen.append((nct_hint, head.version))  # still published: seen, at the version we hold
            continue
        try:
            parsed = parse_record(record)
            rows = flatten(parsed.study)  # only for new versions: unchanged records cost no flattening
        except RecordInvalid as exc:
            found_as = nct_ids[index] if nct_ids is not None else None
            plan.quarantined.append(Quarantined(exc.nct_id or nct_hint or found_as, exc.reason, raw or _raw(record)))
            continue
        core = parsed.core
        _note_update(plan, core.last_update_posted)
        digest = digest or content_hash(record)
        version = head.version + 1 if head else 1
        plan.versions.append(
            NewVersion(
                core=core,
                version=version,
                content_hash=digest,
                registry_updated=core.last_update_posted,
                registry_version=(registry_versions or {}).get(core.nct_id),
                raw=raw or _raw(record),
                is_new_study=head is None,
                member_key=key,
            )
        )
        plan.child_rows.add(core.nct_id, version, rows)
        if lags is not None:
            plan.holders[core.nct_id] = version_holder(record, today)
            if head is not None:
                plan.replaced.setdefault(core.nct_id, set()).add(head.content_hash)
        plan.heads[core.nct_id] = Head(version, digest, registry_updated=core.last_update_posted, member_key=key)
        plan.seen.append((core.nct_id, version))
    return plan


def _note_update(plan: BatchPlan, day: date | None) -> None:
    if day and (plan.newest_update is None or day > plan.newest_update):
        plan.newest_update = day


def _is_stale(record: Mapping[str, Any], head: Head, ctx: RunContext) -> bool:
    """The record's registry date is earlier than the stored head's (an unreadable date is not stale:
    the record goes on to be validated, and quarantined if it is bad). After a removal, a record of the
    last date stored before it is not stale: a registry that answered 404 by mistake serves the same
    record again, and the study must come back (unless it comes from a bulk file older than the
    warehouse: ``same_day``)."""
    if head.registry_updated is None or head.registry_updated > latest_plausible(utc_day(ctx.observed_at)):
        return False  # a head dated in the future (a damaged record) must not make every real one stale
    try:
        day = _last_update(record)
    except (KeyError, TypeError, AttributeError, RecordInvalid):
        return False
    return day is not None and day < head.registry_updated


def archive_predates(newest: date, head: Head) -> bool:
    """A bulk file whose newest registry date is ``newest`` was made before ``head`` was known true:
    the registry writes the file nightly, so it is at most a day past its newest date (a day of
    doubt is given to the file: it is news then). Monthly snapshots loaded in order stay news."""
    return head.as_of is not None and (head.as_of - newest).days > 1


def version_holder(record: Mapping[str, Any], today: date | None = None) -> str | None:
    """``derivedSection.miscInfoModule.versionHolder``: the day of the registry's data snapshot the record
    was served from (``yyyy-MM-dd``), or None: also for one that is no real day, or (given ``today``, UTC)
    one later than a snapshot can be (``latest_plausible``: a damaged record's, which must not make every
    later record of the study look older than it)."""
    derived = record.get("derivedSection")
    misc = derived.get("miscInfoModule") if isinstance(derived, Mapping) else None
    return _plausible_day(misc.get("versionHolder") if isinstance(misc, Mapping) else None, today)


_ISO_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


def _plausible_day(value: object, today: date | None) -> str | None:
    """``value`` if it is a real ``yyyy-MM-dd`` day no later than ``latest_plausible(today)``, else None."""
    if not isinstance(value, str) or not _ISO_DAY.fullmatch(value):
        return None
    try:
        day = date.fromisoformat(value)
    except ValueError:  # 2026-13-45
        return None
    return value if today is None or day <= latest_plausible(today) else None


def holder_predates(record: Mapping[str, Any], stored_holder: str | None, today: date) -> bool:
    """The record was served from an older snapshot of the registry's data than the stored version it is
    compared with (both ``versionHolder`` days known and plausible on ``today``, UTC): a lagging cache or
    replica answered."""
    mine, stored = version_holder(record, today), _plausible_day(stored_holder, today)
    return mine is not None and stored is not None and mine < stored


def older_than(record: Mapping[str, Any], digest: str | None, head_holder: str | None, replaced: Collection[str],
               today: date) -> bool:
    """A record with new content, dated as its study's head, is older than the head: it was served from an
    older data snapshot than the head's record (``holder_predates``), or it is the content of a version
    the run already replaced (a study listed twice in one listing, the newer copy first) and comes from
    no newer snapshot than the head's record (a record from a later snapshot is the registry's own
    reversal: news)."""
    if holder_predates(record, head_holder, today):
        return True
    mine, theirs = version_holder(record, today), _plausible_day(head_holder, today)
    return digest in replaced and not (mine is not None and theirs is not None and mine > theirs)


def _is_same_day(record: Mapping[str, Any], head: Head, ctx: RunContext) -> bool:
    """The record's registry date is its study's stored head's (a plausible one)."""
    if head.registry_updated is None or head.registry_updated > latest_plausible(utc_day(ctx.observed_at)):
        return False
    try:
        return _last_update(record) == head.registry_updated
    except (KeyError, TypeError, AttributeError, RecordInvalid):
        return False


def _last_update(record: Mapping[str, Any]) -> date | None:
    """``lastUpdatePostDate`` of a record known to parse (it matched a stored version's hash)."""
    struct = record["protocolSection"].get("statusModule", {}).get("lastUpdatePostDateStruct")
    return parse_full_date(struct["date"], field="lastUpdatePostDate") if struct else None


def _raw(record: Any) -> bytes:
    return orjson.dumps(record)
