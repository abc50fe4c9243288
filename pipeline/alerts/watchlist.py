"""The watchlist file: named watches (which studies, which changes, how often, where to) and channels.

Pure: ``parse_watchlist(text, source)`` turns the YAML text into frozen dataclasses or raises a
``UsageError`` whose one line names the file, the watch or channel, and the setting at fault.
Secrets are never values in this file: a channel names an environment variable (``*_env``) or a
Prefect Secret block (``*_secret``) instead, resolved at delivery time (``SecretRef``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import yaml

from pipeline.changes import CATEGORIES, EVENTS, SEVERITIES
from pipeline.enums import STATUSES, Phase
from pipeline.errors import UsageError
from pipeline.parse import NCT_ID

MODES = ("immediate", "digest")
CHANNEL_TYPES = ("slack", "webhook", "email", "apprise", "feed")
SECURITY = ("starttls", "ssl", "none")
FEED_FORMATS = ("json", "atom")
PHASES: tuple[str, ...] = Phase.__args__  # type: ignore[attr-defined]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SECRET_WORDS = ("password", "token", "secret", "api_key", "apikey", "webhook_url")
_STUDY_KEYS = ("ids", "conditions", "sponsors", "phases", "status", "where")
_WATCH_KEYS = ("name", "studies", "categories", "events", "min_severity", "mode", "channels", "since",
               "lookback_days")


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


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys silently; a watchlist says so instead."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise UsageError(f"duplicate key {key!r} (line {key_node.start_mark.line + 1})")
        seen.add(key)
    return dict(yaml.SafeLoader.construct_mapping(loader, node, deep=deep))


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_watchlist(text: str, source: str = "watchlist") -> Watchlist:
    """The watchlist in ``text`` (YAML); every problem is one ``UsageError`` line naming ``source``."""
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except UsageError as exc:
        raise UsageError(f"{source}: {exc}") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{source} is not valid YAML: {' '.join(str(exc).split())}") from None
    try:
        return _watchlist(data, source)
    except UsageError as exc:
        raise UsageError(f"{source}: {exc}") from None


def _watchlist(data: Any, source: str) -> Watchlist:
    if not isinstance(data, dict):
        raise UsageError("must be a mapping with 'channels:' and 'watches:'")
    _known(data, ("defaults", "channels", "watches"), "top level")
    defaults = _mapping(data.get("defaults", {}), "defaults")
    _known(defaults, ("min_severity", "mode", "lookback_days", "categories", "events"), "defaults")
    channels_data = _mapping(data.get("channels"), "channels")
    if not channels_data:
        raise UsageError("no channels: define at least one under 'channels:'")
    channels = {name: _channel(str(name), spec) for name, spec in channels_data.items()}
    watches_data = data.get("watches")
    if not isinstance(watches_data, list) or not watches_data:
        raise UsageError("'watches:' must be a list with at least one watch")
    watches = tuple(_watch(i, spec, defaults, channels) for i, spec in enumerate(watches_data, start=1))
    names = [w.name for w in watches]
    if dupes := sorted({n for n in names if names.count(n) > 1}):
        raise UsageError(f"two watches are named {dupes[0]!r}")
    return Watchlist(watches, channels, source)


# -- watches -------------------------------------------------------------------------------------
def _watch(index: int, spec: Any, defaults: Mapping[str, Any], channels: Mapping[str, Channel]) -> Watch:
    where = f"watch #{index}"
    if not isinstance(spec, dict):
        raise UsageError(f"{where} must be a mapping")
    name = spec.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise UsageError(f"{where}: 'name' must be 1-64 letters, digits, '-', '_' or '.', got {name!r}")
    where = f"watch {name!r}"
    try:
        _known(spec, _WATCH_KEYS, where)
        merged = {**defaults, **spec}
        watch = Watch(
            name=name,
            studies=_selector(spec.get("studies")),
            channels=_channel_names(spec.get("channels"), channels),
            categories=_choices(merged.get("categories"), CATEGORIES, "category"),
            events=_choices(merged.get("events"), EVENTS, "event"),
            min_severity=_choice(merged.get("min_severity", "minor"), SEVERITIES, "min_severity"),
            mode=_choice(merged.get("mode", "immediate"), MODES, "mode"),
            since=_date(spec.get("since")),
            lookback_days=_int(merged.get("lookback_days", 7), "lookback_days", low=0),
        )
    except UsageError as exc:
        raise UsageError(f"{where}: {exc}") from None
    return watch


def _selector(spec: Any) -> StudySelector:
    if not isinstance(spec, dict) or not spec:
        raise UsageError("'studies:' must select studies by ids, conditions, sponsors, phases, status or where")
    _known(spec, _STUDY_KEYS, "studies")
    ids = tuple(i.strip().upper() for i in _strings(spec.get("ids"), "studies.ids"))
    if bad := [i for i in ids if not NCT_ID.match(i)]:
        raise UsageError(f"studies.ids: invalid NCT id {bad[0]!r}")
    where = spec.get("where")
    if where is not None and (not isinstance(where, str) or not where.strip()):
        raise UsageError("studies.where must be a SQL predicate (text)")
    phases = tuple(p.upper() for p in _strings(spec.get("phases"), "studies.phases"))
    _choices(list(phases), PHASES, "phase")
    status = tuple(s.upper() for s in _strings(spec.get("status"), "studies.status"))
    _choices(list(status), STATUSES, "status")
    return StudySelector(
        ids=ids, conditions=_strings(spec.get("conditions"), "studies.conditions"),
        sponsors=_strings(spec.get("sponsors"), "studies.sponsors"), phases=phases, status=status,
        where=where.strip() if where else None,
    )


def _channel_names(value: Any, channels: Mapping[str, Channel]) -> tuple[str, ...]:
    names = _strings(value, "channels")
    if not names:
        raise UsageError("'channels:' must name at least one channel")
    if unknown := [n for n in names if n not in channels]:
        raise UsageError(f"unknown channel {unknown[0]!r}; defined: {', '.join(sorted(channels))}")
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
    where = f"channel {name!r}"
    try:
        if not _NAME.match(name):
            raise UsageError("a channel name must be 1-64 letters, digits, '-', '_' or '.'")
        if not isinstance(spec, dict):
            raise UsageError("must be a mapping with a 'type:'")
        kind = _choice(spec.get("type"), CHANNEL_TYPES, "type")
        _no_literal_secrets(spec)
        _known(spec, _COMMON + _CHANNEL_KEYS[kind], f"a {kind} channel")
        common = dict(name=name, type=kind, timeout=_float(spec.get("timeout", 10.0), "timeout"),
                      attempts=_int(spec.get("attempts", 3), "attempts", low=1))
        return _BUILDERS[kind](spec, common)
    except UsageError as exc:
        raise UsageError(f"{where}: {exc}") from None


def _no_literal_secrets(spec: Mapping[str, Any]) -> None:
    for key in spec:
        lowered = str(key).lower()
        if any(word in lowered for word in _SECRET_WORDS) and not lowered.endswith(("_env", "_secret")):
            raise UsageError(f"'{key}' would put a secret in the watchlist file; name an environment "
                             f"variable ({key}_env: VAR) or a Prefect Secret block ({key}_secret: NAME) instead")


def _url_channel(spec: Mapping[str, Any], common: dict[str, Any]) -> Channel:
    ref = _ref(spec, "url")
    literal = spec.get("url")
    if literal is not None:
        if ref is not None:
            raise UsageError("give one of url, url_env, url_secret")
        if not isinstance(literal, str) or not literal.startswith(("http://", "https://")):
            raise UsageError("url must be an http(s) URL")
        if re.match(r"^https?://[^/@]*:[^/@]*@", literal):
            raise UsageError("url must not carry a password; use url_env or url_secret")
    elif ref is None:
        raise UsageError("needs url_env: VAR or url_secret: NAME" + (
            " (or url: for a webhook without credentials)" if common["type"] == "webhook" else ""))
    headers = {**_refs(spec.get("headers_env"), "env"), **_refs(spec.get("headers_secret"), "block")}
    return Channel(**common, url=literal, url_ref=ref, headers=headers)


def _email_channel(spec: Mapping[str, Any], common: dict[str, Any]) -> Channel:
    host = spec.get("host")
    if not isinstance(host, str) or not host:
        raise UsageError("needs host:")
    security = _choice(spec.get("security", "starttls"), SECURITY, "security")
    port = _int(spec.get("port", {"ssl": 465, "starttls": 587, "none": 25}[security]), "port", low=1)
    sender = spec.get("from")
    if not isinstance(sender, str) or "@" not in sender:
        raise UsageError("needs from: an e-mail address")
    recipients = _strings(spec.get("to"), "to")
    if not recipients or any("@" not in r for r in recipients):
        raise UsageError("needs to: one or more e-mail addresses")
    username = spec.get("username")
    password = _ref(spec, "password")
    if (username is None) != (password is None):
        raise UsageError("give both username and password_env (or password_secret), or neither")
    return Channel(**common, host=host, port=port, security=security, username=username, password_ref=password,
                   sender=sender, recipients=recipients, verify_tls=bool(spec.get("verify_tls", True)),
                   ca_file=str(spec["ca_file"]) if spec.get("ca_file") else None)


def _feed_channel(spec: Mapping[str, Any], common: dict[str, Any]) -> Channel:
    path = spec.get("path")
    if not isinstance(path, str) or not path:
        raise UsageError("needs path: the feed file to write")
    return Channel(**common, path=path, format=_choice(spec.get("format", "json"), FEED_FORMATS, "format"),
                   max_items=_int(spec.get("max_items", 500), "max_items", low=1),
                   title=str(spec.get("title", "trialsync alerts")))


_BUILDERS = {"slack": _url_channel, "webhook": _url_channel, "apprise": _url_channel, "email": _email_channel,
             "feed": _feed_channel}


def _ref(spec: Mapping[str, Any], key: str) -> SecretRef | None:
    env, block = spec.get(f"{key}_env"), spec.get(f"{key}_secret")
    if env is not None and block is not None:
        raise UsageError(f"give one of {key}_env and {key}_secret")
    if env is not None:
        return SecretRef(env=_env_name(env, f"{key}_env"))
    if block is not None:
        if not isinstance(block, str) or not block:
            raise UsageError(f"{key}_secret must name a Prefect Secret block")
        return SecretRef(block=block)
    return None


def _refs(value: Any, kind: str) -> dict[str, SecretRef]:
    if value is None:
        return {}
    what = "headers_env" if kind == "env" else "headers_secret"
    mapping = _mapping(value, what)
    if kind == "env":
        return {str(k): SecretRef(env=_env_name(v, f"{what}.{k}")) for k, v in mapping.items()}
    return {str(k): SecretRef(block=str(v)) for k, v in mapping.items()}


def _env_name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", value):
        raise UsageError(f"{what} must name an environment variable, got {value!r}")
    return value


# -- small validators ------------------------------------------------------------------------------
def _known(spec: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    if unknown := sorted(str(k) for k in spec if k not in allowed):
        raise UsageError(f"unknown setting {unknown[0]!r} in {where}; known: {', '.join(allowed)}")


def _mapping(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UsageError(f"'{what}:' must be a mapping")
    return value


def _strings(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) and v.strip() for v in items):
        raise UsageError(f"{what} must be a text or a list of texts")
    return tuple(v.strip() for v in items)


def _choice(value: Any, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise UsageError(f"{what} must be one of {', '.join(allowed)}, got {value!r}")
    return str(value)


def _choices(value: Any, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    values = _strings(value, f"{what} list")
    if bad := [v for v in values if v not in allowed]:
        raise UsageError(f"unknown {what} {bad[0]!r}; one of: {', '.join(allowed)}")
    return values


def _int(value: Any, what: str, *, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UsageError(f"{what} must be a whole number >= {low}, got {value!r}")
    return value


def _float(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise UsageError(f"{what} must be a positive number of seconds, got {value!r}")
    return float(value)


def _date(value: Any) -> date | None:
    if value is None or isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise UsageError(f"since must be a date YYYY-MM-DD, got {value!r}") from None
