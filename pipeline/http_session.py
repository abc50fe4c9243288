"""The HTTP session of the registry client, the bulk download and the webhook channels: requests' own,
except that a loopback host (``localhost``, ``127.0.0.0/8``, ``::1``, in any spelling) is never reached through a proxy
from the environment.

A proxy (``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY``) runs elsewhere: its loopback is not ours, so a
registry or receiver on this machine (``trialsync fake-registry``, the demo's, a local mirror or relay)
reached through it failed ('Unable to connect to proxy', or the proxy's own error page) unless
``NO_PROXY`` happened to list it. Go's HTTP client makes the same exception. Every other host follows the environment as
requests does (``NO_PROXY`` included), also after a redirect from a loopback host.

A redirect's body is never read: requests read it whole into memory (decompressed) before following
the ``Location``, so a redirect with a large or endless body, or a gzip bomb (300 KB making 300 MB),
filled memory unbounded; every other answer's body is read by its caller, within its own bounds. The
connection of a redirect is closed instead of being reused.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from typing import Any
from urllib.parse import urlsplit

import requests


def is_loopback(url: str) -> bool:
    """The URL's host is this machine's loopback: ``localhost`` (and ``*.localhost``), ``127.0.0.0/8``, ``::1``,
    in every spelling the system's resolver connects to there: IPv4 inside IPv6 (``[::ffff:127.0.0.1]``,
    which Python 3.11 does not count as loopback) and the short or numeric IPv4 forms (``127.1``,
    ``2130706433``, ``0x7f.1``) that ``inet_aton`` reads; a proxy was asked for each of them."""
    try:
        host = (urlsplit(url).hostname or "").rstrip(".").lower()
    except ValueError:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    if "%" in host:  # a zone is for link-local addresses: the resolver reads none on ::1 or 127.0.0.1 by name
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return _short_ipv4_loopback(host)
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def bypass_proxy_for_loopback(url: str) -> None:
    """``url``'s host added to ``NO_PROXY`` (both spellings) when it is on loopback, for HTTP code that is
    not ours and reads only the environment (Prefect's httpx clients, Apprise's requests calls), in this
    process and the ones it starts. The user's entries are kept."""
    import os

    try:
        host = urlsplit(url).hostname
    except ValueError:
        return
    if not host or not is_loopback(url):
        return
    current = os.environ.get("no_proxy") or os.environ.get("NO_PROXY") or ""  # lowercase wins, as in urllib
    hosts = [h.strip() for h in current.split(",") if h.strip()]
    if "*" in hosts:
        return
    value = ",".join([*hosts, host] if host not in hosts else hosts)
    os.environ["no_proxy"] = os.environ["NO_PROXY"] = value


# What inet_aton reads as a whole address: one to four numbers (decimal, 0-octal or 0x-hex), dots between.
# Only these go to inet_aton: it stops at the first blank and ignores what follows ('127.1 evil.example').
_NUMERIC_IPV4 = re.compile(r"(?:0x[0-9a-f]+|[0-9]+)(?:\.(?:0x[0-9a-f]+|[0-9]+)){0,3}")


def _short_ipv4_loopback(host: str) -> bool:
    if not _NUMERIC_IPV4.fullmatch(host):
        return False
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host)).is_loopback
    except OSError:
        return False


def _leave_redirect_bodies_unread(response: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
    """A response hook: runs before requests follows a redirect, which reads the redirect's body first
    (``response.content``) unless it is already there: it is, empty. The connection is closed here, the
    body unread (requests then hands it back to its pool, which opens a new one for the next request)."""
    if response.is_redirect:
        response._content = b""
        response.raw.close()
    return response


class Session(requests.Session):
    """``requests.Session`` that reaches loopback hosts directly, whatever proxy the environment names,
    and never reads a redirect's body."""

    def __init__(self) -> None:
        super().__init__()
        self.hooks["response"].append(_leave_redirect_bodies_unread)

    def merge_environment_settings(self, url: Any, proxies: Any, stream: Any, verify: Any,
                                   cert: Any) -> Any:
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if is_loopback(str(url)):
            settings["proxies"] = {}
        return settings

    def rebuild_proxies(self, prepared_request: requests.PreparedRequest, proxies: Any) -> Any:  # a redirect
        rebuilt = super().rebuild_proxies(prepared_request, proxies)
        if is_loopback(str(prepared_request.url)):
            prepared_request.headers.pop("Proxy-Authorization", None)
            return {}
        return rebuilt
