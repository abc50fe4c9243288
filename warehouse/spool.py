"""The page spool: registry pages fetched by a run that has not committed yet, kept for a re-run.

A sync writes each fetched page here (zstd, renamed into place) before staging its rows. If the run
dies, the next run **of the same scope and window, against the same API, while the registry still
serves the same data** (its ``/version`` ``dataTimestamp`` is unchanged) replays those pages instead
of fetching them again, and goes on from the last stored page token. Anything else gets a fresh
walk:

- a different scope, window (``--since``/watermark), page size or API URL: a different spool key;
- the registry refreshed its data (new ``dataTimestamp``), or did not tell us one: no reuse, and
  spools of other data timestamps are deleted when a run starts;
- the stored next-page token is refused (expired): the spool is emptied and the walk starts again;
- a page that sent a page token the walk had already met (the registry looping) is dropped, with
  the pages after it, so a re-run asks for it again instead of replaying the loop.

Replayed pages are planned against the warehouse's *current* heads, exactly like fetched ones, so a
resumed run commits what an uninterrupted run would have. A run that commits deletes its spool.

Layout: ``spool/<key>/meta.json`` and ``spool/<key>/page-00001.zst`` (a JSON header line with the
page number and the token it was fetched with, then the body exactly as the registry sent it).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from contextlib import suppress
from pathlib import Path

import pyarrow as pa

from warehouse.crashpoints import crashpoint
from warehouse.regular_files import read_file

SPOOL_DIR = "spool"
_CODEC = "zstd"


class PageSpool:
    def __init__(self, directory: Path) -> None:
        self.dir = directory

    @classmethod
    def open(cls, root: Path, *, api_url: str, params: Mapping[str, str], data_version: str | None) -> PageSpool | None:
        """The spool for this request sequence, or None when reuse could not be proven safe."""
        if not data_version:
            return None
        identity = {"api_url": api_url, "params": dict(sorted(params.items())), "data_version": data_version}
        key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]
        spool = cls(root / SPOOL_DIR / key)
        spool.dir.mkdir(parents=True, exist_ok=True)
        for leftover in spool.dir.glob("*.tmp"):
            leftover.unlink(missing_ok=True)
        meta = spool.dir / "meta.json"
        if not meta.exists():
            _write_atomic(meta, json.dumps(identity, sort_keys=True).encode())
        return spool

    @staticmethod
    def prune(root: Path, data_version: str | None) -> int:
        """Delete spools that can never be reused (another data timestamp, or unreadable)."""
        removed = 0
        base = root / SPOOL_DIR
        if not base.is_dir():
            return 0
        for child in base.iterdir():
            try:
                meta = json.loads(read_file(child / "meta.json"))
                keep = data_version is not None and meta.get("data_version") == data_version
            except (OSError, ValueError):
                keep = False
            if not keep:
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
                removed += 1
        return removed

    def _path(self, number: int) -> Path:
        return self.dir / f"page-{number:05d}.zst"

    def get(self, number: int, token: str | None) -> bytes | None:
        """The stored body of page ``number`` if it was fetched with ``token``; else None."""
        path = self._path(number)
        try:
            stored_bytes = read_file(path)
            data = pa.decompress(stored_bytes[8:], int.from_bytes(stored_bytes[:8], "big"), codec=_CODEC,
                                 asbytes=True)
            header, _, body = data.partition(b"\n")
            stored = json.loads(header)
        except (OSError, ValueError, pa.ArrowException):
            self._drop_from(number)  # unreadable (e.g. a power cut before the data hit the disk)
            return None
        if stored.get("number") != number or stored.get("token") != token:
            self._drop_from(number)
            return None
        return bytes(body)

    def put(self, number: int, token: str | None, body: bytes) -> None:
        header = json.dumps({"number": number, "token": token}).encode()
        data = header + b"\n" + body
        compressed = pa.compress(data, codec=_CODEC, asbytes=True)
        _write_atomic(self._path(number), len(data).to_bytes(8, "big") + compressed, checkpoint=True)

    def pages(self) -> list[int]:
        return sorted(int(p.stem.split("-")[1]) for p in self.dir.glob("page-*.zst"))

    def reset(self, start: int = 1) -> None:
        """Forget the stored pages from ``start`` on (their tokens are no good any more)."""
        self._drop_from(start)

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        with suppress(OSError):
            self.dir.parent.rmdir()  # only if empty

    def _drop_from(self, number: int) -> None:
        for page in self.pages():
            if page >= number:
                path = self._path(page)
                if path.is_dir() and not path.is_symlink():  # what is there is removed, whatever it is
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)


def _write_atomic(path: Path, data: bytes, *, checkpoint: bool = False) -> None:
    """Write beside, then rename: a reader sees the whole file or none (no fsync: losing a page
    in a power cut only costs a refetch, ``get`` treats a damaged file as missing)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
    except OSError as exc:  # a full disk: what was written goes at once (it kept the disk full) and is named
        tmp.unlink(missing_ok=True)
        if exc.errno is None or exc.filename is not None:
            raise
        raise OSError(exc.errno, exc.strerror, str(tmp)) from exc
    if checkpoint:
        crashpoint("spool-written")
    os.replace(tmp, path)
