"""The watchlist file: named watches (which studies, which changes, how often, where to) and channels.

Pure: ``parse_watchlist(text, source)`` turns the YAML text into frozen dataclasses or raises a
``UsageError`` of one line ``FILE: key: what is wrong`` (``watches[aml].since``,
``channels.mail.port``), with the valid values where they form a set. The file is a validated
mapping of known keys: a new kind of watch is one more entry of ``_WATCH_KEYS`` or ``_STUDY_KEYS``
and its validator in ``_watch`` or ``_selector``.
Secrets are never values in this file: a channel names an environment variable (``*_env``) or a
Prefect Secret block (``*_secret``) instead, resolved at delivery time (``SecretRef``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from pipeline.alerts.addresses import address, check_webhook_url, host_name, literal, mailboxes
from pipeline.alerts.compliance import FDAAA_CATEGORY, FDAAA_EVENT, FDAAA_KINDS, FDAAA_SEVERITY
from pipeline.changes import CATEGORIES, EVENTS, SEVERITIES
from pipeline.config import (
    ConfigError,
    a_date,
    choice,
    choices,
    integer,
    known,
    load_yaml,
    mapping,
    number,
    reading,
    show,
    texts,
)
from pipeline.enums import STATUSES, Phase
from pipeline.scope import spec_id

MODES = ("immediate", "digest")
CHANNEL_TYPES = ("slack", "webhook", "email", "apprise", "feed")
SECURITY = ("starttls", "ssl", "none")
FEED_FORMATS = ("json", "atom")
PHASES: tuple[str, ...] = Phase.__args__  # type: ignore[attr-defined]
# Names are matched whole (``fullmatch``: a ``$`` would also take a trailing newline, ``name: |`` in YAML).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_HEADER = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}")  # an RFC 9110 token
_BLOCK = re.compile(r"[a-z0-9][a-z0-9-]{0,127}")  # Prefect block document names
_ENV = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SECRET_WORDS = ("password", "token", "secret", "api_key", "apikey", "webhook_url")
_STUDY_KEYS = ("ids", "conditions", "sponsors", "phases", "status", "where")
_WATCH_KEYS = ("name", "studies", "categories", "events", "min_severity", "mode", "channels", "since",
               "lookback_days", "fdaaa")
# What a watch's filters choose from: the change vocabulary and the compliance alert (``fdaaa:``).
WATCH_CATEGORIES = (*CATEGORIES, FDAAA_CATEGORY)
WATCH_EVENTS = (*EVENTS, FDAAA_EVENT)


@dataclass(frozen=True)
class SecretRef:
    """Where a secret lives: an environment variable or a Prefect Secret block (never its value)."""

    env: str | None = None
    block: str | None = None

    def describe(self) -> str:
        return f"environment variable {self.env}" if self.env else f"Prefect Secret block {self.block!r}"


@dataclass(frozen=True)
class Channel:
    name: str
    type: str
    url: str | None = None  # a literal URL: only for the generic webhook (no credentials in it)
    url_ref: SecretRef | None = None
    headers: Mapping[str, SecretRef] = field(default_factory=dict)
    host: str | None = None
    port: int | None = None
    security: str = "starttls"
    username: str | None = None
    password_ref: SecretRef | None = None
    sender: str | None = None
    recipients: tuple[str, ...] = ()
    verify_tls: bool = True
    ca_file: str | None = None  # trust this CA (PEM) for the SMTP server's certificate
    path: str | None = None  # feed file; relative paths are relative to the watchlist file
    format: str = "json"
    max_items: int = 500
    title: str = "trialsync alerts"
    timeout: float = 10.0
    attempts: int = 3

    def secrets(self) -> list[SecretRef]:
        refs = [self.url_ref, self.password_ref, *self.headers.values()]
        return [r for r in refs if r is not None]


@dataclass(frozen=True)
class StudySelector:
    """Which studies a watch follows; keys combine with AND, the values of one key with OR."""

    ids: tuple[str, ...] = ()
    conditions: tuple[str, ...] = ()
    sponsors: tuple[str, ...] = ()
    phases: tuple[str, ...] = ()
    status: tuple[str, ...] = ()
    where: str | None = None  # a SQL predicate over the columns of ``studies``


@dataclass(frozen=True)
class Watch:
    name: str
    studies: StudySelector
    channels: tuple[str, ...]
    categories: tuple[str, ...] = ()
    events: tuple[str, ...] = ()
    min_severity: str = "minor"
    mode: str = "immediate"
    since: date | None = None
    lookback_days: int = 7
    fdaaa: tuple[str, ...] = ()  # ("overdue",): alert each followed study that becomes FDAAA-overdue

    def wants(self, category: str, event: str, severity: str) -> bool:
        """Whether a change of this kind matters to the watch (its study already matched)."""
        return (SEVERITIES.index(severity) >= SEVERITIES.index(self.min_severity)
                and (not self.categories or category in self.categories)
                and (not self.events or event in self.events))


@dataclass(frozen=True)
class Watchlist:
    watches: tuple[Watch, ...]
    channels: Mapping[str, Channel]
    source: str = "watchlist"

    def watch(self, name: str) -> Watch:
        return next(w for w in self.watches if w.name == name)


def parse_watchlist(text: str, source: str = "watchlist") -> Watchlist:
    """The watchlist in ``text`` (YAML); every problem is one ``UsageError`` line naming ``source``."""
    data = load_yaml(text, source)
    with reading(source):
        return _watchlist(data, source)


_DEFAULT_KEYS = ("min_severity", "mode", "lookback_days", "categories", "events")


def _watchlist(data: Any, source: str) -> Watchlist:
    if not isinstance(data, dict):
        raise ConfigError("", "must be a mapping with 'channels:' and 'watches:'")
    known(data, ("defaults", "channels", "watches"), "")
    defaults = mapping(data.get("defaults"), "defaults")
    known(defaults, _DEFAULT_KEYS, "defaults")
    _settings(defaults, "defaults")  # a bad default is named as such, not under the first watch
    channels_data = mapping(data.get("channels"), "channels")
    if not channels_data:
        raise ConfigError("channels", "define at least one channel")
    channels = {str(name): _channel(str(name), spec) for name, spec in channels_data.items()}
    watches_data = data.get("watches")
    if not isinstance(watches_data, list) or not watches_data:
        raise ConfigError("watches", "must be a list with at least one watch")
    watches = tuple(_watch(i, spec, defaults, channels) for i, spec in enumerate(watches_data, start=1))
    names = [w.name for w in watches]
    if dupes := sorted({n for n in names if names.count(n) > 1}):
        raise ConfigError(f"watches[{dupes[0]}].name", "two watches have this name")
    return Watchlist(watches, channels, source)


# -- watches -------------------------------------------------------------------------------------
def _settings(spec: Mapping[str, Any], key: str) -> dict[str, Any]:
    """The settings a watch shares with ``defaults:``, checked."""
    return dict(
        categories=choices(spec.get("categories"), WATCH_CATEGORIES, f"{key}.categories", what="category"),
        events=choices(spec.get("events"), WATCH_EVENTS, f"{key}.events", what="event"),
        min_severity=choice(spec.get("min_severity", "minor"), SEVERITIES, f"{key}.min_severity"),
        mode=choice(spec.get("mode", "immediate"), MODES, f"{key}.mode"),
        lookback_days=integer(spec.get("lookback_days", 7), f"{key}.lookback_days", low=0, high=36_525),
    )


def _watch(index: int, spec: Any, defaults: Mapping[str, Any], channels: Mapping[str, Channel]) -> Watch:
    if not isinstance(spec, dict):
        raise ConfigError(f"watches[#{index}]", "must be a mapping with name, studies and channels")
    name = spec.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"watches[#{index}].name", f"must be 1-64 letters, digits, '-', '_' or '.', got {name!r}")
    key = f"watches[{name}]"
    known(spec, _WATCH_KEYS, key)
    watch = Watch(name=name, studies=_selector(spec.get("studies"), f"{key}.studies"),
                  channels=_channel_names(spec.get("channels"), channels, f"{key}.channels"),
                  since=a_date(spec.get("since"), f"{key}.since"),
                  fdaaa=tuple(dict.fromkeys(choices(spec.get("fdaaa"), FDAAA_KINDS, f"{key}.fdaaa"))),
                  **_settings({**defaults, **spec}, key))
    if watch.fdaaa and not watch.wants(FDAAA_CATEGORY, FDAAA_EVENT, FDAAA_SEVERITY):
        raise ConfigError(f"{key}.fdaaa", f"this watch's categories, events or min_severity leave out its "
                                          f"compliance alerts (category {FDAAA_CATEGORY}, event {FDAAA_EVENT}, "
                                          f"severity {FDAAA_SEVERITY}); add them or drop fdaaa")
    return watch


def _selector(spec: Any, key: str) -> StudySelector:
    if not isinstance(spec, dict) or not spec:
        raise ConfigError(key, f"must select studies by one or more of: {', '.join(_STUDY_KEYS)}")
    known(spec, _STUDY_KEYS, key)
    for name, value in spec.items():  # ``ids: []`` is no filter at all: the watch would follow every study
        if value is None or value in ([], {}) or (isinstance(value, str) and not value.strip()):
            raise ConfigError(f"{key}.{name}", "is empty, which would follow every study; leave the key out "
                                               "or give a value")
    given = texts(spec.get("ids"), f"{key}.ids")
    if bad := [i for i in given if spec_id(i) is None]:
        raise ConfigError(f"{key}.ids", f"invalid NCT id {bad[0]!r} (NCT followed by up to 8 digits, not all zeros)")
    ids = tuple(dict.fromkeys(nct for i in given if (nct := spec_id(i)) is not None))  # as `--ids` takes them
    where = spec.get("where")
    if where is not None and (not isinstance(where, str) or not where.strip()):
        raise ConfigError(f"{key}.where", "must be a SQL predicate (text)")
    phases = tuple(p.upper() for p in texts(spec.get("phases"), f"{key}.phases"))
    choices(list(phases), PHASES, f"{key}.phases", what="phase")
    status = tuple(s.upper() for s in texts(spec.get("status"), f"{key}.status"))
    choices(list(status), STATUSES, f"{key}.status", what="status")
    return StudySelector(
        ids=ids, conditions=texts(spec.get("conditions"), f"{key}.conditions"),
        sponsors=texts(spec.get("sponsors"), f"{key}.sponsors"), phases=phases, status=status,
        where=where.strip() if where else None,
    )


def _channel_names(value: Any, channels: Mapping[str, Channel], key: str) -> tuple[str, ...]:
    names = texts(value, key)
    if not names:
        raise ConfigError(key, "name at least one channel")
    if unknown := [n for n in names if n not in channels]:
        raise ConfigError(key, f"unknown channel {unknown[0]!r}; valid: {', '.join(sorted(channels))}")
    return tuple(dict.fromkeys(names))


# -- channels ------------------------------------------------------------------------------------
_COMMON = ("type", "timeout", "attempts")
_CHANNEL_KEYS = {
    "slack": ("url_env", "url_secret"),
    "webhook": ("url", "url_env", "url_secret", "headers_env", "headers_secret"),
    "apprise": ("url_env", "url_secret"),
    "email": ("host", "port", "security", "username", "password_env", "password_secret", "from", "to",
              "verify_tls", "ca_file"),
    "feed": ("path", "format", "max_items", "title"),
}


def _channel(name: str, spec: Any) -> Channel:
    key = f"channels.{name}"
    if not _NAME.fullmatch(name):
        raise ConfigError(key, "a channel name must be 1-64 letters, digits, '-', '_' or '.'")
    if not isinstance(spec, dict):
        raise ConfigError(key, "must be a mapping with a 'type:'")
    kind = choice(spec.get("type"), CHANNEL_TYPES, f"{key}.type")
    _no_literal_secrets(spec, key)
    known(spec, _COMMON + _CHANNEL_KEYS[kind], key)
    common = dict(name=name, type=kind,
                  timeout=number(spec.get("timeout", 10.0), f"{key}.timeout", positive=True, high=3600),
                  attempts=integer(spec.get("attempts", 3), f"{key}.attempts", low=1, high=100))
    return _BUILDERS[kind](spec, common, key)


def _no_literal_secrets(spec: Mapping[str, Any], key: str) -> None:
    for name in spec:
        lowered = str(name).lower()
        if any(word in lowered for word in _SECRET_WORDS) and not lowered.endswith(("_env", "_secret")):
            raise ConfigError(f"{key}.{name}", f"would put a secret in the watchlist file; name an environment "
                                               f"variable ({name}_env: VAR) or a Prefect Secret block "
                                               f"({name}_secret: NAME) instead")


def _url_channel(spec: Mapping[str, Any], common: dict[str, Any], key: str) -> Channel:
    ref = _ref(spec, "url", key)
    written = spec.get("url")
    if written is not None:
        if ref is not None:
            raise ConfigError(key, "give one of url, url_env, url_secret")
        check_webhook_url(literal(written, f"{key}.url", shown=False), f"{key}.url")
    elif ref is None:
        raise ConfigError(key, "needs url_env: VAR or url_secret: NAME" + (
            " (or url: for a webhook without credentials)" if common["type"] == "webhook" else ""))
    headers = {**_refs(spec.get("headers_env"), "env", key), **_refs(spec.get("headers_secret"), "block", key)}
    return Channel(**common, url=written, url_ref=ref, headers=headers)


def _email_channel(spec: Mapping[str, Any], common: dict[str, Any], key: str) -> Channel:
    host = literal(spec.get("host"), f"{key}.host")
    if not isinstance(host, str) or not host_name(host):
        raise ConfigError(f"{key}.host", "needed: the SMTP server's host name (no scheme, user or port)")
    security = choice(spec.get("security", "starttls"), SECURITY, f"{key}.security")
    port = integer(spec.get("port", {"ssl": 465, "starttls": 587, "none": 25}[security]), f"{key}.port",
                   low=1, high=65_535)
    sender = literal(spec.get("from"), f"{key}.from")
    if not isinstance(sender, str) or not address(sender):
        raise ConfigError(f"{key}.from", f"needed: an e-mail address (name@domain or Name <name@domain>), "
                                         f"got {show(sender)}")
    recipients = tuple(literal(r, f"{key}.to") for r in texts(spec.get("to"), f"{key}.to"))
    if not recipients:
        raise ConfigError(f"{key}.to", "needed: one or more e-mail addresses")
    if several := [r for r in recipients if len(mailboxes(r) or ()) > 1]:
        raise ConfigError(f"{key}.to", f"give a list of addresses (to: [a@example.org, b@example.org]), not one "
                                       f"text with several: {show(several[0])}")
    if bad := [r for r in recipients if not address(r)]:
        raise ConfigError(f"{key}.to", f"not an e-mail address: {show(bad[0])} (name@domain)")
    username = literal(spec.get("username"), f"{key}.username")
    if username is not None and (not isinstance(username, str) or not username.strip()):
        raise ConfigError(f"{key}.username", f"must be a text, got {show(username)}")
    ca_file = spec.get("ca_file")
    if ca_file is not None and (not isinstance(ca_file, str) or not ca_file.strip()):
        raise ConfigError(f"{key}.ca_file", f"must be a file path (text), got {show(ca_file)}")
    if ca_file is not None:
        ca_file = _file_path(ca_file, f"{key}.ca_file")
    password = _ref(spec, "password", key)
    if (username is None) != (password is None):
        raise ConfigError(key, "give both username and password_env (or password_secret), or neither")
    verify = spec.get("verify_tls", True)
    if not isinstance(verify, bool):
        raise ConfigError(f"{key}.verify_tls", f"must be true or false, got {verify!r}")
    return Channel(**common, host=host, port=port, security=security, username=username, password_ref=password,
                   sender=sender, recipients=recipients, verify_tls=verify,
                   ca_file=ca_file)


def _feed_channel(spec: Mapping[str, Any], common: dict[str, Any], key: str) -> Channel:
    path = spec.get("path")
    if not isinstance(path, str) or not path:
        raise ConfigError(f"{key}.path", "needed: the feed file to write")
    return Channel(**common, path=_file_path(path, f"{key}.path"),
                   format=choice(spec.get("format", "json"), FEED_FORMATS, f"{key}.format"),
                   max_items=integer(spec.get("max_items", 500), f"{key}.max_items", low=1, high=100_000),
                   title=_title(spec.get("title", "trialsync alerts"), f"{key}.title"))


_BUILDERS = {"slack": _url_channel, "webhook": _url_channel, "apprise": _url_channel, "email": _email_channel,
             "feed": _feed_channel}


def _ref(spec: Mapping[str, Any], name: str, key: str) -> SecretRef | None:
    env, block = spec.get(f"{name}_env"), spec.get(f"{name}_secret")
    if env is not None and block is not None:
        raise ConfigError(key, f"give one of {name}_env and {name}_secret")
    if env is not None:
        return SecretRef(env=_env_name(env, f"{key}.{name}_env"))
    if block is not None:
        return SecretRef(block=_block_name(block, f"{key}.{name}_secret"))
    return None


def _refs(value: Any, kind: str, key: str) -> dict[str, SecretRef]:
    if value is None:
        return {}
    what = f"{key}.headers_env" if kind == "env" else f"{key}.headers_secret"
    headers = mapping(value, what)
    for name in headers:
        if not isinstance(name, str) or not _HEADER.fullmatch(name):
            raise ConfigError(f"{what}.{name}", "is not an HTTP header name (letters, digits and -)")
    if kind == "env":
        return {str(k): SecretRef(env=_env_name(v, f"{what}.{k}")) for k, v in headers.items()}
    return {str(k): SecretRef(block=_block_name(v, f"{what}.{k}")) for k, v in headers.items()}


def _env_name(value: Any, key: str) -> str:
    # The value is not shown: a secret pasted where its variable's name belongs would be printed.
    if not isinstance(value, str) or not _ENV.fullmatch(value):
        raise ConfigError(key, "must name an environment variable (letters, digits, _), not hold a value")
    return value


def _block_name(value: Any, key: str) -> str:
    if not isinstance(value, str) or not _BLOCK.fullmatch(value):
        raise ConfigError(key, "must name a Prefect Secret block (lower-case letters, digits, -), not hold a value")
    return value


def _file_path(value: str, key: str) -> str:
    """A file path: one line of text (``~`` is the home directory; relative: see ``flows.alerts``)."""
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ConfigError(key, f"must be a file path on one line, got {show(value)}")
    return str(literal(value, key))


def _title(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value.strip() or any(ord(ch) < 32 for ch in value):
        raise ConfigError(key, f"must be one line of text, got {show(value)}")
    return value
