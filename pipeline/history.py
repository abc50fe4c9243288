"""A study's past versions from the registry's record history: validate, choose, merge. Pure.

The registry's website reads every version of a record from an undocumented internal API
(``/api/int/studies/{NCT}/history`` and ``/history/{v}``; see ``../shared/data/ctgov/history/``).
Nothing guarantees that format, so the parsers check what a backfill uses (version numbers, dates,
the record) and raise ``HistoryFormatError`` naming what was unexpected: a changed format stops that
study's backfill, it never turns into wrong versions. Members a backfill does not need are not held
against it: a null or odd ``status``, ``moduleLabels`` (unknown labels: the version is fetched even
with ``--status-design-only``) or ``lastUpdateVersions``, dates out of order.

History versions can carry their long texts as HTML (``<ul><li>``; the one real capture of the website's
API does) where API v2 sends markdown. ``parse_history_version`` turns such text into the API's form
(``html_to_api_markdown``), so a history version and the API's record of the same registry version
have one content hash and markup alone never makes a version or a change.

``merge_history`` places fetched history versions among a study's stored versions: one ordered
list, numbered 1, 2, ... by time, without duplicates (a stored version whose material content equals
a history version's *is* that version; it keeps its row and learns its registry version number).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from pipeline.errors import HistoryFormatError, UsageError
from pipeline.markup import api_form
from pipeline.scope import Scope

# Module labels seen in real history indexes and public client code (HISTORY_NOTES.md); the full
# vocabulary is undocumented. Status, dates and enrollment live in "Study Status" and "Study Design".
KEY_MODULES = ("Study Status", "Study Design")
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_FORMAT_HINT = "the registry's undocumented history format may have changed"


@dataclass(frozen=True)
class HistoryEntry:
    """One version in the registry's change index (``version`` counts from 0)."""

    version: int
    date: date  # when the version became known (its submission/QC date, HISTORY_NOTES.md)
    status: str | None
    module_labels: tuple[str, ...] | None  # None: the index did not say (treated as touching every module)


@dataclass(frozen=True)
class HistoryIndex:
    nct_id: str
    entries: tuple[HistoryEntry, ...]  # ordered by version
    last_update_versions: Mapping[str, int]

    def entry(self, version: int) -> HistoryEntry:
        return next(e for e in self.entries if e.version == version)


# -- validating the undocumented format ---------------------------------------------------------
def parse_history_index(body: Any, nct_id: str, *, url: str, nested: bool = False) -> HistoryIndex:
    """The change index of ``/history`` (top level) or of ``?history=true`` (``nested``: under ``history``)."""
    what = f"history index of {nct_id}"
    if not isinstance(body, dict):
        raise _unexpected(what, f"expected a JSON object, got {type(body).__name__}", url)
    if nested:
        study = body.get("study")
        if not isinstance(study, dict) or _nct_of(study) != nct_id:
            raise _unexpected(what, f"'study' is not the record of {nct_id}", url)
        body = body.get("history")
        if not isinstance(body, dict):
            raise _unexpected(what, "no 'history' object", url)
    changes = body.get("changes")
    if not isinstance(changes, list) or not changes:
        raise _unexpected(what, "no non-empty 'changes' array", url)
    entries = sorted((_entry(item, i, what, url) for i, item in enumerate(changes)), key=lambda e: e.version)
    versions = [e.version for e in entries]
    if len(set(versions)) != len(versions) or versions[0] != 0:
        raise _unexpected(what, f"versions must be unique and start at 0, got {versions}", url)
    last = body.get("lastUpdateVersions")
    last = {k: v for k, v in last.items() if _is_int(v)} if isinstance(last, dict) else {}
    return HistoryIndex(nct_id, tuple(entries), last)


def _entry(item: Any, i: int, what: str, url: str) -> HistoryEntry:
    where = f"changes[{i}]"
    if not isinstance(item, dict):
        raise _unexpected(what, f"{where} is not an object", url)
    version, day, status, labels = (item.get(k) for k in ("version", "date", "status", "moduleLabels"))
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise _unexpected(what, f"{where} has no version number ('version': {version!r})", url)
    if not isinstance(day, str) or not _DAY.match(day):
        raise _unexpected(what, f"{where} has no YYYY-MM-DD 'date' ({day!r})", url)
    try:
        parsed = date.fromisoformat(day)
    except ValueError:
        raise _unexpected(what, f"{where} has an impossible date {day!r}", url) from None
    known = labels if isinstance(labels, list) and all(isinstance(label, str) for label in labels) else None
    return HistoryEntry(version, parsed, status if isinstance(status, str) else None,
                        None if known is None else tuple(known))


def parse_history_version(body: Any, nct_id: str, version: int, *, url: str) -> dict[str, Any]:
    """The record of ``/history/{version}``: ``{"studyVersion": N, "study": {protocolSection, ...}}``."""
    what = f"history version {version} of {nct_id}"
    if not isinstance(body, dict):
        raise _unexpected(what, f"expected a JSON object, got {type(body).__name__}", url)
    if not _is_int(body.get("studyVersion")) or body["studyVersion"] != version:
        raise _unexpected(what, f"'studyVersion' is {body.get('studyVersion')!r}, not {version}", url)
    study = body.get("study")
    if not isinstance(study, dict) or not isinstance(study.get("protocolSection"), dict):
        raise _unexpected(what, "no 'study' object with a 'protocolSection'", url)
    if _nct_of(study) != nct_id:
        raise _unexpected(what, f"'study' is the record of {_nct_of(study)!r}", url)
    return api_form(study)


def _nct_of(study: Mapping[str, Any]) -> Any:
    protocol = study.get("protocolSection")
    ident = protocol.get("identificationModule") if isinstance(protocol, dict) else None
    return ident.get("nctId") if isinstance(ident, dict) else None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _unexpected(what: str, detail: str, url: str) -> HistoryFormatError:
    return HistoryFormatError(f"unexpected {what}: {detail} ({_FORMAT_HINT})", url=url)


# -- which studies and versions to fetch --------------------------------------------------------
def check_backfill_args(ids: Sequence[str] | None, all_studies: bool) -> list[str]:
    """The studies to backfill (validated, upper-case, sorted), or [] with ``all_studies``."""
    if all_studies and ids:
        raise UsageError("give NCT ids or --all, not both")
    if not all_studies and not ids:
        raise UsageError("give the NCT ids to backfill, or --all for every study in the warehouse")
    return list(Scope.build(ids=list(ids or [])).ids)


def select_versions(index: HistoryIndex, known: Collection[int], modules: Collection[str] | None = None) -> list[int]:
    """Versions not stored yet; with ``modules``, only version 0 and those whose labels touch one of them.

    Versions left out are not stored: each stored version's values carry forward until the next.
    """
    wanted = set(modules or ())
    return [e.version for e in index.entries if e.version not in known
            and (not wanted or e.version == 0 or e.module_labels is None or wanted.intersection(e.module_labels))]


# -- merging history with what is stored --------------------------------------------------------
@dataclass(frozen=True)
class StoredVersion:
    """A version already in the warehouse (its row is kept, maybe renumbered)."""

    version: int
    content_hash: str
    registry_updated: date | None
    registry_version: int | None
    observed_on: date  # places a removal marker (no registry date) in time
    is_removed: bool = False

    @property
    def when(self) -> date:
        return self.registry_updated or self.observed_on


@dataclass(frozen=True)
class FetchedVersion:
    """A history version fetched in this run; ``key`` lets the caller find its planned row."""

    registry_version: int
    date: date
    content_hash: str
    key: int = 0


@dataclass(frozen=True)
class MergedVersion:
    version: int  # the number in the merged history
    stored: StoredVersion | None  # an existing row ...
    fetched: FetchedVersion | None  # ... or a new history version (exactly one is set)
    registry_version: int | None
    registry_updated: date | None

    @property
    def content_hash(self) -> str:
        source = self.stored or self.fetched
        assert source is not None
        return source.content_hash

    @property
    def is_removed(self) -> bool:
        return bool(self.stored and self.stored.is_removed)


@dataclass(frozen=True)
class HistoryMerge:
    versions: tuple[MergedVersion, ...]

    @property
    def new(self) -> list[MergedVersion]:
        return [m for m in self.versions if m.fetched is not None]

    @property
    def changed(self) -> bool:
        """Anything to write: a new version, a renumbered one, or a stored one that learnt its registry version."""
        return any(m.stored is None or m.stored.version != m.version
                   or (m.stored.registry_version, m.stored.registry_updated) != (m.registry_version,
                                                                                 m.registry_updated)
                   for m in self.versions)

    def renumbering(self) -> list[MergedVersion]:
        """The stored versions with their new numbers (and registry version and date)."""
        return [m for m in self.versions if m.stored is not None]


def merge_history(stored: Sequence[StoredVersion], fetched: Sequence[FetchedVersion]) -> HistoryMerge:
    """One history ordered by time: stored versions keep their order, history versions go by number and date.

    A stored version whose content hash equals a fetched version's is that version (it takes its
    registry version number and date). Fetched versions go before a stored version with a higher
    registry number, or, for a stored version whose registry number is unknown, when they are dated
    on or before its date. A fetched version equal in content to the version before it adds nothing.
    """
    rows = sorted(stored, key=lambda s: s.version)
    pending = sorted(fetched, key=lambda f: f.registry_version)
    matches = _match(rows, pending)
    used = {f.registry_version for f in matches.values()}
    placed = _interleave(rows, matches, [f for f in pending if f.registry_version not in used])
    merged: list[MergedVersion] = []
    for item in placed:
        previous = merged[-1] if merged else None
        if isinstance(item, FetchedVersion):
            if previous and not previous.is_removed and previous.content_hash == item.content_hash:
                continue
            merged.append(MergedVersion(len(merged) + 1, None, item, item.registry_version, item.date))
        else:
            match = matches.get(item.version)
            merged.append(MergedVersion(
                len(merged) + 1, item, None,
                match.registry_version if match else item.registry_version,
                match.date if match else item.registry_updated))
    return HistoryMerge(tuple(merged))


def _match(rows: list[StoredVersion], fetched: list[FetchedVersion]) -> dict[int, FetchedVersion]:
    """Stored versions (without a registry number yet) that are one of the fetched versions, in order."""
    ceilings = _next_known(rows)
    floor, matches = -1, {}
    taken: set[int] = set()
    for i, row in enumerate(rows):
        if row.registry_version is not None:
            floor = row.registry_version
            continue
        if row.is_removed:
            continue
        candidates = [f for f in fetched if f.content_hash == row.content_hash and floor < f.registry_version
                      < ceilings[i] and f.registry_version not in taken]
        if not candidates:
            continue
        dated = [f for f in candidates if row.registry_updated is None or f.date <= row.registry_updated]
        choice = dated[-1] if dated else candidates[0]
        matches[row.version] = choice
        taken.add(choice.registry_version)
        floor = choice.registry_version
    return matches


def _next_known(rows: list[StoredVersion]) -> list[float]:
    """For each stored row: the lowest registry number already known at or after it."""
    out: list[float] = []
    nearest: float = float("inf")
    for row in reversed(rows):
        if row.registry_version is not None:
            nearest = row.registry_version
        out.append(nearest)
    return out[::-1]


def _interleave(rows: list[StoredVersion], matches: Mapping[int, FetchedVersion],
                fetched: list[FetchedVersion]) -> list[StoredVersion | FetchedVersion]:
    def number(row: StoredVersion) -> int | None:
        match = matches.get(row.version)
        return match.registry_version if match else row.registry_version

    known = [number(r) for r in rows]
    ceilings = _next_known([StoredVersion(r.version, "", None, n, r.observed_on) for r, n in zip(rows, known,
                                                                                                 strict=True)])
    out: list[StoredVersion | FetchedVersion] = []
    i = j = 0
    while i < len(rows) and j < len(fetched):
        row, item, number_i = rows[i], fetched[j], known[i]
        if number_i is not None:
            first = item.registry_version < number_i
        else:
            # On the same day the history version goes first: most likely it is this very version
            # (a record whose content differs only in form), and the stored one stays what syncs compare to.
            first = item.registry_version < ceilings[i] and item.date <= row.when
        if first:
            out.append(item)
            j += 1
        else:
            out.append(row)
            i += 1
    return out + rows[i:] + fetched[j:]
