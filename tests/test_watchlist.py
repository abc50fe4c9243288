"""Watchlists (pure): the example files parse, bad ones get one clear line; messages and redaction."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from flows.alerts import check_config, load_watchlist
from pipeline.alerts.message import AlertChange, Message, StudyAlert
from pipeline.alerts.redact import Redactor
from pipeline.alerts.watchlist import parse_watchlist
from pipeline.errors import UsageError
from tests.conftest import REPO, real_records

CHANNELS = "channels:\n  feed: {type: feed, path: f.json}\n"


def test_the_example_and_demo_watchlists_are_valid() -> None:
    example = load_watchlist(REPO / "deploy" / "watchlist.example.yaml")
    assert [w.name for w in example.watches] == ["seed-trial", "aml-competitors", "big-industry-trials",
                                                "overdue-results"]
    assert example.watch("overdue-results").fdaaa == ("overdue",)
    aml = example.watch("aml-competitors")
    assert (aml.mode, aml.min_severity, aml.studies.phases, aml.channels) == (
        "digest", "notable", ("PHASE2", "PHASE3"), ("email", "feed"))
    assert example.channels["email"].password_ref is not None and example.channels["email"].port == 587
    demo = load_watchlist(REPO / "flows" / "demo_data" / "watchlist.yaml")
    assert demo.watch("seed-trial").studies.ids == ("NCT07011004",)


@pytest.mark.parametrize(("text", "message"), [
    ("watches: []", "channels: define at least one channel"),
    (CHANNELS + "watches: [{name: w, studies: {ids: [NCT1]}, channels: [feed]}]",
     "watches[w].studies.ids: invalid NCT id 'NCT1' (NCT and 8 digits)"),
    (CHANNELS + "watches: [{name: w, studies: {ids: [NCT07011004]}, channels: [mail]}]",
     "watches[w].channels: unknown channel 'mail'; valid: feed"),
    (CHANNELS + "watches: [{name: w, studies: {ids: [NCT07011004]}, channels: [feed], min_severity: high}]",
     "watches[w].min_severity: unknown value 'high'; valid: info, minor, notable, critical"),
    (CHANNELS + "watches: [{name: w, studies: {ids: [NCT07011004]}, channels: [feed], events: [slipped]}]",
     "watches[w].events: unknown event 'slipped'; valid: status_changed, "),
    (CHANNELS + "watches: [{name: w, studies: {sponsor: [x]}, channels: [feed]}]",
     "watches[w].studies.sponsor: unknown key; valid: ids, conditions, sponsors, phases, status, where"),
    ("channels:\n  mail: {type: email, host: h, from: a@b, to: [c@d], username: u, password: hunter22}\n",
     "channels.mail.password: would put a secret in the watchlist file; name an environment variable"),
    ("channels:\n  s: {type: slack, url: 'https://hooks.slack.com/services/T/B/X'}\n",
     "channels.s.url: unknown key; valid: type, timeout, attempts, url_env, url_secret"),
    ("channels:\n  h: {type: webhook, url: 'https://u:pw@example.org/x'}\n",
     "channels.h.url: must not carry a password; use url_env or url_secret"),
    ("channels:\n  a: {type: feed, path: x}\n  a: {type: feed, path: y}\n", "a: given twice (line 3)"),
    (CHANNELS + "watches: [{name: w, studies: {where: 'x IN (SELECT 1)'}, channels: [feed]}]",
     "watches[w].studies.where: must be a single expression over the columns of studies"),
    (CHANNELS + "watches: [{name: w, studies: {where: 'true) UNION (SELECT 1'}, channels: [feed]}]",
     "watches[w].studies.where: must be a single expression over the columns of studies"),
    ("channels: [", "is not valid YAML"),
    (CHANNELS + "watches: [{name: w, studies: {ids: [NCT07011004]}, channels: [feed], since: 2026-13-45}]",
     "watches[w].since: not a real date: '2026-13-45' (month must be in 1..12); expected YYYY-MM-DD"),
    ("defaults: {min_severity: hi}\n" + CHANNELS, "defaults.min_severity: unknown value 'hi'"),
])
def test_a_bad_watchlist_gets_one_line_naming_the_file_and_the_setting(tmp_path: Path, text: str,
                                                                        message: str) -> None:
    path = tmp_path / "w.yaml"
    path.write_text(text)
    with pytest.raises(UsageError) as caught:
        load_watchlist(path)
    assert str(caught.value).startswith(f"{path}: {message}")
    assert "\n" not in str(caught.value)


def test_a_missing_environment_variable_is_named_before_anything_runs(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "w.yaml"
    path.write_text("channels:\n  s: {type: slack, url_env: TEST_NOT_SET_ANYWHERE}\n"
                    "watches: [{name: w, studies: {ids: [NCT07011004]}, channels: [s]}]\n")
    monkeypatch.delenv("TEST_NOT_SET_ANYWHERE", raising=False)
    with pytest.raises(UsageError, match=r"channels\.s: environment variable TEST_NOT_SET_ANYWHERE is not set"):
        check_config(path)


def test_watches_filter_by_severity_category_and_event() -> None:
    watchlist = parse_watchlist(CHANNELS + """watches:
  - {name: w, studies: {ids: [NCT07011004]}, channels: [feed], min_severity: notable, categories: [dates]}
""")
    watch = watchlist.watch("w")
    assert watch.wants("dates", "date_slipped", "notable")
    assert not watch.wants("dates", "date_precision_refined", "minor")
    assert not watch.wants("status", "status_changed", "critical")


def test_a_large_digest_stays_within_slacks_limits() -> None:
    studies = tuple(StudyAlert(r["protocolSection"]["identificationModule"]["nctId"],
                               r["protocolSection"]["identificationModule"].get("briefTitle"),
                               tuple(AlertChange(f"{i}-{j}", "x", None, "official title", "field_changed",
                                                 "identification", "info", "a" * 400, "b" * 400)
                                     for j in range(12)))
                    for i, r in enumerate(real_records()[:80]))
    message = Message("id", "w", "slack", "digest", "run", datetime.now(UTC), studies)
    blocks = message.slack()["blocks"]
    assert len(blocks) <= 50
    assert all(len(b["text"]["text"]) <= 3000 for b in blocks if b["type"] == "section")
    assert blocks[-1]["elements"][0]["text"] == "… and 33 more studies"


def test_the_redactor_masks_a_secret_url_and_its_telling_parts() -> None:
    redact = Redactor(["https://user:s3cr3t-pass@hooks.example.org/services/T0/B0/XXXXXXXXXXXXXXXXXXXX?k=abcdef12"])
    text = redact("POST /services/T0/B0/XXXXXXXXXXXXXXXXXXXX?k=abcdef12 to hooks.example.org failed; "
                  "pw s3cr3t-pass; token XXXXXXXXXXXXXXXXXXXX")
    assert text == "POST *** to hooks.example.org failed; pw ***; token ***"
