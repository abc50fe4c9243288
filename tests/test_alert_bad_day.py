"""Receivers on a bad day, part two: a webhook that asks to wait (``Retry-After``), one that refuses a
message for good (4xx), one that takes the body and hangs up, a redirect to another host; SMTP servers
that answer 4xx (try later) or 5xx (refused), drop the connection in DATA, or offer no STARTTLS.

A transient failure is waited for within the run's retry budget and otherwise left in the outbox for
the next run (same id); a permanent one is recorded ``rejected`` and not sent again on every run."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows.alerts import send_alerts
from flows.cli.alerts import finish_alerts
from pipeline.alerts.channels import EmailSender, Resolved, SlackSender, WebhookSender, deliver
from pipeline.alerts.http_answers import redirect_allowed, retry_after_seconds
from pipeline.alerts.plan import sample_message
from pipeline.alerts.watchlist import parse_watchlist
from pipeline.errors import DeliveryFailed, UsageError
from tests.test_alerts import PAIR, SEED, _free_port, rows, two_days, warehouse, watchlist

__all__ = ["two_days", "warehouse"]  # fixtures, shared with tests/test_alerts.py (cli: tests/conftest.py)

WATCH = [{"name": "seed", "studies": {"ids": [SEED, PAIR]}, "channels": ["out"]}]


@dataclass
class Hit:
    path: str
    headers: dict[str, str]
    body: Any
    at: float


@dataclass
class Scripted:
    """An HTTP receiver on 127.0.0.1 answering each POST with the next scripted reply, then 200:
    ``(status, headers)``, or ``"hang-up"`` (read the whole body, close without an answer)."""

    script: deque[Any] = field(default_factory=deque)
    hits: list[Hit] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> Scripted:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.hits.append(Hit(self.path, dict(self.headers.items()), json.loads(body), time.monotonic()))
                reply = receiver.script.popleft() if receiver.script else (200, {})
                if reply == "hang-up":
                    self.close_connection = True
                    return
                status, headers = reply
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    receiver = Scripted().start()
    try:
        yield receiver
    finally:
        receiver.stop()


def _webhook(url: str, headers: dict[str, str] | None = None) -> Resolved:
    spec = {"channels": {"out": {"type": "webhook", "url": url, "attempts": 1, "timeout": 5}},
            "watches": [{"name": "w", "studies": {"ids": [SEED]}, "channels": ["out"]}]}
    channel = parse_watchlist(yaml.safe_dump(spec), "w.yaml").channels["out"]
    return Resolved(channel, url=url, headers=headers or {})  # as resolved from headers_env


def _sample() -> Any:
    from datetime import UTC, datetime

    return sample_message("out", "run-1", datetime.now(UTC))


# -- Retry-After --------------------------------------------------------------------------------------
def test_retry_after_is_read_as_seconds_or_an_http_date_and_a_malformed_one_is_ignored() -> None:
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds(" 0 ") == 0.0
    date = "Mon, 07 Dec 2026 12:00:00 GMT"
    assert retry_after_seconds("Mon, 07 Dec 2026 12:00:30 GMT", date) == 30.0
    assert retry_after_seconds("Mon, 07 Dec 2026 11:00:00 GMT", date) == 0.0  # a date past: now
    assert retry_after_seconds("9" * 5000) == float("inf")  # too long a number: never waited for
    assert [retry_after_seconds(v) for v in (None, "", "soon", "-5", "1.5e3", "٣")] == [None] * 6


@pytest.mark.parametrize("date", ["garbage", "Mon, 99 Foo 2026 25:61:00 GMT", ""])
def test_an_http_date_retry_after_with_a_malformed_date_header_is_measured_from_this_hosts_clock(date: str) -> None:
    """A valid HTTP-date Retry-After was ignored (None: not asked) when the Date header did not parse."""
    wait = retry_after_seconds(formatdate(time.time() + 120, usegmt=True), date)
    assert wait is not None and 100 <= wait <= 120


@pytest.mark.parametrize("how", ["seconds", "http-date"])
def test_a_webhook_answering_429_or_503_with_retry_after_is_tried_again_after_that_wait(
        scripted: Scripted, how: str) -> None:
    """The receiver asked for 3 s; the backoff alone would have tried again after 1 s."""
    value = "3" if how == "seconds" else formatdate(time.time() + 4, usegmt=True)
    scripted.script.append((429 if how == "seconds" else 503, {"Retry-After": value}))
    deliver(WebhookSender(_webhook(f"{scripted.url}/hook")), _sample(), attempts=2, backoff=1.0,
            wait_until=time.monotonic() + 60)
    assert len(scripted.hits) == 2
    assert scripted.hits[1].at - scripted.hits[0].at >= 2.5
    assert scripted.hits[0].headers["Idempotency-Key"] == scripted.hits[1].headers["Idempotency-Key"]


@pytest.mark.usefixtures("prefect_api")
def test_a_retry_after_past_the_run_budget_is_not_waited_for_and_the_message_goes_once_it_is_over(
        warehouse: Path, tmp_path: Path, scripted: Scripted, monkeypatch: pytest.MonkeyPatch) -> None:
    config = watchlist(tmp_path / "w.yaml", {"out": {"type": "webhook", "url": f"{scripted.url}/hook",
                                                     "attempts": 5}}, WATCH)
    scripted.script.append((429, {"Retry-After": "86400"}))
    failed = send_alerts(config=str(config), warehouse=str(warehouse), retry_budget=30)
    assert len(scripted.hits) == 1  # one try: the day's wait was not begun, nor the other message sent
    assert failed["messages_sent"] == 0
    assert failed["failures"][0]["error"] == ("HTTP 429 (the receiver asks to wait 86400s, past this run's "
                                              "retry budget)")
    assert rows(warehouse, "SELECT DISTINCT status FROM alert_deliveries") == [("failed",)]
    import datetime as dt

    import flows.alerts

    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=1, minutes=1)  # the day asked for is over
    monkeypatch.setattr(flows.alerts, "_now", lambda: later)
    retried = send_alerts(config=str(config), warehouse=str(warehouse))
    assert (retried["messages_sent"], retried["failures"]) == (2, [])
    first = scripted.hits[0].headers["Idempotency-Key"]
    assert [h.headers["Idempotency-Key"] for h in scripted.hits].count(first) == 2  # the same message again


@pytest.mark.usefixtures("prefect_api")
@pytest.mark.parametrize(("name", "value"), [("retry_budget", float("nan")), ("retry_budget", float("inf")),
                                             ("retry_budget", 1e12), ("lock_timeout", float("nan"))])
def test_send_alerts_refuses_a_retry_budget_or_lock_timeout_that_is_no_bound(
        warehouse: Path, tmp_path: Path, scripted: Scripted, name: str, value: float) -> None:
    """With retry_budget NaN every wait counted as within it: a receiver's Retry-After of a day was slept."""
    config = watchlist(tmp_path / "w.yaml", {"out": {"type": "webhook", "url": f"{scripted.url}/hook",
                                                     "attempts": 5}}, WATCH)
    scripted.script.append((429, {"Retry-After": "86400"}))
    with pytest.raises(UsageError) as refused:
        send_alerts(config=str(config), warehouse=str(warehouse), **{name: value})
    assert str(refused.value).startswith(f"{name} must be a number of seconds >= 0")
    assert scripted.hits == []


def test_a_receiver_down_for_good_cannot_hold_the_run_past_its_budget(scripted: Scripted) -> None:
    """``attempts: 100`` with a doubling backoff: the 10th wait alone is 8 minutes, the 30th 17 years."""
    scripted.script.extend([(503, {})] * 100)
    with pytest.raises(DeliveryFailed) as failed:
        deliver(WebhookSender(_webhook(f"{scripted.url}/hook")), _sample(), attempts=100, backoff=1.0,
                wait_until=time.monotonic() + 4)
    assert str(failed.value).startswith("HTTP 503 (the next try would be in ")
    assert str(failed.value).endswith("s, past this run's retry budget)")
    assert failed.value.retryable and 2 <= len(scripted.hits) <= 3


# -- permanent refusals, hang-ups, redirects ------------------------------------------------------------
@pytest.mark.parametrize(("status", "permanent"), [(400, True), (401, True), (404, True), (410, True),
                                                   (408, False), (429, False), (500, False), (503, False)])
def test_a_webhook_4xx_refuses_the_message_for_good_and_a_5xx_is_transient(
        scripted: Scripted, status: int, permanent: bool) -> None:
    scripted.script.append((status, {}))
    with pytest.raises(DeliveryFailed) as failed:
        WebhookSender(_webhook(f"{scripted.url}/hook")).send(_sample())
    assert str(failed.value) == f"HTTP {status}"
    assert (failed.value.permanent, failed.value.retryable) == (permanent, not permanent)


@pytest.mark.parametrize("status", [409, 423])
def test_a_webhook_409_or_423_is_transient_the_same_idempotency_key_is_still_being_processed(
        scripted: Scripted, status: int) -> None:
    """Under the Idempotency-Key convention a 409 means "a request with this key is still in progress:
    try again"; it used to mark the re-sent outbox message rejected (never sent again: a lost alert)."""
    scripted.script.append((status, {}))
    deliver(WebhookSender(_webhook(f"{scripted.url}/hook")), _sample(), attempts=2, backoff=0.01,
            wait_until=time.monotonic() + 60)
    assert len(scripted.hits) == 2
    assert scripted.hits[0].headers["Idempotency-Key"] == scripted.hits[1].headers["Idempotency-Key"]


def test_a_403_with_a_valid_retry_after_is_a_rate_limit_and_transient(scripted: Scripted) -> None:
    """A 403 with Retry-After (GitHub-style secondary rate limit) used to be a permanent refusal."""
    scripted.script.append((403, {"Retry-After": "60"}))
    with pytest.raises(DeliveryFailed) as failed:
        WebhookSender(_webhook(f"{scripted.url}/hook")).send(_sample())
    assert (failed.value.retryable, failed.value.permanent, failed.value.retry_after) == (True, False, 60.0)
    scripted.script.append((403, {"Retry-After": "soon"}))  # not a valid Retry-After: refused for good
    with pytest.raises(DeliveryFailed) as refused:
        WebhookSender(_webhook(f"{scripted.url}/hook")).send(_sample())
    assert (refused.value.retryable, refused.value.permanent) == (False, True)


@pytest.mark.usefixtures("prefect_api")
def test_a_rejected_message_is_listed_not_resent_every_run_and_resent_on_request(
        warehouse: Path, tmp_path: Path, scripted: Scripted, cli: Any) -> None:
    """A 410 used to be re-sent (and fail, exit 1) on every later run for ever."""
    config = watchlist(tmp_path / "w.yaml", {"out": {"type": "webhook", "url": f"{scripted.url}/hook",
                                                     "attempts": 3}}, WATCH)
    scripted.script.extend([(410, {}), (410, {})])
    failed = send_alerts(config=str(config), warehouse=str(warehouse))
    assert (failed["messages_failed"], failed["messages_rejected"], len(scripted.hits)) == (2, 2, 2)  # no retries
    with pytest.raises(DeliveryFailed) as reported:
        finish_alerts(failed)
    assert str(reported.value) == (
        "alerts: 3 deliveries failed (channel out: HTTP 410); 2 messages were rejected by the receiver and are "
        "not re-sent (`trialsync alerts run --resend-rejected` sends them again)")
    assert rows(warehouse, "SELECT DISTINCT status, error FROM alert_deliveries") == [("rejected", "HTTP 410")]
    again = send_alerts(config=str(config), warehouse=str(warehouse))
    assert (again["messages"], again["failures"], len(scripted.hits)) == (0, [], 2)
    code, out, _ = cli("alerts", "list", "--config", str(config), "--warehouse", str(warehouse), "--format", "json")
    assert [(w["sent"], w["awaiting_retry"], w["rejected"]) for w in json.loads(out)] == [(0, 0, 3)]
    code, out, err = cli("alerts", "run", "--config", str(config), "--warehouse", str(warehouse),
                         "--resend-rejected")
    assert code == 0, err
    assert "2 messages, 2 delivered, 0 failed" in out
    assert sorted(h.headers["Idempotency-Key"] for h in scripted.hits[2:]) == sorted(
        h.headers["Idempotency-Key"] for h in scripted.hits[:2])
    code, out, _ = cli("alerts", "list", "--config", str(config), "--warehouse", str(warehouse), "--format", "json")
    assert [(w["sent"], w["awaiting_retry"], w["rejected"]) for w in json.loads(out)] == [(3, 0, 0)]


@pytest.mark.usefixtures("prefect_api")
def test_a_webhook_that_takes_the_body_and_hangs_up_gets_the_same_message_again_next_run(
        warehouse: Path, tmp_path: Path, scripted: Scripted) -> None:
    config = watchlist(tmp_path / "w.yaml", {"out": {"type": "webhook", "url": f"{scripted.url}/hook",
                                                     "attempts": 1}}, WATCH)
    scripted.script.append("hang-up")
    failed = send_alerts(config=str(config), warehouse=str(warehouse))
    assert failed["messages_sent"] == 0
    assert failed["failures"][0]["error"] == "cannot reach the webhook (ConnectionError)"
    assert len(scripted.hits) == 1  # the rest of the channel waits for the next run
    retried = send_alerts(config=str(config), warehouse=str(warehouse))
    assert (retried["messages_sent"], retried["failures"]) == (2, [])
    again = {h.headers["Idempotency-Key"]: h.body for h in scripted.hits[1:]}
    assert again[scripted.hits[0].headers["Idempotency-Key"]] == scripted.hits[0].body  # the same message


def test_a_redirect_to_another_host_is_not_followed_with_the_channels_headers(scripted: Scripted) -> None:
    """A 307 keeps the POST, and used to carry the channel's headers (a bearer token) to any host."""
    other = Scripted().start()
    try:
        elsewhere = other.url.replace("127.0.0.1", "localhost")
        scripted.script.append((307, {"Location": f"{elsewhere}/collect"}))
        with pytest.raises(DeliveryFailed) as failed:
            WebhookSender(_webhook(f"{scripted.url}/hook", headers={"Authorization": "Bearer s3cret"})).send(
                _sample())
        port = other.url.rsplit(":", 1)[1]
        assert str(failed.value) == (f"HTTP 307: the webhook redirects to another origin (scheme/host/port: "
                                     f"http://localhost:{port}); not followed: configure that URL if it is right")
        assert other.hits == []
        scripted.script.append((308, {"Location": "/moved"}))  # the same host: followed, the POST kept
        WebhookSender(_webhook(f"{scripted.url}/hook")).send(_sample())
        assert [h.path for h in scripted.hits] == ["/hook", "/hook", "/moved"]
    finally:
        other.stop()


@pytest.mark.parametrize(("source", "target", "allowed"), [
    ("http://hooks.example.org/a", "https://hooks.example.org/b", True),  # default ports: 80 -> 443
    ("http://hooks.example.org:8080/a", "https://hooks.example.org:8080/b", True),
    ("http://hooks.example.org/a", "http://hooks.example.org/b", True),
    ("https://hooks.example.org/a", "http://hooks.example.org/b", False),  # the headers in the clear
    ("http://hooks.example.org/a", "https://other.example.org/b", False),
    ("http://hooks.example.org:8080/a", "https://hooks.example.org:8443/b", False),
    ("https://hooks.example.org/a", "https://hooks.example.org:8443/b", False)])
def test_a_redirect_is_followed_on_the_same_origin_or_the_same_host_upgraded_to_https(
        source: str, target: str, allowed: bool) -> None:
    assert redirect_allowed(source, target) is allowed


def test_a_same_host_redirect_from_http_to_https_is_followed(scripted: Scripted) -> None:
    """It was refused as "redirects to another host (127.0.0.1)", though README says same-host 307/308
    are followed. Followed now: the https request reaches the plain-HTTP receiver, whose answer is no TLS."""
    port = scripted.url.rsplit(":", 1)[1]
    scripted.script.append((308, {"Location": f"https://127.0.0.1:{port}/hook"}))
    with pytest.raises(DeliveryFailed) as failed:
        WebhookSender(_webhook(f"{scripted.url}/hook")).send(_sample())
    assert str(failed.value) == "cannot reach the webhook (SSLError)"
    assert failed.value.retryable


def test_a_redirect_loop_is_named_as_such(scripted: Scripted) -> None:
    """It used to end as "redirects (e.g. http:// to https://) in a way that drops the alert"."""
    scripted.script.extend([(307, {"Location": "/hook"})] * 4)
    with pytest.raises(DeliveryFailed) as failed:
        WebhookSender(_webhook(f"{scripted.url}/hook")).send(_sample())
    assert str(failed.value) == ("HTTP 307: the webhook redirects more than 3 times (a loop?); configure the URL "
                                 "it ends at")
    assert len(scripted.hits) == 4


@pytest.mark.parametrize("status", [301, 302, 303, 307])
def test_a_slack_webhook_that_redirects_is_a_failed_delivery_not_a_get_marked_sent(status: int) -> None:
    """urllib (under slack_sdk) sent a redirected POST on as a bodiless GET: the landing page's 200 made
    the alert count as sent, and it never arrived."""
    from flows.webhook_receiver import WebhookReceiver

    with WebhookReceiver() as hook:
        hook.redirect_to, hook.redirect_status = "/landing", status
        spec = {"channels": {"out": {"type": "slack", "url_env": "SLACK_URL", "attempts": 1, "timeout": 5}},
                "watches": [{"name": "w", "studies": {"ids": [SEED]}, "channels": ["out"]}]}
        channel = parse_watchlist(yaml.safe_dump(spec), "w.yaml").channels["out"]
        with pytest.raises(DeliveryFailed) as failed:
            SlackSender(Resolved(channel, url=f"{hook.url}/services/T0/B0/x")).send(_sample())
        assert str(failed.value).startswith(f"HTTP {status}: the Slack webhook URL redirects; not followed")
        assert (hook.received, failed.value.permanent) == ([], False)  # retried on the next run
        hook.redirect_to = None
        SlackSender(Resolved(channel, url=f"{hook.url}/services/T0/B0/x")).send(_sample())
        assert [r.path for r in hook.received] == ["/services/T0/B0/x"]


# -- SMTP ---------------------------------------------------------------------------------------------------
class _Smtp:
    """aiosmtpd answering DATA with ``data_reply`` (or dropping the connection), RCPT per address."""

    def __init__(self) -> None:
        self.data_reply: str | None = "250 OK"
        self.rcpt: dict[str, str] = {}
        self.mails: list[bytes] = []

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        reply = self.rcpt.get(address, "250 OK")
        if reply.startswith("250"):
            envelope.rcpt_tos.append(address)
        return reply

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_reply is None:  # took the message, then the line dropped
            self.mails.append(envelope.content)
            server.transport.close()
            return "250 OK"
        if self.data_reply.startswith("250"):
            self.mails.append(envelope.content)
        return self.data_reply


@pytest.fixture
def mail_server() -> Iterator[tuple[_Smtp, int]]:
    from aiosmtpd.controller import Controller

    handler = _Smtp()
    controller = Controller(handler, hostname="127.0.0.1", port=_free_port())
    controller.start()
    try:
        yield handler, controller.port
    finally:
        controller.stop()


def _email(port: int, security: str = "none") -> EmailSender:
    spec = {"channels": {"out": {"type": "email", "host": "127.0.0.1", "port": port, "security": security,
                                 "from": "alerts@example.org", "to": ["a@example.org", "b@example.org"],
                                 "timeout": 5}},
            "watches": [{"name": "w", "studies": {"ids": [SEED]}, "channels": ["out"]}]}
    return EmailSender(Resolved(parse_watchlist(yaml.safe_dump(spec), "w.yaml").channels["out"]))


@pytest.mark.parametrize(("reply", "retryable", "permanent"), [
    ("421 4.3.2 shutting down", True, False), ("450 4.2.0 mailbox busy", True, False),
    ("451 4.3.0 local error", True, False), ("550 5.7.1 message refused", False, True),
    ("554 5.6.0 content rejected", False, True)])
def test_smtp_4xx_at_data_is_tried_later_and_5xx_refuses_the_message_for_good(
        mail_server: tuple[_Smtp, int], reply: str, retryable: bool, permanent: bool) -> None:
    handler, port = mail_server
    handler.data_reply = reply
    with pytest.raises(DeliveryFailed) as failed:
        _email(port).send(_sample())
    code, text = reply.split(" ", 1)
    assert str(failed.value) == f"SMTP error {code}: {text}"
    assert (failed.value.retryable, failed.value.permanent) == (retryable, permanent)


@pytest.mark.parametrize(("code", "retryable", "permanent"), [(451, True, False), (550, False, True)])
def test_smtp_refusing_every_recipient_says_so_and_4xx_is_tried_later(
        mail_server: tuple[_Smtp, int], code: int, retryable: bool, permanent: bool) -> None:
    """Every recipient greylisted (451) used to be a failure not worth retrying, like an unknown user."""
    handler, port = mail_server
    handler.rcpt = {"a@example.org": f"{code} no", "b@example.org": f"{code} no"}
    with pytest.raises(DeliveryFailed) as failed:
        _email(port).send(_sample())
    assert str(failed.value) == f"SMTP server refused 2 of 2 recipients ({code})"
    assert (failed.value.retryable, failed.value.permanent) == (retryable, permanent)


def test_one_recipient_refused_for_good_is_a_rejected_message(mail_server: tuple[_Smtp, int]) -> None:
    handler, port = mail_server
    handler.rcpt = {"b@example.org": "550 5.1.1 no such user"}
    with pytest.raises(DeliveryFailed) as failed:
        _email(port).send(_sample())
    assert str(failed.value) == "SMTP server refused 1 of 2 recipients (550)"
    assert (failed.value.retryable, failed.value.permanent) == (False, True)
    assert len(handler.mails) == 1  # a@ has it


def test_an_idn_address_is_delivered_with_its_domain_in_idna(mail_server: tuple[_Smtp, int]) -> None:
    """Taken by the watchlist now (it was refused); smtplib would need SMTPUTF8 for the raw domain."""
    handler, port = mail_server
    spec = {"channels": {"out": {"type": "email", "host": "127.0.0.1", "port": port, "security": "none",
                                 "from": "Büro <alerts@bücher.de>", "to": ["ops@bücher.de"], "timeout": 5}},
            "watches": [{"name": "w", "studies": {"ids": [SEED]}, "channels": ["out"]}]}
    channel = parse_watchlist(yaml.safe_dump(spec, allow_unicode=True), "w.yaml").channels["out"]
    EmailSender(Resolved(channel)).send(_sample())
    assert len(handler.mails) == 1
    assert b"To: ops@xn--bcher-kva.de" in handler.mails[0]
    assert b"<alerts@xn--bcher-kva.de>" in handler.mails[0]


@pytest.mark.parametrize("replies", [("451 4.7.1 greylisted", "550 5.1.1 no such user"),
                                     ("552 5.2.2 mailbox full", "550 5.1.1 no such user")])
def test_a_recipient_refused_for_now_makes_the_message_transient_though_another_is_refused_for_good(
        mail_server: tuple[_Smtp, int], replies: tuple[str, str]) -> None:
    """Mixed 4xx + 5xx refusals made the whole message rejected: the greylisted recipient never got it.
    552 at RCPT is temporary per RFC 5321."""
    handler, port = mail_server
    handler.rcpt = {"a@example.org": replies[0], "b@example.org": replies[1]}
    with pytest.raises(DeliveryFailed) as failed:
        _email(port).send(_sample())
    codes = sorted(int(r.split()[0]) for r in replies)
    assert str(failed.value) == f"SMTP server refused 2 of 2 recipients ({', '.join(map(str, codes))})"
    assert (failed.value.retryable, failed.value.permanent) == (True, False)


def test_an_smtp_server_that_drops_the_line_in_data_is_tried_again(mail_server: tuple[_Smtp, int]) -> None:
    handler, port = mail_server
    handler.data_reply = None
    with pytest.raises(DeliveryFailed) as failed:
        _email(port).send(_sample())
    assert str(failed.value) == f"the SMTP server 127.0.0.1:{port} closed the connection before it took the message"
    assert (failed.value.retryable, failed.value.permanent) == (True, False)


def test_starttls_asked_of_a_server_that_does_not_offer_it_says_so(mail_server: tuple[_Smtp, int]) -> None:
    _, port = mail_server
    with pytest.raises(DeliveryFailed) as failed:
        _email(port, security="starttls").send(_sample())
    assert str(failed.value) == (f"the SMTP server 127.0.0.1:{port} does not support what the channel needs "
                                 "(STARTTLS extension not supported by server); security: ssl is implicit TLS, "
                                 "security: none sends in the clear")
