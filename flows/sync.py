"""``sync_registry``: one sync run of a scope, as a Prefect flow with coarse (per-page) tasks.

The pages are walked (``flows.page_walk``: fetch, plan, stage). After the last page of a full run,
studies that left the listing are looked up by id and only those ``GET /studies/{id}`` answers 404 for
are retired (``flows.vanished``); then the run's changes are derived from the stored versions
(``flows.derive``), the run is reconciled, and everything commits at once. A failed run commits nothing.
"""

from __future__ import annotations

import time
from datetime import UTC, date, datetime
from typing import Any

from flows import progress, reconciliation, settings
from flows.derive import derive_run_changes
from flows.engine import flow, get_run_logger
from flows.page_walk import PageContext, sync_page, walk
from flows.reconciliation import publish_reconciliation, reconcile_run
from flows.runs import RunTotals, SyncSummary, commit_run, new_run_id
from flows.vanished import settle_vanished
from pipeline.reconcile import FAIL, Check
from pipeline.registry.client import RegistryClient, RetryPolicy
from pipeline.registry.defaults import DEFAULT_INTERVAL
from pipeline.scope import Scope, check_page_size, next_watermark, resolve_window
from pipeline.versioning import RunContext
from warehouse import Warehouse
from warehouse.spool import PageSpool


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
    request_interval: float = DEFAULT_INTERVAL,
    max_attempts: int = 8,
    backoff_seconds: float = 1.0,
    timeout_seconds: float = 120.0,
    lock_timeout: float = 30.0,
    rules_file: str | None = None,
    alerts: str | None = None,
    retry_budget: float = 60.0,
) -> dict[str, Any]:
    """Sync one scope of the registry into the warehouse; returns the run's summary.

    With ``alerts`` (a watchlist file), ``send_alerts`` runs after the commit, as a subflow.
    """
    scope = Scope.build(query=query, condition=condition, sponsor=sponsor, ids=ids, statuses=status)
    if alerts:
        from flows.alert_config import load_watchlist

        load_watchlist(alerts)  # a bad watchlist fails the run before anything is fetched
    check_page_size(page_size)
    url = settings.api_url(api_url)
    started = datetime.now(UTC)
    clock = time.monotonic()
    run_id = new_run_id(started)
    store = Warehouse(settings.warehouse_dir(warehouse))
    client = RegistryClient(
        url,
        min_interval=request_interval,
        timeout=(min(10.0, timeout_seconds), timeout_seconds),
        retry=RetryPolicy(attempts=max_attempts, backoff_base=backoff_seconds, budget_seconds=retry_budget),
    )
    with client, store.writer(run_id, lock_timeout=lock_timeout) as run:
        rules = settings.rules(rules_file, run.manifest.meta)
        # A watermark stored past the run's next day (an older release took a future-dated record's
        # date) is read as that day: the window must not start in the future.
        previous_watermark = next_watermark(run.watermark(scope.key), None, started.date())
        baseline = not run.has_runs(scope.key)
        window = resolve_window(full=full, since=since, watermark=previous_watermark)
        params = {**scope.params(), **window.params(), "pageSize": str(page_size)}
        batches = scope.batches({**window.params(), "pageSize": str(page_size)})
        data_version = client.data_timestamp()
        PageSpool.prune(store.root, data_version)
        spool = PageSpool.open(store.root, api_url=url, params=params, data_version=data_version)
        pc = PageContext(client, run, run.head_index(), batches, RunContext(run_id, started, "api"), spool,
                          scope)
        progress.emit("start", run_id=run_id, mode=window.mode, since=window.since, scope=scope.key)
        walk(pc, sync_page)
        totals = pc.totals
        if window.mode == "full" and (not baseline or scope.ids):  # a first run: the ids it never listed
            totals.left_scope, totals.retired = settle_vanished(pc, scope.key)
        totals.changes_written = derive_run_changes(
            run, rules, only_run=run_id, baseline_runs={run_id: run.news_from(started)} if baseline else {})
        checks = reconcile_run(run, scope=scope.key, mode=window.mode, baseline=baseline,
                               total_count=totals.total_count, studies_seen=totals.studies_seen, seen=pc.seen,
                               exited=pc.exited, left_scope=pc.left_scope | pc.outside_requested, omitted=pc.omitted,
                               unverified=pc.unverified, unverified_why=pc.unverified_why, merged=pc.merged,
                               previous_watermark=previous_watermark, since=window.since, started=started,
                               requested_ids=tuple(dict.fromkeys(pc.alias_of.get(i, i) for i in scope.ids)))
        totals.watermark = _next_watermark(previous_watermark, totals, checks, started.date())
        summary = SyncSummary(run_id, window.mode, scope.key, _iso(window.since),
                              round(time.monotonic() - clock, 3), totals)
        commit_run(run, summary, started, params=params, api_url=url,
                   meta={"rules": rules.to_json()} if rules_file else None)
        if spool:
            spool.discard()
    publish_reconciliation(run_id, scope.key, checks)
    progress.emit("done", **summary.as_dict())
    result = {**summary.as_dict(), "reconciliation": reconciliation.summary(checks)}
    if alerts:
        result["alerts"] = alerts_after_sync(alerts, str(store.root), lock_timeout)
    return result


def _next_watermark(previous: date | None, totals: RunTotals, checks: list[Check], today: date) -> date | None:
    """The newest update the run saw, unless its listing was short of the registry's own count: then a
    study it missed may be older than that, and the next incremental run must look from where this
    one did."""
    if any(c.check == "total_count" and c.status == FAIL for c in checks):
        get_run_logger().warning("the listing was incomplete (%s): the scope's watermark stays at %s",
                                 totals.studies_seen, previous)
        return previous
    return next_watermark(previous, totals.watermark, today)


def alerts_after_sync(config: str, warehouse: str, lock_timeout: float) -> dict[str, Any]:
    """The sync has committed whatever happens here: an alerts failure is reported, not raised."""
    from flows.alerts import send_alerts

    try:
        return send_alerts(config=config, warehouse=warehouse, lock_timeout=lock_timeout)
    except Exception as exc:  # the sync stays committed; the summary and the exit code carry the error
        get_run_logger().error("alerts after the sync failed: %s", exc)
        return {"error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}


def _iso(value: date | None) -> str | None:
    return value.isoformat() if value else None
