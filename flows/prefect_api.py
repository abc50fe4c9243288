"""The Prefect server a command reports to, on a bad day: checked before a run, left in bounded time after.

Prefect's own client waits for a server long and quietly: a ``PREFECT_API_URL`` that accepts connections
but never answers held a command ~7 minutes before 'Failed to reach API' (a minute's timeout, retried),
and a web page answering 200 where the API should be read as 'does not answer'. A server that dies
while a run goes on is worse: the run's work (its commit) finishes, then Prefect fails to record the
flow run's end (the command said ``ConnectError``, exit 1, for a committed run), and at exit it retries
every queued event and log line for ~7 s each before the process may leave (minutes for a small sync,
hours for a large one: a lingering process, a wall of Prefect errors).

Here: ``check_server`` asks the server's ``/health`` once, with a short bound, before a command's flow
run starts; ``finished_despite`` names the run whose work finished although Prefect could not record
its end; ``settle`` gives Prefect's queued events and logs a bounded time to go out at the end of a
command and says how many were left behind (the CLI then leaves without Prefect's unbounded exit hook).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any
from urllib.parse import urlsplit

from pipeline.errors import TrialsyncError, UsageError

HEALTH_SECONDS = 10.0  # a live Prefect server answers /health in milliseconds
SETTLE_SECONDS = 10.0  # for the events and logs still queued when a command ends

logger = logging.getLogger("trialsync.flows")


class PrefectServerUnusable(TrialsyncError):
    """The configured Prefect server does not answer, or is not a Prefect server."""


_settings_checked = False


def check_settings() -> None:
    """Prefect's settings (``PREFECT_*`` in the environment or the active profile), checked before Prefect
    is first used: a value Prefect cannot read (``PREFECT_LOGGING_LEVEL=nonsense``, ``PREFECT_API_URL=
    http://[bad``) printed 'Failed to initialize plugins:' with pydantic's report as Prefect was imported,
    then 'ValidationError: 2 validation errors for LoggingSettings'; now one line naming the variable,
    exit 2, like a bad flag. Also refused: a request timeout of 0 or less (every request to the server
    timed out, reported as a server that does not answer) and an API URL that is not http(s)."""
    global _settings_checked
    if _settings_checked:
        return
    import contextlib
    import io

    import pydantic
    from pydantic_settings import SettingsError

    said = io.StringIO()
    with contextlib.redirect_stderr(said):  # Prefect reports bad settings on import, at length
        import prefect  # noqa: F401
    from prefect.settings.models.root import Settings

    try:
        settings = Settings()
    except pydantic.ValidationError as exc:
        raise UsageError(_bad_setting(exc)) from None
    except SettingsError as exc:  # a value Prefect reads as JSON (PREFECT_CLIENT_CUSTOM_HEADERS) that is not
        what = f"it is read as JSON ({exc.__cause__})" if isinstance(exc.__cause__, ValueError) else "it cannot be read"
        name = _culprit(Settings) or "a Prefect setting (PREFECT_* in the environment or the active Prefect profile)"
        raise UsageError(f"{name} is not a setting Prefect can use: {what}") from None
    sys.stderr.write(said.getvalue())  # whatever else Prefect said on import
    timeout = settings.api.request_timeout
    if timeout is not None and not timeout > 0:
        raise UsageError(f"PREFECT_API_REQUEST_TIMEOUT must be more than 0 seconds, not {timeout:g} (every request "
                         "to the Prefect server would time out)")
    url = str(settings.api.url or "")
    if url and (urlsplit(url).scheme.lower() not in ("http", "https") or not urlsplit(url).hostname):
        from pipeline.redact import redact

        raise UsageError(f"PREFECT_API_URL must be an http:// or https:// URL of a Prefect server's API, not "
                         f"{redact(url)!r}")
    _settings_checked = True


def _bad_setting(exc: Any) -> str:
    """The first problem of Prefect's settings, named by its variable (its value may be a secret: not shown)."""
    from prefect.settings.models.root import Settings

    error = exc.errors()[0]
    what = " ".join(str(error.get("msg") or "").split())[:200]
    model = _settings_model(Settings, exc.title)
    loc = [str(p) for p in error.get("loc") or ()]
    named = ""
    if model is not None and loc:
        prefix = str(model.model_config.get("env_prefix") or "PREFECT_")
        named = f"{prefix}{'_'.join(loc).upper()}"
    if named in os.environ:
        return f"{named} is not a setting Prefect can use: {what}"
    # Set by another name (an alias: PREFECT_API_DATABASE_TIMEOUT), a key inside a JSON value (the error's
    # place is PREFECT_CLIENT_CUSTOM_HEADERS' key), a check of the whole (the API URL's): the variable
    # without which the settings pass.
    if name := _culprit(Settings) or named:
        return f"{name} is not a setting Prefect can use: {what}"
    return f"a Prefect setting (PREFECT_* in the environment or the active Prefect profile) is not one Prefect can " \
           f"use: {what}"


def _culprit(settings: Any) -> str | None:
    """The one ``PREFECT_*`` variable of the environment without which Prefect's settings are valid."""
    import pydantic
    from pydantic_settings import SettingsError

    for name in sorted(k for k in os.environ if k.startswith("PREFECT_")):
        value = os.environ.pop(name)
        try:
            settings()
            return name
        except (pydantic.ValidationError, SettingsError):
            continue
        finally:
            os.environ[name] = value
    return None


def _settings_model(model: Any, name: str, seen: frozenset[Any] = frozenset()) -> Any:
    """The settings model of that class name among ``model``'s nested ones."""
    if getattr(model, "__name__", None) == name:
        return model
    for field in getattr(model, "model_fields", {}).values():
        kind = field.annotation
        if (isinstance(kind, type) and hasattr(kind, "model_fields") and kind not in seen
                and (found := _settings_model(kind, name, seen | {kind})) is not None):
            return found
    return None


def api_url() -> str:
    from prefect.settings import get_current_settings

    return str(get_current_settings().api.url or "")


def direct_to_loopback(url: str) -> None:
    """``url``'s host added to ``NO_PROXY`` (both spellings) when it is on loopback: Prefect's clients
    (httpx, in this process and in the processes it starts: serve's flow runs, pool workers) follow
    ``HTTP_PROXY`` for every host ``NO_PROXY`` does not list, loopback too, and a proxy's loopback is
    not ours (serve's server answered its health check, then its runner failed: 'All connection attempts
    failed'; a sync's flow run failed the same way past ``check_server``, which goes there directly)."""
    from pipeline.http_session import bypass_proxy_for_loopback  # not at import: every command imports this

    bypass_proxy_for_loopback(url)


def _unusable(url: str, what: str) -> PrefectServerUnusable:
    return PrefectServerUnusable(f"the Prefect server at {url.rstrip('/')}/ (PREFECT_API_URL) {what}: start it, "
                                 "or unset PREFECT_API_URL to run without one")


def check_server(url: str, timeout: float = HEALTH_SECONDS) -> None:
    """Refuse a server that cannot take a run: nothing listening, no answer within ``timeout``, or a
    direct answer that is not Prefect's (a web page). The request carries what Prefect's
    client sends (its API key or auth string, ``PREFECT_CLIENT_CUSTOM_HEADERS``). An answer Prefect may
    still accept is left for Prefect to judge: a 401 of a server that wants a key, a TLS setting of
    Prefect's own, a redirect (Prefect's client follows them), JSON other than ``true`` (a server that
    words its health otherwise)."""
    import requests

    from pipeline.http_session import Session

    health = f"{url.rstrip('/')}/health"
    try:
        with (Session() as http,
              http.get(health, timeout=(timeout, timeout), allow_redirects=False, stream=True,
                       headers=_prefect_headers()) as response):
            judged = 200 <= response.status_code < 300
            body = response.raw.read(4096, decode_content=True) if judged else b""
    except requests.exceptions.SSLError:
        return
    except requests.Timeout:
        raise _unusable(url, f"does not answer within {timeout:.0f}s") from None
    except requests.ConnectionError:
        raise _unusable(url, "does not answer") from None
    except requests.RequestException:
        return
    if judged and body.strip() != b"true" and not _is_json(response):
        raise _unusable(url, f"answered, but not as a Prefect server ({_looks_like(response, body)})")


def _prefect_headers() -> dict[str, str]:
    """The headers Prefect's client adds to its requests: a proxy in front of the server may need them."""
    import base64

    from prefect.settings import get_current_settings

    settings = get_current_settings()
    headers = {str(k): str(v) for k, v in (settings.client.custom_headers or {}).items()}
    if settings.api.auth_string is not None and (auth := settings.api.auth_string.get_secret_value()):
        headers["Authorization"] = f"Basic {base64.b64encode(auth.encode()).decode()}"
    elif settings.api.key is not None and (key := settings.api.key.get_secret_value()):
        headers["Authorization"] = f"Bearer {key}"
    return headers


def _is_json(response: Any) -> bool:
    kind = (response.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    return kind == "application/json" or kind.endswith("+json")


def _looks_like(response: Any, body: bytes) -> str:
    import re

    kind = (response.headers.get("Content-Type") or "no content type").split(";")[0].strip()
    title = re.search(rb"<title[^>]*>([^<]{1,80})", body, re.IGNORECASE)
    shown = f' "{" ".join(title.group(1).decode("utf-8", "replace").split())}"' if title else ""
    return f"HTTP {response.status_code}, {kind}{shown}"


def finished_despite(exc: BaseException, name: str) -> None:
    """The warning for a flow whose function returned but whose end Prefect could not record."""
    what = " ".join(str(exc).split())[:200] or type(exc).__name__
    logger.warning("%s finished, but Prefect could not record its end (%s: %s): the Prefect server at %s "
                   "may show its flow run as still running", name, type(exc).__name__, what, api_url())


def settle(timeout: float = SETTLE_SECONDS) -> int:
    """Wait up to ``timeout`` for Prefect's queued events and logs to go out; the number of Prefect
    services still sending (0: all went, or Prefect was never used). Services stopped here start again
    on their next use."""
    if "prefect._internal.concurrency.services" not in sys.modules:
        return 0
    from prefect._internal.concurrency.services import QueueService

    try:
        result = QueueService.drain_all(timeout=timeout, at_exit=False)
    except Exception:  # only the exit's timing is at stake
        return 0
    if not isinstance(result, tuple):  # called inside an event loop: not the CLI's case
        return 0
    _done, pending = result
    return len(pending)
