"""``backfill_history``: import studies' past versions from the registry's record history (a Prefect flow).

One task per batch of studies: fetch each study's change index and the versions not stored yet
(optionally only version 0 and those touching status or design), then (pure) plan each version
through ``plan_batch`` and merge them with the stored versions into one history ordered by time,
and stage the study's rows: its new versions as source ``history``, its stored rows again with their
new numbers, and a ``study_rewrites`` row that hides its older rows. After the last batch the
changes of every rewritten study are derived across its whole merged history, and the run commits
at once (mode ``backfill``). A study with nothing new is not written at all.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from flows import progress, settings
from flows.derive import derive_run_changes
from flows.engine import NONE, flow, get_run_logger, task
from flows.runs import RunTotals, SyncSummary, commit_run, new_run_id
from pipeline.errors import (
    HistoryFormatError,
    RegistryError,
    RegistryNotFound,
    RegistryRejected,
    RegistryUnavailable,
    UsageError,
)
from pipeline.flatten import ChildRows
from pipeline.history import (
    FetchedVersion,
    HistoryIndex,
    HistoryMerge,
    StoredVersion,
    check_backfill_args,
    merge_history,
    select_versions,
)
from pipeline.registry.client import RegistryClient, RetryPolicy
from pipeline.registry.defaults import DEFAULT_INTERVAL
from pipeline.registry.history import HistoryClient
from pipeline.versioning import BatchPlan, NewVersion, Quarantined, RunContext, plan_batch
from warehouse import RunWriter, Warehouse
from warehouse.backfill import followed_studies, moves_table, stored_versions
from warehouse.pairs import baseline_runs


@dataclass
class BackfillTotals:
    fetched: int = 0  # history versions downloaded
    rewritten: list[str] = field(default_factory=list)  # studies whose history changed
    not_found: list[str] = field(default_factory=list)  # no history in the registry (404)
    failed: dict[str, str] = field(default_factory=dict)  # study -> why its history could not be used
    first_error: RegistryError | None = None


@dataclass
class _Fetched:
    index: HistoryIndex
    records: list[tuple[int, dict[str, Any]]]


class _BatchContext:
    """What every batch task shares; a plain object so Prefect neither hashes nor walks it."""

    def __init__(self, history: HistoryClient, run: RunWriter, ctx: RunContext, modules: list[str] | None) -> None:
        self.history, self.run, self.ctx, self.modules = history, run, ctx, modules
        self.totals = RunTotals()
        self.extra = BackfillTotals()


@task(name="backfill-batch", cache_policy=NONE)  # no task retries: the client's tries are the total
def backfill_batch(bc: _BatchContext, nct_ids: list[str]) -> int:
    """Fetch, merge and stage one batch of studies; returns how many studies it rewrote.

    Everything is fetched before anything is staged, so a retried task stages nothing twice.
    """
    stored = _stored(bc.run, nct_ids)
    fetched = {nct: _fetch(bc, nct, stored.get(nct, [])) for nct in nct_ids}
    bc.extra.not_found += [nct for nct, got in fetched.items() if got is None and nct not in bc.extra.failed]
    bc.extra.fetched += sum(len(got.records) for got in fetched.values() if got is not None)
    plan, merges = _plan(bc, stored, fetched)
    bc.run.append_plan(plan, bc.ctx)
    _rewrite(bc.run, merges)
    bc.run.append_rows("study_rewrites", [{"run_id": bc.ctx.run_id, "nct_id": nct, "versions": len(m.versions)}
                                          for nct, m in merges.items()])
    t = bc.totals
    t.pages += 1
    t.studies_seen += len(nct_ids)
    t.new_studies += plan.new_studies
    t.versions_written += len(plan.versions)
    t.quarantined += len(plan.quarantined)
    t.unchanged += sum(1 for nct in nct_ids if fetched[nct] is not None and nct not in merges)
    bc.extra.rewritten += list(merges)
    progress.emit("batch", studies=len(nct_ids), seen=t.studies_seen, versions=t.versions_written)
    get_run_logger().info("batch of %d studies: %d history versions stored, %d studies rewritten",
                          len(nct_ids), len(plan.versions), len(merges))
    return len(merges)


def _stored(run: RunWriter, nct_ids: list[str]) -> dict[str, list[StoredVersion]]:
    # Its own frame: no DuckDB connection stays referenced while the batch waits on the network.
    with run.before() as con:
        return stored_versions(con, nct_ids)


def _rewrite(run: RunWriter, merges: dict[str, HistoryMerge]) -> None:
    with run.before() as con:
        run.rewrite_studies(con, moves_table(merges))


def _fetch(bc: _BatchContext, nct: str, stored: list[StoredVersion]) -> _Fetched | None:
    """The study's index and the versions it has that we have not stored; None if it has no history."""
    try:
        index = bc.history.index(nct)
        known = {s.registry_version for s in stored if s.registry_version is not None}
        wanted = select_versions(index, known, bc.modules)
        return _Fetched(index, [(v, bc.history.version(nct, v)) for v in wanted])
    except RegistryNotFound:
        get_run_logger().warning("%s: the registry has no history for it (404); skipped", nct)
        return None
    except (HistoryFormatError, RegistryRejected) as exc:  # this study's answer, not the registry's health
        get_run_logger().warning("%s: skipped: %s", nct, exc)
        bc.extra.failed[nct] = str(exc)
        bc.extra.first_error = bc.extra.first_error or exc
        return None


def _plan(bc: _BatchContext, stored: dict[str, list[StoredVersion]],
          fetched: dict[str, _Fetched | None]) -> tuple[BatchPlan, dict[str, HistoryMerge]]:
    """Pure: each fetched record planned as a version (one path with sync), merged into its study's history."""
    plan = BatchPlan()
    merges: dict[str, HistoryMerge] = {}
    for nct, got in fetched.items():
        if got is None:
            continue
        planned: dict[int, NewVersion] = {}
        rows: dict[int, ChildRows] = {}
        for number, record in got.records:
            one = plan_batch([record], {}, bc.ctx, registry_versions={nct: number})
            plan.quarantined += [Quarantined(q.nct_id, f"history version {number}: {q.reason}", q.raw)
                                 for q in one.quarantined]
            if one.versions:
                planned[number], rows[number] = one.versions[0], one.child_rows
        candidates = [FetchedVersion(n, got.index.entry(n).date, v.content_hash, key=n) for n, v in planned.items()]
        merge = merge_history(stored.get(nct, []), candidates)
        if not merge.changed:
            continue
        merges[nct] = merge
        first = not stored.get(nct)
        for m in merge.new:
            assert m.fetched is not None
            plan.versions.append(replace(planned[m.fetched.key], version=m.version, registry_updated=m.registry_updated,
                                         is_new_study=first and m.version == 1))
            plan.child_rows.add_version(rows[m.fetched.key], m.version)
        plan.seen.append((nct, merge.versions[-1].version))
    return plan, merges


@flow(name="backfill_history", validate_parameters=True)
def backfill_history(
    ids: list[str] | None = None,
    all_studies: bool = False,
    modules: list[str] | None = None,
    api_url: str | None = None,
    warehouse: str | None = None,
    request_interval: float = DEFAULT_INTERVAL,
    max_attempts: int = 8,
    backoff_seconds: float = 1.0,
    timeout_seconds: float = 120.0,
    lock_timeout: float = 30.0,
    batch_size: int = 20,
    retry_budget: float = 60.0,
) -> dict[str, Any]:
    """Import the past versions of ``ids`` (or of every followed study) from the registry's history."""
    wanted = check_backfill_args(ids, all_studies)
    url = settings.api_url(api_url)
    started = datetime.now(UTC)
    clock = time.monotonic()
    run_id = new_run_id(started)
    store = Warehouse(settings.warehouse_dir(warehouse))
    client = RegistryClient(url, min_interval=request_interval, timeout=(min(10.0, timeout_seconds), timeout_seconds),
                            retry=RetryPolicy(attempts=max_attempts, backoff_base=backoff_seconds,
                                              budget_seconds=retry_budget))
    history = HistoryClient(client)
    with client, store.writer(run_id, lock_timeout=lock_timeout) as run:
        rules = settings.rules(None, run.manifest.meta)
        if all_studies:
            with store.committed() as con:
                wanted = followed_studies(con)
            if not wanted:
                raise UsageError(f"the warehouse {store.root} follows no studies yet: nothing to backfill")
        bc = _BatchContext(history, run, RunContext(run_id, started, "history"), modules)
        progress.emit("start", run_id=run_id, mode="backfill", studies=len(wanted))
        batch = backfill_batch
        stopped: RegistryUnavailable | None = None
        for i in range(0, len(wanted), batch_size):
            try:
                batch(bc, wanted[i: i + batch_size])
            except RegistryUnavailable as exc:  # keep the batches fetched so far: commit them, then fail
                stopped = exc
                break
        _fail_when_nothing_came(bc, wanted, url, stopped)
        totals = bc.totals
        run.seal("study_rewrites")
        with store.committed() as con:
            baselines = baseline_runs(con, store.root)
        if bc.extra.rewritten:
            totals.changes_written = derive_run_changes(run, rules, only_run=None, baseline_runs=baselines,
                                                        nct_ids=bc.extra.rewritten)
        # Never a sync scope's name: a backfill must not count as a scope's run (watermark, baseline, members).
        scope = "backfill:" + ("all" if all_studies else ",".join(wanted))
        summary = SyncSummary(run_id, "backfill", scope, None, round(time.monotonic() - clock, 3), totals)
        commit_run(run, summary, started, params={"modules": ",".join(modules or [])}, api_url=url)
    result = {**summary.as_dict(), "fetched": bc.extra.fetched, "rewritten": len(bc.extra.rewritten),
              "not_found": bc.extra.not_found, "failed": bc.extra.failed, "requests": client.requests_made}
    progress.emit("done", **result)
    if stopped is not None:
        raise RegistryUnavailable(f"backfill stopped after {totals.studies_seen} of {len(wanted)} studies (those "
                                  f"are committed in run {run_id}): {stopped}", url=stopped.url,
                                  status=stopped.status) from None
    return result


def _fail_when_nothing_came(bc: _BatchContext, wanted: list[str], url: str,
                            stopped: RegistryUnavailable | None) -> None:
    """Loudly, before committing: no study gave a usable history (all 404, or every answer was unusable)."""
    if stopped is not None and bc.totals.studies_seen:
        return
    if stopped is not None:
        raise stopped
    done = len(wanted) - len(bc.extra.not_found) - len(bc.extra.failed)
    if not wanted or done > 0:
        return
    if (first := bc.extra.first_error) is not None:  # a fresh one: no traceback of the batch it came from
        raise type(first)(str(first), url=first.url, status=first.status) from None
    raise RegistryNotFound(f"the registry has no history for any of the {len(wanted)} studies asked for (every "
                           f"history request answered 404): is {url} the registry?", url=url, status=404)

