"""Issue 13.4 / 19.3: alerts are an outbox. A message is in the ledger before it is sent; after a
kill -9 or a timeout it goes again exactly as it was (same id, same changes, same payload); a new
change goes in a new message; a change whose id was rewritten is not alerted again. Real receivers:
an HTTP webhook on 127.0.0.1, aiosmtpd, a feed file; a real ``trialsync alerts run`` subprocess."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from flows.alerts import send_alerts
from flows.webhook_receiver import Received, WebhookReceiver
from pipeline import mutate
from pipeline.registry.fake_server import FakeRegistry
from tests.conftest import fast_sync
from tests.test_alerts import (  # noqa: F401 - fixtures
    PAIR,
    SEED,
    SmtpServer,
    TwoDays,
    email_channel,
    hook,
    rows,
    smtp,
    two_days,
    warehouse,
    watchlist,
)
from tests.test_cli import TRIALSYNC

pytestmark = pytest.mark.usefixtures("prefect_api")


def _config(path: Path, receiver: WebhookReceiver, mail: SmtpServer | None = None, *, timeout: float = 10.0
            ) -> Path:
    channels: dict[str, Any] = {"hook": {"type": "webhook", "url": f"{receiver.url}/hook", "attempts": 1,
                                         "timeout": timeout},
                                "feed": {"type": "feed", "path": "feed.json"}}
    pair_channels = ["hook", "feed"]
    if mail is not None:
        channels["mail"] = {**email_channel(mail), "attempts": 1}
        pair_channels.append("mail")
    return watchlist(path, channels, [
        {"name": "pair", "studies": {"ids": [PAIR]}, "channels": pair_channels},
        {"name": "digest", "studies": {"ids": [PAIR, SEED]}, "mode": "digest", "channels": ["hook"]}])


def _new_change_on_the_pair(days: TwoDays, directory: Path) -> None:
    """A day-3 record of the pair (a status change), synced into ``directory``."""
    day2 = days.updates[0]
    posted = dt.date.fromisoformat(day2["protocolSection"]["statusModule"]["lastUpdatePostDateStruct"]["date"])
    day3 = mutate.posted_on(mutate.set_status(day2, "ACTIVE_NOT_RECRUITING"), posted + dt.timedelta(days=1))
    with FakeRegistry([day3]).start() as registry:
        fast_sync(registry, directory, ids=[PAIR])
    assert rows(directory, f"SELECT count(*) FROM changes WHERE nct_id = '{PAIR}' AND event = 'status_changed'") == [
        (1,)]


def _change_ids(body: dict[str, Any]) -> list[str]:
    return [c["change_id"] for s in body["studies"] for c in s["changes"]]


def _carriers(received: list[Received]) -> dict[tuple[str, str], set[str]]:
    """(watch, change id) -> the message ids that carried it."""
    carriers: dict[tuple[str, str], set[str]] = defaultdict(set)
    for r in received:
        for change_id in _change_ids(r.body):
            carriers[(r.body["watch"], change_id)].add(r.body["message_id"])
    return carriers


def _assert_each_change_under_one_id(receiver: WebhookReceiver, feed: Path) -> None:
    for r in receiver.received:
        assert r.headers["Idempotency-Key"] == r.body["message_id"]
    assert all(len(ids) == 1 for ids in _carriers(receiver.received).values()), _carriers(receiver.received)
    by_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in receiver.received:
        by_id[r.body["message_id"]].append(r.body)
    assert all(bodies.count(bodies[0]) == len(bodies) for bodies in by_id.values())  # a repeat is byte-equal
    items = json.loads(feed.read_text())["items"]
    feed_changes = [c for i in items for c in _change_ids(i["_trialsync"])]
    assert len(feed_changes) == len(set(feed_changes))
    assert all(i["id"] == f"urn:trialsync:{i['_trialsync']['message_id']}" for i in items)


def test_a_message_cut_off_by_kill_9_goes_again_with_its_id_and_a_new_change_goes_in_a_new_message(
        warehouse: Path, two_days: TwoDays, tmp_path: Path, hook: WebhookReceiver, smtp: SmtpServer,  # noqa: F811
        prefect_api: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_SMTP_PASSWORD", smtp.password)
    config = _config(tmp_path / "watch.yaml", hook, smtp)
    started = threading.Event()
    proc: list[subprocess.Popen[str]] = []

    def kill_the_sender(_: Received) -> None:  # the message arrived; the sender never hears so
        started.wait(60)
        os.kill(proc[0].pid, signal.SIGKILL)

    hook.on_receive = kill_the_sender
    proc.append(subprocess.Popen([str(TRIALSYNC), "alerts", "run", "--config", str(config), "--warehouse",
                                  str(warehouse)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env={**os.environ, "PREFECT_API_URL": prefect_api}))
    started.set()
    _, stderr = proc[0].communicate(timeout=300)
    assert proc[0].returncode == -signal.SIGKILL, stderr[-2000:]
    hook.on_receive = None
    [cut_off] = hook.received
    outbox = rows(warehouse, "SELECT message_id, watch, channel, change_ids FROM alert_messages ORDER BY ALL")
    assert cut_off.body["message_id"] in [m for m, *_ in outbox]  # written before it was sent
    assert rows(warehouse, "SELECT count(*) FROM alert_deliveries WHERE status = 'sent'") == [(0,)]

    _new_change_on_the_pair(two_days, warehouse)
    summary = send_alerts(config=str(config), warehouse=str(warehouse))

    assert summary["resent"] == len(outbox) and summary["messages_failed"] == 0
    again = [r for r in hook.received[1:] if r.body["message_id"] == cut_off.body["message_id"]]
    assert [r.body for r in again] == [cut_off.body]  # the same message: id, changes, payload
    assert again[0].headers["Idempotency-Key"] == cut_off.headers["Idempotency-Key"]
    [status] = rows(warehouse, f"SELECT change_id FROM changes WHERE nct_id = '{PAIR}' AND event = 'status_changed'")
    carrying_new = [r.body for r in hook.received if status[0] in _change_ids(r.body)]
    assert sorted(b["watch"] for b in carrying_new) == ["digest", "pair"]
    old_ids = {m for m, *_ in outbox}
    for body in carrying_new:  # a new message with only the new change in it
        assert body["message_id"] not in old_ids and _change_ids(body) == [status[0]]
    for message_id, watch, channel, change_ids in outbox:  # every stored message arrived once more, unchanged
        if channel == "hook":
            got = [r.body for r in hook.received if r.body["message_id"] == message_id]
            assert got and all(sorted(_change_ids(b)) == sorted(change_ids) and b["watch"] == watch for b in got)
    mails = defaultdict(set)
    for mail in smtp.mails:
        mails[mail["Subject"]].add(mail["Message-ID"])
    # the old mail (sent before the kill or not: under one id either way) and the new one
    assert len({m["Message-ID"] for m in smtp.mails}) == 2 and all(len(ids) == 1 for ids in mails.values())
    _assert_each_change_under_one_id(hook, tmp_path / "feed.json")

    assert send_alerts(config=str(config), warehouse=str(warehouse))["messages"] == 0


def test_a_delivery_that_timed_out_after_the_receiver_took_it_goes_again_unchanged(
        warehouse: Path, two_days: TwoDays, tmp_path: Path, hook: WebhookReceiver) -> None:  # noqa: F811
    config = _config(tmp_path / "watch.yaml", hook, timeout=0.5)
    hook.hold = threading.Event()  # the receiver keeps the message and never answers in time
    first = send_alerts(config=str(config), warehouse=str(warehouse))
    hook.hold.set()
    hook.hold = None
    assert first["messages_failed"] == 2 and first["failures"][0]["error"] == "the webhook timed out"
    [took] = hook.received  # the second hook message was not attempted after the timeout

    _new_change_on_the_pair(two_days, warehouse)
    second = send_alerts(config=str(config), warehouse=str(warehouse))

    assert (second["resent"], second["messages_failed"]) == (2, 0)
    assert hook.received[1].body == took.body  # first the outbox, as it was
    assert hook.received[1].headers["Idempotency-Key"] == took.headers["Idempotency-Key"]
    [status] = rows(warehouse, f"SELECT change_id FROM changes WHERE nct_id = '{PAIR}' AND event = 'status_changed'")
    new = [r.body for r in hook.received[2:] if status[0] in _change_ids(r.body)]
    assert sorted(b["watch"] for b in new) == ["digest", "pair"]
    assert all(_change_ids(b) == [status[0]] and b["message_id"] != took.body["message_id"] for b in new)
    _assert_each_change_under_one_id(hook, tmp_path / "feed.json")
    assert rows(warehouse, """SELECT attempt, status, count(DISTINCT message_id) FROM alert_deliveries
                              WHERE channel = 'hook' GROUP BY ALL ORDER BY ALL""") == [
        (1, "failed", 2), (1, "sent", 2), (2, "sent", 2)]


def test_a_change_whose_id_was_rewritten_after_delivery_is_not_alerted_again(
        warehouse: Path, tmp_path: Path, hook: WebhookReceiver, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    import flows.derive
    from flows.derive import rederive_changes

    config = watchlist(tmp_path / "watch.yaml", {"hook": {"type": "webhook", "url": f"{hook.url}/hook"}},
                       [{"name": "all", "studies": {"where": "true"}, "channels": ["hook"]},
                        {"name": "digest", "studies": {"where": "true"}, "mode": "digest", "channels": ["hook"]}])
    first = send_alerts(config=str(config), warehouse=str(warehouse))
    assert first["deliveries_sent"] == 10
    before = rows(warehouse, "SELECT change_id FROM changes ORDER BY ALL")

    derive = flows.derive.derive_changes  # a new id scheme, a backfill's renumbering, a hash migration

    def renumbered(pair: Any, rules: Any) -> list[Any]:
        return [replace(c, change_id=f"renumbered-{c.change_id}") for c in derive(pair, rules)]

    monkeypatch.setattr(flows.derive, "derive_changes", renumbered)
    rederive_changes(warehouse=str(warehouse))
    after = rows(warehouse, "SELECT change_id FROM changes ORDER BY ALL")
    assert not set(before) & set(after) and len(before) == len(after)

    again = send_alerts(config=str(config), warehouse=str(warehouse))
    assert (again["messages"], again["already_sent"]) == (0, 10)
    assert len(hook.received) == first["messages"]


def test_a_backfill_that_renumbers_the_versions_does_not_alert_a_delivered_change_again(
        tmp_path: Path, hook: WebhookReceiver) -> None:  # noqa: F811
    from tests.test_backfill import HISTORY, NCT, backfill

    directory = tmp_path / "warehouse"
    config = watchlist(tmp_path / "watch.yaml", {"hook": {"type": "webhook", "url": f"{hook.url}/hook"}},
                       [{"name": "w", "studies": {"ids": [NCT]}, "channels": ["hook"]}])
    with FakeRegistry().start() as registry:
        registry.put(HISTORY.records[4])
        fast_sync(registry, directory)
        registry.put_history(HISTORY)
        fast_sync(registry, directory)  # the study moved from registry version 4 to 9: our v1 -> v2
        first = send_alerts(config=str(config), warehouse=str(directory))
        status = [c for r in hook.received for s in r.body["studies"] for c in s["changes"]
                  if c["event"] == "status_changed"]
        assert [(c["old_value"], c["new_value"], c["from_version"], c["to_version"]) for c in status] == [
            ("RECRUITING", "COMPLETED", 1, 2)]
        backfill(registry, directory, NCT)  # the history's versions go in between: ours are renumbered
    last = rows(directory, f"SELECT max(version) FROM study_versions WHERE nct_id = '{NCT}'")[0][0]
    renumbered = rows(directory, "SELECT change_id, from_version, old_value FROM changes WHERE event = "
                                 f"'status_changed' AND new_value = 'COMPLETED' AND to_version = {last}")
    assert last > 2 and [(v, old) for _, v, old in renumbered] == [(last - 1, "ACTIVE_NOT_RECRUITING")]
    assert renumbered[0][0] != status[0]["change_id"]  # a new id (and the old one may name another change)

    again = send_alerts(config=str(config), warehouse=str(directory))
    sent_again = [c for r in hook.received[first["messages"]:] for s in r.body["studies"] for c in s["changes"]]
    assert [(c["event"], c["new_value"]) for c in sent_again if c["event"] == "status_changed"] == []
    assert again["already_sent"] >= 1


def test_a_signal_after_the_outbox_committed_stops_the_delivery(
        warehouse: Path, tmp_path: Path, hook: WebhookReceiver, prefect_api: str) -> None:  # noqa: F811
    """The outbox's commit is finished once its writer ends: a Ctrl-C then stops the run, as before any
    commit (no message goes out; the outbox keeps them for the next run), and says what committed."""
    from tests.test_signal_after_commit import SCRIPT

    config = _config(tmp_path / "watch.yaml", hook)
    script = SCRIPT.format(module="flows.alerts", name="write_outbox", signal="INT", condition="")
    done = subprocess.run([sys.executable, "-c", script, "alerts", "run", "--config", str(config), "--warehouse",
                           str(warehouse)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PREFECT_API_URL": prefect_api,
                               "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 130, done.stderr[-2000:]
    assert hook.received == []
    outbox = rows(warehouse, "SELECT count(*) FROM alert_messages")[0][0]
    assert outbox > 0
    assert "committed (it is in the warehouse); what was still running stopped" in done.stderr
    assert rows(warehouse, "SELECT count(*) FROM alert_deliveries") == [(0,)]


def test_messages_that_went_out_while_a_sync_holds_the_writer_lock_are_recorded_once_it_ends(
        warehouse: Path, tmp_path: Path, hook: WebhookReceiver) -> None:  # noqa: F811
    """A sync holds the writer lock for its whole run. An alerts run whose messages went out while one
    started could not commit their outcome within its lock timeout: the next run sent them all again
    (a second e-mail in every inbox). It now waits for the lock once messages went out."""
    from warehouse.locks import exclusive_lock
    from warehouse.store import LOCK_NAME

    config = _config(tmp_path / "watch.yaml", hook)
    hook.hold = threading.Event()  # the first message waits at the receiver until the "sync" holds the lock
    held, release = threading.Event(), threading.Event()

    def sync_starts() -> None:
        while not hook.requests:
            release.wait(0.02)
        with exclusive_lock(warehouse / LOCK_NAME, "sync (the test)", timeout=30):
            held.set()
            assert hook.hold is not None
            hook.hold.set()
            release.wait(4)  # past the alerts run's 1 s lock timeout

    sync = threading.Thread(target=sync_starts)
    sync.start()
    try:
        first = send_alerts(config=str(config), warehouse=str(warehouse), lock_timeout=1)
    finally:
        release.set()
        sync.join()
    assert held.is_set()
    assert (first["messages"], first["messages_sent"], first["messages_failed"]) == (3, 3, 0)  # 2 hook, 1 feed
    sent = [r.body["message_id"] for r in hook.received]
    assert len(sent) == 2

    second = send_alerts(config=str(config), warehouse=str(warehouse), lock_timeout=1)
    assert (second["messages"], second["resent"], second["already_sent"] > 0) == (0, 0, True)
    assert [r.body["message_id"] for r in hook.received] == sent  # nothing went twice
    assert rows(warehouse, "SELECT count(DISTINCT message_id) FROM alert_deliveries "
                           "WHERE channel = 'hook' AND status = 'sent'") == [(2,)]


def test_artifacts_that_cannot_be_stored_after_the_deliveries_were_recorded_are_a_warning_not_a_failure(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The Prefect server gone after the ledger was committed: the alerts run must not end as failed (the
    sync after it said 'alerts after the sync failed' for messages that went out and were recorded)."""
    import logging

    from flows import alert_artifacts
    from pipeline.alerts.redact import Redactor

    def unreachable(*_: object, **__: object) -> None:
        raise ConnectionRefusedError("[Errno 111] Connection refused")

    monkeypatch.setattr(alert_artifacts, "create_markdown_artifact", unreachable)
    with caplog.at_level(logging.WARNING, logger="trialsync"):
        summary = {"run_id": "run-1", "watches": 1, "matched": 0, "messages": 0, "messages_sent": 0,
                   "messages_failed": 0, "already_sent": 0, "retried": 0, "resent": 0, "failures": []}
        alert_artifacts.publish_artifacts(Redactor(()), "run-1", summary, [])
    assert [r.getMessage() for r in caplog.records] == [
        "could not publish the alerts run's artifacts: [Errno 111] Connection refused"]


@pytest.mark.parametrize("kind", ["truncated", "deleted"])
@pytest.mark.parametrize("table", ["alert_messages", "alert_deliveries"])
def test_an_alerts_run_on_a_damaged_outbox_names_the_file_in_one_line_and_sends_nothing(
        table: str, kind: str, warehouse: Path, hook: WebhookReceiver, tmp_path: Path,  # noqa: F811
        cli: Any) -> None:
    """The read commands name a damaged file and point at repair; ``alerts run`` said DuckDB's own
    'InvalidInputException: ... No magic bytes found at end of file ...' or 'IOException: ... No files
    found that match the pattern ...' (rerun with --debug for details)."""
    from warehouse import Warehouse

    config = _config(tmp_path / "watch.yaml", hook)
    send_alerts(str(config), str(warehouse))
    sent = len(hook.received)
    assert sent > 0
    [path] = [e.path for e in Warehouse(warehouse).manifest().entries if e.table == table]
    if kind == "deleted":
        (warehouse / path).unlink()
    else:
        (warehouse / path).write_bytes((warehouse / path).read_bytes()[:100])
    generations = sorted(p.name for p in (warehouse / "manifest").iterdir())
    code, _, err = cli("alerts", "run", "--config", str(config), "--warehouse", str(warehouse))
    assert code == 1
    [line] = err.splitlines()
    assert line.startswith(f"trialsync: error: query failed: the warehouse is damaged ({path}: "), line
    assert line.endswith("see `trialsync check`, then `trialsync repair`"), line
    assert len(hook.received) == sent  # the ledger is unknown: nothing goes
    assert sorted(p.name for p in (warehouse / "manifest").iterdir()) == generations
