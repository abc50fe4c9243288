"""Which messages an alerts run sends: first the outbox, then the watches' new changes.

Pure: the warehouse gives each watch's candidate changes (its studies, its time window) and the
ledger's state. ``plan_alerts`` first takes every message of the outbox that is not known to have
arrived (written before an earlier run sent it; that run crashed, timed out or failed): it goes
again exactly as it was (same id, same changes, same payload). Then it filters the candidates by the
watch's events, categories and minimum severity, drops every (watch, change, channel) that any
earlier message carried (sent or still in the outbox; matched by change id and by what the change
is, ``AlertChange.content_keys``), and groups the rest into new messages: one per study (immediate)
or one per watch (digest), per channel. A new change never joins a message that may have gone out.
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
class Pending:
    """A message of the outbox that is not known to have arrived, with its delivery attempts so far."""

    message: Message
    attempts: int


@dataclass(frozen=True)
class LedgerState:
    """What earlier alerts runs recorded.

    ``sent``: keys delivered. ``planned``: keys carried by a message of the outbox (sent or not).
    ``planned_content``: the same as (watch, channel, content key), two keys per change.
    ``pending``: outbox messages not yet delivered (to send again). ``rejected``: outbox messages a
    receiver refused for good, not sent again. ``failed``: keys whose delivery failed before
    the outbox existed (no stored message), with their attempts so far; they are planned afresh.
    ``holds``: channels whose receiver asked at their latest attempt (``Retry-After``) not to be tried
    before a time: no message goes to them before then.
    """

    sent: frozenset[Key] = frozenset()
    failed: Mapping[Key, int] = field(default_factory=dict)
    planned: frozenset[Key] = frozenset()
    planned_content: frozenset[Key] = frozenset()
    pending: tuple[Pending, ...] = ()
    rejected: tuple[Pending, ...] = ()
    holds: Mapping[str, datetime] = field(default_factory=dict)

    def handled(self, watch: str, channel: str, change: AlertChange) -> bool:
        """Whether an earlier message carried this change to this watch's channel."""
        key = (watch, channel, change.change_id)
        return (key in self.sent or key in self.planned
                or any((watch, channel, k) in self.planned_content for k in change.content_keys()))


@dataclass(frozen=True)
class AlertPlan:
    messages: tuple[Message, ...]  # the outbox's pending messages first, then the new ones
    matched: int  # (watch, change) pairs that matter to their watch
    already_sent: int  # (watch, change, channel) skipped: an earlier message carried them
    retries: int  # (watch, change, channel) due again after an earlier attempt that failed or was cut off
    resent: int = 0  # messages of the outbox sent again unchanged
    new: tuple[Message, ...] = ()  # the new messages (to be written to the outbox before sending)

    def attempts(self, ledger: LedgerState) -> dict[str, int]:
        """The attempt number of each message in this run (1 for a first try)."""
        earlier = {p.message.message_id: p.attempts for p in ledger.pending}
        legacy = {m.message_id: max((ledger.failed.get(k, 0) for k in m.keys), default=0) for m in self.new}
        return {m.message_id: earlier.get(m.message_id, legacy.get(m.message_id, 0)) + 1 for m in self.messages}


def window_start(watch: Watch, first_seen: datetime | None, now: datetime) -> datetime:
    """Changes detected before this do not alert: ``since``, or the watch's first run less its lookback."""
    if watch.since is not None:
        return datetime.combine(watch.since, datetime.min.time(), tzinfo=now.tzinfo)
    return (first_seen or now) - timedelta(days=watch.lookback_days)


def plan_alerts(watchlist: Watchlist, candidates: Mapping[str, Sequence[AlertChange]], ledger: LedgerState,
                *, run_id: str, now: datetime) -> AlertPlan:
    resend = [p.message for p in ledger.pending if _still_routed(watchlist, p.message)]
    retries = sum(len(m.changes) for m in resend)
    resending = {key for m in resend for key in m.keys}
    messages: list[Message] = []
    matched = skipped = 0
    for watch in watchlist.watches:
        wanted = _wanted(watch, candidates.get(watch.name, ()))
        matched += len(wanted)
        for channel in watch.channels:
            due = [c for c in wanted if not ledger.handled(watch.name, channel, c)]
            skipped += sum(1 for c in wanted if (watch.name, channel, c.change_id) not in resending) - len(due)
            retries += sum(1 for c in due if (watch.name, channel, c.change_id) in ledger.failed)
            messages += _group(watch, channel, due, run_id, now)
    return AlertPlan((*resend, *messages), matched, skipped, retries, resent=len(resend), new=tuple(messages))


def _still_routed(watchlist: Watchlist, message: Message) -> bool:
    """An outbox message goes again only while its watch still sends to its channel."""
    return any(w.name == message.watch and message.channel in w.channels for w in watchlist.watches)


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
