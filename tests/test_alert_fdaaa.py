"""Issue 16: a watch follows FDAAA compliance (``fdaaa: [overdue]``): a watched study that becomes
overdue (a change of time, not of the record) is alerted once, through the real channels (aiosmtpd
over STARTTLS, a webhook receiver on 127.0.0.1) and the outbox. Trials are copies of real records with
their dates and flags edited (tests/fdaaa_support.py), stored in a real warehouse; the alerts runs are
real ``send_alerts`` flows, one of them a ``trialsync alerts run`` subprocess killed at the commit point."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

import flows.alerts
from flows.alerts import load_watchlist, send_alerts
from flows.webhook_receiver import WebhookReceiver
from pipeline.alerts.compliance import compliance_window
from pipeline.errors import UsageError
from tests.fdaaa_support import judge, store, trial
from tests.test_alerts import SmtpServer, email_channel, hook, rows, smtp  # noqa: F401 - fixtures
from tests.test_cli import TRIALSYNC
from warehouse import Warehouse

pytestmark = pytest.mark.usefixtures("prefect_api")

ACME, OTHER, LONG_OVERDUE, REPORTED = "NCT90000001", "NCT90000002", "NCT90000003", "NCT90000004"
TODAY = datetime.now(UTC).date()
EARLIER = TODAY - timedelta(days=10)  # the first alerts run's day


def _completion_due_on(due_from: date) -> str:
    """A primary completion date whose results are due so that the trial is overdue from ``due_from``
    (one year, then the 30-day grace: FDAAA_RULES §4)."""
    p = due_from - timedelta(days=31)
    return (p.replace(year=p.year - 1, day=min(p.day, 28)) if (p.month, p.day) == (2, 29)
            else p.replace(year=p.year - 1)).isoformat()


@pytest.fixture
def trials(tmp_path: Path) -> Path:
    """Four ACTs: two become overdue 3 days ago (sponsors Acme and Other), one has been overdue for
    years, one reported on time."""
    soon = _completion_due_on(TODAY - timedelta(days=3))
    directory = tmp_path / "warehouse"
    store(directory, [trial(ACME, primary_completion=soon, sponsor="Acme Pharma"),
                      trial(OTHER, primary_completion=soon, sponsor="Other Inc"),
                      trial(LONG_OVERDUE, primary_completion="2020-06-30", sponsor="Acme Pharma"),
                      trial(REPORTED, primary_completion="2020-06-30", results="2021-03-01", sponsor="Acme Pharma")])
    before, now = judge(Warehouse(directory), EARLIER), judge(Warehouse(directory), TODAY)
    assert {n: r["status"] for n, r in before.items()} == {ACME: "ongoing", OTHER: "ongoing",
                                                            LONG_OVERDUE: "overdue", REPORTED: "reported"}
    assert {n: r["status"] for n, r in now.items()} == {ACME: "overdue", OTHER: "overdue",
                                                         LONG_OVERDUE: "overdue", REPORTED: "reported"}
    return directory


def _config(path: Path, receiver: WebhookReceiver, mail: SmtpServer) -> Path:
    path.write_text(yaml.safe_dump({
        "channels": {"hook": {"type": "webhook", "url": f"{receiver.url}/hook", "attempts": 1},
                     "mail": {**email_channel(mail), "attempts": 1}},
        "watches": [
            # compliance only, by sponsor: Acme's trials (not Other's)
            {"name": "acme-overdue", "studies": {"sponsors": ["acme"]}, "fdaaa": ["overdue"],
             "events": ["fdaaa_overdue"], "channels": ["hook", "mail"]},
            # compliance and changes, by id and a where: predicate: the long overdue and the reported one
            {"name": "old-ones", "studies": {"ids": [LONG_OVERDUE, REPORTED, OTHER],
                                             "where": "lead_sponsor LIKE 'Acme%'"},
             "fdaaa": ["overdue"], "channels": ["hook"]},
            # Acme's changes, without fdaaa: never a compliance alert
            {"name": "acme-changes", "studies": {"sponsors": ["acme"]}, "channels": ["hook"]},
        ]}, sort_keys=False))
    return path


def _run_on(day: date, config: Path, directory: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """An alerts run whose clock says ``day`` (noon UTC)."""
    with monkeypatch.context() as patch:
        noon = datetime.combine(day, datetime.min.time(), UTC) + timedelta(hours=12)
        patch.setattr(flows.alerts, "_now", lambda: noon)
        return send_alerts(config=str(config), warehouse=str(directory))


def _changes(receiver: WebhookReceiver) -> list[tuple[str, dict[str, Any]]]:
    return [(r.body["watch"], c) for r in receiver.received for s in r.body["studies"] for c in s["changes"]]


def test_a_watched_trial_that_becomes_overdue_without_a_new_version_is_alerted_once(
        trials: Path, tmp_path: Path, hook: WebhookReceiver, smtp: SmtpServer,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_SMTP_PASSWORD", smtp.password)
    config = _config(tmp_path / "watch.yaml", hook, smtp)
    versions = rows(trials, "SELECT count(*) FROM study_versions")

    first = _run_on(EARLIER, config, trials, monkeypatch)
    assert (first["messages"], hook.received, smtp.mails) == (0, [], [])  # none overdue yet; the old one is old

    second = _run_on(TODAY, config, trials, monkeypatch)
    assert rows(trials, "SELECT count(*) FROM study_versions") == versions  # no new version: a time event
    assert (second["messages"], second["messages_sent"], second["messages_failed"]) == (2, 2, 0)
    [(watch, change)] = _changes(hook)
    row = judge(Warehouse(trials), TODAY)[ACME]
    due, days = row["due_date"], row["days_late"]
    assert days == (TODAY - due).days > 30
    assert watch == "acme-overdue"
    assert change == {
        "change_id": f"fdaaa-overdue:{ACME}:{row['due_from'].isoformat()}", "event": "fdaaa_overdue",
        "category": "compliance", "severity": "notable", "field": f"FDAAA results due {due.isoformat()}",
        "old_value": "ongoing", "new_value": "overdue", "shift_days": None, "pct_change": None,
        "registry_updated": None, "from_version": None, "to_version": 1,
        "detail": f"ACT of Acme Pharma: results were due {due.isoformat()} (completion "
                  f"{row['completion_date_used'].isoformat()}); no results submitted; {days} days overdue on "
                  f"{TODAY.isoformat()}",
        "fdaaa": {"act_kind": "ACT", "as_of": TODAY.isoformat(), "days_overdue": days, "due_date": due.isoformat(),
                  "lead_sponsor": "Acme Pharma"}}
    [received] = hook.received
    study = received.body["studies"][0]
    assert (study["nct_id"], study["url"]) == (ACME, f"https://clinicaltrials.gov/study/{ACME}")
    assert study["title"] and study["title"] in received.body["text"]
    [mail] = smtp.mails
    assert rows(trials, "SELECT channel, message_id FROM alert_messages ORDER BY 1") == [
        ("hook", received.body["message_id"]), ("mail", mail["Message-ID"][1:-len("@trialsync>")])]
    assert ACME in mail["Subject"] and f"FDAAA results due {due.isoformat()}" in mail["Subject"]
    body = mail.get_body(("plain",)).get_content()
    for text in ("Acme Pharma", due.isoformat(), f"{days} days overdue", f"https://clinicaltrials.gov/study/{ACME}"):
        assert text in body

    for day in (TODAY, TODAY + timedelta(days=40)):  # still overdue: never again (the same day, or weeks on)
        again = _run_on(day, config, trials, monkeypatch)
        assert (again["messages"], len(hook.received), len(smtp.mails)) == (0, 1, 1)


def test_an_overdue_alert_cut_off_after_the_outbox_commit_goes_again_once_under_its_id(
        trials: Path, tmp_path: Path, hook: WebhookReceiver, smtp: SmtpServer,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch, prefect_api: str) -> None:
    monkeypatch.setenv("TEST_SMTP_PASSWORD", smtp.password)
    config = _config(tmp_path / "watch.yaml", hook, smtp)
    assert _run_on(EARLIER, config, trials, monkeypatch)["messages"] == 0

    # Today's run, a real process killed (SIGKILL) at the commit point of its outbox, before any delivery.
    killed = subprocess.run([str(TRIALSYNC), "alerts", "run", "--config", str(config), "--warehouse", str(trials)],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PREFECT_API_URL": prefect_api,
                                 "TRIALSYNC_CRASH_AT": "manifest-published"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (hook.received, smtp.mails) == ([], [])
    outbox = rows(trials, "SELECT message_id, watch, channel, change_ids, payload FROM alert_messages ORDER BY channel")
    assert [(w, ch, ids) for _, w, ch, ids, _ in outbox] == [
        ("acme-overdue", channel, [f"fdaaa-overdue:{ACME}:{judge(Warehouse(trials), TODAY)[ACME]['due_from']}"])
        for channel in ("hook", "mail")]

    later = _run_on(TODAY + timedelta(days=1), config, trials, monkeypatch)
    assert (later["resent"], later["messages"], later["messages_sent"]) == (2, 2, 2)
    [received] = hook.received
    stored = {ch: (m, json.loads(p)) for m, _, ch, _, p in outbox}
    assert received.body == stored["hook"][1]  # the message as the killed run wrote it, unchanged
    assert received.headers["Idempotency-Key"] == stored["hook"][0]
    [mail] = smtp.mails
    assert mail["Message-ID"] == f"<{stored['mail'][0]}@trialsync>"

    assert _run_on(TODAY + timedelta(days=2), config, trials, monkeypatch)["messages"] == 0
    assert (len(hook.received), len(smtp.mails)) == (1, 1)


@pytest.mark.parametrize(("watch", "message"), [
    ({"fdaaa": ["late"]}, "watches[w].fdaaa: unknown value 'late'; valid: overdue"),
    ({"fdaaa": "overdue", "events": ["status_changed"]},
     "watches[w].fdaaa: this watch's categories, events or min_severity leave out its compliance alerts"),
    ({"fdaaa": ["overdue"], "min_severity": "critical"},
     "watches[w].fdaaa: this watch's categories, events or min_severity leave out its compliance alerts"),
    ({"fdaaa": ["overdue"], "categories": ["status"]},
     "watches[w].fdaaa: this watch's categories, events or min_severity leave out its compliance alerts"),
])
def test_a_bad_fdaaa_watch_gets_one_line_naming_the_file_and_the_key(tmp_path: Path, watch: dict[str, Any],
                                                                     message: str) -> None:
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump({"channels": {"feed": {"type": "feed", "path": "f.json"}}, "watches": [
        {"name": "w", "studies": {"ids": [ACME]}, "channels": ["feed"], **watch}]}))
    with pytest.raises(UsageError) as caught:
        load_watchlist(path)
    assert str(caught.value).startswith(f"{path}: {message}") and "\n" not in str(caught.value)


def test_a_compliance_watch_may_name_its_alerts_in_its_filters(tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump({"channels": {"feed": {"type": "feed", "path": "f.json"}}, "watches": [
        {"name": "a", "studies": {"ids": [ACME]}, "channels": ["feed"], "fdaaa": ["overdue", "overdue"],
         "categories": ["compliance", "status"]},
        {"name": "b", "studies": {"ids": [ACME]}, "channels": ["feed"], "fdaaa": ["overdue"],
         "events": ["fdaaa_overdue"], "min_severity": "notable"}]}))
    watchlist = load_watchlist(path)
    assert [w.fdaaa for w in watchlist.watches] == [("overdue",), ("overdue",)]
    assert not watchlist.watch("b").wants("status", "status_changed", "critical")
    from warehouse.alerts import watch_overview
    assert [r["changes"] for r in watch_overview(None, watchlist)] == [
        "compliance, status; fdaaa: overdue", "fdaaa_overdue; fdaaa: overdue"]  # trialsync alerts list


def test_the_compliance_window_starts_at_the_last_run_or_the_watch_window() -> None:
    def at(day: str) -> datetime:
        return datetime.fromisoformat(f"{day}T08:00:00+00:00")

    assert compliance_window(at("2026-01-01"), None, at("2026-01-08")) == (date(2026, 1, 1), date(2026, 1, 8))
    assert compliance_window(at("2026-01-01"), at("2026-01-05"), at("2026-01-08")) == (date(2026, 1, 5),
                                                                                       date(2026, 1, 8))
    # since: a date after the last run: the window's start; never after the run's own day
    assert compliance_window(at("2026-01-07"), at("2026-01-05"), at("2026-01-08")) == (date(2026, 1, 7),
                                                                                       date(2026, 1, 8))
    assert compliance_window(at("2026-02-01"), None, at("2026-01-08")) == (date(2026, 1, 8), date(2026, 1, 8))


def test_a_new_version_of_a_trial_already_alerted_overdue_does_not_alert_it_again(
        trials: Path, tmp_path: Path, hook: WebhookReceiver, smtp: SmtpServer,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.versioning import RunContext, plan_batch

    monkeypatch.setenv("TEST_SMTP_PASSWORD", smtp.password)
    config = _config(tmp_path / "watch.yaml", hook, smtp)
    _run_on(EARLIER, config, trials, monkeypatch)
    assert _run_on(TODAY, config, trials, monkeypatch)["messages"] == 2
    first_due = judge(Warehouse(trials), TODAY)[ACME]["due_from"]

    # Acme corrects its completion date by five days (a new due day) and still reports nothing.
    moved = _completion_due_on(TODAY - timedelta(days=8))
    ctx = RunContext("run-9", datetime.now(UTC), "api")
    with Warehouse(trials).writer(ctx.run_id) as run:
        run.append_plan(plan_batch([trial(ACME, primary_completion=moved, sponsor="Acme Pharma",
                                          updated=(TODAY - timedelta(days=1)).isoformat())], run.heads(), ctx), ctx)
        run.commit()
    now = judge(Warehouse(trials), TODAY + timedelta(days=1))[ACME]
    assert (now["version"], now["status"]) == (2, "overdue") and now["due_from"] != first_due

    again = _run_on(TODAY + timedelta(days=1), config, trials, monkeypatch)
    overdue = [c["change_id"] for _, c in _changes(hook) if c["event"] == "fdaaa_overdue"]
    assert overdue == [f"fdaaa-overdue:{ACME}:{first_due.isoformat()}"]  # the first alert only
    assert (again["messages"], len(hook.received), len(smtp.mails)) == (0, 1, 1)


@pytest.mark.parametrize("first_run", [TODAY - timedelta(days=1), TODAY], ids=["the-day-before", "the-same-day"])
def test_a_new_version_that_makes_a_trial_overdue_at_once_is_alerted_even_when_dated_before_the_last_run(
        first_run: date, tmp_path: Path, hook: WebhookReceiver, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """The registry dates the new version (its lastUpdatePostDate) before the last alerts run, but the
    warehouse stored it after: judged as known at that run, the trial was not overdue then."""
    from pipeline.versioning import RunContext, plan_batch

    moving, fresh = "NCT90000005", "NCT90000006"
    directory = tmp_path / "warehouse"
    store(directory, [trial(moving, primary_completion=(TODAY + timedelta(days=100)).isoformat(), sponsor="Acme")])
    config = tmp_path / "watch.yaml"
    config.write_text(yaml.safe_dump({
        "channels": {"hook": {"type": "webhook", "url": f"{hook.url}/hook", "attempts": 1}},
        "watches": [{"name": "w", "studies": {"ids": [moving, fresh]}, "fdaaa": ["overdue"], "channels": ["hook"]}]}))

    def run_at(moment: datetime) -> dict[str, Any]:
        with monkeypatch.context() as patch:
            patch.setattr(flows.alerts, "_now", lambda: moment)
            return send_alerts(config=str(config), warehouse=str(directory))

    first = datetime.combine(first_run, datetime.min.time(), UTC) + timedelta(hours=9)
    assert run_at(first)["messages"] == 0

    # An hour later a sync stores the sponsor's correction: completion moved back, results due 60 days
    # ago, the record dated five days ago; and a study new to the warehouse, overdue for years.
    ctx = RunContext("run-2", first + timedelta(hours=1), "api")
    with Warehouse(directory).writer(ctx.run_id) as run:
        batch = [trial(moving, primary_completion=_completion_due_on(TODAY - timedelta(days=60)), sponsor="Acme",
                       updated=(TODAY - timedelta(days=5)).isoformat()),
                 trial(fresh, primary_completion="2020-06-30", sponsor="Acme")]
        run.append_plan(plan_batch(batch, run.heads(), ctx), ctx)
        run.commit()
    days = judge(Warehouse(directory), first_run)
    assert (days[moving]["version"], days[moving]["status"], days[fresh]["status"]) == (2, "overdue", "overdue")

    second = run_at(datetime.combine(TODAY, datetime.min.time(), UTC) + timedelta(hours=12))
    assert second["messages"] == 1
    [(watch, change)] = _changes(hook)
    assert (watch, change["event"], change["old_value"], change["new_value"], change["to_version"]) == (
        "w", "fdaaa_overdue", "ongoing", "overdue", 2)
    assert change["change_id"] == f"fdaaa-overdue:{moving}:{judge(Warehouse(directory), TODAY)[moving]['due_from']}"
    assert run_at(datetime.combine(TODAY, datetime.min.time(), UTC) + timedelta(hours=13))["messages"] == 0


def test_the_compliance_window_takes_utc_days_whatever_zone_its_times_come_in() -> None:
    """DuckDB hands TIMESTAMPTZ back in the machine's zone: 12:00 UTC on Jan 5 is Jan 6 in Kiritimati
    (UTC+14). The window's days are UTC's, as the run's own day is."""
    from datetime import timedelta, timezone

    kiritimati = timezone(timedelta(hours=14))
    last_run = datetime.fromisoformat("2026-01-05T12:00:00+00:00").astimezone(kiritimati)
    now = datetime.fromisoformat("2026-01-06T05:00:00+00:00").astimezone(kiritimati)
    assert (last_run.date(), now.date()) == (date(2026, 1, 6), date(2026, 1, 6))  # local days
    assert compliance_window(last_run, last_run, now) == (date(2026, 1, 5), date(2026, 1, 6))
