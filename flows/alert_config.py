"""A watchlist file for an alerts run: read and checked before Prefect starts, its channels' secrets
looked up (environment variables or Prefect Secret blocks; never shown), and log records masked."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flows import settings
from pipeline.alerts.addresses import header_value, http_url
from pipeline.alerts.channels import Resolved
from pipeline.alerts.redact import Redactor
from pipeline.alerts.watchlist import Channel, SecretRef, Watchlist, parse_watchlist
from pipeline.errors import UsageError
from warehouse.alerts import check_predicate


def load_watchlist(path: str | os.PathLike[str]) -> Watchlist:
    """Read and check a watchlist file (also every ``where:`` predicate); one-line ``UsageError``s."""
    watchlist = parse_watchlist(settings.read_config(path, "watchlist"), str(path))
    for watch in watchlist.watches:
        if watch.studies.where:
            try:
                check_predicate(watch.studies.where)
            except UsageError as exc:
                raise UsageError(f"{path}: watches[{watch.name}].studies.where: {exc}") from None
    return watchlist


def check_config(path: str | os.PathLike[str], *, environment: bool = True) -> Watchlist:
    """Before Prefect starts: the file is valid and (``environment``) every environment variable it
    names is set (``serve --list`` only lists: the variables may be set only where it serves)."""
    watchlist = load_watchlist(path)
    base = settings.config_dir(path)  # relative paths are the watchlist file's
    feeds: dict[Path, Channel] = {}
    for channel in watchlist.channels.values():
        key = f"{path}: channels.{channel.name}"
        feed = settings.config_path(base, channel.path, f"{key}.path") if channel.path else None
        if feed and feed.is_dir():
            raise UsageError(f"{key}.path: is a directory; name the feed file to write")
        if feed:  # one file in two formats: each write would find the other's feed and fail, every run
            other = feeds.setdefault(feed, channel)
            if other.format != channel.format:
                raise UsageError(f"{key}.path: the file of channels.{other.name}, which "
                                 f"writes it as {other.format}, not {channel.format}; give each format its own file")
        if channel.ca_file and not settings.config_path(base, channel.ca_file, f"{key}.ca_file").is_file():
            raise UsageError(f"{key}.ca_file: no such file {channel.ca_file}")
        for ref in channel.secrets():
            if environment and ref.env and not os.environ.get(ref.env):
                raise UsageError(f"{path}: channels.{channel.name}: environment variable {ref.env} is not set")
        for header, ref in channel.headers.items():
            if environment and ref.env:
                _header_value(os.environ[ref.env], ref, key, header)
        url = channel.url_ref.env if channel.url_ref and channel.type in ("slack", "webhook") else None
        if environment and url and not http_url(os.environ[url]):  # every run would fail "cannot reach"
            raise UsageError(f"{path}: channels.{channel.name}.url_env: environment variable {url} does not hold an "
                             f"http(s) URL with a host (its value is not shown)")
    return watchlist


def _secret(ref: SecretRef, channel: Channel) -> str:
    if ref.env:
        value = os.environ.get(ref.env)
        if not value:
            raise UsageError(f"channel {channel.name!r}: environment variable {ref.env} is not set")
        return value
    from prefect.blocks.system import Secret

    assert ref.block
    try:
        value = Secret.load(ref.block).get()  # type: ignore[union-attr]
    except Exception as exc:  # no such block, no API
        raise UsageError(f"channel {channel.name!r}: cannot load Prefect Secret block {ref.block!r} "
                         f"({type(exc).__name__})") from None
    return str(value)


def _header_value(value: str, ref: SecretRef, key: str, header: str) -> str:
    """A header's value from the environment or a Secret block (never shown)."""
    if not header_value(value):  # requests refused it at every delivery: 'cannot reach the webhook (InvalidHeader)'
        where = f"environment variable {ref.env}" if ref.env else f"Prefect Secret block {ref.block!r}"
        raise UsageError(f"{key}.headers_{'env' if ref.env else 'secret'}.{header}: {where} holds a line break, "
                         "a control character, spaces at an end or a character beyond Latin-1, which no HTTP header "
                         "value may (its value is not shown)")
    return value


def resolve_channels(watchlist: Watchlist, base_dir: Path, names: set[str] | None = None
                     ) -> tuple[dict[str, Resolved], Redactor]:
    """Each channel with its secrets looked up; the redactor knows every secret value."""
    redactor = Redactor()
    resolved: dict[str, Resolved] = {}
    for name, c in watchlist.channels.items():
        if names is not None and name not in names:
            continue
        url = _secret(c.url_ref, c) if c.url_ref else c.url
        headers = {header: _header_value(_secret(ref, c), ref, f"{watchlist.source}: channels.{name}", header)
                   for header, ref in c.headers.items()}
        password = _secret(c.password_ref, c) if c.password_ref else None
        for value in (url if c.url_ref else None, password, *headers.values()):
            if value:
                redactor.add(value)
        key = f"{watchlist.source}: channels.{name}"
        feed = settings.config_path(base_dir, c.path, f"{key}.path") if c.path else None
        ca_file = settings.config_path(base_dir, c.ca_file, f"{key}.ca_file") if c.ca_file else None
        resolved[name] = Resolved(c, url=url, headers=headers, password=password, feed_path=feed, ca_file=ca_file)
    return resolved, redactor


@contextmanager
def redacting_logs(redactor: Redactor) -> Iterator[None]:
    """Every log record made meanwhile (ours, Prefect's, apprise's, ...) has the secrets masked."""
    if not redactor:
        yield
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            text = record.getMessage()
        except Exception:  # a bad format string: leave it to logging to report
            return record
        record.msg, record.args = redactor(text), ()
        if record.exc_info:
            record.exc_text = redactor(logging.Formatter().formatException(record.exc_info))
        return record

    logging.setLogRecordFactory(factory)
    try:
        yield
    finally:
        logging.setLogRecordFactory(previous)
