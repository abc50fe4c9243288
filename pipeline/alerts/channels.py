"""Delivery: the network (and feed file) edge of alerts, behind one small interface.

``Sender.send(message)`` delivers one message or raises ``DeliveryFailed`` (``retryable`` for HTTP
5xx, 408/409/423/425/429 or a 403 with a valid ``Retry-After``, SMTP 4xx and a full mailbox,
timeouts and dropped connections; ``permanent`` for any other HTTP 4xx and SMTP 5xx:
``pipeline.alerts.http_answers``, ``pipeline.alerts.smtp_answers``). Each kind
uses a well-kept library: ``slack_sdk`` for Slack-compatible webhooks, ``requests`` for the generic
JSON webhook, ``smtplib`` for e-mail, ``apprise`` for any Apprise URL; the feed is a JSON Feed 1.1 or
Atom file replaced atomically. Secret values arrive resolved (``Resolved``); error texts never include
a URL.
"""

from __future__ import annotations

import email.policy
import logging
import math
import smtplib
import ssl
import time
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urljoin

import requests

from pipeline.alerts.addresses import ascii_domain
from pipeline.alerts.feeds import FeedSender
from pipeline.alerts.http_answers import NoRedirects, http_failure, origin, redirect_allowed
from pipeline.alerts.message import Message
from pipeline.alerts.smtp_answers import permanent, transient
from pipeline.alerts.watchlist import Channel
from pipeline.deadline import Late, call_within
from pipeline.errors import DeliveryFailed
from pipeline.http_session import Session, bypass_proxy_for_loopback

USER_AGENT = "trialsync-alerts"
MAX_REDIRECTS = 3  # 307/308 hops a webhook delivery follows
GRACE_SECONDS = 1.0  # past a channel's timeout before a delivery is given up (the library's own may fire first)
T = TypeVar("T")
# Headers unfolded up to RFC 5322's hard limit: a folded non-ASCII subject shows a stray space.
_MAIL_POLICY = email.policy.SMTP.clone(max_line_length=998)


class Sender(Protocol):
    def send(self, message: Message) -> None: ...


@dataclass(frozen=True)
class Resolved:
    """A channel with its secrets looked up (never logged, never stored)."""

    channel: Channel
    url: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    password: str | None = None
    feed_path: Path | None = None
    ca_file: Path | None = None


def sender_for(resolved: Resolved) -> Sender:
    kinds: dict[str, Callable[[Resolved], Sender]] = {
        "webhook": WebhookSender, "slack": SlackSender, "email": EmailSender, "apprise": AppriseSender,
        "feed": FeedSender}
    return kinds[resolved.channel.type](resolved)


def deliver(sender: Sender, message: Message, *, attempts: int, backoff: float = 1.0,
            sleep: Callable[[float], None] = time.sleep, wait_until: float | None = None,
            clock: Callable[[], float] = time.monotonic) -> None:
    """Send with up to ``attempts`` tries for retryable failures. Between tries it waits ``backoff``
    (doubling), or longer when the receiver asks so (``Retry-After``), but never past ``wait_until``
    (a ``clock()`` time: the run's retry budget): a wait that would end later is not begun, the failure
    is raised at once (retryable: the message stays in the outbox for the next run)."""
    for attempt in range(1, attempts + 1):
        try:
            sender.send(message)
            return
        except DeliveryFailed as exc:
            if not exc.retryable or attempt == attempts:
                raise
            wait = backoff * 2 ** (attempt - 1)
            if exc.retry_after is not None:
                wait = max(wait, exc.retry_after)
            if wait_until is not None and clock() + wait > wait_until:
                asked = f"the receiver asks to wait {_seconds(exc.retry_after)}" if exc.retry_after is not None \
                    else f"the next try would be in {_seconds(wait)}"
                raise DeliveryFailed(f"{exc} ({asked}, past this run's retry budget)", retryable=True,
                                     retry_after=exc.retry_after) from None
            sleep(wait)


def _seconds(value: float | None) -> str:
    return "an unbounded time" if value is None or value == math.inf else f"{value:g}s"


def within(seconds: float, what: str, call: Callable[[], T]) -> T:
    """``call()``, given ``seconds`` in all (``pipeline.deadline``): a receiver that answers a byte at a
    time cannot hold a run (and the warehouse lock) for ever. Past the limit it is a retryable failure,
    and the outbox sends the message again later (same id: receivers deduplicate)."""
    try:
        return call_within(seconds + GRACE_SECONDS, call, name="trialsync-delivery")
    except Late:
        raise DeliveryFailed(f"{what} did not finish answering within {seconds:g}s", retryable=True) from None


class WebhookSender:
    """POST the message's JSON (``Message.payload``) with an ``Idempotency-Key`` of its message id."""

    def __init__(self, resolved: Resolved) -> None:
        assert resolved.url
        self.url, self.headers, self.timeout = resolved.url, dict(resolved.headers), resolved.channel.timeout

    def send(self, message: Message) -> None:
        headers = {"User-Agent": USER_AGENT, "Idempotency-Key": message.message_id, **self.headers}
        try:
            response = within(self.timeout, "the webhook", lambda: self._post(message.payload(), headers))
        except requests.Timeout:
            raise DeliveryFailed("the webhook timed out", retryable=True) from None
        except requests.RequestException as exc:
            raise DeliveryFailed(f"cannot reach the webhook ({type(exc).__name__})", retryable=True) from None
        if 300 <= response.status_code < 400:
            raise DeliveryFailed(f"HTTP {response.status_code}: the webhook URL redirects (e.g. http:// to "
                                 "https://) in a way that drops the alert; configure the URL it redirects to")
        if response.status_code >= 300:
            raise http_failure(response.status_code, response.text, response.headers)


    def _post(self, payload: dict[str, Any], headers: dict[str, str]) -> requests.Response:
        """POST, following only redirects that keep the method and body (307, 308; a few at most). For
        301/302/303 requests would send a GET without the body and report the landing page's 200: the
        alert marked sent, never arrived; those are answered to the caller as they are."""
        url = self.url
        for _ in range(MAX_REDIRECTS + 1):
            with Session() as http:  # a receiver on loopback directly, whatever proxy the environment names
                response = http.post(url, json=payload, headers=headers, timeout=self.timeout, allow_redirects=False)
            if response.status_code not in (307, 308) or "Location" not in response.headers:
                return response
            target = urljoin(url, response.headers["Location"])
            if not redirect_allowed(url, target):  # the channel's headers (a token?) would go there
                response.close()
                scheme, host, port = origin(target)
                raise DeliveryFailed(
                    f"HTTP {response.status_code}: the webhook redirects to another origin (scheme/host/port: "
                    f"{scheme or '?'}://{host or '?'}:{port or '?'}); not followed: configure that URL if it is right")
            url = target
        response.close()
        raise DeliveryFailed(f"HTTP {response.status_code}: the webhook redirects more than {MAX_REDIRECTS} times "
                             "(a loop?); configure the URL it ends at")


class SlackSender:
    """A Slack incoming webhook (or any Slack-compatible one: Mattermost, Rocket.Chat, ...)."""

    def __init__(self, resolved: Resolved) -> None:
        assert resolved.url
        self.c_timeout = resolved.channel.timeout
        self.client = _slack_client(resolved.url, timeout=max(1, int(resolved.channel.timeout)))

    def send(self, message: Message) -> None:
        body = message.slack()
        try:
            response = within(self.c_timeout, "the Slack webhook",
                              lambda: self.client.send(text=body["text"], blocks=body["blocks"]))
        except (OSError, ValueError) as exc:  # URLError, timeouts, resets
            raise DeliveryFailed(f"cannot reach the Slack webhook ({type(exc).__name__})", retryable=True) from None
        if 300 <= response.status_code < 400:
            raise DeliveryFailed(f"HTTP {response.status_code}: the Slack webhook URL redirects; not followed (a "
                                 "redirected POST arrives as a bodiless GET): configure the URL it redirects to")
        if response.status_code >= 300:
            headers = {k.title(): v[0] if isinstance(v, list) and v else str(v)
                       for k, v in (response.headers or {}).items()}
            raise http_failure(response.status_code, str(response.body or ""), headers)


def _slack_client(url: str, *, timeout: int) -> Any:
    """slack_sdk's ``WebhookClient``, its requests following no redirect (``NoRedirects``): urllib sent a
    redirected POST on as a bodiless GET, and the landing page's 200 marked the alert sent."""
    import urllib.request

    from slack_sdk.webhook import WebhookClient, WebhookResponse

    class Client(WebhookClient):
        def _perform_http_request_internal(self, url: str, req: urllib.request.Request) -> WebhookResponse:
            handlers: list[urllib.request.BaseHandler] = [NoRedirects(), urllib.request.HTTPSHandler(context=self.ssl)]
            if isinstance(self.proxy, str):
                handlers.append(urllib.request.ProxyHandler({"http": self.proxy, "https": self.proxy}))
            with urllib.request.build_opener(*handlers).open(req, timeout=self.timeout) as answer:
                body = answer.read().decode(answer.headers.get_content_charset() or "utf-8")
                return WebhookResponse(url=url, status_code=answer.status, body=body, headers=answer.headers)

    return Client(url, timeout=timeout, user_agent_prefix=USER_AGENT, logger=logging.getLogger("trialsync.slack"))


class EmailSender:
    """E-mail over SMTP: STARTTLS (default), implicit TLS (``ssl``) or plain (``none``), with login."""

    def __init__(self, resolved: Resolved) -> None:
        self.c, self.password, self.ca_file = resolved.channel, resolved.password, resolved.ca_file

    def send(self, message: Message) -> None:
        c = self.c
        mail = EmailMessage(policy=_MAIL_POLICY)
        mail["Subject"] = message.subject
        mail["From"] = ascii_domain(c.sender or "")  # an IDN domain in IDNA: no SMTPUTF8 needed
        mail["To"] = ", ".join(map(ascii_domain, c.recipients))
        mail["Date"] = formatdate(message.created_at.timestamp(), usegmt=True)
        mail["Message-ID"] = f"<{message.message_id}@trialsync>"
        mail["X-Trialsync-Watch"] = message.watch
        mail.set_content(message.text())
        taken: list[dict[str, tuple[int, bytes]]] = []  # the server's answer to DATA, once it took the message
        try:
            refused = within(c.timeout, f"the SMTP server {c.host}:{c.port}", lambda: self._submit(mail, taken))
        except DeliveryFailed:  # past the channel's limit: sent when the limit passed while waiting for QUIT
            if not taken:
                raise
            refused = taken[0]
        except smtplib.SMTPAuthenticationError as exc:
            raise DeliveryFailed(f"SMTP login refused ({exc.smtp_code})", retryable=400 <= exc.smtp_code < 500,
                                 permanent=exc.smtp_code >= 500) from None
        except smtplib.SMTPRecipientsRefused as exc:
            refused = exc.recipients  # every one of them
        except smtplib.SMTPNotSupportedError as exc:  # e.g. security: starttls, and the server offers none
            hint = ("; security: ssl is implicit TLS, security: none sends in the clear"
                    if "STARTTLS" in str(exc) else "")
            if "SMTPUTF8" in str(exc):  # a non-ASCII local part (jörg@...), and the server does not take one
                names = [a for a in (c.sender or "", *c.recipients) if not a.split("@")[0].isascii()]
                raise DeliveryFailed(f"the SMTP server {c.host}:{c.port} does not offer SMTPUTF8, which the "
                                     f"address {names[0] if names else '?'} needs (a non-ASCII name before the @): "
                                     "use a server that offers it or an ASCII address") from None
            raise DeliveryFailed(f"the SMTP server {c.host}:{c.port} does not support what the channel needs "
                                 f"({str(exc).rstrip('.')}){hint}") from None
        except smtplib.SMTPResponseException as exc:  # 4xx, a full mailbox: try again later; 5xx: refused
            text = _text(exc.smtp_error)
            what = " ".join(text.split())[:120]
            raise DeliveryFailed(f"SMTP error {exc.smtp_code}" + (f": {what}" if what else ""),
                                 retryable=transient(exc.smtp_code, text),
                                 permanent=permanent(exc.smtp_code, text)) from None
        except smtplib.SMTPServerDisconnected:
            raise DeliveryFailed(f"the SMTP server {c.host}:{c.port} closed the connection before it took "
                                 "the message", retryable=True) from None
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryFailed(f"cannot reach the SMTP server {c.host}:{c.port} ({type(exc).__name__})",
                                 retryable=True) from None

        if refused:  # some recipients were refused (the others have it): the message counts as not sent
            codes = sorted({code for code, _ in refused.values()})
            # Any temporary refusal (4xx, a full mailbox; 552 at RCPT is temporary per RFC 5321 4.5.3.1.10):
            # sent again later, or those recipients would never get it; rejected only when every refusal is
            # for good.
            for_now = any(code == 552 or transient(code, _text(text)) for code, text in refused.values())
            raise DeliveryFailed(f"SMTP server refused {len(refused)} of {len(c.recipients)} recipients "
                                 f"({', '.join(map(str, codes))})", retryable=for_now,
                                 permanent=not for_now and any(code >= 500 for code in codes))

    def _submit(self, mail: EmailMessage, taken: list[dict[str, tuple[int, bytes]]]) -> dict[str, tuple[int, bytes]]:
        """Connect, log in and send; the recipients the server refused (``send_message`` raises only
        when it refused them all), also put in ``taken`` as soon as the server took the message. Once it
        has (its answer to DATA), how it answers QUIT does not matter: ``with smtp`` raised on a QUIT
        answered 421 or a connection reset then, and a QUIT never answered ran the delivery past the
        channel's limit; either way the message it had taken was sent again (twice in the inbox)."""
        smtp = self._connect()
        try:
            if self.c.username and self.password is not None:
                smtp.login(self.c.username, self.password)
            refused = smtp.send_message(mail)
            taken.append(refused)
            return refused
        finally:
            with suppress(smtplib.SMTPException, OSError):
                smtp.quit()
            smtp.close()

    def _connect(self) -> smtplib.SMTP:
        c = self.c
        assert c.host and c.port
        context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        if not c.verify_tls:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if c.security == "ssl":
            return smtplib.SMTP_SSL(c.host, c.port, timeout=c.timeout, context=context)
        smtp = smtplib.SMTP(c.host, c.port, timeout=c.timeout)
        if c.security == "starttls":
            try:
                smtp.starttls(context=context)
            except BaseException:
                smtp.close()
                raise
        return smtp


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class AppriseSender:
    """Any Apprise URL (the library behind Prefect's notification blocks); Markdown body."""

    def __init__(self, resolved: Resolved) -> None:
        import apprise

        assert resolved.url
        self.timeout = resolved.channel.timeout
        self.apprise = apprise.Apprise()
        if not self.apprise.add(resolved.url):
            raise DeliveryFailed("not a valid Apprise URL")
        # Apprise's HTTP (requests) follows HTTP_PROXY for loopback too: a receiver on this machine
        # (json://127.0.0.1:8080/, a local relay) was asked through the proxy and never reached.
        bypass_proxy_for_loopback(resolved.url)

    def send(self, message: Message) -> None:
        import apprise

        with apprise.LogCapture(level=logging.WARNING) as captured:
            ok = within(self.timeout, "the Apprise service", lambda: self.apprise.notify(
                body=message.markdown(), title=message.subject, body_format=apprise.NotifyFormat.MARKDOWN))
        if not ok:
            lines = [line for line in str(captured.getvalue()).splitlines() if line.strip()]
            raise DeliveryFailed("Apprise could not deliver" + (f": {lines[-1][:160]}" if lines else ""),
                                 retryable=True)
