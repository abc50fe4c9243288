"""kill -9 of a real ``trialsync alerts run`` at many moments of its delivery, with a real webhook
receiver, a real SMTP server (aiosmtpd, STARTTLS and a login) and a feed file; then a re-run.

Whatever the moment: every message of the outbox arrived at least once on its channel, a repeat is
the same message (same id, same bytes; ``Idempotency-Key`` and ``Message-ID`` are that id), no
change reached a watch's channel under two ids, the feed holds each message once and nothing of a
killed feed write stays, and a third run has nothing left to send.
(``tests/test_alert_outbox.py`` kills once, at the first webhook message.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from collections import defaultdict
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from flows.alerts import send_alerts
from flows.webhook_receiver import Received, WebhookReceiver
from pipeline import mutate
from pipeline.registry.fake_server import FakeRegistry
from tests.conftest import fast_sync, real_records
from tests.reliability.support import TRIALSYNC, pick
from tests.test_alerts import SmtpServer, email_channel, hook, rows, smtp, watchlist  # noqa: F401 - fixtures

pytestmark = pytest.mark.reliability
KILL_AT = [1, 2, 4, 6, 9]  # the n-th webhook message arrived, the sender never heard so
SHORT = [4]


@pytest.fixture(scope="module")
def base(prefect_api: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 studies, then 8 of them suspended: 8 messages per immediate channel, one digest."""
    warehouse = tmp_path_factory.mktemp("kill-alerts") / "wh"
    records = real_records()[:40]
    with FakeRegistry(records).start() as registry:
        fast_sync(registry, warehouse, full=True)
        day = max(date.fromisoformat(r["protocolSection"]["statusModule"]["lastUpdatePostDateStruct"]["date"])
                  for r in records) + timedelta(days=1)
        registry.put(*[mutate.posted_on(mutate.set_status(r, "SUSPENDED"), day) for r in records[::5]])
        fast_sync(registry, warehouse)
    return warehouse


def _ids(body: dict[str, Any]) -> list[str]:
    return [c["change_id"] for s in body["studies"] for c in s["changes"]]


@pytest.mark.parametrize("kill_at", pick(KILL_AT, SHORT))
def test_an_alerts_run_killed_at_any_message_delivers_everything_once_more_under_the_same_ids(
        kill_at: int, base: Path, tmp_path: Path, hook: WebhookReceiver, smtp: SmtpServer,  # noqa: F811
        prefect_api: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    warehouse = tmp_path / "wh"
    shutil.copytree(base, warehouse)
    monkeypatch.setenv("TEST_SMTP_PASSWORD", smtp.password)
    config = watchlist(tmp_path / "watch.yaml", {
        "hook": {"type": "webhook", "url": f"{hook.url}/hook", "attempts": 1},
        "mail": {**email_channel(smtp), "attempts": 1}, "feed": {"type": "feed", "path": "feed.json"}}, [
        {"name": "all", "studies": {"where": "true"}, "channels": ["mail", "feed", "hook"]},
        {"name": "digest", "studies": {"where": "true"}, "mode": "digest", "channels": ["hook"]}])
    proc: list[subprocess.Popen[str]] = []
    started = threading.Event()

    def kill_at_the_nth(_: Received) -> None:
        if len(hook.received) == kill_at:
            started.wait(60)
            os.kill(proc[0].pid, signal.SIGKILL)

    hook.on_receive = kill_at_the_nth
    proc.append(subprocess.Popen([str(TRIALSYNC), "alerts", "run", "--config", str(config), "--warehouse",
                                  str(warehouse)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env={**os.environ, "PREFECT_API_URL": prefect_api}))
    started.set()
    _, stderr = proc[0].communicate(timeout=300)
    hook.on_receive = None
    assert proc[0].returncode == -signal.SIGKILL, stderr[-2000:]

    again = send_alerts(config=str(config), warehouse=str(warehouse))
    assert again["messages_failed"] == 0
    assert send_alerts(config=str(config), warehouse=str(warehouse))["messages"] == 0

    outbox = rows(warehouse, "SELECT message_id, watch, channel, change_ids FROM alert_messages")
    assert len(outbox) == 8 * 3 + 1
    feed = json.loads((tmp_path / "feed.json").read_text())["items"]
    by_id: dict[str, list[str]] = defaultdict(list)
    for r in hook.received:
        assert r.headers["Idempotency-Key"] == r.body["message_id"]
        by_id[r.body["message_id"]].append(json.dumps(r.body, sort_keys=True))
    mail_ids = [m["Message-ID"] for m in smtp.mails]
    for message_id, _, channel, _ in outbox:  # each arrived, and a repeat is the same message
        if channel == "hook":
            assert by_id[message_id] and len(set(by_id[message_id])) == 1
        elif channel == "mail":
            assert any(message_id in m for m in mail_ids)
        else:
            assert f"urn:trialsync:{message_id}" in [i["id"] for i in feed]
    carriers: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    for message_id, watch, channel, change_ids in outbox:
        for change_id in change_ids:
            carriers[(watch, channel, change_id)].add(message_id)
    assert all(len(ids) == 1 for ids in carriers.values())  # no change in two messages
    assert set(by_id) == {m for m, _, ch, _ in outbox if ch == "hook"}  # nothing arrived outside the outbox
    assert len(set(mail_ids)) == 8 and len(feed) == len({i["id"] for i in feed}) == 8
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".feed")) == [".feed.json.lock"]
