"""``sync_registry``: one sync run of a scope, as a Prefect flow with coarse (per-page) tasks.

gather (fetch a page; the warehouse's heads) -> decide (``plan_batch``, pure) -> apply (stage the
page's rows; one atomic commit at the end). A failed run commits nothing.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE

from flows import progress, settings
from pipeline.parse import record_nct_id
from pipeline.registry.client import RegistryClient, RetryPolicy
from pipeline.scope import Scope, Window, check_page_size, resolve_window
from pipeline.versioning import Head, RunContext, plan_batch
from warehouse import RunWriter, Warehouse
from warehouse.heads import HeadIndex


@dataclass
class RunTotals:
    pages: int = 0
    studies_seen: int = 0
    new_studies: int = 0
    versions_written: int = 0
    unchanged: int = 0
    quarantined: int = 0
    total_count: int | None = None
    watermark: date | None = None


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
        totals["watermark"] = str(totals["watermark"]) if totals["watermark"] else None
        return {**out, **totals}


class _PageContext:
    """What every page task shares; a plain object so Prefect neither hashes nor walks it."""

    def __init__(self, client: RegistryClient, run: RunWriter, index: HeadIndex,
                 params: dict[str, str], ctx: RunContext) -> None:
        self.client, self.run, self.index, self.params, self.ctx = client, run, index, params, ctx
        self.written: dict[str, Head] = {}  # heads this run wrote: a study can show up on two pages
        self.totals = RunTotals()

    def heads_for(self, records: list[dict[str, Any]]) -> dict[str, Head]:
        """The page's heads only: looked up in the columnar index, then this run's own versions."""
        ids = [nct for nct in map(record_nct_id, records) if nct]
        return self.index.lookup(ids) | {nct: self.written[nct] for nct in ids if nct in self.written}


def _retryable(task: Any, task_run: Any, state: Any) -> bool:
    try:
        state.result()
    except Exception as exc:
        return bool(getattr(exc, "retryable", False))
    return False


@task(name="sync-page", cache_policy=NONE, retries=2, retry_delay_seconds=10, retry_condition_fn=_retryable)
def sync_page(pc: _PageContext, token: str | None, number: int) -> str | None:
    """Fetch one page, plan its versions and stage them; returns the next page token."""
    page = pc.client.get_page(pc.params, token, number)
    plan = plan_batch(page.studies, pc.heads_for(page.studies), pc.ctx)
    pc.run.append_plan(plan, pc.ctx)
    pc.written.update(plan.heads)
    t = pc.totals
    t.pages += 1
    t.studies_seen += len(page.studies)
    t.new_studies += plan.new_studies
    t.versions_written += len(plan.versions)
    t.unchanged += plan.unchanged
    t.quarantined += len(plan.quarantined)
    if page.total_count is not None:
        t.total_count = page.total_count
    t.watermark = max(filter(None, [t.watermark, plan.newest_update]), default=None)
    progress.emit("page", number=number, studies=len(page.studies), total=t.total_count,
                  seen=t.studies_seen, versions=t.versions_written)
    get_run_logger().info("page %d: %d studies, %d new versions, %d unchanged, %d quarantined",
                          number, len(page.studies), len(plan.versions), plan.unchanged, len(plan.quarantined))
    return page.next_token


@flow(name="sync_registry", validate_parameters=True)
def sync_registry(
    query: str | None = None,
    condition: str | None = None,
    sponsor: str | None = None,
    ids: list[str] | None = None,
    status: list[str] | None = None,
    since: date | None = None,
    full: bool = False,
    page_size: int = 1000,
    api_url: str | None = None,
    warehouse: str | None = None,
    request_interval: float = 1.0,
    max_attempts: int = 8,
    backoff_seconds: float = 1.0,
    timeout_seconds: float = 120.0,
    lock_timeout: float = 30.0,
) -> dict[str, Any]:
    """Sync one scope of the registry into the warehouse; returns the run's summary."""
    scope = Scope.build(query=query, condition=condition, sponsor=sponsor, ids=ids, statuses=status)
    check_page_size(page_size)
    url = settings.api_url(api_url)
    started = datetime.now(UTC)
    clock = time.monotonic()
    run_id = f"{started:%Y%m%dT%H%M%S}Z-{secrets.token_hex(3)}"
    store = Warehouse(settings.warehouse_dir(warehouse))
    client = RegistryClient(
        url,
        min_interval=request_interval,
        timeout=(min(10.0, timeout_seconds), timeout_seconds),
        retry=RetryPolicy(attempts=max_attempts, backoff_base=backoff_seconds),
    )
    with client, store.writer(run_id, lock_timeout=lock_timeout) as run:
        previous_watermark = run.watermark(scope.key)
        window = resolve_window(full=full, since=since, watermark=previous_watermark)
        params = {**scope.params(), **window.params(), "pageSize": str(page_size)}
        pc = _PageContext(client, run, run.head_index(), params, RunContext(run_id, started, "api"))
        progress.emit("start", run_id=run_id, mode=window.mode, since=window.since, scope=scope.key)
        fetch = sync_page.with_options(retry_delay_seconds=backoff_seconds * 10)
        token, number = None, 1
        while True:
            token = fetch(pc, token, number)
            if not token:
                break
            number += 1
        totals = pc.totals
        totals.watermark = max(filter(None, [previous_watermark, totals.watermark]), default=None)
        summary = SyncSummary(run_id, window.mode, scope.key, _iso(window.since),
                              round(time.monotonic() - clock, 3), totals)
        commit_run(run, summary, window, params, url, started)
    progress.emit("done", **summary.as_dict())
    return summary.as_dict()


@task(name="commit-run", cache_policy=NONE)
def commit_run(run: RunWriter, summary: SyncSummary, window: Window, params: dict[str, str],
               api_url: str, started: datetime) -> None:
    t = summary.totals
    run.append_rows("sync_runs", [{
        "run_id": summary.run_id, "mode": window.mode, "scope": summary.scope,
        "started_at": started, "finished_at": datetime.now(UTC), "status": "succeeded",
        "pages": t.pages, "studies_seen": t.studies_seen, "new_studies": t.new_studies,
        "versions_written": t.versions_written, "unchanged": t.unchanged, "changes_written": 0,
        "quarantined": t.quarantined, "total_count": t.total_count, "since": window.since,
        "watermark": t.watermark, "api_url": api_url, "params": json.dumps(params, sort_keys=True),
    }])
    run.commit()
    get_run_logger().info("committed run %s: %d new versions", summary.run_id, t.versions_written)


def _iso(value: date | None) -> str | None:
    return value.isoformat() if value else None
