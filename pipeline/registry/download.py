"""Downloading the registry's bulk file (``ctg-studies.json.zip``, ~2.7 GB): resumable and checked.

The file is written to ``<name>.part`` beside where it will end up, with the server's validator
(``ETag`` or ``Last-Modified``) in ``<name>.part.json``. A connection that drops is resumed with an
HTTP ``Range`` request (and ``If-Range``, so a file that changed on the server meanwhile starts over
instead of being spliced), up to ``attempts`` times in one call; a ``.part`` left by an interrupted run
is resumed by the next. The finished file must be a complete zip (its directory and every member's data
inside it) before it is renamed to ``<name>``. Requests carry the project's User-Agent and ask for the
file as it is (``Accept-Encoding: identity``). A try ends when its headers do not come within the
timeout or its body stalls (``MIN_BYTES_PER_SECOND``); the next try resumes.

A download directory can be shared (sibling warehouses' ``downloads/``, one ``--download-dir``), so
every use of a target takes ``<name>.lock`` beside it (``flock``, released by the kernel when a process
dies, also by ``kill -9``): a download holds it exclusively, from the ``.part``'s first byte to the
rename; a load reads the finished file under a shared hold (``held``), so no other download
replaces it while its shards still open it by name. A second process waits for the first: two writing
one ``.part`` at once interleaved their bytes (a corrupt file), or renamed one over the file the other
was loading.
"""

from __future__ import annotations

import fcntl
import html
import json
import logging
import os
import re
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

import requests
import urllib3

from pipeline.deadline import Late, call_within
from pipeline.errors import BulkArchiveInvalid, BulkDownloadFailed
from pipeline.http_session import Session
from pipeline.redact import redact
from pipeline.registry.client import USER_AGENT

log = logging.getLogger("trialsync.download")


def download(url: str, directory: Path, *, chunk_bytes: int = 1 << 16, timeout: float = 120.0,
             attempts: int = 5, session: requests.Session | None = None) -> Path:
    """``url`` streamed to ``directory`` (never held in memory), resumed where it stopped; the path.
    Under the target's lock, held exclusively (another process downloading or loading it: this waits)."""
    directory.mkdir(parents=True, exist_ok=True)
    name = target_name(url)
    with _locked(directory / (name + LOCK_SUFFIX), fcntl.LOCK_EX):
        return _download(url, directory, name, chunk_bytes=chunk_bytes, timeout=timeout, attempts=attempts,
                         session=session)


@contextmanager
def held(path: Path) -> Iterator[Path]:
    """Hold the downloaded ``path`` for the ``with`` block (shared: other readers too): no download
    replaces it meanwhile (one waits). Between ``download``'s exclusive hold and this one, another
    download may have renamed a complete, checked file to the same name: that is the one read."""
    with _locked(path.with_name(path.name + LOCK_SUFFIX), fcntl.LOCK_SH):
        if not path.is_file():  # removed by hand meanwhile
            raise BulkDownloadFailed(f"the downloaded {path} is gone")
        yield path


def target_name(url: str) -> str:
    """The file name ``url`` is downloaded to."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", Path(urlsplit(url).path).name) or "ctg-studies.json.zip"


LOCK_SUFFIX = ".lock"


@contextmanager
def _locked(path: Path, how: int) -> Iterator[None]:
    """``flock`` ``path`` (``LOCK_EX`` or ``LOCK_SH``) for the block, waiting as long as it takes."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, how | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("waiting for another trialsync process downloading or loading %s",
                        path.with_name(path.name.removesuffix(LOCK_SUFFIX)))
            while True:  # polled (not a blocking flock) so that a signal stops the wait at once
                time.sleep(0.2)
                try:
                    fcntl.flock(fd, how | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    continue
        yield
    finally:
        os.close(fd)  # releases the lock


def _download(url: str, directory: Path, name: str, *, chunk_bytes: int, timeout: float, attempts: int,
              session: requests.Session | None) -> Path:
    from pipeline.registry.bulk import BulkArchive

    final, part = directory / name, directory / (name + ".part")
    meta = directory / (name + ".part.json")
    http = session or Session()
    http.headers.update({"User-Agent": USER_AGENT})
    last_error = ""
    try:
        for attempt in range(max(1, attempts)):
            try:
                if _fetch(http, url, part, meta, chunk_bytes, timeout, same_call=attempt > 0):
                    break
                last_error = "the connection closed before the whole file came"
            except requests.RequestException as exc:
                last_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.warning("download of %s stopped at %d bytes (%s); resuming", redact(url), _size(part),
                        redact(last_error))
        else:
            kept = f" ({_size(part)} bytes kept in {part} for the next run)" if part.exists() else ""
            raise BulkDownloadFailed(f"download of {redact(url)} failed after {attempts} tries{kept}: "
                                     f"{redact(last_error)}")
    finally:
        if session is None:
            http.close()
    try:
        BulkArchive.open(part)
    except BulkArchiveInvalid as exc:
        page = _web_page_title(part)
        part.unlink(missing_ok=True)
        meta.unlink(missing_ok=True)
        if page is not None:  # a captive portal's or a proxy's page, answered with 200
            raise BulkDownloadFailed(f"download of {redact(url)} is not a zip but a web page{page}") from None
        raise BulkDownloadFailed(f"download of {redact(url)} is not a usable zip: {exc}") from None
    os.replace(part, final)
    meta.unlink(missing_ok=True)
    return final


def _fetch(http: requests.Session, url: str, part: Path, meta: Path, chunk_bytes: int, timeout: float, *,
           same_call: bool) -> bool:
    """One request, appending to ``part`` from where it ends; True when the whole file is there. A
    ``.part`` from an earlier run is resumed only under its validator (``If-Range``); one from this
    call's earlier try also without (a server that sends no validator). The file is asked for as it is
    (``Accept-Encoding: identity``): a ``Range`` counts the bytes of what was sent, so a ``.part`` written
    from a compressed answer (a server that compresses anyway) is never resumed, it starts over. The
    answer's headers must come within ``timeout``, and the body must not stall: each ``timeout``
    seconds bring ``MIN_BYTES_PER_SECOND`` on average or the try ends (its bytes kept for the next)."""
    have = _size(part)
    validator, encoded = _part_meta(meta) if have else (None, False)
    headers: dict[str, str] = {"Accept-Encoding": "identity"}
    if have and not encoded and (validator or same_call):
        headers.update({"Range": f"bytes={have}-", **({"If-Range": validator} if validator else {})})
    try:  # the headers within the timeout too: a server may drip them a byte at a time
        answer = call_within(timeout, lambda: http.get(url, stream=True, timeout=(10.0, timeout), headers=headers),
                             name="trialsync-download", abandoned=requests.Response.close)
    except Late:
        raise _TryFailed(f"no answer within {timeout:g}s") from None
    except (requests.exceptions.InvalidSchema, requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
            ValueError) as exc:  # a redirect to ftp:// or to http://[bad: the next try would go there again
        raise BulkDownloadFailed(f"download of {redact(url)} failed: {redact(str(exc))}", retryable=False) from None
    with answer as response:
        if response.status_code == 416 and have:  # nothing left past what we have: it is complete
            return True
        if response.status_code not in (200, 206):
            status = response.status_code
            raise BulkDownloadFailed(f"download of {redact(url)} failed: HTTP {status}",
                                     retryable=status >= 500 or status in (408, 429))
        coding = response.headers.get("Content-Encoding", "").strip().lower()
        resumed = response.status_code == 206
        if resumed and (_range_start(response) != have or coding not in ("", "identity")):
            part.unlink(missing_ok=True)  # a part of the file other than the one asked for: start over
            raise _TryFailed("the server answered with another part of the file than the one asked for")
        if not resumed:
            have = 0  # a fresh answer (no range support, or the file changed): start over
            meta.write_text(json.dumps({"validator": response.headers.get("ETag")
                                        or response.headers.get("Last-Modified"),
                                        "encoded": coding not in ("", "identity")}))
        expected = int(response.headers.get("Content-Length") or -1)
        with part.open("r+b" if resumed else "wb") as out:
            out.seek(have)
            out.truncate()
            written = _copy_body(response, out, chunk_bytes, timeout)
        if coding in ("", "identity") and expected >= 0:
            return written == expected
        # No length to check (a body ended by closing the connection, or a compressed one): a zip cut
        # short lacks its end record, so the next try resumes (or a server without ranges starts over).
        # A body that is no zip at all (a login page) is whole: the zip check refuses it by its name.
        with part.open("rb") as head:
            return head.read(4) != b"PK\x03\x04" or zipfile.is_zipfile(part)


MIN_BYTES_PER_SECOND = 1024  # a download slower than this over a whole timeout has stalled (curl's --speed-limit)


class _TryFailed(requests.RequestException):
    """A try that stalled or got an answer it cannot use; the next try (or run) goes on from the ``.part``."""


def _copy_body(response: requests.Response, out: BinaryIO, chunk_bytes: int, window: float) -> int:
    """The body into ``out`` as it arrives (each read returns what has come); the bytes written. Each read
    waits at most ``window`` seconds (the socket's timeout), and each ``window`` seconds must bring
    ``MIN_BYTES_PER_SECOND`` on average: a server that trickles a byte now and then, each within the
    read timeout, would hold the download for weeks."""
    written = window_bytes = 0
    window_start = time.monotonic()
    try:
        while chunk := response.raw.read1(chunk_bytes, decode_content=True):
            out.write(chunk)
            written += len(chunk)
            window_bytes += len(chunk)
            if (elapsed := time.monotonic() - window_start) >= window:
                if window_bytes < MIN_BYTES_PER_SECOND * elapsed:
                    raise _TryFailed(f"stalled: {window_bytes} bytes in the last {elapsed:.0f}s (less than "
                                   f"{MIN_BYTES_PER_SECOND} a second)")
                window_start, window_bytes = time.monotonic(), 0
    except (urllib3.exceptions.HTTPError, OSError) as exc:  # a timeout, a dropped connection, a bad encoding
        raise requests.ConnectionError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    return written


def _part_meta(meta: Path) -> tuple[str | None, bool]:
    """The ``.part``'s validator and whether its bytes came compressed (not resumable by ``Range``)."""
    try:
        info = json.loads(meta.read_text())
    except (OSError, ValueError):
        return None, False
    if not isinstance(info, dict):
        return None, False
    value = info.get("validator")
    return (value if isinstance(value, str) and value else None), info.get("encoded") is True


def _web_page_title(path: Path) -> str | None:
    """``' ("its title")'`` (or ``''``) when the file is a web page, else None."""
    with path.open("rb") as f:
        head = f.read(64 << 10).decode("utf-8", "replace")
    if head.lstrip()[:1] != "<":
        return None
    title = re.search(r"<title[^>]*>(.*?)</title>", head, re.I | re.S)
    text = " ".join(html.unescape(title.group(1)).split())[:200] if title else ""
    return f' ("{redact(text)}")' if text else ""


def _range_start(response: requests.Response) -> int | None:
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
