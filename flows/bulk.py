"""``load_bulk``: the registry's bulk zip (``ctg-studies.json.zip``) as one run.

The archive is checked before the writer opens (a truncated download is refused, nothing is
written). Then one task per shard (the registry's 100 folders: the NCT id's last two digits) reads
its members batch by batch, plans versions against the shard's slice of the heads, and writes the
shard's part files; the run commits once, atomically, as mode ``bulk``, scope ``all``, source
``bulk``, with the newest ``lastUpdatePostDate`` as the scope's watermark, so a later
``trialsync sync`` continues incrementally from it. Shard tasks are plain functions of picklable
jobs: they run in worker processes (both cores), or on a Dask cluster (``DaskTaskRunner``) whose
workers see the archive and the warehouse on a shared filesystem.

Memory: a worker holds one batch of records and its shard's heads; the flow holds the archive's
member offsets and the columnar head index (~45 + ~55 bytes a study).
"""

from __future__ import annotations

import os
import secrets
import time
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import nullcontext
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE
from prefect.futures import as_completed, wait
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from flows import progress, settings
from flows.shards import CANCEL_MARKER, DEFAULT_BATCH_SIZE, ShardJob, ShardResult, process_shard
from flows.sync import RunTotals, SyncSummary, commit_run, derive_run_changes
from pipeline.errors import UsageError
from pipeline.registry.bulk import BulkArchive, is_url
from pipeline.registry.download import download
from pipeline.versioning import RunContext
from warehouse import Warehouse
from warehouse.heads import HEAD_SCHEMA

BULK_SCOPE = "all"  # the bulk file is the whole registry: the same scope as a plain `trialsync sync`


@task(name="load-shard", cache_policy=NONE, task_run_name="shard-{job.key}")
def load_shard(job: ShardJob, pool: Executor | None = None) -> ShardResult:
    """One shard: in ``pool`` (this machine's worker processes) or right where the task runs (a Dask
    worker). Prefect's own process runner costs ~0.5 s a task here; a plain pool costs ~nothing."""
    if pool is None:
        return process_shard(job)
    return pool.submit(process_shard, job).result()


@task(name="fetch-bulk-file", cache_policy=NONE)  # download() resumes and retries itself
def fetch_bulk_file(source: str, directory: str) -> str:
    return str(download(source, Path(directory)))


@flow(name="load_bulk", validate_parameters=True)
def load_bulk(
    source: str,
    warehouse: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    lock_timeout: float = 30.0,
    download_dir: str | None = None,
    processes: int | None = None,
) -> dict[str, Any]:
    """Load a bulk zip (path or URL) into the warehouse as one run; returns the run's summary.

    ``processes``: run the shard work in that many local worker processes; None runs it where the
    task runner runs the task (a Dask worker, or this process)."""
    clock = time.monotonic()
    store = Warehouse(settings.warehouse_dir(warehouse))
    path = source
    if is_url(source):
        path = fetch_bulk_file(source, download_dir or str(store.root.parent / "downloads"))
    archive = BulkArchive.open(path)  # refuses a truncated file before anything is written
    started = datetime.now(UTC)
    run_id = f"{started:%Y%m%dT%H%M%S}Z-{secrets.token_hex(3)}"
    logger = get_run_logger()
    pool = ProcessPoolExecutor(processes, mp_context=get_context("spawn")) if processes else nullcontext(None)
    with store.writer(run_id, lock_timeout=lock_timeout) as run, pool as executor:
        previous_watermark = run.watermark(BULK_SCOPE)
        baseline = not run.has_runs(BULK_SCOPE)
        first_load = not run.manifest.files("study_versions")
        head_slices = run.head_index().shards()
        ctx = RunContext(run_id, started, "bulk")
        progress.emit("start", run_id=run_id, mode="bulk", since=None, scope=BULK_SCOPE, total=archive.members)
        futures = [load_shard.submit(ShardJob(str(archive.path), key, shard,
                                              head_slices.get(key, HEAD_SCHEMA.empty_table()), ctx,
                                              str(run.dir), batch_size), executor)
                   for key, shard in archive.shards.items()]
        totals = RunTotals(total_count=archive.members)
        try:
            for future in as_completed(futures):
                shard = future.result()
                run.adopt(shard.parts)
                _add(totals, shard)
                progress.emit("page", number=totals.pages, studies=shard.studies, total=archive.members,
                              seen=totals.studies_seen, versions=totals.versions_written)
        except BaseException:
            # Stop the other shards (queued ones never start, running ones stop at their next batch)
            # and wait for them, so that the rollback deletes every file of the run.
            (run.dir / CANCEL_MARKER).touch()
            if executor is not None:
                executor.shutdown(wait=True, cancel_futures=True)
            wait(futures)
            raise
        totals.watermark = max(filter(None, [previous_watermark, totals.watermark]), default=None)
        if not first_load:  # a first load only adds first versions: no change to derive
            totals.changes_written = derive_run_changes(
                run, settings.rules(None, run.manifest.meta), only_run=run_id,
                baseline_runs=frozenset([run_id]) if baseline else frozenset())
        summary = SyncSummary(run_id, "bulk", BULK_SCOPE, None, round(time.monotonic() - clock, 3), totals)
        params = {"archive": str(archive.path), "members": str(archive.members),
                  "json_bytes": str(archive.json_bytes), "skipped": str(archive.skipped),
                  "batch_size": str(batch_size)}
        commit_run(run, summary, started, params=params, api_url=source)
    logger.info("bulk load %s: %d studies in %.1fs", run_id, totals.studies_seen, summary.duration_seconds)
    progress.emit("done", **summary.as_dict())
    return summary.as_dict()


def _add(totals: RunTotals, shard: ShardResult) -> None:
    totals.pages += 1
    totals.studies_seen += shard.studies
    totals.new_studies += shard.new_studies
    totals.versions_written += shard.versions
    totals.unchanged += shard.unchanged
    totals.quarantined += shard.quarantined
    totals.watermark = max(filter(None, [totals.watermark, shard.newest_update]), default=None)


def execution(workers: int | None = None, dask: str | None = None) -> tuple[TaskRunner[Any], int | None]:
    """The task runner and local worker processes for a bulk load.

    ``dask``: a scheduler address, or ``local`` for a local Dask cluster of ``workers`` processes; the
    shard work runs in the Dask workers. Otherwise tasks run in threads here and hand the work to
    ``workers`` local processes (default: one per core); ``workers=1`` does it all in this process."""
    if workers is not None and workers < 1:
        raise UsageError("--workers must be at least 1")
    n = workers or os.cpu_count() or 1
    if dask:
        from prefect_dask import DaskTaskRunner

        if dask == "local":
            return DaskTaskRunner(cluster_kwargs={"n_workers": n, "threads_per_worker": 1, "processes": True,
                                                  "dashboard_address": None}), None
        return DaskTaskRunner(address=dask), None
    # Twice as many task threads as processes: the next shard is queued while the others run.
    return ThreadPoolTaskRunner(max_workers=2 * n if n > 1 else 1), (n if n > 1 else None)


def run_load_bulk(params: dict[str, Any], *, workers: int | None = None, dask: str | None = None) -> dict[str, Any]:
    """``load_bulk`` with the chosen execution (see ``execution``)."""
    runner, processes = execution(workers, dask)
    result: dict[str, Any] = load_bulk.with_options(task_runner=runner)(**params, processes=processes)
    return result
