"""Watchlist values that are taken as written, checked whole when the file is read:

- names (watches, channels, header names, environment variable and Prefect block names) and SMTP host
  names were matched with ``^...$``, which also takes a trailing newline (``name: |`` in YAML): a watch
  named ``"aml\\n"`` passed, beside one named ``aml``;
- ``$VAR`` / ``${VAR}`` is not expanded (a watchlist is not a shell script): ``url: https://${HOOK}/x``
  was accepted and every delivery then failed "cannot reach the webhook", ``path: $HOME/feed.json`` made a
  directory named ``$HOME``; now each is refused naming the key and the way to do it;
- ``~`` in a feed or CA file path is the home directory (it made a directory named ``~`` beside the file).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.alerts.watchlist import parse_watchlist
from pipeline.errors import UsageError

EMAIL = """channels:
  mail:
    type: email
    host: {host}
    from: {sender}
    to: [{to}]
    username: {username}
    password_env: SMTP_PASSWORD
    ca_file: {ca_file}
watches:
  - name: {name}
    studies: {{ids: [NCT05766735]}}
    channels: [mail]
"""
GOOD = dict(host="smtp.example.org", sender="alerts@example.org", to="team@example.org", username="alerts",
            ca_file="ca.pem", name="aml")


def _email(**values: str) -> str:
    return EMAIL.format(**{**GOOD, **values})


def _refused(text: str) -> str:
    with pytest.raises(UsageError) as info:
        parse_watchlist(text, "w.yaml")
    return str(info.value)


def test_the_email_channel_as_written_is_fine() -> None:
    channel = parse_watchlist(_email(), "w.yaml").channels["mail"]
    assert (channel.host, channel.username, channel.ca_file) == ("smtp.example.org", "alerts", "ca.pem")


@given(st.sampled_from(["\n", "\r\n"]))
def test_a_name_with_a_trailing_line_break_is_refused(line_break: str) -> None:
    quoted = '"aml' + line_break.replace("\r", "\\r").replace("\n", "\\n") + '"'
    assert _refused(_email(name=quoted)).startswith("w.yaml: watches[#1].name: must be 1-64 letters")
    assert _refused(_email(host='"smtp.example.org\\n"')) == (
        "w.yaml: channels.mail.host: needed: the SMTP server's host name (no scheme, user or port)")


@pytest.mark.parametrize(("snippet", "key"), [
    ("channels:\n  \"f\\n\": {type: feed, path: f.json}\n", "channels.f\n"),
    ("channels:\n  h: {type: webhook, url: 'https://example.org/x', headers_env: {\"X-Key\\n\": KEY}}\n",
     "channels.h.headers_env.X-Key\n"),
    ("channels:\n  h: {type: webhook, url: 'https://example.org/x', headers_env: {X-Key: \"KEY\\n\"}}\n",
     "channels.h.headers_env.X-Key"),
    ("channels:\n  h: {type: slack, url_secret: \"block\\n\"}\n", "channels.h.url_secret"),
])
def test_channel_names_and_the_names_of_secrets_are_matched_whole(snippet: str, key: str) -> None:
    text = snippet + "watches:\n  - {name: w, studies: {ids: [NCT05766735]}, channels: [f]}\n"
    assert _refused(text).startswith(f"w.yaml: {key}: "), _refused(text)


VARIABLES = ["$SMTP_HOST", "${SMTP_HOST}", "${SMTP_HOST:-smtp.example.org}"]


@pytest.mark.parametrize("variable", VARIABLES)
@pytest.mark.parametrize("field", ["host", "sender", "to", "username", "ca_file"])
def test_an_environment_variable_in_a_value_is_refused_not_taken_literally(field: str, variable: str) -> None:
    value = {"host": variable, "sender": f"alerts@{variable}", "to": f"{variable}@example.org",
             "username": variable, "ca_file": f"{variable}/ca.pem"}[field]
    key = {"sender": "from"}.get(field, field)
    message = _refused(_email(**{field: f'"{value}"'}))
    assert message.startswith(f"w.yaml: channels.mail.{key}: '$"), message
    assert "environment variables are not expanded in a watchlist" in message
    assert "envsubst" in message


@pytest.mark.parametrize("url", ["https://${HOOK_HOST}/x", "https://$HOOK_HOST/x", "https://example.org/${HOOK}"])
def test_a_webhook_url_with_a_variable_is_refused_without_printing_it(url: str) -> None:
    text = (f"channels:\n  h: {{type: webhook, url: '{url}'}}\n"
            "watches:\n  - {name: w, studies: {ids: [NCT05766735]}, channels: [h]}\n")
    message = _refused(text)
    assert message.startswith("w.yaml: channels.h.url: environment variables are not expanded"), message
    assert "HOOK" not in message


def test_a_webhook_url_whose_host_is_not_a_host_name_is_refused() -> None:
    text = ("channels:\n  h: {type: webhook, url: 'https://exa mple.org/x'}\n"
            "watches:\n  - {name: w, studies: {ids: [NCT05766735]}, channels: [h]}\n")
    assert _refused(text.replace("exa mple", "exa{mple")) == (
        "w.yaml: channels.h.url: has an invalid host name (letters, digits, '-', '_' and dots, or an IP address)")


def test_a_feed_path_with_a_variable_is_refused() -> None:
    text = ("channels:\n  f: {type: feed, path: '$HOME/alerts.json'}\n"
            "watches:\n  - {name: w, studies: {ids: [NCT05766735]}, channels: [f]}\n")
    assert _refused(text).startswith("w.yaml: channels.f.path: '$HOME': environment variables are not expanded")


def test_a_feed_path_under_tilde_is_in_the_home_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.alerts import resolve_channels

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    text = ("channels:\n  f: {type: feed, path: '~/alerts.json'}\n"
            "watches:\n  - {name: w, studies: {ids: [NCT05766735]}, channels: [f]}\n")
    resolved, _ = resolve_channels(parse_watchlist(text, "w.yaml"), tmp_path / "config")
    assert resolved["f"].feed_path == tmp_path / "home" / "alerts.json"


@pytest.mark.parametrize("second", ["same.feed", "./same.feed", "sub/../same.feed"])
def test_two_feed_channels_writing_one_file_in_two_formats_are_refused(tmp_path: Path, second: str) -> None:
    """Each run, one of the two found the other's feed and failed ("not an Atom feed"), for ever: the
    message waited in the outbox, and moving the file away only swapped which channel failed."""
    from flows.alerts import check_config

    (tmp_path / "sub").mkdir()
    config = tmp_path / "w.yaml"
    config.write_text("channels:\n  f1: {type: feed, path: same.feed, format: json}\n"
                      f"  f2: {{type: feed, path: '{second}', format: atom}}\n"
                      "watches:\n  - {name: w, studies: {ids: [NCT05766735]}, channels: [f1, f2]}\n")
    with pytest.raises(UsageError) as info:
        check_config(config)
    assert str(info.value) == (f"{config}: channels.f2.path: the file of channels.f1, which writes it as json, "
                               "not atom; give each format its own file")
    config.write_text(config.read_text().replace("format: atom", "format: json"))  # one format: one feed, shared
    assert set(check_config(config).channels) == {"f1", "f2"}


@pytest.mark.parametrize("value", ["example.org/hook", " ", "ftp://example.org/hook", "https://", "https://exa mple/x"])
@pytest.mark.parametrize("kind", ["webhook", "slack"])
def test_a_webhook_url_from_the_environment_that_is_no_http_url_is_refused_without_showing_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, value: str) -> None:
    """Every run failed "cannot reach the webhook (MissingSchema)" and kept the messages for ever."""
    from flows.alerts import check_config

    config = tmp_path / "w.yaml"
    config.write_text(f"channels:\n  h: {{type: {kind}, url_env: HOOK_URL}}\n"
                      "watches:\n  - {name: w, studies: {ids: [NCT05766735]}, channels: [h]}\n")
    monkeypatch.setenv("HOOK_URL", value)
    with pytest.raises(UsageError) as info:
        check_config(config)
    assert str(info.value) == (f"{config}: channels.h.url_env: environment variable HOOK_URL does not hold an "
                               "http(s) URL with a host (its value is not shown)")
    monkeypatch.setenv("HOOK_URL", "https://user:secret@hooks.example.org/services/T0/B0/x?token=abc")
    assert check_config(config).channels["h"].url_ref is not None  # credentials are why it is a secret


_WORD = st.from_regex(r"[a-z][a-z0-9_]{0,11}", fullmatch=True)
_VAR = st.from_regex(r"[A-Z_][A-Z0-9_]{0,11}", fullmatch=True)


@given(_WORD)
def test_a_dollar_before_a_lower_case_word_is_text_kept_as_written(word: str) -> None:
    """Only ``${...}`` and ``$NAME`` in capitals (how environment variables are written) are refused: a
    ``$`` is legitimate text elsewhere, and such files worked before (Azure's ``$web`` container as a feed
    directory, OData's ``?$format=json`` on a webhook, ``ops$team@`` and ``$svc`` as address and user)."""
    text = _email(sender=f"ops${word}@example.org", username=f'"${word}"', ca_file=f'"/srv/${word}/ca.pem"')
    text = text.replace("channels: [mail]", "channels: [mail, h, f]").replace(
        "watches:", f"  h: {{type: webhook, url: 'https://api.example.org/${word}/hook?${word}=json'}}\n"
                    f"  f: {{type: feed, path: '/srv/${word}/feed.json'}}\nwatches:", 1)
    channels = parse_watchlist(text, "w.yaml").channels
    assert (channels["mail"].sender, channels["mail"].username) == (f"ops${word}@example.org", f"${word}")
    assert channels["mail"].ca_file == f"/srv/${word}/ca.pem"
    assert channels["h"].url == f"https://api.example.org/${word}/hook?${word}=json"
    assert channels["f"].path == f"/srv/${word}/feed.json"


@given(_VAR, st.sampled_from(["", "/x", ".pem", "-1"]))
def test_a_dollar_before_a_name_in_capitals_is_an_environment_variable_and_refused(name: str, after: str) -> None:
    message = _refused(_email(username=f'"${name}{after}"'))
    assert message.startswith(f"w.yaml: channels.mail.username: '${name}': environment variables are not "), message


@pytest.mark.parametrize(("key", "value"), [("path", "~nosuchuser-trialsync/alerts.json"),
                                            ("ca_file", "~nosuchuser-trialsync/ca.pem")])
def test_a_tilde_naming_no_user_is_one_line_not_a_traceback(tmp_path: Path, key: str, value: str) -> None:
    """``Path.expanduser`` raises RuntimeError for ``~nobody-here``: ``alerts run`` and ``alerts check``
    ended in a traceback instead of naming the key."""
    from flows.alerts import check_config, resolve_channels

    channel = (f"{{type: feed, path: '{value}'}}" if key == "path" else
               f"{{type: email, host: smtp.example.org, from: a@example.org, to: [b@example.org], ca_file: '{value}'}}")
    config = tmp_path / "w.yaml"
    config.write_text(f"channels:\n  c: {channel}\n"
                      "watches:\n  - {name: w, studies: {ids: [NCT05766735]}, channels: [c]}\n")
    expected = f"channels.c.{key}: '~nosuchuser-trialsync' is no user's home directory"
    with pytest.raises(UsageError) as info:
        check_config(config)
    assert str(info.value) == f"{config}: {expected}"
    with pytest.raises(UsageError) as info:
        resolve_channels(parse_watchlist(config.read_text(), "w.yaml"), tmp_path)
    assert str(info.value) == f"w.yaml: {expected}"


def test_a_feed_path_through_a_symbolic_link_loop_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    """``Path.resolve`` raises RuntimeError("Symlink loop ...") on Python 3.11."""
    from flows.alerts import check_config, resolve_channels

    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    config = tmp_path / "w.yaml"
    config.write_text("channels:\n  c: {type: feed, path: loop/feed.json}\n"
                      "watches:\n  - {name: w, studies: {ids: [NCT05766735]}, channels: [c]}\n")
    with pytest.raises(UsageError) as info:
        check_config(config)
    assert str(info.value).startswith(f"{config}: channels.c.path: cannot resolve loop/feed.json: "), info.value
    with pytest.raises(UsageError) as info:
        resolve_channels(parse_watchlist(config.read_text(), "w.yaml"), tmp_path)
    assert str(info.value).startswith("w.yaml: channels.c.path: cannot resolve loop/feed.json: "), info.value
