"""A test hook that makes the process kill itself (SIGKILL) at a named point of a sync.

Inert unless ``TRIALSYNC_CRASH_AT=<checkpoint>[:<n>]`` is set: then the n-th time (default 1) the
process passes ``<checkpoint>`` it sends itself SIGKILL, like a power cut or the OOM killer would.
The reliability suite uses it to prove that a sync killed anywhere leaves the warehouse as it was
(see ``tests/reliability``). An unknown checkpoint name is an error, so a typo cannot make a crash
test pass by never crashing.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

from pipeline.errors import UsageError

ENV = "TRIALSYNC_CRASH_AT"

# Every checkpoint, in the order a sync passes them (the README lists the same).
CHECKPOINTS = {
    "lock-acquired": "the writer lock is held; nothing staged yet",
    "page-fetched": "a page's body has arrived (and is spooled), before its rows are staged",
    "spool-written": "a spooled page's temporary file is written, before it is renamed into place",
    "parquet-written": "a batch of rows went into a run's Parquet file (files still open)",
    "page-staged": "all of a page's rows are staged",
    "run-row-staged": "the sync_runs row is staged, the commit begins",
    "files-closed": "the run's Parquet files are closed (footers written), before fsync",
    "catalog-tmp-created": "the new catalog file exists half-built beside the old one",
    "catalog-tmp-written": "the new catalog is complete and fsynced beside the old one, before the commit point",
    "manifest-published": "the run's manifest generation is published (the commit point), the old catalog in place",
    "catalog-replaced": "the new catalog is renamed into place, before the directory fsync",
    "committed": "commit returned; the run's spool is still there",
}

_hits: Counter[str] = Counter()


def crashpoint(name: str) -> None:
    """SIGKILL this process if ``TRIALSYNC_CRASH_AT`` names this checkpoint and pass."""
    setting = check_setting()
    if setting is None or setting[0] != name:
        return
    _hits[name] += 1
    if _hits[name] == setting[1]:
        os.kill(os.getpid(), signal.SIGKILL)


def check_setting() -> tuple[str, int] | None:
    """``TRIALSYNC_CRASH_AT`` as (checkpoint, n), None when unset; a usage error when it names no
    checkpoint or its n is not a whole number >= 1 (the CLI checks it before anything starts)."""
    spec = os.environ.get(ENV)
    if not spec:
        return None
    target, _, nth = spec.partition(":")
    if target not in CHECKPOINTS:
        raise UsageError(f"{ENV}={spec!r}: unknown checkpoint; one of {', '.join(CHECKPOINTS)}")
    if nth and not (nth.isascii() and nth.isdigit() and int(nth) >= 1):
        raise UsageError(f"{ENV}={spec!r}: the count after ':' must be a whole number >= 1")
    return target, int(nth or 1)
