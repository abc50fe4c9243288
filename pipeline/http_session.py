"""The HTTP session of the registry client, the bulk download and the webhook channels: requests' own,
except that a loopback host (``localhost``, ``127.0.0.0/8``, ``::1``) is never reached through a proxy
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
from typing import Any
from urllib.parse import urlsplit

import requests


def is_loopback(url: str) -> bool:
    """The URL's host is this machine's loopback: ``localhost`` (and ``*.localhost``), ``127.0.0.0/8``, ``::1``."""
    try:
        host = (urlsplit(url).hostname or "").rstrip(".").lower()
    except ValueError:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
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
