"""Issue 5: change alerts delivered for real (aiosmtpd over STARTTLS with login, HTTP receivers on
127.0.0.1, Apprise, a feed file), once per (watch, change, channel), retried after a failure."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import ipaddress
import json
import logging
import shutil
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows.alerts import send_alerts
from flows.cli import finish_alerts
from flows.demo import pair_versions, seed_day1, seed_record
from flows.derive import rederive_changes
from flows.webhook_receiver import WebhookReceiver
from pipeline import mutate
from pipeline.errors import DeliveryFailed
from pipeline.registry.fake_server import FakeRegistry
from tests.conftest import DATA, fast_sync, nct, real_records
from tests.test_cli import run_cli
from warehouse import Warehouse

pytestmark = pytest.mark.usefixtures("prefect_api")

PAIR, SEED = "NCT05766735", "NCT07011004"
SLIP = "2027-04-15 → 2027-05-31 (+46 days)"
Record = dict[str, Any]


# -- a warehouse after two days: the real 46-day slip, the seed trial's refinement, a termination ------
@dataclass
class TwoDays:
    directory: Path
    terminated: str
    updates: list[Record] = field(default_factory=list)


def _day2_updates(day1: list[Record]) -> list[Record]:
    day2 = max(dt.date.fromisoformat(r["protocolSection"]["statusModule"]["lastUpdatePostDateStruct"]["date"])
               for r in day1) + dt.timedelta(days=1)
    recruiting = next(r for r in day1 if r["protocolSection"]["statusModule"].get("overallStatus") == "RECRUITING"
                      and nct(r) not in (PAIR, SEED))
    updates = [pair_versions(DATA)[1], seed_record(), mutate.set_status(recruiting, "TERMINATED", "Sponsor decision")]
    return [mutate.posted_on(u, day2) for u in updates]


def _day1() -> list[Record]:
    return [*real_records()[:30], pair_versions(DATA)[0], seed_day1(seed_record())]


@pytest.fixture(scope="module")
def two_days(tmp_path_factory: pytest.TempPathFactory, prefect_api: str) -> TwoDays:
    directory = tmp_path_factory.mktemp("alerts") / "warehouse"
    day1 = _day1()
    updates = _day2_updates(day1)
    with FakeRegistry(day1).start() as registry:
        fast_sync(registry, directory)
        registry.put(*updates)
        fast_sync(registry, directory)
    return TwoDays(directory, nct(updates[2]), updates)


@pytest.fixture
def warehouse(two_days: TwoDays, tmp_path: Path) -> Path:
    """A private copy: each test has its own delivery ledger."""
    target = tmp_path / "warehouse"
    shutil.copytree(two_days.directory, target)
    return target


def watchlist(path: Path, channels: dict[str, Any], watches: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump({"channels": channels, "watches": watches}, sort_keys=False))
    return path


def rows(directory: Path, sql: str) -> list[tuple[Any, ...]]:
    with Warehouse(directory).connect() as con:
        return con.execute(sql).fetchall()


# -- receivers -------------------------------------------------------------------------------------
@pytest.fixture
def hook() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as receiver:
        yield receiver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


@dataclass
class SmtpServer:
    port: int
    ca_file: Path
    password: str
    logins: list[tuple[str, str]] = field(default_factory=list)
    mails: list[EmailMessage] = field(default_factory=list)


@pytest.fixture
def smtp(tmp_path: Path) -> Iterator[SmtpServer]:
    """A real SMTP server (aiosmtpd) on 127.0.0.1 that requires STARTTLS and a login."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult

    cert_file, key_file = _self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    server = SmtpServer(_free_port(), cert_file, "smtp-pass-7Hq2xZ")

    class Handler:
        async def handle_DATA(self, smtp_server: Any, session: Any, envelope: Any) -> str:
            server.mails.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
            return "250 OK"

    def authenticator(smtp_server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        login, password = data.login.decode(), data.password.decode()
        server.logins.append((login, password))
        return AuthResult(success=(login, password) == ("alerts", server.password))

    controller = Controller(Handler(), hostname="127.0.0.1", port=server.port, tls_context=context,
                            require_starttls=True, authenticator=authenticator, auth_required=True)
    controller.start()
    try:
        yield server
    finally:
        controller.stop()


def email_channel(server: SmtpServer) -> dict[str, Any]:
    return {"type": "email", "host": "127.0.0.1", "port": server.port, "security": "starttls",
            "ca_file": str(server.ca_file), "username": "alerts", "password_env": "TEST_SMTP_PASSWORD",
            "from": "trialsync <alerts@example.org>", "to": ["team@example.org"]}


# -- acceptance ------------------------------------------------------------------------------------
@pytest.mark.prefect  # a Prefect Secret block holds the Slack URL
def test_email_webhook_slack_apprise_and_feed_receive_the_slip_with_old_and_new_values(
        warehouse: Path, tmp_path: Path, smtp: SmtpServer, hook: WebhookReceiver,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.blocks.system import Secret

    Secret(value=f"{hook.url}/slack/T000-B000-secretslackpath").save("test-slack-url", overwrite=True)
    monkeypatch.setenv("TEST_SMTP_PASSWORD", smtp.password)
    monkeypatch.setenv("TEST_APPRISE_URL", f"json://{hook.url.split('//')[1]}/apprise")
    config = watchlist(tmp_path / "watch.yaml", {
        "mail": email_channel(smtp),
        "hook": {"type": "webhook", "url": f"{hook.url}/hook"},
        "slack": {"type": "slack", "url_secret": "test-slack-url"},
        "apprise": {"type": "apprise", "url_env": "TEST_APPRISE_URL"},
        "feed": {"type": "feed", "path": "out/feed.xml", "format": "atom"},
    }, [{"name": "pair", "studies": {"ids": [PAIR]}, "channels": ["mail", "hook", "slack", "apprise", "feed"]}])

    summary = send_alerts(config=str(config), warehouse=str(warehouse))

    assert (summary["messages"], summary["messages_sent"], summary["deliveries_sent"]) == (5, 5, 10)
    assert smtp.logins == [("alerts", smtp.password)]
    [mail] = smtp.mails
    assert mail["Subject"] == f"[trialsync] pair: {PAIR} completion date: {SLIP} (+1 more)"
    assert mail["To"] == "team@example.org"
    body = mail.get_content()
    title = "Treating Early Type 2 Diabetes by Reducing Postprandial Glucose Excursions"
    assert f"{PAIR}: {title}" in body
    assert f"[notable] completion date: {SLIP}  (date_slipped)" in body
    assert f"[notable] primary completion date: {SLIP}  (date_slipped)" in body
    assert f"https://clinicaltrials.gov/study/{PAIR}?tab=history" in body

    by_path = {r.path: r for r in hook.received}
    payload = by_path["/hook"].body
    assert by_path["/hook"].headers["Idempotency-Key"] == payload["message_id"]
    [study] = payload["studies"]
    assert (study["nct_id"], study["url"], payload["watch"]) == (PAIR, f"https://clinicaltrials.gov/study/{PAIR}",
                                                                 "pair")
    assert study["title"].startswith(title)
    assert sorted((c["field"], c["event"], c["old_value"], c["new_value"], c["shift_days"], c["severity"])
                  for c in study["changes"]) == [
        ("completion date", "date_slipped", "2027-04-15", "2027-05-31", 46, "notable"),
        ("primary completion date", "date_slipped", "2027-04-15", "2027-05-31", 46, "notable")]
    slack = by_path["/slack/T000-B000-secretslackpath"].body
    assert slack["text"] == mail["Subject"]
    assert f"completion date: {SLIP}" in json.dumps(slack["blocks"], ensure_ascii=False)
    assert by_path["/apprise"].body["title"] == mail["Subject"]
    assert f"**notable** primary completion date: {SLIP}" in by_path["/apprise"].body["message"]

    import xml.etree.ElementTree as ET
    atom = "{http://www.w3.org/2005/Atom}"
    [entry] = ET.parse(tmp_path / "out" / "feed.xml").getroot().findall(f"{atom}entry")
    assert entry.findtext(f"{atom}title") == mail["Subject"]
    assert f"completion date: {SLIP}" in (entry.findtext(f"{atom}content") or "")


def test_running_the_same_sync_and_alerts_twice_sends_each_alert_exactly_once(
        tmp_path: Path, hook: WebhookReceiver) -> None:
    directory = tmp_path / "warehouse"
    config = watchlist(tmp_path / "watch.yaml", {"hook": {"type": "webhook", "url": f"{hook.url}/hook"}},
                       [{"name": "all", "studies": {"where": "true"}, "channels": ["hook"]}])
    day1 = _day1()
    with FakeRegistry(day1).start() as registry:
        fast_sync(registry, directory, alerts=str(config))
        assert hook.received == []  # the baseline is not news
        registry.put(*_day2_updates(day1))
        first = fast_sync(registry, directory, alerts=str(config))["alerts"]
        again = fast_sync(registry, directory, alerts=str(config))["alerts"]
    rederive_changes(warehouse=str(directory))
    after_rederive = send_alerts(config=str(config), warehouse=str(directory))

    assert (first["messages_sent"], first["deliveries_sent"]) == (3, 5)
    assert (again["messages"], again["already_sent"]) == (0, 5)
    assert (after_rederive["messages"], after_rederive["already_sent"]) == (0, 5)
    delivered = [(s["nct_id"], c["change_id"]) for r in hook.received for s in r.body["studies"]
                 for c in s["changes"]]
    assert len(delivered) == len(set(delivered)) == 5
    assert {n for n, _ in delivered} == {PAIR, SEED, nct(_day2_updates(day1)[2])}
    assert rows(directory, "SELECT status, count(*) FROM alert_deliveries GROUP BY ALL") == [("sent", 5)]


def test_a_receiver_that_fails_with_500_gets_the_alert_on_the_next_run(
        warehouse: Path, tmp_path: Path, hook: WebhookReceiver) -> None:
    config = watchlist(tmp_path / "watch.yaml",
                       {"hook": {"type": "webhook", "url": f"{hook.url}/hook", "attempts": 2}},
                       [{"name": "seed", "studies": {"ids": [SEED, PAIR]}, "channels": ["hook"]}])
    hook.fail_status = 500
    failed = send_alerts(config=str(config), warehouse=str(warehouse))
    assert (failed["messages_failed"], failed["deliveries_failed"], hook.requests) == (2, 3, 2)  # 2 tries, then
    assert failed["failures"] == [{"watch": "seed", "channel": "hook", "changes": 3,  # the rest waits
                                   "error": "HTTP 500: receiver unavailable", "rejected": False}]
    with pytest.raises(DeliveryFailed) as reported:  # what the CLI prints, exit code 1
        finish_alerts(failed)
    assert str(reported.value) == ("alerts: 3 deliveries failed (channel hook: HTTP 500: receiver unavailable); "
                                   "they are retried on the next run")
    assert rows(warehouse, "SELECT status, attempt, error FROM alert_deliveries ORDER BY nct_id, change_id") == [
        ("failed", 1, "HTTP 500: receiver unavailable"), ("failed", 1, "HTTP 500: receiver unavailable"),
        ("failed", 1, "not attempted: channel hook failed earlier in this run (HTTP 500: receiver unavailable)")]

    hook.fail_status = None
    retried = send_alerts(config=str(config), warehouse=str(warehouse))
    assert (retried["messages_sent"], retried["retried"], retried["failures"]) == (2, 3, [])
    assert sorted(r.body["studies"][0]["nct_id"] for r in hook.received) == [PAIR, SEED]
    assert send_alerts(config=str(config), warehouse=str(warehouse))["messages"] == 0
    assert rows(warehouse, "SELECT status, attempt, count(*) FROM alert_deliveries GROUP BY ALL ORDER BY ALL") == [
        ("failed", 1, 3), ("sent", 2, 3)]


def test_a_notable_watch_skips_minor_events_and_fires_for_the_46_day_slip(
        warehouse: Path, tmp_path: Path, hook: WebhookReceiver) -> None:
    config = watchlist(tmp_path / "watch.yaml", {"hook": {"type": "webhook", "url": f"{hook.url}/hook"}}, [
        {"name": "notable", "studies": {"ids": [SEED, PAIR]}, "min_severity": "notable", "channels": ["hook"]}])
    assert rows(warehouse, f"SELECT event, severity FROM changes WHERE nct_id = '{SEED}' AND severity <> 'info'") == [
        ("date_precision_refined", "minor")]
    summary = send_alerts(config=str(config), warehouse=str(warehouse))
    assert summary["matched"] == 2
    [received] = hook.received
    [study] = received.body["studies"]
    assert study["nct_id"] == PAIR
    assert [(c["event"], c["shift_days"]) for c in study["changes"]] == [("date_slipped", 46)] * 2


def test_digest_mode_sends_one_message_per_watch_per_run_with_all_its_changes(
        warehouse: Path, two_days: TwoDays, tmp_path: Path, hook: WebhookReceiver) -> None:
    config = watchlist(tmp_path / "watch.yaml", {"hook": {"type": "webhook", "url": f"{hook.url}/hook"}}, [
        {"name": "digest", "studies": {"where": "true"}, "mode": "digest", "channels": ["hook"]},
        {"name": "sponsors", "studies": {"sponsors": ["memorial sloan"]}, "mode": "digest", "channels": ["hook"]}])
    summary = send_alerts(config=str(config), warehouse=str(warehouse))
    assert summary["messages"] == 2
    by_watch = {r.body["watch"]: r.body for r in hook.received}
    digest = by_watch["digest"]
    assert digest["kind"] == "digest"
    assert digest["subject"] == "[trialsync] digest digest: 5 changes in 3 studies"
    assert {s["nct_id"]: sorted(c["event"] for c in s["changes"]) for s in digest["studies"]} == {
        PAIR: ["date_slipped", "date_slipped"], SEED: ["date_precision_refined"],
        two_days.terminated: ["status_changed", "why_stopped_set"]}
    assert [s["nct_id"] for s in by_watch["sponsors"]["studies"]] == [SEED]  # MSKCC's seed trial


@pytest.mark.prefect
def test_no_secret_value_appears_in_any_log_line_artifact_run_record_or_ledger_row(
        warehouse: Path, tmp_path: Path, smtp: SmtpServer, hook: WebhookReceiver, prefect_api: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.logging.handlers import APILogWorker

    token = "hooktoken-9f8e7d6c5b4a"
    secrets = {"TEST_SMTP_PASSWORD": smtp.password, "TEST_HOOK_URL": f"{hook.url}/hooks/{token}",
               "TEST_HOOK_AUTH": "Bearer auth-secret-1a2b3c4d", "TEST_APPRISE_URL": f"json://user:apprise-pw-55aa@"
                                                                                   f"{hook.url.split('//')[1]}/app"}
    for key, value in secrets.items():
        monkeypatch.setenv(key, value)
    dead = _free_port()
    config = watchlist(tmp_path / "watch.yaml", {
        "mail": email_channel(smtp),
        "hook": {"type": "webhook", "url_env": "TEST_HOOK_URL", "headers_env": {"Authorization": "TEST_HOOK_AUTH"}},
        "apprise": {"type": "apprise", "url_env": "TEST_APPRISE_URL"},
        "dead": {"type": "apprise", "url_env": "TEST_DEAD_URL", "attempts": 1},
    }, [{"name": "pair", "studies": {"ids": [PAIR, SEED]}, "channels": ["mail", "hook", "apprise", "dead"]}])
    monkeypatch.setenv("TEST_DEAD_URL", f"json://127.0.0.1:{dead}/never/{token}")

    lines = _capture_all_logs()
    try:
        state = send_alerts(config=str(config), warehouse=str(warehouse), return_state=True)
        APILogWorker.drain_all(timeout=5)
    finally:
        lines.detach()
    summary = state.result()
    assert (summary["messages_sent"], summary["messages_failed"]) == (6, 2)
    # the secrets did work (the apprise channel posts to the same receiver, in either order)
    webhook = [r for r in hook.received if r.path.startswith("/hooks/")]
    assert webhook and {r.headers["Authorization"] for r in webhook} == {secrets["TEST_HOOK_AUTH"]}

    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
        runs = [client.read_flow_run(flow_run_id), *client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))]
    assert {a.key for a in artifacts} == {"alerts-run", "alerts-changes"}
    markdown = next(str(a.data) for a in artifacts if a.key == "alerts-run")
    assert "| pair | dead | 3 |" in markdown and f"completion date: {SLIP}" in markdown
    table = next(a.data for a in artifacts if a.key == "alerts-changes")
    ledger = [*rows(warehouse, "SELECT * FROM alert_deliveries"), *rows(warehouse, "SELECT * FROM alert_messages")]
    texts = [*lines.lines, *(log.message for log in logs), *(json.dumps(a.data) for a in artifacts),
             json.dumps(table), *(str(row) for row in ledger), *(run.model_dump_json() for run in runs)]
    assert len(lines.lines) > 20 and logs and len(runs) == 8  # flow, plan, outbox, 4 channels, record
    for value in [*secrets.values(), token, "apprise-pw-55aa", "auth-secret-1a2b3c4d"]:
        leaks = [t for t in texts if value in t]
        assert leaks == [], f"secret {value!r} leaked: {leaks[:2]}"


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.attached: list[tuple[logging.Logger, int]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def detach(self) -> None:
        for logger, level in self.attached:
            logger.removeHandler(self)
            logger.setLevel(level)


def _capture_all_logs() -> _Lines:
    """Every logger at DEBUG (urllib3, apprise, prefect, ours) into one list of formatted lines."""
    handler = _Lines()
    from prefect.logging.configuration import setup_logging

    setup_logging()  # Prefect configures its loggers once, on first use: before this test attaches, not after
    for name in ("trialsync", "prefect.flow_runs", "prefect.task_runs", "urllib3", "apprise"):
        logging.getLogger(name)  # those a run logs to, so that they exist when the handler is attached
    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in list(logging.Logger.manager.loggerDict))]
    for logger in loggers:
        handler.attached.append((logger, logger.level))
        logger.setLevel(logging.DEBUG)
        if logger is loggers[0] or not logger.propagate:
            logger.addHandler(handler)
    return handler


def test_the_alerts_cli_lists_tests_and_runs_with_one_line_errors(
        warehouse: Path, tmp_path: Path, hook: WebhookReceiver, cli: Any) -> None:
    config = watchlist(tmp_path / "watch.yaml", {
        "hook": {"type": "webhook", "url": f"{hook.url}/hook"},
        "feed": {"type": "feed", "path": "feed.json"}}, [
        {"name": "seed", "studies": {"ids": [SEED]}, "channels": ["hook", "feed"]},
        {"name": "phase1", "studies": {"phases": ["PHASE1"], "where": "enrollment_count < 100"},
         "events": ["results_posted"], "channels": ["feed"]}])
    code, out, _ = cli("alerts", "test", "--config", str(config))
    assert (code, out.split()) == (0, ["feed:", "sent", "hook:", "sent"])
    assert hook.received[0].body["kind"] == "test" and hook.received[0].body["studies"][0]["nct_id"] == SEED
    code, out, err = cli("alerts", "run", "--config", str(config), "--warehouse", str(warehouse))
    assert code == 0, err
    assert "1 matching changes, 2 messages, 2 delivered, 0 failed" in out
    feed = json.loads((tmp_path / "feed.json").read_text())
    assert [i["title"] for i in feed["items"]] == [
        f"[trialsync] seed: {SEED} completion date: 2028-05 → 2028-05-31", "[trialsync] [test] test: NCT07011004 "
                                                                          "completion date: 2028-05 → 2028-05-31"]
    code, out, _ = cli("alerts", "list", "--config", str(config), "--warehouse", str(warehouse), "--format", "json")
    with Warehouse(warehouse).connect() as con:
        phase1 = con.execute("SELECT count(*) FROM studies WHERE list_contains(phases, 'PHASE1') "
                             "AND enrollment_count < 100").fetchall()[0][0]
    assert [(w["watch"], w["studies"], w["sent"], w["awaiting_retry"]) for w in json.loads(out)] == [
        ("seed", 1, 2, 0), ("phase1", phase1, 0, 0)]
    config.write_text(config.read_text().replace("enrollment_count < 100", "enrolment < 100"))
    code, _, err = cli("alerts", "run", "--config", str(config), "--warehouse", str(warehouse))
    assert code == 2
    assert err.startswith(f"trialsync: error: {config}: watches[phase1].studies.where: Binder Error: "
                          'Referenced column "enrolment" not found')
    assert len(err.strip().splitlines()) == 1


def test_sync_with_a_bad_watchlist_fails_before_prefect_starts(tmp_path: Path) -> None:
    config = watchlist(tmp_path / "watch.yaml", {"hook": {"type": "webhook", "url_env": "TEST_UNSET_HOOK_URL"}},
                       [{"name": "w", "studies": {"ids": [SEED]}, "channels": ["hook"]}])
    result = run_cli("sync", "--warehouse", str(tmp_path / "w"), "--alerts", str(config),
                     env={"TEST_UNSET_HOOK_URL": ""})
    assert (result.returncode, result.stderr) == (
        2, f"trialsync: error: {config}: channels.hook: environment variable TEST_UNSET_HOOK_URL is not set\n")
