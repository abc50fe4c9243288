"""ClinicalTrials.gov API v2 client: one session, timeouts, polite pacing, bounded retries.

``StudySource`` is the small interface the flows depend on; ``RegistryClient`` implements it over
HTTP. Paging follows the spec: later pages repeat the first page's parameters plus ``pageToken``;
``totalCount`` comes with the first page only; an empty page is legal.

Failing is bounded twice: ``RetryPolicy.attempts`` is the total number of tries of one request
(connection refused counts as a try), and ``budget_seconds`` bounds the waiting of the client's whole
life (one run): the time spent in failed tries plus the waits between them. Once the budget is spent,
a failing request is not tried again. Each try is limited as a whole (``RegistryClient._try_seconds``:
the read timeout or the budget left), so a server that stalls or trickles cannot outlast it. A 429
slows the client down for the rest of its life (``min_interval`` doubles, up to ``max_interval``), not
only for that request; an interval of 0 turns pacing off altogether (a local registry).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
import requests
import urllib3
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_any,
)
from tenacity.stop import stop_base

from pipeline.deadline import Late, call_within
from pipeline.errors import (
    PageTokenRejected,
    RegistryError,
    RegistryNotFound,
    RegistryRejected,
    RegistryUnavailable,
    RegistryWrongStudy,
)
from pipeline.http_session import Session
from pipeline.parse import record_ids, record_nct_id
from pipeline.redact import redact
from pipeline.registry.answers import body_line, not_plain_text, retry_after_seconds, short_error, text_of
from pipeline.registry.defaults import DEFAULT_API_URL, DEFAULT_INTERVAL
from pipeline.registry.pages import Page, check_token_progress, check_walk_length, page_from_json

USER_AGENT = "trialsync/0.1 (+https://github.com/trialsync/trialsync; registry mirror)"
log = logging.getLogger("trialsync.registry")
# How the registry words a page token it no longer accepts (expired, unknown, from other parameters).
_TOKEN_ERROR = re.compile(r"page\s*token", re.I)


class StudySource(Protocol):
    def get_page(self, params: Mapping[str, str], token: str | None, number: int) -> Page: ...


MAX_INTERVAL = 10.0  # how slow repeated 429s can make the client (6 requests a minute)
# Bytes of one answer, decompressed: more is a broken or hostile server. A real page of 1000 studies is
# ~20 MB (18 KB a record on average); 1000 of the largest real record (0.8 MB) would be 0.8 GB.
MAX_BODY_BYTES = 1 << 30
ERROR_BODY_BYTES = 64 << 10  # what is read of an error's answer (its first line is shown)
MIN_TRY_SECONDS = 1.0  # a try's time limit never falls below this, even when the retry budget is spent


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 8  # total tries of one request
    budget_seconds: float = 60.0  # the run's waiting on failures (failed tries + waits), all requests together
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    retry_after_max: float = 300.0


class RegistryClient:
    """HTTP client for API v2 ``/studies``; thread-compatible, not thread-safe."""

    def __init__(
        self,
        base_url: str = DEFAULT_API_URL,
        *,
        min_interval: float = DEFAULT_INTERVAL,
        max_interval: float = MAX_INTERVAL,
        timeout: tuple[float, float] = (10.0, 120.0),
        retry: RetryPolicy | None = None,
        user_agent: str = USER_AGENT,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.min_interval = min_interval
        self.max_interval = max(max_interval, min_interval)
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self._monotonic = monotonic
        self._last_request: float | None = None
        self.session = Session()  # a loopback registry is reached directly, whatever the proxy
        self.session.headers.update({"User-Agent": user_agent, "Accept": "application/json"})
        self.requests_made = 0
        self.retries = 0
        self.retry_spent = 0.0  # seconds of the retry budget used: failed tries and the waits after them
        self.slowed_by_429 = 0  # times a 429 made the client slow down

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- pages -------------------------------------------------------------------------------
    def get_page(self, params: Mapping[str, str], token: str | None, number: int) -> Page:
        """One page of ``/studies``; ``params`` are the scope's, identical on every page."""
        query = dict(params)
        if token is None:
            query["countTotal"] = "true"
        else:
            query["pageToken"] = token
        body, raw = self._get_json_raw("/studies", query)
        return page_from_json(body, number, self.base_url, raw)

    def iter_pages(self, params: Mapping[str, str]) -> Iterator[Page]:
        token: str | None = None
        number, total, idle, per_page = 1, None, 0, 0
        tokens: set[str] = set()
        ids: set[str] = set()
        while True:
            page = self.get_page(params, token, number)
            if number == 1:
                total, per_page = page.total_count, len(page.studies)
            yield page
            if not page.next_token:
                return
            fresh = {nct for nct in map(record_nct_id, page.studies) if nct} - ids
            ids |= fresh
            idle = 0 if fresh else idle + 1
            check_token_progress(page.next_token, tokens, number, self.base_url)
            check_walk_length(number, idle, total, per_page, self.base_url)
            token, number = page.next_token, number + 1

    def get_study(self, nct_id: str) -> dict[str, Any]:
        """``GET /studies/{nct_id}``: the study's record. The registry answers an id it merged into
        another study (one of that study's ``nctIdAliases``) with a 301 to that study: its record is
        returned, and the caller tells the two apart by the record's own ``nctId`` (``record_ids``).
        A record that is neither the study asked for nor one that holds its id as an alias (a cache or
        proxy answering for another study) is an error, never returned as the study's."""
        url = f"{self.base_url}/studies/{nct_id}"
        try:
            body = self._get_json(f"/studies/{nct_id}", {})
        except RegistryNotFound as exc:
            if exc.page:  # the registry answers 404 in plain text (its spec): a web page or JSON is a proxy's,
                # a CDN's or an API gateway's
                raise RegistryError(f"{exc} (a web page or JSON, not the registry's plain-text answer: no word "
                                    f"on study {nct_id})", url=url, status=404) from None
            raise
        if not isinstance(body, dict) or "protocolSection" not in body:
            raise RegistryError(f"unexpected body for study {nct_id}", url=url)
        if nct_id not in record_ids(body):
            raise RegistryWrongStudy(f"asked for study {nct_id}, the registry answered with the record of "
                                f"{record_nct_id(body) or 'no NCT id'} (not one of its aliases either)", url=url)
        return body

    def version(self) -> dict[str, Any]:
        body = self._get_json("/version", {})
        if not isinstance(body, dict) or "apiVersion" not in body:
            raise RegistryError("unexpected /version body", url=self.base_url)
        return body

    def data_timestamp(self) -> str | None:
        """When the registry last refreshed its data (``/version`` ``dataTimestamp``), or None if it
        does not say. Pages fetched under one timestamp come from one consistent data set."""
        try:
            stamp = self.version().get("dataTimestamp")
        except RegistryUnavailable:  # the registry is down or refusing us: the run cannot go on
            raise
        except RegistryError as exc:
            log.warning("cannot read the registry's data timestamp: %s", exc)
            return None
        return stamp if isinstance(stamp, str) and stamp else None

    # -- transport ---------------------------------------------------------------------------
    def _get_json(self, path: str, params: Mapping[str, str], *, base: str | None = None) -> Any:
        return self._get_json_raw(path, params, base=base)[0]

    def _get_json_raw(self, path: str, params: Mapping[str, str], *, base: str | None = None) -> tuple[Any, bytes]:
        """The parsed body and its bytes. Transient failures are retried within the policy: at most
        ``attempts`` tries, and never past the run's retry budget (a wait, e.g. a Retry-After, that
        would end beyond it fails at once). The error that ends it says how many tries it took."""
        url = (base or self.base_url) + path
        retrying = Retrying(
            stop=stop_any(stop_after_attempt(self.retry.attempts), _StopBeyondBudget(self)),
            wait=self._wait,
            retry=retry_if_exception(lambda exc: getattr(exc, "retryable", False)),
            sleep=self._sleep_counted,
            before_sleep=self._log_retry,
            reraise=True,
        )
        tries = self.requests_made
        try:
            return retrying(self._get_json_timed, url, params)
        except RegistryUnavailable as exc:
            tries = self.requests_made - tries
            if tries > 1 and "retry budget" not in str(exc):
                exc.args = (f"{exc} ({tries} tries)",)
            raise

    def _sleep_counted(self, seconds: float) -> None:
        self.retry_spent += seconds
        if self._last_request is not None:  # the wait between tries also paces the next one
            self._last_request -= seconds
        self._sleep(seconds)

    def _get_json_timed(self, url: str, params: Mapping[str, str]) -> tuple[Any, bytes]:
        """One try; a try that fails with a retryable error spends its time from the retry budget."""
        self._pace()
        started = self._monotonic()
        try:
            return self._get_json_once(url, params)
        except RegistryUnavailable:
            self.retry_spent += max(0.0, self._monotonic() - started)
            raise

    def _get_json_once(self, url: str, params: Mapping[str, str]) -> tuple[Any, bytes]:
        self.requests_made += 1
        seconds = self._try_seconds()
        deadline = self._monotonic() + seconds
        try:  # the headers within the deadline too: a registry may drip them a byte at a time
            response = call_within(seconds, lambda: self.session.get(
                url, params=params, timeout=(min(self.timeout[0], seconds), seconds), stream=True),
                name="trialsync-registry", abandoned=requests.Response.close)
        except Late:
            raise RegistryUnavailable(f"timed out: no answer within {seconds:g}s", url=url) from None
        except requests.Timeout as exc:
            raise RegistryUnavailable(f"timed out: {short_error(exc)}", url=url) from None
        except requests.ConnectionError as exc:
            raise RegistryUnavailable(f"connection failed: {short_error(exc)}", url=url) from None
        except requests.TooManyRedirects as exc:  # a loop: asking again follows the same loop
            where = exc.response.url if exc.response is not None else url
            raise RegistryError(f"redirect loop at {redact(url)}: more than {self.session.max_redirects} redirects "
                                f"(the last to {redact(where)}); not retried", url=url) from None
        except (requests.exceptions.InvalidSchema, requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                ValueError) as exc:  # a redirect to ftp:// or to http://[bad (urllib's ValueError), a socks5://
            # proxy without its module: asking again goes the same way
            raise RegistryError(f"cannot fetch {redact(url)}: {short_error(exc)}; not retried", url=url) from None
        except requests.RequestException as exc:
            raise RegistryUnavailable(f"broken response: {short_error(exc)}", url=url) from None
        status = response.status_code
        with response:  # of an error, only its first line is shown: no need to read 1 GB of it
            content = self._read_within(response, deadline, seconds, MAX_BODY_BYTES if status < 300 else None)
        if status == 429:
            self._slow_down()
        if status == 429 or status >= 500:
            raise RegistryUnavailable(
                f"HTTP {status}: {body_line(response, content)}",
                url=response.url,
                status=status,
                retry_after=retry_after_seconds(response.headers.get("Retry-After"), self.retry.retry_after_max),
            )
        if status == 404:
            error = RegistryNotFound(f"HTTP 404: {body_line(response, content)}", url=response.url, status=status)
            error.page = not_plain_text(response, content)
            raise error
        if status == 400 and "pageToken" in params and _TOKEN_ERROR.search(text_of(content)):
            raise PageTokenRejected(f"HTTP {status}: {body_line(response, content)}", url=response.url,
                                    status=status)
        if status >= 400:
            raise RegistryRejected(f"HTTP {status}: {body_line(response, content)}", url=response.url,
                                   status=status)
        try:
            return orjson.loads(content), content
        except orjson.JSONDecodeError as exc:
            # A cut-off body (the server or a proxy dropped the connection mid-answer), or a page that is
            # not JSON at all (a maintenance page): its title says which.
            page = f": {body_line(response, content)}" if text_of(content).lstrip()[:1] == "<" else ""
            raise RegistryUnavailable(f"invalid JSON in response ({exc}){page}", url=response.url,
                                      status=status) from None

    def _try_seconds(self) -> float:
        """How long one try may take in all (connecting, waiting, reading the body): the read timeout,
        and no longer than what is left of the retry budget (at least ``MIN_TRY_SECONDS``), so that a
        registry that accepts connections but stalls or trickles still fails within the budget."""
        left = self.retry.budget_seconds - self.retry_spent
        return min(self.timeout[1], max(left, MIN_TRY_SECONDS))

    def _read_within(self, response: requests.Response, deadline: float, seconds: float, limit: int | None) -> bytes:
        """The whole body by ``deadline``: the socket's timeout shrinks to the time left before each
        read, and each read returns what has arrived, so a body that trickles in cannot outlast it. Over
        ``limit`` bytes is an error; with no limit (an error's answer), its first ``ERROR_BODY_BYTES``."""
        raw = response.raw
        chunks: list[bytes] = []
        size = 0
        try:
            while True:
                left = deadline - self._monotonic()
                if left <= 0:
                    raise RegistryUnavailable(f"timed out: no whole answer within {seconds:g}s", url=response.url)
                sock = getattr(getattr(raw, "connection", None), "sock", None)
                if sock is not None:
                    sock.settimeout(left)
                chunk = raw.read1(1 << 16, decode_content=True)
                if not chunk:
                    return b"".join(chunks)
                chunks.append(chunk)
                size += len(chunk)
                if limit is None and size >= ERROR_BODY_BYTES:
                    return b"".join(chunks)[:ERROR_BODY_BYTES]
                if limit is not None and size > limit:
                    # Not retried: the next try would most likely download as much again.
                    raise RegistryError(f"the answer is larger than {MAX_BODY_BYTES >> 20} MB", url=response.url)
        except (urllib3.exceptions.TimeoutError, TimeoutError) as exc:
            raise RegistryUnavailable(f"timed out: {short_error(exc)}", url=response.url) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            # e.g. the connection dropped before Content-Length bytes came.
            raise RegistryUnavailable(f"broken response: {short_error(exc)}", url=response.url) from None

    def _slow_down(self) -> None:
        """A 429: the registry finds us too fast; every later request of this client waits longer (twice
        as long, up to ``max_interval``). An interval of 0 (pacing off: a local registry) stays 0."""
        slower = min(self.max_interval, self.min_interval * 2)
        if slower > self.min_interval:
            self.slowed_by_429 += 1
            log.warning("the registry answered 429 (too many requests): one request per %gs from now on", slower)
            self.min_interval = slower

    def _pace(self) -> None:
        """At most one request per ``min_interval`` seconds (robots.txt asks for 1 s)."""
        now = self._monotonic()
        if self._last_request is not None:
            wait = self._last_request + self.min_interval - now
            if wait > 0:
                self._sleep(wait)
                now += wait
        self._last_request = now

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            return float(retry_after)
        backoff = self.retry.backoff_base * 2 ** (state.attempt_number - 1)
        return float(min(backoff, self.retry.backoff_max))

    def _log_retry(self, state: RetryCallState) -> None:
        self.retries += 1
        exc = state.outcome.exception() if state.outcome else None
        log.info("registry request failed (attempt %d), retrying: %s", state.attempt_number, redact(str(exc)))


class _StopBeyondBudget(stop_base):
    """Stop when the next wait (e.g. a long Retry-After) would end past the run's retry budget."""

    def __init__(self, client: RegistryClient) -> None:
        self.client = client

    def __call__(self, state: RetryCallState) -> bool:
        budget = self.client.retry.budget_seconds
        wait = self.client._wait(state)
        spent = self.client.retry_spent
        if wait <= budget - spent:
            return False
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RegistryUnavailable):  # say why we gave up early
            exc.args = (f"{exc} ({state.attempt_number} {'try' if state.attempt_number == 1 else 'tries'}; "
                        f"would wait {wait:g}s, beyond the {budget:g}s retry budget ({spent:.0f}s spent))",)
        return True
