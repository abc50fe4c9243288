"""Watchlists (pure): the example files parse, bad ones get one clear line; messages and redaction."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from hypothesis import assume, given
from hypothesis import strategies as st

from flows.alerts import check_config, load_watchlist
from pipeline.alerts.message import AlertChange, Message, StudyAlert
from pipeline.alerts.redact import Redactor
from pipeline.alerts.watchlist import parse_watchlist
from pipeline.errors import UsageError
from pipeline.scope import canonical_id
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
    (CHANNELS + "watches: [{name: w, studies: {ids: [NCT0]}, channels: [feed]}]",
     "watches[w].studies.ids: invalid NCT id 'NCT0' (NCT followed by up to 8 digits, not all zeros)"),
    (CHANNELS + "watches: [{name: w, studies: {ids: [NCT123456789]}, channels: [feed]}]",
     "watches[w].studies.ids: invalid NCT id 'NCT123456789'"),
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
     "channels.h.url: must not carry credentials (user:password@); use url_env or url_secret"),
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


@given(st.integers(1, 99_999_999), st.sampled_from(["NCT", "nct", "Nct"]), st.integers(0, 2))
def test_a_watch_takes_ids_in_every_form_the_command_line_takes(number: int, prefix: str, pad: int) -> None:
    """`sync --ids nct7011004` works, so a watch of the same text must follow the same study (it was
    refused as 'NCT and 8 digits'); ids come out in the registry's form, once each."""
    written = prefix + "0" * pad + str(number)
    assume(len(written) <= 11)  # NCT and at most 8 digits, as the registry's spec allows
    text = CHANNELS + f"watches: [{{name: w, studies: {{ids: ['{written}', NCT{number:08d}]}}, channels: [feed]}}]"
    ids = parse_watchlist(text).watch("w").studies.ids
    assert ids == (canonical_id(written),) == (f"NCT{number:08d}",)


_W = "watches: [{name: w, studies: {ids: [NCT07011004]}, channels: [feed]}]\n"
_MAIL = "channels:\n  m: {type: email, host: h, from: a@b.c, to: [x@y.z]}\n  feed: {type: feed, path: f.json}\n"


def _hook(url: str) -> str:
    return f"channels:\n  h: {{type: webhook, url: '{url}'}}\n  feed: {{type: feed, path: f.json}}\n" + _W


HOSTILE: list[tuple[str, str]] = [
    # an empty selector value is no filter: the watch would follow every study of the warehouse
    (CHANNELS + "watches: [{name: w, studies: {ids: []}, channels: [feed]}]",
     "watches[w].studies.ids: is empty, which would follow every study; leave the key out or give a value"),
    (CHANNELS + "watches: [{name: w, studies: {ids: }, channels: [feed]}]", "watches[w].studies.ids: is empty"),
    (CHANNELS + "watches: [{name: w, studies: {conditions: [], status: [RECRUITING]}, channels: [feed]}]",
     "watches[w].studies.conditions: is empty"),
    # a literal webhook URL: a host, http(s), no credentials anywhere (and never printed back)
    (_hook("http://"), "channels.h.url: has no host name"),
    (_hook("http:///path"), "channels.h.url: has no host name"),
    (_hook("ftp://example.org/x"), "channels.h.url: must be an http(s) URL (lower-case http:// or https://)"),
    (_hook("https://s3cretTokenABC@example.org/x"),
     "channels.h.url: must not carry credentials (user:password@); use url_env or url_secret"),
    (_hook("https://example.org/x?token=s3cretTokenABC"),
     "channels.h.url: carries a secret-looking query parameter; use url_env or url_secret"),
    (_hook("https://exa mple.org/x"), "channels.h.url: must be an http(s) URL (text without spaces"),
    (_hook("https://example.org:99999/x"), "channels.h.url: is not a valid URL (its host or port does not parse)"),
    (_hook("http://[::1/x"), "channels.h.url: is not a valid URL"),
    # e-mail: addresses that are addresses, one line each (a newline would add headers: Bcc)
    (_MAIL.replace("from: a@b.c", "from: '@'") + _W, "channels.m.from: needed: an e-mail address"),
    (_MAIL.replace("[x@y.z]", "['x@y.z', 'a b@c']") + _W, "channels.m.to: not an e-mail address: 'a b@c'"),
    (_MAIL.replace("[x@y.z]", "[\"x@y.z\\nBcc: evil@example.com\"]") + _W, "channels.m.to: not an e-mail address"),
    (_MAIL.replace("from: a@b.c", "from: \"a@b.c\\nBcc: evil@example.com\"") + _W,
     "channels.m.from: needed: an e-mail address"),
    (_MAIL.replace("[x@y.z]", "'x@y.z, a@b.c'") + _W,
     "channels.m.to: give a list of addresses (to: [a@example.org, b@example.org]), not one text with several"),
    (_MAIL.replace("from: a@b.c", "from: 'a@b.c, x@y.z'") + _W, "channels.m.from: needed: an e-mail address"),
    (_MAIL.replace("[x@y.z]", "['x@-y.z']") + _W, "channels.m.to: not an e-mail address: 'x@-y.z'"),
    (_MAIL.replace("host: h", "host: 'smtp://user:pw@smtp.example.org'") + _W,
     "channels.m.host: needed: the SMTP server's host name (no scheme, user or port)"),
    (_MAIL.replace("host: h", "host: h, username: 5, password_env: P") + _W,
     "channels.m.username: must be a text, got 5"),
    (_MAIL.replace("host: h", "host: h, ca_file: [a, b]") + _W, "channels.m.ca_file: must be a file path (text)"),
    (CHANNELS.replace("path: f.json", "path: f.json, title: [a, b]") + _W,
     "channels.feed.title: must be one line of text, got ['a', 'b']"),
    (_hook("https://example.org/x").replace("url:", "headers_env: {'X\\r\\nY': V}, url:"),
     "channels.h.headers_env.X"),
    (CHANNELS + "watches: [{name: w, studies: {ids: [NCT07011004]}, channels: [feed], since: 20260101}]",
     "watches[w].since: not a real date: 20260101; expected YYYY-MM-DD"),
    # YAML 1.1 numbers nobody means in a config file: 010 is 8, 1:30 is 90 (sexagesimal)
    (CHANNELS + "watches: [{name: w, studies: {ids: [NCT07011004]}, channels: [feed], lookback_days: 010}]",
     "watches[w].lookback_days: must be a whole number >= 0 and <= 36525, got '010'"),
    (CHANNELS + "watches: [{name: w, studies: {ids: [NCT07011004]}, channels: [feed], lookback_days: 1:30}]",
     "watches[w].lookback_days: must be a whole number >= 0 and <= 36525, got '1:30'"),
    ("? [a, b]\n: 1\n", "a key must be a plain name, not a list or mapping (line 1)"),
    ("[" * 5000 + "]" * 5000, "is not a config file: nested too deeply"),
]


@pytest.mark.parametrize(("text", "message"), HOSTILE, ids=[m.split(":")[0] + str(i) for i, (_, m) in
                                                            enumerate(HOSTILE)])
def test_a_hostile_watchlist_gets_one_line_and_never_prints_a_secret(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "w.yaml"
    path.write_text(text)
    with pytest.raises(UsageError) as caught:
        load_watchlist(path)
    assert str(caught.value).startswith(f"{path}: {message}")
    assert "\n" not in str(caught.value) and "s3cret" not in str(caught.value)


@pytest.mark.parametrize("where", ["password_env: hunter2-secret-value", "password_secret: 'Bearer hunter2secret'"])
def test_a_secret_pasted_where_its_name_belongs_is_refused_without_being_printed(tmp_path: Path, where: str) -> None:
    path = tmp_path / "w.yaml"
    path.write_text(_MAIL.replace("host: h", f"host: h, username: u, {where}") + _W)
    with pytest.raises(UsageError) as caught:
        load_watchlist(path)
    assert str(caught.value).startswith(f"{path}: channels.m.password_")
    assert "hunter2" not in str(caught.value)


def test_the_strict_checks_still_take_the_usual_forms(tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.write_text("channels:\n  m: {type: email, host: smtp.example.org, from: 'trialsync <alerts@example.org>', "
                    "to: [a@localhost, '\"Team\" <team@example.org>']}\n"
                    "  h: {type: webhook, url: 'https://alerts.example.org:8443/hook?channel=ops', "
                    "headers_env: {X-Api-Token: TOKEN_VAR}, headers_secret: {Authorization: my-auth-header}}\n"
                    "  feed: {type: feed, path: f.json}\n" + _W)
    channels = load_watchlist(path).channels
    assert channels["m"].recipients == ("a@localhost", '"Team" <team@example.org>')
    assert channels["h"].url == "https://alerts.example.org:8443/hook?channel=ops"
    assert sorted(channels["h"].headers) == ["Authorization", "X-Api-Token"]


@pytest.mark.parametrize("name", ["author", "keyword", "design", "assignee", "monkey", "signal", "authority",
                                  "tokenizer", "codec", "channel"])
def test_a_query_parameter_that_only_contains_a_secret_word_is_not_refused(tmp_path: Path, name: str) -> None:
    """The check matched substrings: ?author= (auth), ?keyword= (key), ?design= (sig) were refused."""
    path = tmp_path / "w.yaml"
    path.write_text(_hook(f"https://example.org/x?{name}=ops"))
    assert load_watchlist(path).channels["h"].url == f"https://example.org/x?{name}=ops"


@pytest.mark.parametrize("name", ["key", "api_key", "apikey", "apiKey", "x-api-key", "sig", "signature", "token",
                                  "access_token", "accessToken", "auth", "auth_token", "password", "secret",
                                  "client_secret", "code"])
def test_a_query_parameter_named_for_a_secret_is_refused(tmp_path: Path, name: str) -> None:
    path = tmp_path / "w.yaml"
    path.write_text(_hook(f"https://example.org/x?{name}=s3cretValue"))
    with pytest.raises(UsageError) as caught:
        load_watchlist(path)
    assert str(caught.value) == (f"{path}: channels.h.url: carries a secret-looking query parameter; use url_env "
                                 "or url_secret")


def test_valid_addresses_and_hosts_beyond_plain_ascii_are_taken(tmp_path: Path) -> None:
    """IDN domains, a quoted local part, an `_` in a domain label, a trailing-dot domain and a non-ASCII
    local part (RFC 6531, sent with SMTPUTF8) were refused as "not an e-mail address" (and an IDN SMTP host
    as no host name)."""
    recipients = ["alerts@bücher.de", '"john doe"@example.org', "alerts@mail_relay.example.org",
                  "ops@example.org.", "Büro <buero@bücher.de>", "jörg@bücher.de", "用户@例子.广告"]
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump({"channels": {
        "m": {"type": "email", "host": "smtp.bücher.de", "from": "alerts@bücher.de", "to": recipients},
        "feed": {"type": "feed", "path": "f.json"}}}, allow_unicode=True) + _W)
    channel = load_watchlist(path).channels["m"]
    assert (channel.host, channel.sender, channel.recipients) == ("smtp.bücher.de", "alerts@bücher.de",
                                                                  tuple(recipients))


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


@pytest.mark.parametrize(("channel", "message"), [
    ("feed: {type: feed, path: out}", "channels.feed.path: is a directory; name the feed file to write"),
    ("feed: {type: feed, path: f.json}\n  m: {type: email, host: h, from: a@b.c, to: [x@y.z], ca_file: nope.pem}",
     "channels.m.ca_file: no such file nope.pem"),
])
def test_a_feed_path_that_is_a_directory_or_a_missing_ca_file_is_named_before_anything_runs(
        tmp_path: Path, channel: str, message: str) -> None:
    """Found at delivery before, after the run had matched and planned its alerts."""
    (tmp_path / "out").mkdir()
    path = tmp_path / "w.yaml"
    path.write_text(f"channels:\n  {channel}\n" + _W)
    with pytest.raises(UsageError) as caught:
        check_config(path)
    assert str(caught.value) == f"{path}: {message}"
