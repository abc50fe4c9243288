"""``send_alerts``: evaluate a watchlist against the change feed and deliver what is new, once.

plan (read the committed warehouse: each watch's candidate changes, the ledger; pure ``plan_alerts``)
-> outbox (one commit of the new messages, BEFORE anything is sent) -> deliver (one task per
channel: the outbox's undelivered messages first, then the new ones) -> record (one commit of each
attempt's outcome and the run's row) -> a markdown and a table artifact. One alerts run at a time
(a lock of its own, so syncs are not held up while messages go out); the writer lock only for the
two commits.

The guarantee (an outbox): a message is in the ledger before it leaves. Until the ledger records it
as delivered, every later run sends it again exactly as it was: same id (webhook ``Idempotency-Key``
and ``message_id``, e-mail ``Message-ID``, feed entry id), same changes, same payload, so a receiver
drops the repeat and the feed shows it once. That covers a process killed after sending and before
the outcome's commit, a delivery that timed out although the receiver got it, and a failed one. A
change that any message carried (matched by change id and by what the change is, so a rewritten id
does not count as new) is never planned again, and a new change never joins an earlier message: it
goes in a new one. Nothing is lost (a message is written before it is sent) and nothing arrives
under two ids.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from flows import settings
from flows.alert_artifacts import publish_artifacts
from flows.engine import NONE, flow, get_run_logger, task
from flows.inputs import check_seconds
from flows.readonly import naming_damage
from pipeline.alerts.addresses import header_value, http_url
from pipeline.alerts.channels import Resolved, deliver, sender_for
from pipeline.alerts.compliance import compliance_window
from pipeline.alerts.message import Message
from pipeline.alerts.plan import AlertPlan, LedgerState, plan_alerts, sample_message, window_start
from pipeline.alerts.redact import Redactor
from pipeline.alerts.watchlist import Channel, SecretRef, Watchlist, parse_watchlist
from pipeline.errors import DeliveryFailed, UsageError, WarehouseBusy
from warehouse import Warehouse
from warehouse.alerts import (
    candidates,
    check_predicate,
    committed_since_first_seen,
    delivery_rows,
    first_seen,
    last_seen,
    ledger_state,
    overdue_candidates,
    planned_at,
    predicate_errors,
    record_outcomes,
    write_outbox,
)
from warehouse.manifest import head as manifest_head

RETRY_BACKOFF_SECONDS = 1.0
# The longest a receiver's Retry-After holds its channel across runs (a huge or endless one: tried a day later).
MAX_HOLD = timedelta(days=1)
# How long the outcome commit waits for the writer lock once messages went out (a sync holds the lock for
# its whole run: minutes at the registry's size).
RECORD_LOCK_SECONDS = 3600
REJECTED_NOTE = "rejected by the receiver: not re-sent (`trialsync alerts run --resend-rejected` sends it again)"


def _now() -> datetime:
    """The alerts run's clock (its day judges compliance: ``fdaaa: [overdue]``)."""
    return datetime.now(UTC)


# -- the watchlist file and its secrets ------------------------------------------------------------
def load_watchlist(path: str | os.PathLike[str]) -> Watchlist:
    """Read and check a watchlist file (also every ``where:`` predicate); one-line ``UsageError``s."""
    watchlist = parse_watchlist(settings.read_config(path, "watchlist"), str(path))
    for watch in watchlist.watches:
        if watch.studies.where:
            try:
                check_predicate(watch.studies.where)
            except UsageError as exc:
                raise UsageError(f"{path}: watches[{watch.name}].studies.where: {exc}") from None
    return watchlist


def check_config(path: str | os.PathLike[str], *, environment: bool = True) -> Watchlist:
    """Before Prefect starts: the file is valid and (``environment``) every environment variable it
    names is set (``serve --list`` only lists: the variables may be set only where it serves)."""
    watchlist = load_watchlist(path)
    base = settings.config_dir(path)  # relative paths are the watchlist file's
    feeds: dict[Path, Channel] = {}
    for channel in watchlist.channels.values():
        key = f"{path}: channels.{channel.name}"
        feed = settings.config_path(base, channel.path, f"{key}.path") if channel.path else None
        if feed and feed.is_dir():
            raise UsageError(f"{key}.path: is a directory; name the feed file to write")
        if feed:  # one file in two formats: each write would find the other's feed and fail, every run
            other = feeds.setdefault(feed, channel)
            if other.format != channel.format:
                raise UsageError(f"{key}.path: the file of channels.{other.name}, which "
                                 f"writes it as {other.format}, not {channel.format}; give each format its own file")
        if channel.ca_file and not settings.config_path(base, channel.ca_file, f"{key}.ca_file").is_file():
            raise UsageError(f"{key}.ca_file: no such file {channel.ca_file}")
        for ref in channel.secrets():
            if environment and ref.env and not os.environ.get(ref.env):
                raise UsageError(f"{path}: channels.{channel.name}: environment variable {ref.env} is not set")
        for header, ref in channel.headers.items():
            if environment and ref.env:
                _header_value(os.environ[ref.env], ref, key, header)
        url = channel.url_ref.env if channel.url_ref and channel.type in ("slack", "webhook") else None
        if environment and url and not http_url(os.environ[url]):  # every run would fail "cannot reach"
            raise UsageError(f"{path}: channels.{channel.name}.url_env: environment variable {url} does not hold an "
                             f"http(s) URL with a host (its value is not shown)")
    return watchlist


def _secret(ref: SecretRef, channel: Channel) -> str:
    if ref.env:
        value = os.environ.get(ref.env)
        if not value:
            raise UsageError(f"channel {channel.name!r}: environment variable {ref.env} is not set")
        return value
    from prefect.blocks.system import Secret

    assert ref.block
    try:
        value = Secret.load(ref.block).get()  # type: ignore[union-attr]
    except Exception as exc:  # no such block, no API
        raise UsageError(f"channel {channel.name!r}: cannot load Prefect Secret block {ref.block!r} "
                         f"({type(exc).__name__})") from None
    return str(value)


def _header_value(value: str, ref: SecretRef, key: str, header: str) -> str:
    """A header's value from the environment or a Secret block (never shown)."""
    if not header_value(value):  # requests refused it at every delivery: 'cannot reach the webhook (InvalidHeader)'
        where = f"environment variable {ref.env}" if ref.env else f"Prefect Secret block {ref.block!r}"
        raise UsageError(f"{key}.headers_{'env' if ref.env else 'secret'}.{header}: {where} holds a line break, "
                         "a control character, spaces at an end or a character beyond Latin-1, which no HTTP header "
                         "value may (its value is not shown)")
    return value


def resolve_channels(watchlist: Watchlist, base_dir: Path, names: set[str] | None = None
                     ) -> tuple[dict[str, Resolved], Redactor]:
    """Each channel with its secrets looked up; the redactor knows every secret value."""
    redactor = Redactor()
    resolved: dict[str, Resolved] = {}
    for name, c in watchlist.channels.items():
        if names is not None and name not in names:
            continue
        url = _secret(c.url_ref, c) if c.url_ref else c.url
        headers = {header: _header_value(_secret(ref, c), ref, f"{watchlist.source}: channels.{name}", header)
                   for header, ref in c.headers.items()}
        password = _secret(c.password_ref, c) if c.password_ref else None
        for value in (url if c.url_ref else None, password, *headers.values()):
            if value:
                redactor.add(value)
        key = f"{watchlist.source}: channels.{name}"
        feed = settings.config_path(base_dir, c.path, f"{key}.path") if c.path else None
        ca_file = settings.config_path(base_dir, c.ca_file, f"{key}.ca_file") if c.ca_file else None
        resolved[name] = Resolved(c, url=url, headers=headers, password=password, feed_path=feed, ca_file=ca_file)
    return resolved, redactor


@contextmanager
def redacting_logs(redactor: Redactor) -> Iterator[None]:
    """Every log record made meanwhile (ours, Prefect's, apprise's, ...) has the secrets masked."""
    if not redactor:
        yield
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            text = record.getMessage()
        except Exception:  # a bad format string: leave it to logging to report
            return record
        record.msg, record.args = redactor(text), ()
        if record.exc_info:
            record.exc_text = redactor(logging.Formatter().formatException(record.exc_info))
        return record

    logging.setLogRecordFactory(factory)
    try:
        yield
    finally:
        logging.setLogRecordFactory(previous)


# -- the flow ------------------------------------------------------------------------------------
@dataclass
class Outcome:
    message: Message
    error: str | None
    rejected: bool = False  # refused for good (HTTP 4xx, SMTP 5xx): not re-sent by later runs
    retry_at: datetime | None = None  # the receiver asked not to be tried before then (Retry-After)


class _Run:
    """What the tasks share; a plain object so Prefect neither hashes nor walks it."""

    def __init__(self, store: Warehouse, watchlist: Watchlist, run_id: str, started: datetime,
                 resolved: dict[str, Resolved], redactor: Redactor, wait_until: float | None = None) -> None:
        self.store, self.watchlist, self.run_id, self.started = store, watchlist, run_id, started
        self.resolved, self.redactor = resolved, redactor
        self.wait_until = wait_until  # time.monotonic() past which no retry wait ends (the retry budget)
        self.ledger = LedgerState()
        self.resend_rejected = False
        self.outbox_committed = False
        self.planned_at = 0  # the manifest generation the plan read (0: none, or unknown)

    def meta(self) -> dict[str, str] | None:
        """What the run's commits record of its plan (``warehouse.alerts.committed_since_first_seen``)."""
        return planned_at(self.run_id, self.planned_at) if self.planned_at > 0 else None


@task(name="plan-alerts", cache_policy=NONE)
def plan_task(r: _Run) -> AlertPlan:
    """Each watch's candidate changes and the ledger, from the committed warehouse; then the pure plan."""
    r.planned_at = manifest_head(r.store.root)  # read before the plan's state: no later than the generation it reads
    with naming_damage(r.store.root), r.store.committed() as con:
        r.ledger = ledger_state(con, resend_rejected=r.resend_rejected)
        seen, last = first_seen(con), last_seen(con)
        later = committed_since_first_seen(con, r.store)
        found = {}
        for watch in r.watchlist.watches:
            retry_ids = sorted({c for (w, _, c) in r.ledger.failed if w == watch.name})
            start = window_start(watch, seen.get(watch.name), r.started)
            with predicate_errors(r.watchlist.source, watch):
                found[watch.name] = candidates(con, watch, start, retry_ids, later.get(watch.name, ()))
                if "overdue" in watch.fdaaa:  # a time event: overdue on the run's day, not on the last run's
                    a, b = compliance_window(start, last.get(watch.name), r.started)
                    found[watch.name] += overdue_candidates(con, watch, a, b, last.get(watch.name))
    return plan_alerts(r.watchlist, found, r.ledger, run_id=r.run_id, now=r.started)


@task(name="write-outbox", cache_policy=NONE)
def outbox_task(r: _Run, plan: AlertPlan, lock_timeout: float) -> None:
    """The new messages go into the ledger (committed, durable) before any of them is sent."""
    if not plan.new:
        return
    write_outbox(r.store, r.run_id, plan.new, lock_timeout=lock_timeout, meta=r.meta())
    r.outbox_committed = True


def _held(r: _Run, channel: str) -> tuple[str, datetime] | None:
    """Whether the channel's receiver asked an earlier run to wait past now: a wait that ends within this
    run's retry budget is waited out here; otherwise (the reason, the time) and nothing is sent to it."""
    until = r.ledger.holds.get(channel)
    if until is None:
        return None
    remaining = (until - _now()).total_seconds()
    if remaining <= 0:
        return None
    if r.wait_until is not None and time.monotonic() + remaining <= r.wait_until:
        time.sleep(remaining)
        return None
    return f"the receiver asked to wait until {until:%Y-%m-%d %H:%M:%S} UTC (Retry-After)", until


@task(name="deliver", cache_policy=NONE)
def deliver_task(r: _Run, channel: str, messages: list[Message]) -> list[Outcome]:
    """Send one channel's messages in order; after a transient failure the rest wait for the next run.
    A channel whose receiver asked (``Retry-After``) not to be tried before a later time gets nothing
    before then, in this run or the next ones."""
    logger = get_run_logger()
    outcomes: list[Outcome] = []
    broken: str | None = None
    retry_at: datetime | None = None
    try:
        sender = sender_for(r.resolved[channel])
    except Exception as exc:  # e.g. an Apprise URL it cannot parse
        broken = r.redactor(_reason(exc))
    if not broken and messages and (held := _held(r, channel)):
        broken, retry_at = held
        logger.warning("channel %s: %s: %d messages wait for a later run", channel, broken, len(messages))
    for message in messages:
        if broken:
            outcomes.append(Outcome(message, f"not attempted: {broken}", retry_at=retry_at))
            continue
        try:
            deliver(sender, message, attempts=r.resolved[channel].channel.attempts, backoff=RETRY_BACKOFF_SECONDS,
                    wait_until=r.wait_until)
            outcomes.append(Outcome(message, None))
        except Exception as exc:  # a library's surprise is a failed delivery too: recorded, retried next run
            error = r.redactor(_reason(exc))
            rejected = bool(getattr(exc, "permanent", False))
            asked = getattr(exc, "retry_after", None)
            if asked is not None and not rejected:
                retry_at = _now() + min(MAX_HOLD, timedelta(seconds=min(asked, MAX_HOLD.total_seconds())))
            outcomes.append(Outcome(message, error, rejected, retry_at))
            logger.warning("channel %s: %s (watch %s, %d changes); %s", channel, error, message.watch,
                           len(message.changes), REJECTED_NOTE if rejected else "retried on the next run")
            if getattr(exc, "retryable", False):
                broken = f"channel {channel} failed earlier in this run ({error})"
    sent = sum(1 for o in outcomes if o.error is None)
    logger.info("channel %s: %d of %d messages delivered", channel, sent, len(outcomes))
    return outcomes


def _reason(exc: Exception) -> str:
    return str(exc) if isinstance(exc, DeliveryFailed) else f"{type(exc).__name__}: {exc}"


@task(name="record-deliveries", cache_policy=NONE)
def record_task(r: _Run, plan: AlertPlan, outcomes: list[Outcome], config: str, lock_timeout: float) -> None:
    """One commit: the ledger rows of every outcome and the run's own row."""
    from flows.runs import new_run_id

    finished = max(_now(), r.started)
    attempts = plan.attempts(r.ledger)
    rows = [row for o in outcomes for row in delivery_rows(
        o.message, run_id=r.run_id, attempted_at=finished, attempt=attempts[o.message.message_id], error=o.error,
        rejected=o.rejected, retry_at=o.retry_at)]
    # The outbox took this run's id (its own commit); the outcomes commit under a later one.
    commit_id = new_run_id(finished) if r.outbox_committed else r.run_id
    run_row = {
        "run_id": r.run_id, "started_at": r.started, "finished_at": finished, "watchlist": config,
        "watches": [w.name for w in r.watchlist.watches], "matched": plan.matched,
        "messages": len(outcomes), "sent": sum(1 for row in rows if row["status"] == "sent"),
        "failed": sum(1 for row in rows if row["status"] != "sent"), "already_sent": plan.already_sent,
        "retried": plan.retries, "resent": plan.resent,
    }
    try:
        record_outcomes(r.store, commit_id, rows, run_row, lock_timeout=lock_timeout, meta=r.meta())
    except WarehouseBusy as exc:
        if not any(o.error is None for o in outcomes):
            raise
        # Messages went out: unrecorded, the next run would send them again (a second e-mail in every
        # inbox). A sync holds the writer lock for its whole run, so wait for it, much longer.
        get_run_logger().warning("%s; %d messages went out: waiting up to %ds more to record them (else the "
                                 "next run sends them again)", exc, run_row["messages"], RECORD_LOCK_SECONDS)
        record_outcomes(r.store, commit_id, rows, run_row, lock_timeout=RECORD_LOCK_SECONDS, meta=r.meta())


@flow(name="send_alerts", validate_parameters=True)
def send_alerts(config: str, warehouse: str | None = None, lock_timeout: float = 30.0, retry_budget: float = 60.0,
                resend_rejected: bool = False) -> dict[str, Any]:
    """Deliver the watchlist's new alerts (each (watch, change, channel) at most once); returns a summary.

    Waits between tries (backoff, a receiver's ``Retry-After``) end within ``retry_budget`` seconds of
    the start; a wait that would end later is not begun (the message stays in the outbox for the next
    run). ``resend_rejected``: the outbox's messages a receiver refused for good go again too."""
    check_seconds("retry_budget", retry_budget)  # NaN: every wait "ends within" it (a day's Retry-After slept)
    check_seconds("lock_timeout", lock_timeout)
    started = _now()
    clock = time.monotonic()
    from flows.runs import new_run_id

    run_id = new_run_id(started)
    watchlist = load_watchlist(config)
    store = Warehouse(settings.warehouse_dir(warehouse))
    if not store.exists():
        raise UsageError(f"no warehouse at {store.root} (run `trialsync sync` first)")
    resolved, redactor = resolve_channels(watchlist, settings.config_dir(config))
    r = _Run(store, watchlist, run_id, started, resolved, redactor, wait_until=clock + retry_budget)
    r.resend_rejected = resend_rejected
    with redacting_logs(redactor), store.lock("alerts", f"alerts run {run_id}", timeout=lock_timeout,
                                              what="another alerts run"):
        plan = plan_task(r)
        outbox_task(r, plan, lock_timeout)
        by_channel: dict[str, list[Message]] = {}
        for message in plan.messages:
            by_channel.setdefault(message.channel, []).append(message)
        futures = [deliver_task.submit(r, channel, messages) for channel, messages in by_channel.items()]
        outcomes = [o for future in futures for o in future.result()]
        record_task(r, plan, outcomes, str(config), lock_timeout)
        summary = _summary(r, plan, outcomes, round(time.monotonic() - clock, 3))
        publish_artifacts(r.redactor, r.run_id, summary, outcomes)
    get_run_logger().info("alerts run %s: %d messages, %d delivered, %d failed, %d already delivered",
                          run_id, summary["messages"], summary["messages_sent"], summary["messages_failed"],
                          summary["already_sent"])
    return summary


def _summary(r: _Run, plan: AlertPlan, outcomes: list[Outcome], seconds: float) -> dict[str, Any]:
    failures: dict[tuple[str, str, bool], dict[str, Any]] = {}
    for o in outcomes:
        if o.error:
            entry = failures.setdefault((o.message.watch, o.message.channel, o.rejected), {
                "watch": o.message.watch, "channel": o.message.channel, "changes": 0, "error": o.error,
                "rejected": o.rejected})
            entry["changes"] += len(o.message.changes)
    return {
        "run_id": r.run_id, "watches": len(r.watchlist.watches), "matched": plan.matched,
        "messages": len(outcomes), "messages_sent": sum(1 for o in outcomes if not o.error),
        "messages_failed": sum(1 for o in outcomes if o.error),
        "messages_rejected": sum(1 for o in outcomes if o.rejected),
        "deliveries_sent": sum(len(o.message.changes) for o in outcomes if not o.error),
        "deliveries_failed": sum(len(o.message.changes) for o in outcomes if o.error),
        "already_sent": plan.already_sent, "retried": plan.retries, "resent": plan.resent,
        "failures": list(failures.values()),
        "duration_seconds": seconds,
    }


# -- trialsync alerts test -------------------------------------------------------------------------
def send_test(config: str, channel: str | None = None) -> list[tuple[str, str | None]]:
    """One sample alert to each channel (or one); (channel, error or None) each. Nothing is recorded."""
    watchlist = check_config(config)
    if channel is not None and channel not in watchlist.channels:
        raise UsageError(f"unknown channel {channel!r}; defined: {', '.join(sorted(watchlist.channels))}")
    names = {channel} if channel else set(watchlist.channels)
    resolved, redactor = resolve_channels(watchlist, settings.config_dir(config), names)
    now = datetime.now(UTC)
    results: list[tuple[str, str | None]] = []
    with redacting_logs(redactor):
        for name in sorted(resolved):
            try:
                deliver(sender_for(resolved[name]), sample_message(name, f"test-{now:%Y%m%dT%H%M%S}", now),
                        attempts=1)
                results.append((name, None))
            except Exception as exc:  # a library's surprise fails this channel only, as in a run
                results.append((name, redactor(_reason(exc))))
    return results
