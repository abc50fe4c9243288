"""The bulk download on a bad day: a server that compresses what it sends (and drops the connection), one
that trickles its body or its headers, and a proxy in the environment while the server is on loopback.
Each download must end (whole, or failed with its ``.part`` kept), never hang or splice bytes."""

from __future__ import annotations

import gzip
import http.server
import re
import socket
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import BulkDownloadFailed
from pipeline.registry.download import download
from tests.conftest import STUDIES_DIR


@pytest.fixture(scope="module")
def zip_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A real bulk zip of 60 real records (~350 KB)."""
    path = tmp_path_factory.mktemp("zip") / "ctg-studies.json.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for study in sorted(STUDIES_DIR.glob("NCT*.json"))[:60]:
            archive.write(study, f"{study.stem[-2:]}/{study.name}")
    return path.read_bytes()


class _Server:
    """Serves one file like a CDN (``Range``/``If-Range``, an ``ETag``), with habits:

    - ``gzip``: ``"asked"`` compresses the answer when the request accepts gzip, ``"always"`` whatever it
      accepts (a misconfigured CDN); a ``Range`` then counts the compressed bytes, as HTTP says;
    - ``drops``: the first answers close the connection after ``cut`` bytes of their body;
    - ``drip``: seconds between bytes of the body (``"body"``) or of the status line and headers;
    - ``length=False``: no Content-Length, the body ends when the connection closes (HTTP/1.0's way)."""

    def __init__(self, data: bytes, *, gzip_: str | None = None, drops: int = 0, cut: int = 0,
                 drip: float = 0.0, drip_where: str = "body", length: bool = True) -> None:
        self.data, self.gzip, self.drops, self.cut, self.length = data, gzip_, drops, cut, length
        self.drip, self.drip_where = drip, drip_where
        self.seen: list[dict[str, str]] = []
        self.stop = threading.Event()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                owner.seen.append(dict(self.headers.items()))
                accepts = "gzip" in self.headers.get("Accept-Encoding", "")
                coded = owner.gzip == "always" or (owner.gzip == "asked" and accepts)
                whole = gzip.compress(owner.data, mtime=0) if coded else owner.data
                start = 0
                ranged = self.headers.get("Range", "")
                if ranged.startswith("bytes=") and self.headers.get("If-Range", '"v1"') == '"v1"':
                    start = int(ranged[6:].split("-")[0])
                body = whole[start:]
                head = [f"HTTP/1.1 {206 if start else 200} {'Partial Content' if start else 'OK'}", 'ETag: "v1"']
                head += [f"Content-Length: {len(body)}"] if owner.length else ["Connection: close"]
                self.close_connection = self.close_connection or not owner.length
                head += ["Content-Encoding: gzip"] if coded else []
                head += [f"Content-Range: bytes {start}-{len(whole) - 1}/{len(whole)}"] if start else []
                self._send(("\r\n".join(head) + "\r\n\r\n").encode(), owner.drip_where == "headers")
                if owner.drops > 0:
                    owner.drops -= 1
                    self.wfile.write(body[:owner.cut])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self._send(body, owner.drip_where == "body")

            def _send(self, data: bytes, drip: bool) -> None:
                if not (drip and owner.drip):
                    self.wfile.write(data)
                    return
                for i in range(len(data)):
                    if owner.stop.wait(owner.drip):
                        self.close_connection = True
                        return
                    self.wfile.write(data[i:i + 1])
                    self.wfile.flush()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/ctg-studies.json.zip"

    def __enter__(self) -> _Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


def _within(seconds: float, call: Any) -> Any:
    """``call()``'s outcome if it ends within ``seconds`` (the test fails, instead of hanging, if not)."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(("ok", call()))
        except Exception as exc:
            outcome.append(("raised", exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"still downloading after {seconds}s"
    return outcome[0]


@pytest.mark.parametrize("habit", ["asked", "always"])
def test_a_compressed_answer_cut_off_is_downloaded_whole_never_spliced(zip_bytes: bytes, tmp_path: Path,
                                                                      habit: str) -> None:
    """The first answer came gzip-encoded and was cut; the resume asked for the rest of the *decoded*
    bytes by their count, got the compressed stream's middle, could not decode it, and failed each try,
    then each later run (the .part kept for the next run): the download could never finish."""
    with _Server(zip_bytes, gzip_=habit, drops=1, cut=len(zip_bytes) // 2) as server:
        path = download(server.url, tmp_path / "dl", chunk_bytes=4096, attempts=3)
    assert path.read_bytes() == zip_bytes
    assert all(seen["Accept-Encoding"] == "identity" for seen in server.seen)
    if habit == "always":  # the compressed .part is not resumed by its count: the second try starts over
        assert [seen.get("Range") for seen in server.seen] == [None, None]
    else:
        assert len(server.seen) == 2 and server.seen[1]["Range"].startswith("bytes=")


def test_a_part_kept_from_a_compressed_answer_is_started_over_by_the_next_run(zip_bytes: bytes,
                                                                              tmp_path: Path) -> None:
    with _Server(zip_bytes, gzip_="always", drops=5, cut=len(zip_bytes) // 3) as server, \
            pytest.raises(BulkDownloadFailed, match=r"bytes kept in .*\.part for the next run"):
        download(server.url, tmp_path / "dl", attempts=1)
    assert (tmp_path / "dl" / "ctg-studies.json.zip.part").stat().st_size > 0
    with _Server(zip_bytes, gzip_="always") as again:
        assert download(again.url, tmp_path / "dl").read_bytes() == zip_bytes
    assert [seen.get("Range") for seen in again.seen] == [None]


@pytest.mark.parametrize("where", ["body", "headers"])
def test_a_download_that_trickles_fails_within_its_timeouts_and_keeps_what_came(
        zip_bytes: bytes, tmp_path: Path, where: str) -> None:
    """A byte every 0.05 s is within any read timeout, so each read waited and the try went on for
    the file's length in bytes times 0.05 s (the registry's 2.7 GB: years)."""
    with _Server(zip_bytes, drip=0.05, drip_where=where) as server:
        started = time.monotonic()
        kind, outcome = _within(30, lambda: download(server.url, tmp_path / "dl", timeout=1.0, attempts=2))
        elapsed = time.monotonic() - started
    assert kind == "raised" and isinstance(outcome, BulkDownloadFailed), outcome
    reason = "stalled: .* bytes in the last" if where == "body" else "no answer within 1s"
    assert "failed after 2 tries" in str(outcome) and re.search(reason, str(outcome)), outcome
    assert elapsed < 10
    assert len(server.seen) == 2
    if where == "body":  # what came is kept for the next run, which resumes it
        assert (tmp_path / "dl" / "ctg-studies.json.zip.part").stat().st_size > 0


def test_a_resumed_answer_that_is_another_part_of_the_file_starts_over(zip_bytes: bytes, tmp_path: Path) -> None:
    """A 206 whose Content-Range starts elsewhere than asked (or that comes compressed) was written from the
    file's first byte: a file of the wrong bytes, refused at the end after the whole download."""
    part = tmp_path / "dl" / "ctg-studies.json.zip.part"
    part.parent.mkdir()
    part.write_bytes(zip_bytes[:1000])
    (tmp_path / "dl" / "ctg-studies.json.zip.part.json").write_text('{"validator": "\\"v1\\""}')
    with _Server(zip_bytes, gzip_="always") as server:  # the resume comes compressed
        assert download(server.url, tmp_path / "dl", attempts=2).read_bytes() == zip_bytes
    assert [seen.get("Range") for seen in server.seen] == ["bytes=1000-", None]


def test_a_loopback_server_is_reached_directly_whatever_proxy_the_environment_names(
        zip_bytes: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # nothing listens there
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    with _Server(zip_bytes) as server:
        assert download(server.url.replace("127.0.0.1", "localhost"), tmp_path / "dl").read_bytes() == zip_bytes


SECRET = "Zx9SECRETqq"


def test_a_presigned_bulk_url_is_stored_and_shown_with_its_secrets_masked(zip_bytes: bytes, tmp_path: Path) -> None:
    """An S3/GCS presigned URL's signature, credential and session token were stored in sync_runs.api_url
    and shown by a failed download's message (only user:password@ and plain 'signature=' were masked)."""
    from flows.bulk import run_load_bulk

    query = (f"?X-Amz-Credential=AKIA{SECRET}&X-Amz-Security-Token={SECRET}&X-Amz-Signature={SECRET}"
             f"&X-Goog-Signature={SECRET}&format=json.zip")
    with _Server(zip_bytes) as server:
        summary = run_load_bulk(dict(source=server.url.replace("http://", "HTTP://") + query,
                                     warehouse=str(tmp_path / "wh"), lock_timeout=5.0), workers=1)
    with pytest.raises(BulkDownloadFailed) as failed:  # nothing listens there: the error names the URL twice
        download("http://127.0.0.1:1/ctg-studies.json.zip" + query, tmp_path / "dl", attempts=1)
    assert summary["versions_written"] == 60
    from tests.reliability.support import query as sql
    [(stored,)] = sql(tmp_path / "wh", "SELECT api_url FROM sync_runs")
    assert stored.endswith("?X-Amz-Credential=***&X-Amz-Security-Token=***&X-Amz-Signature=***"
                           "&X-Goog-Signature=***&format=json.zip")
    assert not [p for p in (tmp_path / "wh").rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert SECRET not in str(failed.value) and "X-Amz-Signature=***" in str(failed.value)


def test_a_bulk_url_with_credentials_is_refused_before_anything_runs(tmp_path: Path) -> None:
    import subprocess

    from tests.reliability.support import TRIALSYNC

    result = subprocess.run([str(TRIALSYNC), "load-bulk", f"https://alice:{SECRET}@127.0.0.1:1/ctg-studies.json.zip",
                             "--warehouse", str(tmp_path / "wh")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and SECRET not in result.stdout + result.stderr
    assert result.stderr.startswith("trialsync: error: a bulk URL must not contain credentials (user:password@host)")
    assert not (tmp_path / "wh").exists()


@pytest.mark.parametrize("under", [False, True])
def test_a_download_dir_that_is_a_file_is_refused_as_bad_input(tmp_path: Path, under: bool) -> None:
    """It was 'trialsync: error: FileExistsError: [Errno 17] File exists: ...', exit 1."""
    import subprocess

    from tests.reliability.support import TRIALSYNC

    (tmp_path / "afile").write_text("not a directory")
    directory = tmp_path / "afile" / "sub" if under else tmp_path / "afile"
    result = subprocess.run([str(TRIALSYNC), "load-bulk", "http://127.0.0.1:1/ctg-studies.json.zip", "--warehouse",
                             str(tmp_path / "wh"), "--download-dir", str(directory)],
                            capture_output=True, text=True, timeout=120)
    what = f"is under {tmp_path / 'afile'}, which is" if under else "is"
    assert (result.returncode, result.stderr.strip()) == (
        2, f"trialsync: error: --download-dir {directory} {what} a file, not a directory")
    assert not (tmp_path / "wh").exists()


def test_a_body_without_a_length_cut_short_is_resumed_not_thrown_away(zip_bytes: bytes, tmp_path: Path) -> None:
    """Without a Content-Length a cut is an end: the half file was taken as whole, failed the zip check and
    was deleted ('not a usable zip'), so each run started from its first byte again."""
    with _Server(zip_bytes, length=False, drops=1, cut=len(zip_bytes) // 2) as server:
        assert download(server.url, tmp_path / "dl", attempts=2).read_bytes() == zip_bytes
    assert [seen.get("Range") for seen in server.seen] == [None, f"bytes={len(zip_bytes) // 2}-"]


@pytest.mark.parametrize("length", [True, False])
def test_a_web_page_answered_for_the_zip_is_named_as_one_and_not_kept(tmp_path: Path, length: bool) -> None:
    """A hotel's or a firewall's login page answered with 200: it read '... is not a usable zip: ... is
    not a complete zip archive (truncated download?)'."""
    page = b"<!DOCTYPE html><html><head><title>Sign in to Hotel &amp; Spa Wi-Fi</title></head><body>...</body></html>"
    with _Server(page, length=length) as server, pytest.raises(BulkDownloadFailed) as failed:
        download(server.url, tmp_path / "dl", attempts=2)
    assert str(failed.value) == f'download of {server.url} is not a zip but a web page ("Sign in to Hotel & Spa Wi-Fi")'
    assert len(server.seen) == 1  # not retried: the page is whole
    assert [p.name for p in (tmp_path / "dl").iterdir()] == ["ctg-studies.json.zip.lock"]  # nothing kept


@pytest.mark.parametrize("location", ["ftp://mirror.example/ctg-studies.json.zip", "http://[bad/ctg-studies.json.zip"])
def test_a_download_redirected_to_a_url_that_cannot_be_fetched_fails_at_once_with_one_line(
        tmp_path: Path, location: str) -> None:
    """http://[bad raised urllib's ValueError out of load-bulk; ftp:// was retried as a dropped connection."""

    class Redirect(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/ctg-studies.json.zip"
    try:
        with pytest.raises(BulkDownloadFailed) as failed:
            download(url, tmp_path / "dl", attempts=3)
    finally:
        server.shutdown()
        server.server_close()
    assert not failed.value.retryable and str(failed.value).startswith(f"download of {url} failed: ")
    assert "\n" not in str(failed.value)
