"""Receivers on a bad day, part three: what makes a refusal transient or permanent, and the wait a
receiver asked for, also across runs.

A wrong token or URL (HTTP 401, 404, ...) stays wrong however long one waits, whatever ``Retry-After``
comes with it: rejected, not tried on every run. A full mailbox (``552 5.2.2``, RFC 3463's "persistent
transient") is tried again later; a message too big (``552 5.3.4``) is refused for good. An address
with a non-ASCII name before the ``@`` goes out with SMTPUTF8, or fails naming what the server lacks.
A ``Retry-After`` longer than the run's budget holds the channel until then: the next run does not
send before that time."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows.alerts import send_alerts
from pipeline.alerts.channels import EmailSender, Resolved, WebhookSender, deliver
from pipeline.alerts.smtp_answers import permanent, transient
from pipeline.alerts.watchlist import parse_watchlist
from pipeline.errors import DeliveryFailed
from tests.test_alert_bad_day import (
    SEED,
    WATCH,
    Scripted,
    _email,
    _sample,
    _Smtp,
    _webhook,
    mail_server,
    scripted,
)
from tests.test_alerts import rows, two_days, warehouse, watchlist

__all__ = ["mail_server", "scripted", "two_days", "warehouse"]  # fixtures


# -- HTTP: Retry-After does not make a refusal for good transient -----------------------------------------
@pytest.mark.parametrize("status", [400, 401, 404, 405, 410, 413, 422])
@pytest.mark.parametrize("retry_after", ["120", "Wed, 21 Oct 2099 07:28:00 GMT"])
def test_a_webhook_refusal_for_good_stays_for_good_whatever_retry_after_it_carries(
        scripted: Scripted, status: int, retry_after: str) -> None:
    """A 401 with Retry-After (a proxy that adds it to every answer) was transient: re-sent on every
    run for ever, never marked rejected."""
    scripted.script.extend([(status, {"Retry-After": retry_after})] * 3)
    with pytest.raises(DeliveryFailed) as failed:
        deliver(WebhookSender(_webhook(f"{scripted.url}/hook")), _sample(), attempts=3, backoff=0.01,
                wait_until=time.monotonic() + 30)
    assert str(failed.value) == f"HTTP {status}"
    assert (failed.value.permanent, failed.value.retryable, failed.value.retry_after) == (True, False, None)
    assert len(scripted.hits) == 1  # not tried again within the run either


@pytest.mark.parametrize("status", [403, 429, 503])
def test_a_rate_limit_or_an_outage_with_retry_after_is_transient(scripted: Scripted, status: int) -> None:
    scripted.script.append((status, {"Retry-After": "120"}))
    with pytest.raises(DeliveryFailed) as failed:
        WebhookSender(_webhook(f"{scripted.url}/hook")).send(_sample())
    assert (failed.value.permanent, failed.value.retryable, failed.value.retry_after) == (False, True, 120.0)


# -- SMTP: a full mailbox is for now, a message too big for good --------------------------------------------
@pytest.mark.parametrize(("reply", "retryable"), [
    ("552 5.2.2 The email account that you tried to reach is over quota", True),
    ("552 Requested mail action aborted: exceeded storage allocation", True),
    ("552 5.3.1 mail system full", True),
    ("554 5.2.2 mailbox full", True),
    ("552 5.3.4 Message size exceeds fixed maximum message size", False),
    ("552 5.2.3 Message length exceeds administrative limit", False),
    ("550 5.7.1 message refused", False),
    ("452 4.2.2 mailbox full", True)])
def test_smtp_at_data_a_full_mailbox_is_tried_later_and_a_message_too_big_is_refused_for_good(
        mail_server: tuple[_Smtp, int], reply: str, retryable: bool) -> None:
    """552 5.2.2 (mailbox full) at DATA marked the alert rejected: never sent again once the recipient
    had made room."""
    handler, port = mail_server
    handler.data_reply = reply
    with pytest.raises(DeliveryFailed) as failed:
        _email(port).send(_sample())
    code, text = reply.split(" ", 1)
    assert str(failed.value) == f"SMTP error {code}: {text}"
    assert (failed.value.retryable, failed.value.permanent) == (retryable, not retryable)
    assert handler.mails == []


def test_a_recipient_whose_mailbox_is_full_makes_the_message_transient(mail_server: tuple[_Smtp, int]) -> None:
    handler, port = mail_server
    handler.rcpt = {"b@example.org": "550 5.2.2 mailbox full"}
    with pytest.raises(DeliveryFailed) as failed:
        _email(port).send(_sample())
    assert (failed.value.retryable, failed.value.permanent) == (True, False)


def test_an_smtp_reply_is_transient_by_its_class_or_its_persistent_transient_enhanced_code() -> None:
    for code in range(400, 500):
        assert transient(code, "anything") and not permanent(code, "anything")
    for code in (500, 501, 530, 550, 553, 554):
        assert permanent(code, "5.1.1 no") and not transient(code, "5.1.1 no")
        assert transient(code, "5.2.2 full") and not permanent(code, "5.2.2 full")
    assert transient(552, "") and not transient(552, "5.3.4 too big") and permanent(552, "5.3.4 too big")
    assert not transient(550, "5.2.22 not an X.2.2") and not transient(550, "15.2.2 no")


# -- SMTP: an internationalized address --------------------------------------------------------------------
def _utf8_channel(port: int, sender: str, to: str) -> EmailSender:
    spec = {"channels": {"out": {"type": "email", "host": "127.0.0.1", "port": port, "security": "none",
                                 "from": sender, "to": [to], "timeout": 5}},
            "watches": [{"name": "w", "studies": {"ids": [SEED]}, "channels": ["out"]}]}
    return EmailSender(Resolved(parse_watchlist(yaml.safe_dump(spec, allow_unicode=True), "w.yaml").channels["out"]))


def _server(utf8: bool) -> tuple[_Smtp, Any]:
    from aiosmtpd.controller import Controller

    from tests.test_alerts import _free_port

    handler = _Smtp()
    controller = Controller(handler, hostname="127.0.0.1", port=_free_port(), enable_SMTPUTF8=utf8)
    controller.start()
    return handler, controller


@pytest.mark.parametrize(("sender", "to"), [("alerts@example.org", "jörg@example.org"),
                                            ("Jörg <jörg@bücher.de>", "ops@example.org"),
                                            ("alerts@example.org", '"jörg m"@bücher.de')])
def test_an_address_with_a_non_ascii_local_part_goes_out_with_smtputf8(sender: str, to: str) -> None:
    """The watchlist refused it as "not an e-mail address"; RFC 6531 addresses are real addresses."""
    handler, controller = _server(utf8=True)
    try:
        _utf8_channel(controller.port, sender, to).send(_sample())
    finally:
        controller.stop()
    assert len(handler.mails) == 1
    mail = handler.mails[0]
    assert f"To: {to.replace('bücher.de', 'xn--bcher-kva.de')}".encode() in mail
    assert f"From: {sender.replace('bücher.de', 'xn--bcher-kva.de')}".encode() in mail


def test_a_server_without_smtputf8_fails_naming_the_address_that_needs_it_and_the_message_waits() -> None:
    handler, controller = _server(utf8=False)
    try:
        with pytest.raises(DeliveryFailed) as failed:
            _utf8_channel(controller.port, "alerts@example.org", "jörg@example.org").send(_sample())
    finally:
        controller.stop()
    assert str(failed.value) == (f"the SMTP server 127.0.0.1:{controller.port} does not offer SMTPUTF8, which the "
                                 "address jörg@example.org needs (a non-ASCII name before the @): use a server "
                                 "that offers it or an ASCII address")
    assert not failed.value.permanent  # a channel's setting: fixed in the watchlist, the next run sends it
    assert handler.mails == []


# -- Retry-After across runs -------------------------------------------------------------------------------
def _hook_config(tmp_path: Path, scripted: Scripted) -> Path:
    return watchlist(tmp_path / "w.yaml", {"out": {"type": "webhook", "url": f"{scripted.url}/hook", "attempts": 3}},
                     WATCH)


@pytest.mark.usefixtures("prefect_api")
def test_the_next_run_does_not_send_before_the_time_the_receiver_asked_for(
        warehouse: Path, tmp_path: Path, scripted: Scripted, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Retry-After of an hour, past the run's budget: the message waited in the outbox, but the next
    run (cron, five minutes later) sent it at once, into the same rate limit."""
    import flows.alerts

    config = _hook_config(tmp_path, scripted)
    scripted.script.append((429, {"Retry-After": "3600"}))
    before = datetime.now(UTC)
    first = send_alerts(config=str(config), warehouse=str(warehouse), retry_budget=10)
    assert (first["messages_sent"], len(scripted.hits)) == (0, 1)
    second = send_alerts(config=str(config), warehouse=str(warehouse))
    assert len(scripted.hits) == 1  # nothing sent before the hour is up

    [(until,)] = rows(warehouse, f"SELECT DISTINCT retry_at FROM alert_deliveries WHERE run_id = '{first['run_id']}'")
    assert before + timedelta(seconds=3590) <= until <= datetime.now(UTC) + timedelta(seconds=3600)
    assert second["messages_sent"] == 0 and second["messages_failed"] == 2
    assert second["failures"][0]["error"] == (
        f"not attempted: the receiver asked to wait until {until.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC (Retry-After)")
    assert rows(warehouse, f"SELECT DISTINCT status, retry_at FROM alert_deliveries WHERE run_id = '{second['run_id']}'"
                ) == [("failed", until)]  # the hold stands while the channel waits

    later = datetime.now(UTC) + timedelta(hours=1, minutes=1)
    monkeypatch.setattr(flows.alerts, "_now", lambda: later)
    third = send_alerts(config=str(config), warehouse=str(warehouse))
    assert (third["messages_sent"], third["failures"]) == (2, [])
    keys = [h.headers["Idempotency-Key"] for h in scripted.hits]
    assert keys.count(keys[0]) == 2 and len(set(keys)) == 2  # the held message went again under its id, once


@pytest.mark.usefixtures("prefect_api")
def test_a_wait_asked_by_the_last_run_that_ends_within_this_runs_budget_is_waited_out(
        warehouse: Path, tmp_path: Path, scripted: Scripted) -> None:
    config = _hook_config(tmp_path, scripted)
    scripted.script.append((503, {"Retry-After": "4"}))
    first = send_alerts(config=str(config), warehouse=str(warehouse), retry_budget=1)
    assert (first["messages_sent"], len(scripted.hits)) == (0, 1)
    second = send_alerts(config=str(config), warehouse=str(warehouse), retry_budget=30)
    assert (second["messages_sent"], second["failures"]) == (2, [])
    assert scripted.hits[1].at - scripted.hits[0].at >= 3.5


@pytest.mark.usefixtures("prefect_api")
def test_an_endless_retry_after_holds_the_channel_for_a_day_at_most(
        warehouse: Path, tmp_path: Path, scripted: Scripted) -> None:
    config = _hook_config(tmp_path, scripted)
    scripted.script.append((429, {"Retry-After": "9" * 40}))
    send_alerts(config=str(config), warehouse=str(warehouse), retry_budget=5)
    [(until,)] = rows(warehouse, "SELECT DISTINCT retry_at FROM alert_deliveries")
    assert abs((until - datetime.now(UTC)) - timedelta(days=1)) < timedelta(minutes=1)


# -- SMTP: a message the server took is sent once --------------------------------------------------------
class _QuitRefused(_Smtp):
    async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:
        return "421 4.3.2 closing"


def test_a_message_the_server_took_counts_as_sent_however_it_answers_quit() -> None:
    """QUIT answered 421 after DATA's 250 raised out of ``with smtp``: the delivery failed (retryable) and
    the next run put the same alert in the inbox a second time."""
    from aiosmtpd.controller import Controller

    from tests.test_alerts import _free_port

    handler = _QuitRefused()
    controller = Controller(handler, hostname="127.0.0.1", port=_free_port())
    controller.start()
    try:
        deliver(_email(controller.port), _sample(), attempts=3, backoff=0.01, wait_until=time.monotonic() + 30)
    finally:
        controller.stop()
    assert len(handler.mails) == 1


class _SlowThenSilentAtQuit(_Smtp):
    """Each answer before QUIT a little under the channel's timeout (so no socket read times out); QUIT never
    answered: the whole delivery runs past the channel's limit only while waiting for QUIT's answer."""

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        await asyncio.sleep(1.1)
        return await super().handle_RCPT(server, session, envelope, address, options)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        await asyncio.sleep(1.1)
        return await super().handle_DATA(server, session, envelope)

    async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:
        await asyncio.sleep(30)
        return "221 bye"


def test_a_message_the_server_took_counts_as_sent_when_quit_is_never_answered_within_the_timeout() -> None:
    """DATA answered 250, then QUIT unanswered: the delivery's deadline (the channel's timeout) passed
    while waiting for QUIT, the delivery failed (retryable) and the next run put the alert in the inbox
    a second time."""
    from aiosmtpd.controller import Controller

    from tests.test_alerts import _free_port

    handler = _SlowThenSilentAtQuit()
    controller = Controller(handler, hostname="127.0.0.1", port=_free_port())
    controller.start()
    try:
        sender = _email(controller.port)
        sender.c = dataclasses.replace(sender.c, timeout=3.0)
        started = time.monotonic()
        deliver(sender, _sample(), attempts=1, wait_until=time.monotonic() + 30)
        took = time.monotonic() - started
    finally:
        controller.stop()
    assert len(handler.mails) == 1
    assert took < 3.0 + 1.0 + 1.0  # not held past the channel's limit (and its grace) by the silent QUIT


@pytest.mark.parametrize("value", ["Bearer abc\r\nX-Injected: 1", "Bearer abc\nX-Injected: 1", "Bearer\x1babc",
                                   "Bearer abc ", "Bearer caf\u20ac", "Bearer \x85abc"])
@pytest.mark.parametrize("command", ["run", "test"])
def test_a_header_value_from_the_environment_that_no_header_may_hold_is_refused_before_anything_goes(
        command: str, value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli: Any) -> None:
    """A line break in a headers_env value was found by requests at each delivery: 'cannot reach the
    webhook (InvalidHeader)', a transient failure, so every run kept the message and failed again."""
    from flows.webhook_receiver import WebhookReceiver

    with WebhookReceiver() as receiver:
        config = watchlist(tmp_path / "watch.yaml", {"hook": {"type": "webhook", "url": f"{receiver.url}/hook",
                                                              "headers_env": {"Authorization": "HOOK_AUTH"}}},
                           [{"name": "all", "studies": {"ids": [SEED]}, "channels": ["hook"]}])
        monkeypatch.setenv("HOOK_AUTH", value)
        args = ["--warehouse", str(tmp_path / "wh")] if command == "run" else []
        code, _, err = cli("alerts", command, "--config", str(config), *args)
        assert code == 2
        assert err == (f"trialsync: error: {config}: channels.hook.headers_env.Authorization: environment variable "
                       "HOOK_AUTH holds a line break, a control character, spaces at an end or a character beyond "
                       "Latin-1, which no HTTP header value may (its value is not shown)\n")
        assert receiver.requests == 0
        monkeypatch.setenv("HOOK_AUTH", "Bearer\tabc")  # a tab inside is a header's own
        assert cli("alerts", "test", "--config", str(config))[0] == 0
        assert receiver.received[-1].headers["Authorization"] == "Bearer\tabc"
        monkeypatch.setenv("HOOK_AUTH", "Bearer caf\u00e9")  # Latin-1 is what HTTP carries
        assert cli("alerts", "test", "--config", str(config))[0] == 0
        assert receiver.received[-1].headers["Authorization"] == "Bearer caf\u00e9"
