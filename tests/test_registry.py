"""The registry edge: the fake server's API semantics (checked against real pages) and the client."""

from __future__ import annotations

import re
import time
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import mutate
from pipeline.errors import RegistryError, RegistryNotFound, RegistryRejected, RegistryUnavailable, RegistryWrongStudy
from pipeline.registry.client import USER_AGENT, RegistryClient, RetryPolicy
from pipeline.registry.fake_server import FakeRegistry
from tests.conftest import DATA, examples, nct, real_records

LIST_PAGES = sorted((DATA / "ctgov" / "list_responses").glob("*.json"))


def get(registry: FakeRegistry, path: str, **params: Any) -> requests.Response:
    return requests.get(registry.url + path, params=params, timeout=10)


def test_fake_pages_have_the_shape_of_real_list_pages(registry: FakeRegistry) -> None:
    real = [orjson.loads(p.read_bytes()) for p in LIST_PAGES]
    real_keys = {frozenset(page) for page in real}
    first = get(registry, "/studies", pageSize=5, countTotal="true").json()
    second = get(registry, "/studies", pageSize=5, pageToken=first["nextPageToken"]).json()
    last = get(registry, "/studies", pageSize=1000, countTotal="true").json()
    # Real pages: first with totalCount + token, later ones with a token only, the last without one.
    assert frozenset(first) in real_keys and frozenset(first) == {"studies", "totalCount", "nextPageToken"}
    assert frozenset(second) in real_keys and frozenset(second) == {"studies", "nextPageToken"}
    assert frozenset(last) == {"studies", "totalCount"} and frozenset(last) in real_keys
    token_shape = re.compile(r"^[A-Za-z0-9_-]+$")  # real tokens are opaque URL-safe strings
    assert all(token_shape.match(p["nextPageToken"]) for p in real if "nextPageToken" in p)
    assert token_shape.match(first["nextPageToken"])
    # A record is served exactly as stored: the real record's JSON round-trips.
    assert first["studies"][0] == real_records()[0]


def test_total_count_only_on_the_first_page_and_only_when_asked(registry: FakeRegistry) -> None:
    assert "totalCount" not in get(registry, "/studies", pageSize=3).json()
    first = get(registry, "/studies", pageSize=3, countTotal="true").json()
    assert first["totalCount"] == 326
    later = get(registry, "/studies", pageSize=3, countTotal="true", pageToken=first["nextPageToken"]).json()
    assert "totalCount" not in later


@pytest.mark.parametrize(("size", "served"), [(None, 10), (0, 10), (7, 7), (5000, 326)])
def test_page_size_defaults_to_10_and_is_clamped_to_1000(registry: FakeRegistry, size: int | None,
                                                         served: int) -> None:
    params = {} if size is None else {"pageSize": size}
    assert len(get(registry, "/studies", **params).json()["studies"]) == served


def test_errors_are_plain_text_400_and_404(registry: FakeRegistry) -> None:
    bad = get(registry, "/studies", pageSize="ten")
    assert bad.status_code == 400 and bad.headers["Content-Type"].startswith("text/plain")
    assert "pageSize" in bad.text
    assert get(registry, "/studies", pageToken="garbage").status_code == 400
    assert get(registry, "/studies", **{"filter.overallStatus": "RUNNING"}).status_code == 400
    missing = get(registry, "/studies/NCT99999999")
    assert missing.status_code == 404 and missing.headers["Content-Type"].startswith("text/plain")
    assert get(registry, "/studies/banana").status_code == 400
    assert get(registry, "/nothing").status_code == 404


def test_a_page_token_is_only_valid_with_the_first_pages_parameters(registry: FakeRegistry) -> None:
    first = get(registry, "/studies", pageSize=2, **{"query.cond": "cancer"}).json()
    other = get(registry, "/studies", pageSize=2, pageToken=first["nextPageToken"], **{"query.cond": "diabetes"})
    assert other.status_code == 400 and "parameters" in other.text


def test_filters_select_what_the_registry_would(registry: FakeRegistry, records: list[dict[str, Any]]) -> None:
    by_ids = get(registry, "/studies", **{"filter.ids": "NCT05766735|NCT00184067"}).json()["studies"]
    assert sorted(nct(s) for s in by_ids) == ["NCT00184067", "NCT05766735"]
    terminated = get(registry, "/studies", pageSize=1000, **{"filter.overallStatus": "TERMINATED"}).json()
    assert len(terminated["studies"]) == 3
    since = "2026-01-01"
    window = get(registry, "/studies", pageSize=1000,
                 **{"filter.advanced": f"AREA[LastUpdatePostDate]RANGE[{since},MAX]"}).json()["studies"]
    expected = {nct(r) for r in records
                if r["protocolSection"]["statusModule"]["lastUpdatePostDateStruct"]["date"] >= since}
    assert {nct(s) for s in window} == expected and 0 < len(expected) < 326
    diabetes = get(registry, "/studies", pageSize=1000, **{"query.cond": "type 2 diabetes"}).json()["studies"]
    assert diabetes and all("diabetes" in orjson.dumps(s).decode().lower() for s in diabetes)
    assert "NCT05766735" in {nct(s) for s in diabetes}


def test_client_pages_through_a_scope_and_sends_a_user_agent(registry: FakeRegistry) -> None:
    with RegistryClient(registry.url, min_interval=0) as client:
        pages = list(client.iter_pages({"pageSize": "50"}))
    assert [len(p.studies) for p in pages] == [50] * 6 + [26]
    assert pages[0].total_count == 326 and all(p.total_count is None for p in pages[1:])
    assert pages[-1].next_token is None
    studies = registry.study_requests()
    assert "pageToken" not in studies[0] and all(r["pageSize"] == "50" for r in studies)
    assert all("pageToken" in r for r in studies[1:])


def test_client_sends_its_user_agent(registry: FakeRegistry) -> None:
    client = RegistryClient(registry.url, min_interval=0)
    assert client.session.headers["User-Agent"] == USER_AGENT
    response = client.session.get(registry.url + "/version", timeout=5)
    assert response.request.headers["User-Agent"].startswith("trialsync/")


def test_an_empty_page_is_legal(records: list[dict[str, Any]]) -> None:
    with FakeRegistry([]).start() as empty, RegistryClient(empty.url, min_interval=0) as client:
        pages = list(client.iter_pages({}))
    assert len(pages) == 1 and pages[0].studies == [] and pages[0].total_count == 0


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def test_429_is_retried_after_the_servers_retry_after(registry: FakeRegistry) -> None:
    registry.faults.add("status", status=429, retry_after="7", times=2, body="Too Many Requests")
    sleeps = Sleeps()
    client = RegistryClient(registry.url, min_interval=0, sleep=sleeps)
    page = client.get_page({"pageSize": "10"}, None, 1)
    assert len(page.studies) == 10
    assert sleeps.calls == [7.0, 7.0]


def test_503_and_resets_back_off_exponentially(registry: FakeRegistry) -> None:
    registry.faults.add("status", status=503, times=2)
    registry.faults.add("reset", times=1)
    sleeps = Sleeps()
    client = RegistryClient(registry.url, min_interval=0, sleep=sleeps, retry=RetryPolicy(backoff_base=0.5))
    assert len(client.get_page({}, None, 1).studies) == 10
    assert sleeps.calls == [0.5, 1.0, 2.0]


def test_a_timeout_is_retried(registry: FakeRegistry) -> None:
    registry.faults.add("delay", delay=1.5, times=1)
    client = RegistryClient(registry.url, min_interval=0, timeout=(1, 0.5),
                            retry=RetryPolicy(backoff_base=0.01))
    assert len(client.get_page({}, None, 1).studies) == 10
    assert client.retries == 1


def test_a_truncated_body_is_retried(registry: FakeRegistry) -> None:
    registry.faults.add("truncate", times=1)
    client = RegistryClient(registry.url, min_interval=0, retry=RetryPolicy(backoff_base=0.01))
    assert len(client.get_page({}, None, 1).studies) == 10 and client.retries == 1


def test_a_persistent_500_gives_up_after_the_attempt_budget(registry: FakeRegistry) -> None:
    registry.faults.add("status", status=500, times=-1, body="Internal Server Error")
    client = RegistryClient(registry.url, min_interval=0, retry=RetryPolicy(attempts=3, backoff_base=0.01))
    with pytest.raises(RegistryUnavailable, match="HTTP 500: Internal Server Error") as info:
        client.get_page({}, None, 1)
    assert info.value.status == 500 and info.value.retryable
    assert len(registry.study_requests()) == 3


def test_400_and_404_are_not_retried(registry: FakeRegistry) -> None:
    client = RegistryClient(registry.url, min_interval=0)
    with pytest.raises(RegistryRejected, match="Invalid pageToken") as info:
        client.get_page({}, "not-a-token", 2)
    assert not info.value.retryable
    with pytest.raises(RegistryNotFound):
        client.get_study("NCT99999999")
    assert len(registry.requests) == 2


def test_a_redirect_loop_is_one_clear_error_naming_the_url_and_is_not_retried(registry: FakeRegistry) -> None:
    """A proxy that redirects a request to itself: following it again cannot help."""
    registry.faults.add("status", status=302, location="/api/v2/studies", times=-1, body="Found")
    client = RegistryClient(registry.url, min_interval=0, retry=RetryPolicy(attempts=4, backoff_base=0.01))
    with pytest.raises(RegistryError) as info:
        client.get_page({}, None, 1)
    assert not info.value.retryable and client.retries == 0
    assert len(registry.study_requests()) == client.session.max_redirects + 1  # one try, its redirects followed
    assert str(info.value).startswith(f"redirect loop at {registry.url}/studies: more than 30 redirects")
    assert "\n" not in str(info.value)


def test_a_study_look_up_answered_with_another_studys_record_is_an_error_and_an_alias_is_not(
        registry: FakeRegistry) -> None:
    asked, other = nct(real_records()[0]), real_records()[1]
    client = RegistryClient(registry.url, min_interval=0)
    registry.faults.add("status", status=200, path=f"/studies/{asked}", content_type="application/json",
                        body=orjson.dumps(other).decode())
    with pytest.raises(RegistryWrongStudy) as info:
        client.get_study(asked)
    assert str(info.value) == (f"asked for study {asked}, the registry answered with the record of {nct(other)} "
                               "(not one of its aliases either)")
    # A merged study: the registry answers its old id with the study that holds it as an alias (301).
    registry.put(mutate.set_path(other, ("protocolSection", "identificationModule", "nctIdAliases"),
                                 ["NCT09999991"]))
    assert nct(client.get_study("NCT09999991")) == nct(other)


def test_requests_are_paced_by_the_polite_interval(registry: FakeRegistry) -> None:
    client = RegistryClient(registry.url, min_interval=0.3)
    start = time.monotonic()
    for number in range(1, 4):
        client.get_page({"pageSize": "1"}, None, number)
    assert time.monotonic() - start >= 0.6


def test_fake_serves_records_a_test_hands_it(registry: FakeRegistry) -> None:
    changed = mutate.set_status(real_records()[0], "COMPLETED")
    registry.put(changed)
    served = get(registry, f"/studies/{nct(changed)}").json()
    assert served["protocolSection"]["statusModule"]["overallStatus"] == "COMPLETED"
    registry.remove(nct(changed))
    assert get(registry, f"/studies/{nct(changed)}").status_code == 404


def test_a_loopback_registry_is_reached_directly_whatever_proxy_the_environment_names(
        registry: FakeRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy runs elsewhere: its loopback is not ours. Through it, the demo's own registry, `trialsync
    fake-registry` or a local mirror failed ('Unable to connect to proxy') unless NO_PROXY listed it."""
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # nothing listens there
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    retry = RetryPolicy(attempts=1, backoff_base=0.01)
    for url in (registry.url, *(registry.url.replace("127.0.0.1", host) for host in (
            "localhost", "[::ffff:127.0.0.1]", "127.1"))):  # the last two went through the proxy
        with RegistryClient(url, min_interval=0, retry=retry) as client:
            assert len(client.get_page({"pageSize": "3"}, None, 1).studies) == 3
    # Any other host still goes through the environment's proxy.
    with RegistryClient("http://registry.invalid/api/v2", min_interval=0, retry=retry) as client, \
            pytest.raises(RegistryUnavailable, match="ProxyError"):
        client.get_page({}, None, 1)


@pytest.mark.parametrize(("url", "loopback"), [
    ("http://127.0.0.1:8000/api/v2", True), ("http://127.5.6.7/x", True), ("http://[::1]:80/", True),
    ("https://localhost/api/v2", True), ("http://LOCALHOST./", True), ("http://app.localhost:9/", True),
    ("https://clinicaltrials.gov/api/v2", False), ("http://128.0.0.1/", False), ("http://localhost.example/", False),
    ("http://[::2]/", False), ("http://10.0.0.1/", False), ("http://[bad/", False),
    # What the resolver connects to on loopback, spelled otherwise (each went through the proxy).
    ("http://[::ffff:127.0.0.1]:4200/api", True), ("http://[::ffff:7f00:1]/", True),
    ("http://[0:0:0:0:0:0:0:1]/", True), ("http://127.1:4200/api", True), ("http://2130706433/", True),
    ("http://0x7f.1/", True), ("http://[::ffff:10.0.0.1]/", False), ("http://128.1/", False),
    ("http://1.2.3.4.5/", False), ("http://127..1/", False), ("http://127.0.0.1.example/", False),
    # inet_aton stops at a blank and ignores the rest; an IPv4 address has no zone (these were loopback).
    ("http://127.1 evil.example/", False), ("http://127.0.0.1 x/", False), ("http://127.0.0.1%evil.example/", False),
    ("http://127.0.0.1%2500/", False), ("http://0/", False), ("http://0.0.0.0/", False), ("http:///x", False),
    ("http://0x7f.1.example/", False), ("http://[::1%25lo]/", False), ("http://[fe80::1%25lo]/", False)])
def test_only_this_machines_loopback_hosts_skip_the_proxy(url: str, loopback: bool) -> None:
    from pipeline.http_session import is_loopback

    assert is_loopback(url) is loopback


@settings(max_examples=examples(300, 3000), deadline=None)
@given(st.sampled_from(["127.0.0.1", "127.1", "0x7f.1", "0177.0.0.1", "2130706433", "::1", "::ffff:127.0.0.1", "0"]),
       st.text(alphabet="0123456789abfx.:% \tlo-e", max_size=12), st.booleans())
def test_a_host_taken_for_loopback_is_one_the_resolver_reads_as_a_loopback_address(base: str, more: str,
                                                                                   before: bool) -> None:
    """Whatever the spelling, a host that skips the proxy is one the system's resolver reads, whole, as an
    address on this machine's loopback (or a name under ``localhost``)."""
    import ipaddress
    import socket

    from pipeline.http_session import is_loopback

    host = more + base if before else base + more
    url = f"http://[{host}]/" if ":" in host else f"http://{host}/"
    if not is_loopback(url):
        return
    host = str(urlsplit(url).hostname).rstrip(".")  # what a client connects to (tabs, newlines, a root dot dropped)
    found = {str(info[4][0]).split("%")[0] for info in socket.getaddrinfo(host, None, flags=socket.AI_NUMERICHOST)}
    addresses = [ipaddress.ip_address(a) for a in found]
    assert addresses and all(a.is_loopback or getattr(getattr(a, "ipv4_mapped", None), "is_loopback", False)
                             for a in addresses), (host, found)


def test_serve_reaches_its_own_prefect_server_on_loopback_whatever_proxy_the_environment_names(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """With HTTP_PROXY set (NO_PROXY not listing loopback) 'serve' asked its own server on 127.0.0.1 through
    the proxy and gave up: 'the Prefect server did not answer within 60s'. A real server on loopback
    answers /health here (it stands in for the Prefect server serve starts)."""
    import http.server
    import subprocess
    import sys
    import threading

    from flows.serving import _wait_healthy

    class Health(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/api/health" else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # nothing listens there
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("flows.serving.STARTUP_SECONDS", 5.0)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        started = time.monotonic()
        _wait_healthy(f"http://127.0.0.1:{server.server_address[1]}/api", alive, tmp_path / "server.log")
        assert time.monotonic() - started < 4
    finally:
        alive.kill()
        alive.wait()
        server.shutdown()
        server.server_close()


def test_serve_makes_prefects_own_clients_reach_its_loopback_server_directly(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past its health check, serve talks to its server through Prefect's client (httpx), which follows
    HTTP_PROXY for 127.0.0.1 too: with a proxy in the environment the runner failed ('All connection
    attempts failed'), and so would the flow-run processes. A real loopback server answers Prefect's own
    health check here; the user's NO_PROXY entries stay, and a remote server's host is not added."""
    import asyncio
    import http.server
    import os
    import threading

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.serving import direct_to_loopback

    class Health(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/api/health" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "4")
            self.end_headers()
            self.wfile.write(b"true")

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/api"
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # nothing listens there
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "mirror.example")

    async def healthcheck() -> Exception | None:
        async with get_client() as client:
            return await client.api_healthcheck()

    try:
        direct_to_loopback("https://prefect.example.org/api")
        assert (os.environ["NO_PROXY"], os.environ["no_proxy"]) == ("mirror.example",) * 2
        direct_to_loopback(url)
        with temporary_settings({PREFECT_API_URL: url}):
            assert asyncio.run(healthcheck()) is None  # no error
        assert (os.environ["NO_PROXY"], os.environ["no_proxy"]) == ("mirror.example,127.0.0.1",) * 2
    finally:
        server.shutdown()
        server.server_close()
