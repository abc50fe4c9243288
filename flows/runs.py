"""What every kind of run shares (sync, bulk, backfill, rederive, compact): its totals, the summary
a command prints, its id, and its commit with the ``sync_runs`` row."""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from flows.engine import NONE, get_run_logger, task
from pipeline.versioning import BatchPlan
from warehouse import RunWriter
from warehouse.crashpoints import crashpoint


@dataclass
class RunTotals:
    pages: int = 0
    studies_seen: int = 0
    new_studies: int = 0
    versions_written: int = 0
    unchanged: int = 0
    stale: int = 0  # records older than the stored version (a lagging cache): no version, no change
    quarantined: int = 0
    retired: int = 0
    left_scope: int = 0  # listed by earlier runs, not by this full run, but still in the registry
    unverified: int = 0  # unlisted studies the registry could not be asked about (kept, not retired)
    changes_written: int = 0
    total_count: int | None = None
    watermark: date | None = None
    pages_replayed: int = 0  # taken from the spool of an interrupted run
    restarts: int = 0
    unknown_fields: dict[str, int] = field(default_factory=dict)  # keys the schema does not know -> records
    stale_ids: list[str] = field(default_factory=list)  # the first STALE_IDS_LOGGED, for the run's one warning

    def add_plan(self, plan: BatchPlan) -> None:
        """Count a plan's stale records and schema-unknown keys (the rest is counted by the caller)."""
        self.add_stale(plan.stale)
        for path, n in plan.unknown_fields.items():
            self.unknown_fields[path] = self.unknown_fields.get(path, 0) + n

    def add_stale(self, ids: list[str]) -> None:
        self.stale += len(ids)
        self.stale_ids += ids[:max(0, STALE_IDS_LOGGED - len(self.stale_ids))]


STALE_IDS_LOGGED = 20  # a reload of an older bulk file can make thousands: the first ones tell the story


def log_stale(count: int, first: list[str]) -> None:
    """One warning for a run's stale records (logged per page or shard, a reload of an older bulk file
    printed one line for each of its ~100 folders)."""
    more = f" and {count - len(first)} more" if count > len(first) else ""
    get_run_logger().warning("%d stale record(s), older than the stored version (no version, no change): %s%s",
                             count, ", ".join(first), more)


@dataclass
class SyncSummary:
    run_id: str
    mode: str
    scope: str
    since: str | None
    duration_seconds: float
    totals: RunTotals = field(default_factory=RunTotals)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        totals = out.pop("totals")
        del totals["stale_ids"]  # logged, and counted in ``stale``
        totals["watermark"] = str(totals["watermark"]) if totals["watermark"] else None
        return {**out, **totals}


@task(name="commit-run", cache_policy=NONE)
def commit_run(run: RunWriter, summary: SyncSummary, started: datetime, *, params: dict[str, str],
               api_url: str | None, meta: dict[str, str] | None = None,
               replace: frozenset[str] = frozenset()) -> None:
    t = summary.totals
    if t.stale:
        log_stale(t.stale, t.stale_ids)
    run.append_rows("sync_runs", [{
        "run_id": summary.run_id, "mode": summary.mode, "scope": summary.scope,
        "started_at": started, "finished_at": datetime.now(UTC), "status": "succeeded",
        "pages": t.pages, "studies_seen": t.studies_seen, "new_studies": t.new_studies,
        "versions_written": t.versions_written, "unchanged": t.unchanged, "stale": t.stale,
        "unknown_fields": sorted(t.unknown_fields), "changes_written": t.changes_written,
        "quarantined": t.quarantined, "retired": t.retired, "left_scope": t.left_scope, "total_count": t.total_count,
        "since": date.fromisoformat(summary.since) if summary.since else None,
        "watermark": t.watermark, "api_url": api_url, "params": json.dumps(params, sort_keys=True),
    }])
    crashpoint("run-row-staged")
    run.commit(meta, replace=replace)
    crashpoint("committed")
    get_run_logger().info("committed run %s: %d new versions, %d changes", summary.run_id,
                          t.versions_written, t.changes_written)


def new_run_id(started: datetime) -> str:
    return f"{started:%Y%m%dT%H%M%S}Z-{secrets.token_hex(3)}"
