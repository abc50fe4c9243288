"""Issue 13.4, the rule behind the outbox, as a property: for any sequence of alerts runs, each cut
off anywhere (before the outbox commit, after it, after any message left) or meeting receivers that
fail or take a message and time out, with new changes arriving in between, a receiver never gets one
change under two message ids, a repeated id always carries the same payload, and after one clean run
every change has arrived and nothing is planned again. The ledger is the real one
(``warehouse.alerts``: ``outbox_rows``, ``delivery_rows``, ``ledger_state``) in DuckDB; the plan the
real ``plan_alerts``; only the sending is simulated."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from typing import Any

import duckdb
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.alerts.message import AlertChange, Message
from pipeline.alerts.plan import plan_alerts
from pipeline.alerts.watchlist import parse_watchlist
from warehouse.alerts import delivery_rows, ledger_state, outbox_rows
from warehouse.tables import ALERT_DELIVERIES, ALERT_MESSAGES

WATCHLIST = parse_watchlist("""
channels:
  hook: {type: webhook, url: "http://127.0.0.1:9/hook"}
  feed: {type: feed, path: feed.json}
watches:
  - {name: each, studies: {where: "true"}, channels: [hook, feed]}
  - {name: digest, studies: {where: "true"}, mode: digest, channels: [hook]}
""", "w.yaml")
STUDIES = ("NCT00000001", "NCT00000002", "NCT00000003")
T0 = datetime(2026, 5, 1, tzinfo=UTC)

# Per run: how many changes arrive first, then where the run stops (None: it finishes), then the fate
# of each message it sends: ok, fail (5xx), took (the receiver kept it; the answer timed out).
Fate = str
runs = st.lists(st.tuples(st.integers(0, 3), st.one_of(st.none(), st.sampled_from(["before-outbox"]),
                                                       st.integers(0, 6)),
                          st.lists(st.sampled_from(["ok", "fail", "took"]), min_size=12, max_size=12)),
                min_size=1, max_size=6)


def _ledger() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    for name, schema in (("raw_alert_messages", ALERT_MESSAGES), ("raw_alert_deliveries", ALERT_DELIVERIES)):
        con.register("empty", pa.Table.from_batches([], schema=schema))
        con.execute(f"CREATE TABLE {name} AS SELECT * FROM empty")
        con.unregister("empty")
    return con


def _insert(con: duckdb.DuckDBPyConnection, table: str, rows: list[dict[str, Any]]) -> None:
    if rows:
        schema = ALERT_MESSAGES if table == "raw_alert_messages" else ALERT_DELIVERIES
        con.register("new_rows", pa.Table.from_pylist(rows, schema=schema))
        con.execute(f"INSERT INTO {table} SELECT * FROM new_rows")
        con.unregister("new_rows")


def _change(n: int, nct: str) -> AlertChange:
    return AlertChange(change_id=f"c{n:03d}", nct_id=nct, title=f"Study {nct}", field="overall status",
                       event="status_changed", category="status", severity="notable", old_value=f"s{n - 1}",
                       new_value=f"s{n}", registry_updated=date(2026, 5, 1) + timedelta(days=n),
                       from_version=n, to_version=n + 1, path="$.protocolSection.statusModule.overallStatus",
                       detected_at=T0 + timedelta(hours=n))


def _one_run(con: duckdb.DuckDBPyConnection, changes: list[AlertChange], number: int, stop: int | str | None,
             fates: list[Fate], received: list[tuple[str, dict[str, Any]]]) -> list[Message]:
    run_id, now = f"run{number:02d}", T0 + timedelta(days=number)
    plan = plan_alerts(WATCHLIST, {"each": changes, "digest": changes}, ledger_state(con), run_id=run_id, now=now)
    if stop == "before-outbox":
        return list(plan.messages)
    _insert(con, "raw_alert_messages", outbox_rows(plan.new))  # the outbox commit
    attempts = plan.attempts(ledger_state(con))
    outcomes = []
    for i, message in enumerate(plan.messages):
        if stop is not None and i == stop:  # killed after this message left, before anything was recorded
            received.append((message.channel, message.payload()))
            return list(plan.messages)
        fate = fates[i % len(fates)]
        if fate in ("ok", "took"):
            received.append((message.channel, message.payload()))
        outcomes.append((message, None if fate == "ok" else "failed"))
    for message, error in outcomes:  # the outcomes commit
        _insert(con, "raw_alert_deliveries", delivery_rows(message, run_id=run_id, attempted_at=now,
                                                           attempt=attempts[message.message_id], error=error))
    return list(plan.messages)


@settings(max_examples=50, deadline=None)
@given(runs, st.randoms(use_true_random=False))
def test_any_sequence_of_cut_off_and_failed_runs_delivers_each_change_once_under_one_id(
        sequence: list[tuple[int, int | str | None, list[Fate]]], rng: Any) -> None:
    con = _ledger()
    changes: list[AlertChange] = []
    received: list[tuple[str, dict[str, Any]]] = []
    for number, (arriving, stop, fates) in enumerate(sequence):
        for _ in range(arriving):
            changes.append(_change(len(changes) + 1, rng.choice(STUDIES)))
        _one_run(con, changes, number, stop, fates, received)
    _one_run(con, changes, len(sequence), None, ["ok"], received)  # a clean run

    carriers: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    payloads: dict[str, set[str]] = defaultdict(set)
    for channel, payload in received:
        payloads[payload["message_id"]].add(json.dumps(payload, sort_keys=True))
        for study in payload["studies"]:
            for change in study["changes"]:
                carriers[(payload["watch"], channel, change["change_id"])].add(payload["message_id"])
    assert {k: ids for k, ids in carriers.items() if len(ids) > 1} == {}  # one change, one message id
    assert {m: p for m, p in payloads.items() if len(p) > 1} == {}  # a repeat is the same message
    expected = {(w, ch, c.change_id) for w, chs in (("each", ("hook", "feed")), ("digest", ("hook",)))
                for ch in chs for c in changes}
    assert set(carriers) == expected  # nothing lost
    assert _one_run(con, changes, len(sequence) + 1, None, ["ok"], received) == []  # nothing planned again


def test_a_delivery_that_failed_before_the_outbox_existed_is_planned_afresh_once() -> None:
    con = _ledger()
    change = _change(1, STUDIES[0])
    legacy = Message("legacy-id", "each", "hook", "immediate", "run00", T0, ())
    _insert(con, "raw_alert_deliveries", [{
        "run_id": "run00", "attempted_at": T0, "watch": "each", "channel": "hook", "change_id": change.change_id,
        "nct_id": change.nct_id, "severity": change.severity, "message_id": legacy.message_id, "status": "failed",
        "attempt": 1, "error": "HTTP 500"}])
    ledger = ledger_state(con)
    plan = plan_alerts(WATCHLIST, {"each": [change], "digest": []}, ledger, run_id="run01", now=T0)
    [hook] = [m for m in plan.messages if m.channel == "hook"]
    assert ([c.change_id for c in hook.changes], plan.retries, plan.attempts(ledger)[hook.message_id]) == (
        [change.change_id], 1, 2)
    _insert(con, "raw_alert_messages", outbox_rows(plan.new))
    again = plan_alerts(WATCHLIST, {"each": [change], "digest": []}, ledger_state(con), run_id="run02", now=T0)
    assert [m.message_id for m in again.messages] == [m.message_id for m in plan.messages]  # the outbox, as it was
    assert again.new == () and again.resent == len(plan.messages)
