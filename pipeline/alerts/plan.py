"""Which messages an alerts run sends: the watches' matching changes less what the ledger says was sent.

Pure: the warehouse gives each watch's candidate changes (its studies, its time window) and the
ledger's state; ``plan_alerts`` filters by the watch's events, categories and minimum severity,
drops every (watch, change, channel) already delivered, and groups the rest into messages:
one per study (immediate) or one per watch (digest), per channel.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from pipeline.alerts.message import AlertChange, Message, StudyAlert, message_id
from pipeline.alerts.watchlist import Watch, Watchlist
from pipeline.changes import SEVERITIES

Key = tuple[str, str, str]  # (watch, channel, change_id)


@dataclass(frozen=True)
class LedgerState:
    """What earlier alerts runs recorded: keys delivered, and failed keys with their attempts so far."""

    sent: frozenset[Key] = frozenset()
    failed: Mapping[Key, int] = field(default_factory=dict)


@dataclass(frozen=True)
class AlertPlan:
    messages: tuple[Message, ...]
    matched: int  # (watch, change) pairs that matter to their watch
    already_sent: int  # (watch, change, channel) skipped: the ledger has them as delivered
    retries: int  # (watch, change, channel) due again after an earlier failed attempt

    def attempts(self, ledger: LedgerState) -> dict[Key, int]:
        """The attempt number of each key in this run (1 for a first try)."""
        return {key: ledger.failed.get(key, 0) + 1 for m in self.messages for key in m.keys}


def window_start(watch: Watch, first_seen: datetime | None, now: datetime) -> datetime:
    """Changes detected before this do not alert: ``since``, or the watch's first run less its lookback."""
    if watch.since is not None:
        return datetime.combine(watch.since, datetime.min.time(), tzinfo=now.tzinfo)
    return (first_seen or now) - timedelta(days=watch.lookback_days)


def plan_alerts(watchlist: Watchlist, candidates: Mapping[str, Sequence[AlertChange]], ledger: LedgerState,
                *, run_id: str, now: datetime) -> AlertPlan:
    messages: list[Message] = []
    matched = skipped = retries = 0
    for watch in watchlist.watches:
        wanted = _wanted(watch, candidates.get(watch.name, ()))
        matched += len(wanted)
        for channel in watch.channels:
            due = [c for c in wanted if (watch.name, channel, c.change_id) not in ledger.sent]
            skipped += len(wanted) - len(due)
            retries += sum(1 for c in due if (watch.name, channel, c.change_id) in ledger.failed)
            messages += _group(watch, channel, due, run_id, now)
    return AlertPlan(tuple(messages), matched, skipped, retries)


def _wanted(watch: Watch, changes: Sequence[AlertChange]) -> list[AlertChange]:
    unique = {c.change_id: c for c in changes if watch.wants(c.category, c.event, c.severity)}
    return sorted(unique.values(), key=lambda c: (c.nct_id, -SEVERITIES.index(c.severity),
                                                  c.registry_updated or date.min, c.field, c.change_id))


def _group(watch: Watch, channel: str, due: list[AlertChange], run_id: str, now: datetime) -> list[Message]:
    if not due:
        return []
    studies = _studies(due)
    groups = [studies] if watch.mode == "digest" else [[s] for s in studies]
    return [Message(message_id(watch.name, channel, [c.change_id for s in group for c in s.changes]),
                    watch.name, channel, watch.mode, run_id, now, tuple(group)) for group in groups]


def _studies(changes: list[AlertChange]) -> list[StudyAlert]:
    by_study: dict[str, list[AlertChange]] = {}
    for change in changes:
        by_study.setdefault(change.nct_id, []).append(change)
    return [StudyAlert(nct, next((c.title for c in group if c.title), None), tuple(group))
            for nct, group in sorted(by_study.items())]


def sample_message(channel: str, run_id: str, now: datetime) -> Message:
    """``trialsync alerts test``: a sample alert (the seed trial's completion date refinement of the demo)."""
    change = AlertChange(
        change_id="sample", nct_id="NCT07011004",
        title="A Study of Natural Killer Cells in Combination With Atezolizumab in People With Acute "
              "Myelogenous Leukemia",
        field="completion date", event="date_precision_refined", category="dates", severity="minor",
        old_value="2028-05", new_value="2028-05-31")
    study = StudyAlert(change.nct_id, change.title, (change,))
    return Message(message_id("test", channel, [run_id]), "test", channel, "test", run_id, now, (study,))
