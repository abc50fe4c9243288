"""Reconciliation checks of one sync run: pure functions over plain data (no disk, clock or Prefect).

Each check compares what a run saw with what it should have seen and gives a status:
``ok``, ``warn`` (someone should look), ``fail`` (the run's picture of the scope is known to be
incomplete) or ``skipped`` (the check does not apply to this run, e.g. missing ids on an incremental).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from pipeline.scope import WATERMARK_OVERLAP

OK, WARN, FAIL, SKIPPED = "ok", "warn", "fail", "skipped"
STATUSES = (SKIPPED, OK, WARN, FAIL)  # in order of concern
CHECKS = ("total_count", "missing_ids", "listing_omitted", "unexpected_ids", "zero_update_weekdays", "status_counts")
LISTED_IDS = 20  # ids named in a check's one-line detail (all of them are kept in ``ids``)


@dataclass(frozen=True)
class Thresholds:
    """When a check speaks up. The weekday rate is the registry-wide share of studies updated on an
    average weekday (800-1,150 of ~598,000: PLATFORM_NOTES); a weekday without a single update is
    flagged only where at least ``min_expected_updates`` were expected (Poisson: P(0) < 5%)."""

    weekday_update_rate: float = 1 / 600
    min_expected_updates: float = 3.0
    status_shift_pct: float = 10.0
    status_shift_min: int = 5


@dataclass(frozen=True)
class RunFacts:
    """What a run knows when it is about to commit."""

    scope: str
    mode: str  # "full" | "incremental"
    baseline: bool  # the scope's first run: nothing to reconcile against yet
    total_count: int | None  # the registry's totalCount for the run's query
    studies_seen: int
    seen_dates: Mapping[str, date | None]  # every NCT id the run saw -> its lastUpdatePostDate
    members_before: frozenset[str]  # the scope's studies after its previous runs (not retired)
    previous_watermark: date | None
    since: date | None  # the window's first update date (incremental runs)
    today: date  # the run's day (UTC); its own updates may not be posted yet
    status_counts: Mapping[str, int]  # the scope's studies per overall status after this run
    previous_status_counts: Mapping[str, int] | None  # ... after the scope's previous run
    requested_ids: tuple[str, ...] = ()  # an ids scope: the ids asked for
    left_scope: frozenset[str] = frozenset()  # unlisted members that a lookup by id found still published
    omitted: frozenset[str] = frozenset()  # ... of those, the ones inside the scope's filters
    former_members: frozenset[str] = frozenset()  # seen by earlier runs of the scope, exited since
    unverified: frozenset[str] = frozenset()  # unlisted members the registry could not be asked about
    unverified_why: str = ""  # ... why (the look-up's error, or an incomplete listing)
    merged: Mapping[str, str] = field(default_factory=dict)  # unlisted ids -> the study the registry merged each into


@dataclass(frozen=True)
class Check:
    check: str
    status: str
    detail: str
    expected: int | None = None
    observed: int | None = None
    flagged: int = 0
    ids: tuple[str, ...] = ()
    data: Mapping[str, Any] = field(default_factory=dict)


def reconcile(facts: RunFacts, thresholds: Thresholds = Thresholds()) -> list[Check]:
    """Every check, in ``CHECKS`` order."""
    return [total_count(facts), missing_ids(facts), listing_omitted(facts), unexpected_ids(facts),
            zero_update_weekdays(facts, thresholds), status_counts(facts, thresholds)]


def total_count(f: RunFacts) -> Check:
    """The registry's ``totalCount`` for the query vs the studies the run actually received."""
    name, seen, total = "total_count", f.studies_seen, f.total_count
    if total is None:
        return Check(name, WARN, f"the registry reported no totalCount; saw {seen} studies", None, seen)
    if seen == total:
        return Check(name, OK, f"saw all {total} studies the registry counted", total, seen)
    if seen < total:
        return Check(name, FAIL, f"saw {seen} of the {total} studies the registry counted: "
                                 f"{total - seen} missing from the listing", total, seen, total - seen)
    return Check(name, WARN, f"saw {seen} studies but the registry counted {total} "
                             "(records posted while paging, or duplicates across pages)", total, seen, seen - total)


def missing_ids(f: RunFacts) -> Check:
    """After a full run: studies of the scope that the registry no longer lists; in an ids scope, also
    ids asked for that the registry has never listed (a mistyped id), from the first run on. A study
    is called gone from the registry only when it was asked about: one the run could not ask about
    (``unverified``: the look-up failed, or the listing was incomplete) is named as such, and that is a
    failure (the run cannot tell whether it is still published; it is kept, and the next full run asks)."""
    name = "missing_ids"
    unlisted = set(f.requested_ids) - set(f.seen_dates) - f.members_before if f.mode == "full" else set()
    asked_unknown = sorted(unlisted & f.unverified)
    never = sorted(unlisted - f.unverified - f.left_scope)  # the registry answered 404 for these
    not_found = "; ".join(filter(None, [
        f"{len(never)} of the {len(f.requested_ids)} requested ids are not in the registry: {_names(never)}"
        if never else "",
        f"{len(asked_unknown)} requested ids were not listed and could not be looked up"
        f"{f' ({f.unverified_why})' if f.unverified_why else ''}: {_names(asked_unknown)}" if asked_unknown else ""]))
    if f.mode != "full" or f.baseline:
        if never or asked_unknown:
            return Check(name, FAIL if asked_unknown else WARN, not_found, len(f.requested_ids),
                         len(f.requested_ids) - len(never) - len(asked_unknown), len(never) + len(asked_unknown),
                         tuple(never) + tuple(asked_unknown), {"not_found": never, "unverified": asked_unknown})
        return Check(name, SKIPPED, _only_full(f))
    gone = sorted(f.members_before - set(f.seen_dates))
    kept = len(f.members_before) - len(gone)
    unverified = [n for n in gone if n in f.unverified and n not in f.left_scope]
    merged = [n for n in gone if n in f.merged]
    removed = [n for n in gone if n not in f.left_scope and n not in f.unverified and n not in f.merged]
    left = [n for n in gone if n in f.left_scope]
    data: dict[str, Any] = {"left_scope": left, "removed": removed, "not_found": never, "unverified": unverified}
    if merged:
        data["merged"] = {n: f.merged[n] for n in merged}
    if not gone:
        detail = f"all {len(f.members_before)} known studies of the scope are still listed"
    else:
        detail = (f"{len(gone)} of {len(f.members_before)} known studies are no longer listed: {len(left)} left "
                  f"the scope but are still in the registry, {len(removed)} gone from it: "
                  f"{_names(removed or (left if not unverified and not merged else []))}")
    if merged:  # the registry's word too: the id now redirects to the study that holds it as an alias
        shown = ", ".join(f"{n} into {f.merged[n]}" for n in merged[:LISTED_IDS])
        more = f" (+{len(merged) - LISTED_IDS} more)" if len(merged) > LISTED_IDS else ""
        detail = detail.rstrip(": ") + (f"; {len(merged)} merged by the registry into another study (retired, "
                                        f"the study it became is kept): {shown}{more}")
    if unverified:
        why = f" ({f.unverified_why})" if f.unverified_why else ""
        detail = detail.rstrip(": ") + (f"; {len(unverified)} could not be looked up{why}, so whether they are "
                                        f"still in the registry is unknown (kept, not retired; the next full run "
                                        f"asks again): {_names(unverified)}")
    data["unverified"] = unverified + asked_unknown
    if not removed and not never and not unverified and not asked_unknown:  # left the scope's filters: fine
        return Check(name, OK, detail, len(f.members_before), kept, 0, tuple(gone), data)
    return Check(name, FAIL if unverified or asked_unknown else WARN,
                 "; ".join(filter(None, [detail if gone else "", not_found])), len(f.members_before), kept,
                 len(removed) + len(unverified) + len(never) + len(asked_unknown),
                 tuple(gone) + tuple(never) + tuple(asked_unknown), data)


def listing_omitted(f: RunFacts) -> Check:
    """After a full run: members of the scope (in an ids scope, also ids asked for) the listing left out
    although ``GET /studies/{id}`` still serves them inside the scope's filters (a gap in the registry's
    listing). Nothing is retired and no
    change is derived for them; they are named so someone can look."""
    name = "listing_omitted"
    if f.mode != "full" or (f.baseline and not f.omitted):  # a first run: requested ids it never listed
        return Check(name, SKIPPED, _only_full(f))
    omitted = sorted(f.omitted)
    if not omitted:
        return Check(name, OK, "the listing held every study of the scope the registry still publishes", 0, 0)
    return Check(name, WARN, f"the listing left out {len(omitted)} stud{'y' if len(omitted) == 1 else 'ies'} "
                             f"that the registry still publishes inside the scope (kept, not retired): "
                             f"{_names(omitted)}", 0, len(omitted), len(omitted), tuple(omitted))


def unexpected_ids(f: RunFacts) -> Check:
    """After a full run: studies listed now that earlier runs should have brought in but did not.

    A study new to the scope whose last update is older than the previous run's window (the
    watermark minus the overlap) was missed by the incremental runs; a study updated since
    is simply new. A study that earlier runs saw and that left the scope (or was retired) and now is
    listed again has returned: it is named in ``data["returned"]``, never claimed unseen. In an ids
    scope, any id that was not asked for is unexpected.
    """
    name = "unexpected_ids"
    if f.mode != "full" or f.baseline:
        return Check(name, SKIPPED, _only_full(f))
    new = sorted(set(f.seen_dates) - f.members_before)
    returned = [n for n in new if n in f.former_members]
    cutoff = f.previous_watermark - WATERMARK_OVERLAP if f.previous_watermark else None
    asked = set(f.requested_ids)
    stale = {n for n in new if cutoff is not None and n not in f.former_members
             and (d := f.seen_dates[n]) is not None and d < cutoff}
    odd = sorted(stale | (set(f.seen_dates) - asked if asked else set()))
    data = {"new_since_last_run": [n for n in new if n not in odd and n not in f.former_members],
            "returned": returned, "cutoff": cutoff.isoformat() if cutoff else None}
    back = f", {len(returned)} listed again after leaving the scope: {_names(returned)}" if returned else ""
    if not odd:
        fresh = len(new) - len(returned)
        return Check(name, OK, f"{fresh} new stud{'y' if fresh == 1 else 'ies'} since the last run, "
                               f"none missed by earlier runs{back}", 0, len(new), 0, (), data)
    why = "outside the requested ids" if asked else f"last updated before {cutoff} and seen by no earlier run"
    return Check(name, WARN, f"{len(odd)} unexpected stud{'y' if len(odd) == 1 else 'ies'} ({why}): {_names(odd)}",
                 0, len(new), len(odd), tuple(odd), data)


def zero_update_weekdays(f: RunFacts, t: Thresholds = Thresholds()) -> Check:
    """Weekdays in the run's window on which not one study of the scope was updated.

    The registry posts Monday to Friday, so weekends are never flagged; the run's own day is left
    out (its refresh may come later; the next run's overlap covers it). A small scope often has
    quiet weekdays, so such days are only flagged where updates were expected.
    """
    name = "zero_update_weekdays"
    if f.since is None:
        return Check(name, SKIPPED, "only an incremental run has a window of update days")
    per_day: dict[date, int] = {}
    for day in f.seen_dates.values():
        if day is not None:
            per_day[day] = per_day.get(day, 0) + 1
    days = [f.since + timedelta(days=i) for i in range(max(0, (f.today - f.since).days))]
    weekdays = [d for d in days if d.weekday() < 5]
    quiet = [d for d in weekdays if not per_day.get(d)]
    size = len(f.members_before | set(f.seen_dates))
    expected = size * t.weekday_update_rate
    data = {"weekdays": [d.isoformat() for d in weekdays], "quiet": [d.isoformat() for d in quiet],
            "expected_per_weekday": round(expected, 2), "updates": {d.isoformat(): per_day.get(d, 0) for d in days}}
    listed = ", ".join(f"{d} ({d:%a})" for d in quiet[:LISTED_IDS])
    if not quiet:
        return Check(name, OK, f"every weekday in the window had updates ({len(weekdays)} weekdays)",
                     len(weekdays), len(weekdays), 0, (), data)
    if expected < t.min_expected_updates:
        return Check(name, OK, f"{len(quiet)} weekday(s) without updates ({listed}); normal for a scope of "
                               f"{size} studies (~{expected:.1f} updates expected per weekday)",
                     len(weekdays), len(weekdays) - len(quiet), 0, (), data)
    return Check(name, WARN, f"no update on {len(quiet)} weekday(s): {listed} (~{expected:.0f} expected per weekday)",
                 len(weekdays), len(weekdays) - len(quiet), len(quiet), (), data)


def status_counts(f: RunFacts, t: Thresholds = Thresholds()) -> Check:
    """Studies per overall status after this run vs after the scope's previous run."""
    name, now = "status_counts", dict(sorted(f.status_counts.items()))
    total = sum(now.values())
    if f.previous_status_counts is None:
        return Check(name, SKIPPED, f"no earlier counts to compare with; now {_counts(now)}", None, total,
                     data={"current": now})
    before = dict(sorted(f.previous_status_counts.items()))
    delta = {s: now.get(s, 0) - before.get(s, 0) for s in sorted(now.keys() | before.keys())
             if now.get(s, 0) != before.get(s, 0)}
    big = {s: d for s, d in delta.items()
           if abs(d) >= t.status_shift_min and abs(d) >= before.get(s, 0) * t.status_shift_pct / 100}
    data = {"previous": before, "current": now, "delta": delta}
    moves = ", ".join(f"{s} {d:+d}" for s, d in (big or delta).items()) or "no change"
    status = WARN if big else OK
    return Check(name, status, f"{total} studies ({sum(before.values())} before): {moves}",
                 sum(before.values()), total, len(big), (), data)


def worst(checks: list[Check]) -> str:
    return max((c.status for c in checks), key=STATUSES.index, default=SKIPPED)


def to_markdown(run_id: str, scope: str, checks: list[Check]) -> str:
    """The run's checks as a Markdown table (a Prefect artifact)."""
    icon = {OK: "✅", WARN: "⚠️", FAIL: "❌", SKIPPED: "➖"}
    lines = [f"# Reconciliation of run `{run_id}`", "", f"Scope `{scope}`: **{worst(checks)}**", "",
             "| check | status | expected | observed | detail |", "|---|---|---:|---:|---|"]
    for c in checks:
        detail = c.detail.replace("|", "\\|")
        lines.append(f"| {c.check} | {icon[c.status]} {c.status} | {_blank(c.expected)} | {_blank(c.observed)} "
                     f"| {detail} |")
    return "\n".join(lines) + "\n"


def _only_full(f: RunFacts) -> str:
    return "the scope's first run is the baseline" if f.baseline else "only a full run can tell"


def _names(ids: list[str]) -> str:
    more = f" and {len(ids) - LISTED_IDS} more" if len(ids) > LISTED_IDS else ""
    return ", ".join(ids[:LISTED_IDS]) + more


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{s} {n}" for s, n in counts.items()) or "none"


def _blank(value: int | None) -> str:
    return "" if value is None else str(value)
