"""Where a watchlist's alerts go: a webhook's literal URL (http(s), a host, no credentials in it),
and the e-mail addresses and host names of an e-mail channel, checked as the ``email`` package reads
them (RFC 5322: quoted local parts, IDN domains through IDNA, ``_`` in a label, a trailing dot); one
line each, exactly one address where one is asked for. Pure."""

from __future__ import annotations

import email.errors
import email.policy
import encodings.idna
import re
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from pipeline.config import ConfigError

_HOST = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,62}))*\.?$"
                   r"|^\[[0-9A-Fa-f:.]+\]$|^[0-9A-Fa-f:]+:[0-9A-Fa-f:.]*$")
_LABEL = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")  # a host name label (ASCII)
_LITERAL = re.compile(r"^\[[0-9A-Fa-f:.]+\]$")  # name@[192.0.2.1]


def host_name(host: str) -> bool:
    """An SMTP server's host name (IDN labels through IDNA) or IP address; no scheme, user or port."""
    return bool(_HOST.fullmatch(idna_host(host)))  # whole: ``$`` alone would take a trailing newline


def address(text: str) -> bool:
    """Exactly one ``name@domain`` or ``Name <name@domain>`` (RFC 5322, as the ``email`` package reads
    it: a quoted local part, an IDN domain, an ``_`` in a label, a trailing dot are fine), one line (a
    newline would add mail headers)."""
    found = mailboxes(text)
    return found is not None and len(found) == 1 and all(map(bool, found[0])) and _domain(found[0][1])


def idna_host(host: str) -> str:
    """A host name with its non-ASCII labels in IDNA (``smtp.bücher.de``: ``smtp.xn--bcher-kva.de``)."""
    try:
        return ".".join(label if label.isascii() else encodings.idna.ToASCII(label).decode()
                        for label in host.split("."))
    except UnicodeError:
        return host  # the host check refuses it


def ascii_domain(address: str) -> str:
    """``Name <name@bücher.de>`` as ``Name <name@xn--bcher-kva.de>``: what an SMTP server without
    SMTPUTF8 takes (the display name is encoded in the header as usual)."""
    return re.sub(r"@([^@<>\s]+)(>?)\s*$", lambda m: f"@{idna_host(m[1])}{m[2]}", address.strip())


def mailboxes(text: str) -> list[tuple[str, str]] | None:
    """The (local part, domain) of each address in ``text``; None when it does not parse cleanly."""
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        return None
    # The parser stops at a root-label dot (``example.org.``): valid in DNS, so taken off before.
    text = re.sub(r"(@[^@\s<>]*[^.@\s<>])\.(\s*>?)$", r"\1\2", text.strip())
    try:
        header = email.policy.default.header_factory("to", text)
    except (email.errors.HeaderParseError, IndexError, ValueError, TypeError):
        return None
    defects = [d for d in header.defects if not isinstance(d, email.errors.NonASCIILocalPartDefect)]
    if defects or any(group.display_name is not None for group in header.groups):
        return None
    return [(a.username, a.domain) for a in header.addresses]


def _domain(domain: str) -> bool:
    """A host name (IDN labels through IDNA; ``_`` allowed, as mail relays have it) or an address literal."""
    if _LITERAL.match(domain):
        return True
    labels = domain.removesuffix(".").split(".")
    try:
        ascii_labels = [label if label.isascii() else encodings.idna.ToASCII(label).decode() for label in labels]
    except UnicodeError:
        return False
    return len(".".join(ascii_labels)) <= 253 and all(_LABEL.fullmatch(label) for label in ascii_labels)


def check_webhook_url(url: Any, key: str) -> None:
    """A literal webhook URL: http(s), a host, no user info, no secret-looking query parameter. The
    URL itself is never part of the message (it may hold a token where we do not expect one)."""
    if not isinstance(url, str) or any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise ConfigError(key, "must be an http(s) URL (text without spaces or control characters)")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number in 0-65535
    except ValueError:
        raise ConfigError(key, "is not a valid URL (its host or port does not parse)") from None
    if parts.scheme not in ("http", "https"):
        raise ConfigError(key, "must be an http(s) URL (lower-case http:// or https://)")
    if "@" in parts.netloc:
        raise ConfigError(key, "must not carry credentials (user:password@); use url_env or url_secret")
    if not parts.hostname:
        raise ConfigError(key, "has no host name")
    if not host_name(parts.hostname):
        raise ConfigError(key, "has an invalid host name (letters, digits, '-', '_' and dots, or an IP address)")
    if any(_secret_parameter(name) for name, _ in parse_qsl(parts.query, keep_blank_values=True)):
        raise ConfigError(key, "carries a secret-looking query parameter; use url_env or url_secret")


def header_value(text: str) -> bool:
    """One line of visible text, as an HTTP header's value must be (a line break would end the header;
    requests refuses it at each delivery); tabs inside are allowed, spaces at an end are not. Only
    Latin-1: http.client encodes a value so, and a character beyond it (``€``) failed each delivery with
    a UnicodeEncodeError."""
    return text == text.strip() and not any((ord(ch) < 32 and ch != "\t") or 127 <= ord(ch) < 160 or ord(ch) > 255
                                            for ch in text)


def http_url(text: str) -> bool:
    """An http(s) URL with a host name, as a webhook channel's secret URL must be (credentials and query
    allowed: that is why it is a secret); nothing of it is ever shown."""
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in text):
        return False
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises on a port that is not a number in 0-65535
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and host_name(parts.hostname or "")


# Query parameter names (or one of their ``_``/``-``/``.``-separated parts) that carry a credential.
# Whole words, not substrings: ``?author=``, ``?keyword=``, ``?design=``, ``?assignee=`` are fine.
_SECRET_PARAMETERS = frozenset({
    "key", "apikey", "api_key", "sig", "signature", "token", "accesstoken", "access_token", "auth",
    "authorization", "password", "passwd", "pwd", "secret", "code", "credential", "credentials",
    "webhook_url", "session", "sessionid"})


def _secret_parameter(name: str) -> bool:
    lowered = name.strip().lower()
    return lowered in _SECRET_PARAMETERS or any(
        part in _SECRET_PARAMETERS for part in re.split(r"[_.-]", lowered))


# ``${...}`` and ``$NAME`` in capitals, as environment variables are written: a shell's, not ours. A ``$``
# before a lower-case word is text (Azure's ``$web`` container, OData's ``?$format=``, ``ops$team@``).
_VARIABLE = re.compile(r"\$\{[^}]*\}?|\$[A-Z_][A-Z0-9_]*\b")


def literal(value: Any, key: str, *, shown: bool = True) -> Any:
    """A text that names a host, address, user, URL or file is taken as written: ``${SMTP_HOST}`` or
    ``$HOME/feed.json`` would be a host or a directory of that name, so it is refused, saying how
    (naming the variable unless ``shown`` is false: a URL's parts are never printed)."""
    if isinstance(value, str) and (found := _VARIABLE.search(value)):
        what = f"{found[0]!r}: " if shown else ""
        raise ConfigError(key, f"{what}environment variables are not expanded in a watchlist; write the "
                               f"value, name secrets with *_env, or expand the file first "
                               f"(--config <(envsubst < FILE))")
    return value
