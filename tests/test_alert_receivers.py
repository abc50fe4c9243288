"""Receivers on a bad day: a webhook that redirects, one that answers a byte at a time, an SMTP server
that refuses some of the recipients. Each must be a failed delivery (retried on a later run), never
one recorded as sent that did not arrive, and never a run held past the channel's timeout."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import pytest

from flows.alerts import send_alerts
from flows.webhook_receiver import WebhookReceiver
from tests.test_alerts import PAIR, SEED, _free_port, rows, two_days, warehouse, watchlist

pytestmark = pytest.mark.usefixtures("prefect_api")
__all__ = ["two_days", "warehouse"]  # fixtures, shared with tests/test_alerts.py

WATCH = [{"name": "seed", "studies": {"ids": [SEED, PAIR]}, "channels": ["out"]}]


@pytest.fixture
def hook() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as receiver:
        yield receiver


def test_a_webhook_that_redirects_is_a_failed_delivery_and_the_alert_arrives_once_it_stops(
        warehouse: Path, tmp_path: Path, hook: WebhookReceiver) -> None:
    """Followed, the redirect turned the POST into a bodiless GET whose 200 marked the alert sent."""
    config = watchlist(tmp_path / "w.yaml", {"out": {"type": "webhook", "url": f"{hook.url}/hook", "attempts": 1}},
                       WATCH)
    hook.redirect_to = "/landing"
    failed = send_alerts(config=str(config), warehouse=str(warehouse))
    assert (failed["messages_sent"], hook.received) == (0, [])
    assert failed["failures"][0]["error"].startswith("HTTP 302: the webhook URL redirects")
    assert rows(warehouse, "SELECT DISTINCT status FROM alert_deliveries") == [("failed",)]
    hook.redirect_to = None
    retried = send_alerts(config=str(config), warehouse=str(warehouse))
    assert (retried["messages_sent"], retried["failures"]) == (2, [])
    assert sorted(r.body["studies"][0]["nct_id"] for r in hook.received) == [PAIR, SEED]


@pytest.mark.parametrize("status", [307, 308])
def test_a_webhook_redirect_that_keeps_the_post_is_followed_and_the_alert_arrives(
        warehouse: Path, tmp_path: Path, hook: WebhookReceiver, status: int) -> None:
    config = watchlist(tmp_path / "w.yaml", {"out": {"type": "webhook", "url": f"{hook.url}/hook", "attempts": 1}},
                       WATCH)
    hook.redirect_to, hook.redirect_status = "/moved", status
    sent = send_alerts(config=str(config), warehouse=str(warehouse))
    assert (sent["messages_sent"], sent["failures"]) == (2, [])
    assert sorted((r.path, r.body["studies"][0]["nct_id"]) for r in hook.received) == [("/moved", PAIR),
                                                                                       ("/moved", SEED)]
    assert {r.headers["Idempotency-Key"] for r in hook.received} == {r.body["message_id"] for r in hook.received}


def test_a_webhook_that_answers_a_byte_at_a_time_fails_within_its_timeout(
        warehouse: Path, tmp_path: Path, hook: WebhookReceiver) -> None:
    config = watchlist(tmp_path / "w.yaml", {"out": {"type": "webhook", "url": f"{hook.url}/hook", "attempts": 1,
                                                     "timeout": 1}}, WATCH)
    hook.drip_seconds = 120.0
    started = time.monotonic()
    failed = send_alerts(config=str(config), warehouse=str(warehouse))
    elapsed = time.monotonic() - started
    assert failed["messages_sent"] == 0
    assert failed["failures"][0]["error"] == "the webhook did not finish answering within 1s"
    # One try of 1 s (+1 s grace), the other message waits for the next run: seconds, not the 120 s the
    # receiver drips for (the bound leaves room for a loaded machine's flow start: 27 s seen under load).
    assert elapsed < 60


class _Refusing:
    """An aiosmtpd handler that greylists one recipient (451) and keeps what it accepts."""

    def __init__(self, refused: str) -> None:
        self.refused = refused
        self.mails: list[tuple[list[str], Message]] = []

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address == self.refused:
            return "451 4.7.1 greylisted, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.mails.append((list(envelope.rcpt_tos), message_from_bytes(envelope.content)))
        return "250 OK"


def test_a_recipient_the_smtp_server_refuses_makes_the_delivery_fail_and_retry(
        warehouse: Path, tmp_path: Path) -> None:
    """``send_message`` raises only when every recipient is refused; one refused of two used to be
    recorded as sent, and that recipient never got the alert."""
    from aiosmtpd.controller import Controller

    handler = _Refusing("late@example.org")
    controller = Controller(handler, hostname="127.0.0.1", port=_free_port())
    controller.start()
    try:
        channel = {"type": "email", "host": "127.0.0.1", "port": controller.port, "security": "none",
                   "from": "alerts@example.org", "to": ["team@example.org", "late@example.org"], "attempts": 1}
        config = watchlist(tmp_path / "w.yaml", {"out": channel}, WATCH)
        failed = send_alerts(config=str(config), warehouse=str(warehouse))
        assert failed["messages_sent"] == 0
        assert failed["failures"][0]["error"] == "SMTP server refused 1 of 2 recipients (451)"
        assert [to for to, _ in handler.mails] == [["team@example.org"]]  # the other one has it
        handler.refused = ""
        retried = send_alerts(config=str(config), warehouse=str(warehouse))
        assert retried["messages_sent"] == 2 and retried["failures"] == []
        first_id = handler.mails[0][1]["Message-ID"]
        assert [m["Message-ID"] for _, m in handler.mails].count(first_id) == 2  # the same message, again
    finally:
        controller.stop()


def test_a_webhook_on_loopback_is_reached_directly_whatever_proxy_the_environment_names(
        warehouse: Path, tmp_path: Path, hook: WebhookReceiver, monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo's inbox (a receiver on 127.0.0.1) failed 'cannot reach the webhook (ProxyError)' for
    anyone whose environment names a proxy without listing loopback in NO_PROXY."""
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # nothing listens there
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    config = watchlist(tmp_path / "w.yaml", {"out": {"type": "webhook", "url": f"{hook.url}/hook", "attempts": 1}},
                       WATCH)
    sent = send_alerts(config=str(config), warehouse=str(warehouse))
    assert (sent["messages_sent"], sent["failures"]) == (2, [])
    assert sorted(r.body["studies"][0]["nct_id"] for r in hook.received) == [PAIR, SEED]


def test_an_apprise_receiver_on_loopback_is_reached_directly_whatever_proxy_the_environment_names(
        warehouse: Path, tmp_path: Path, hook: WebhookReceiver, monkeypatch: pytest.MonkeyPatch) -> None:
    """Apprise's own HTTP (requests) asked the proxy for json://127.0.0.1:PORT/ and never reached it:
    'Apprise could not deliver', retried on every run for ever. Other hosts keep the proxy (NO_PROXY
    gains only the loopback host)."""
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # nothing listens there
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "internal.example")  # the user's own entry, kept
    monkeypatch.setenv("TEST_APPRISE_URL", f"json://{hook.url.split('//')[1]}/apprise")
    config = watchlist(tmp_path / "w.yaml", {"out": {"type": "apprise", "url_env": "TEST_APPRISE_URL",
                                                     "attempts": 1}}, WATCH)
    sent = send_alerts(config=str(config), warehouse=str(warehouse))
    assert (sent["messages_sent"], sent["failures"]) == (2, [])
    assert [r.path for r in hook.received] == ["/apprise", "/apprise"]
    assert os.environ["NO_PROXY"] == os.environ["no_proxy"] == "internal.example,127.0.0.1"
