"""``load_bulk``: the registry's bulk zip (``ctg-studies.json.zip``) as one run.

The archive is checked before the writer opens (a truncated download is refused, nothing is
written). Then one task per shard (the registry's 100 folders: the NCT id's last two digits; small
folders grouped, ``shard_tasks``) reads its members batch by batch, plans versions against the
shard's slice of the heads, and writes the shard's part files; the run commits once, atomically,
as mode ``bulk``, scope ``all``, source ``bulk``, with the newest ``lastUpdatePostDate`` as the
scope's watermark, so a later ``trialsync sync`` continues incrementally from it. Shard tasks are
plain functions of picklable jobs: they run in worker processes (both cores), or on a Dask
cluster's workers (no Prefect there), which see the archive and the warehouse on a shared
filesystem. In a reload, the shards hold back the members whose dates cannot say whether they are
news (new content dated as the stored version, or a study removed since); once every shard is done
the archive's newest date decides them (``_settle_held``).

Memory: a worker holds one batch of records and its shard's heads; the flow holds the archive's
member offsets and the columnar head index (~45 + ~55 bytes a study).
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import replace
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from flows import progress, settings
from flows.derive import derive_run_changes
from flows.engine import NONE, as_completed, flow, get_run_logger, task, wait
from flows.lifecycle import worker_started
from flows.runs import RunTotals, SyncSummary, commit_run
from flows.shards import (
    CANCEL_MARKER,
    DEFAULT_BATCH_SIZE,
    DEFAULT_SAMPLE,
    VERIFY_MARKER,
    ShardJob,
    ShardResult,
    process_shard,
)
from pipeline import hashing
from pipeline.errors import UsageError
from pipeline.redact import redact
from pipeline.registry.bulk import BulkArchive, group_shards, is_url
from pipeline.registry.download import download, held
from pipeline.scope import next_watermark
from pipeline.versioning import RunContext, SameDay
from warehouse import Warehouse
from warehouse.heads import HEAD_SCHEMA
from warehouse.parts import StagedFile

BULK_SCOPE = "all"  # the bulk file is the whole registry: the same scope as a plain `trialsync sync`
# Members a shard task reads about: small folders are grouped (``group_shards``); at the registry's
# size each folder (~6,000 studies) is a task of its own. Fewer, fuller part files cost less to write
# (~1 ms a file and table) and to read. Capped so that each worker still gets two tasks or more.
TASK_STUDIES = 2_000


@task(name="load-shard", cache_policy=NONE, task_run_name="shard-{job.key}")
def load_shard(job: ShardJob, pool: Executor | None = None) -> ShardResult:
    """One shard: in ``pool`` (this machine's worker processes, or a Dask cluster's workers) or right
    here. The task itself stays in the flow's process, so its run is reported from there and workers
    never talk to Prefect. Prefect's own process runner costs ~0.5 s a task here; a pool ~nothing."""
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
    dask: str | None = None,
    verify: bool = False,
    sample: float = DEFAULT_SAMPLE,
) -> dict[str, Any]:
    """Load a bulk zip (path or URL) into the warehouse as one run; returns the run's summary.

    ``verify``: read and hash every member, also those whose bytes the stored heads already hold
    (``flows.shards``: such members are otherwise skipped, with a sampled check of ``sample``).

    ``processes``: run the shard work in that many local worker processes (None: in this process).
    ``dask``: run it on a Dask cluster instead: a scheduler address, or ``local`` for a local cluster
    of ``processes`` workers."""
    clock = time.monotonic()
    store = Warehouse(settings.warehouse_dir(warehouse))
    path = source
    hold: AbstractContextManager[object] = nullcontext()
    if is_url(source):  # held while read: no other process's download replaces it meanwhile
        settings.check_bulk_url(source)
        path = fetch_bulk_file(source, download_dir or str(store.root.parent / "downloads"))
        hold = held(Path(path))
    with hold:
        archive = BulkArchive.open(path)  # refuses a truncated file before anything is written
        started = datetime.now(UTC)
        run_id = f"{started:%Y%m%dT%H%M%S}Z-{secrets.token_hex(3)}"
        logger = get_run_logger()
        pool = shard_executor(processes, dask)
        with store.writer(run_id, lock_timeout=lock_timeout) as run:
            previous_watermark = next_watermark(run.watermark(BULK_SCOPE), None, started.date())
            baseline = not run.has_runs(BULK_SCOPE)
            first_load = not run.manifest.files("study_versions")
            head_index = run.head_index()
            head_slices = head_index.shards()
            ctx = RunContext(run_id, started, "bulk")
            same_day: SameDay = "new" if first_load else "hold"  # decided once the archive's date is known
            progress.emit("start", run_id=run_id, mode="bulk", since=None, scope=BULK_SCOPE, total=archive.members)
            with pool as (executor, workers):  # closed (its workers gone) before the changes and the commit
                jobs = [ShardJob(str(archive.path), key, members, heads, ctx, str(run.dir), batch_size, verify, sample,
                                 same_day)
                        for key, members, heads in shard_tasks(archive, head_slices, workers)]
                futures = [load_shard.submit(job, executor) for job in jobs]
                totals = RunTotals(total_count=archive.members)
                reading = ReadCounts()
                try:
                    for future in as_completed(futures):
                        shard = future.result()
                        run.adopt(shard.parts)
                        _add(totals, shard)
                        reading.add(shard)
                        progress.emit("page", number=totals.pages, studies=shard.studies, total=archive.members,
                                      seen=totals.studies_seen, versions=totals.versions_written)
                except BaseException:
                    # Stop the other shards (queued ones never start, running ones stop at their next batch)
                    # and wait for them, so that the rollback deletes every file of the run.
                    (run.dir / CANCEL_MARKER).touch()
                    if executor is not None:
                        _shutdown(executor)
                    wait(futures)
                    raise
            if reading.held:
                everything = ShardJob(str(archive.path), "held", pa.concat_tables(list(archive.shards.values())),
                                      head_index.table, ctx, str(run.dir), batch_size)
                _settle_held(reading, totals, everything, run.adopt)
            archive_newest = totals.watermark  # what the archive's versions were known true as of (heads' as_of)
            totals.watermark = next_watermark(previous_watermark, totals.watermark, started.date())
            # A first load adds first versions, with no change to derive, except for studies the archive
            # lists more than once with different content: their later versions are changes.
            if not first_load or reading.repeated:
                totals.changes_written = derive_run_changes(
                    run, settings.rules(None, run.manifest.meta), only_run=run_id,
                    baseline_runs={run_id: run.news_from(started)} if baseline else {},
                    nct_ids=sorted(reading.repeated) if first_load else None)
            summary = SyncSummary(run_id, "bulk", BULK_SCOPE, None, round(time.monotonic() - clock, 3), totals)
            params = {"archive": str(archive.path), "members": str(archive.members),
                      "json_bytes": str(archive.json_bytes), "skipped": str(archive.skipped),
                      "batch_size": str(batch_size), "archive_newest": str(archive_newest or ""),
                      **reading.params(verify)}
            (run.dir / VERIFY_MARKER).unlink(missing_ok=True)
            commit_run(run, summary, started, params=params, api_url=redact(source))
        if reading.mismatched:
            logger.warning("bulk load %s: %d sampled unchanged members did not hash as their stored versions "
                           "(e.g. %s): read every member from then on; run `trialsync load-bulk --verify` to check "
                           "the rest", run_id, len(reading.mismatched), ", ".join(reading.mismatched[:5]))
        logger.info("bulk load %s: %d studies in %.1fs (%d unchanged members not read)", run_id, totals.studies_seen,
                    summary.duration_seconds, reading.unread)
        progress.emit("done", **summary.as_dict())
        return summary.as_dict()


def shard_tasks(archive: BulkArchive, head_slices: dict[str, pa.Table],
                workers: int | None) -> list[tuple[str, pa.Table, pa.Table]]:
    """(task key, members, heads) of each shard task, biggest first (the last tasks to start are the
    smallest, so no worker waits long for the others at the end): folders grouped to about
    ``TASK_STUDIES`` members, or fewer so as to give each of ``workers`` two tasks or more, in a
    multiple of ``workers`` tasks (None, a cluster with no worker yet: one task per folder). A
    group's key: ``00`` or ``00-03``."""
    target = 1 if workers is None else max(1, min(TASK_STUDIES, -(-archive.members // (2 * workers))))
    sizes = {key: shard.num_rows for key, shard in archive.shards.items()}
    tasks = []
    for keys in group_shards(sizes, target, workers or 1):
        members = pa.concat_tables([archive.shards[key] for key in keys])
        heads = pa.concat_tables([head_slices.get(key, HEAD_SCHEMA.empty_table()) for key in keys])
        tasks.append((keys[0] if len(keys) == 1 else f"{keys[0]}-{keys[-1]}", members, heads))
    return sorted(tasks, key=lambda task: -task[1].num_rows)  # stable: equal tasks keep folder order


def _settle_held(reading: ReadCounts, totals: RunTotals, template: ShardJob,
                 adopt: Callable[[list[StagedFile]], None]) -> None:
    """Plan the members the shards held back: new content (or a removed study) dated the same day as
    the stored version. Stale where the archive predates the stored version (its newest registry
    date, ``totals.watermark`` here, is more than a day before the version was stored): reloading
    last month's zip must not take studies back to what they said then, nor bring back a study
    removed since. News otherwise: the registry edits records without moving the date, and serves
    again a study it 404'd by mistake."""
    held = pa.array(sorted(reading.held), pa.int64())
    members = template.members.filter(pc.is_in(template.members["header_offset"], value_set=held))
    members = members.sort_by("header_offset")  # the archive's order
    heads = template.heads.filter(pc.is_in(template.heads["nct_id"], value_set=pc.unique(members["nct_id"])))
    reading.held.clear()
    shard = load_shard(replace(template, members=members, heads=heads, sample=0.0,
                               same_day=totals.watermark or "new"))
    adopt(shard.parts)
    _add(totals, shard)
    totals.pages -= 1  # the held members' pass is not one of the run's shard tasks
    reading.add(shard)
    if shard.stale:
        get_run_logger().warning(
            "bulk load: the archive's newest registry date is %s: %d record(s) dated as their stored versions "
            "but different, or of studies removed since, are older than what the warehouse holds (stale)",
            totals.watermark, len(shard.stale))


class ReadCounts:
    """How many members the run skipped for their key, re-hashed as the sampled check, found wrong;
    which studies new to the warehouse it gave more than one version (listed more than once)."""

    def __init__(self) -> None:
        self.unread = self.sampled = self.verified_shards = 0
        self.mismatched: list[str] = []
        self.repeated: list[str] = []
        self.held: list[int] = []  # members held back by the shards (``_settle_held``)
        self.canonicalisers: set[str] = set()

    def add(self, shard: ShardResult) -> None:
        self.repeated += shard.repeated
        self.held += shard.held
        self.unread += shard.unread
        self.sampled += shard.sampled
        self.mismatched += shard.mismatched
        self.verified_shards += shard.verified_all
        self.canonicalisers.add(shard.canonicaliser)

    def params(self, verify: bool) -> dict[str, str]:
        """For ``sync_runs.params``."""
        return {"verify": str(verify).lower(), "unread": str(self.unread), "sampled": str(self.sampled),
                "sample_mismatches": str(len(self.mismatched)), "verified_shards": str(self.verified_shards),
                # where the shards were hashed (C, Python, or both: e.g. Dask workers without a compiler)
                "canonicaliser": "+".join(sorted(self.canonicalisers)) or hashing.implementation()}


def _add(totals: RunTotals, shard: ShardResult) -> None:
    totals.pages += 1
    totals.studies_seen += shard.studies
    totals.new_studies += shard.new_studies
    totals.versions_written += shard.versions
    totals.unchanged += shard.unchanged
    totals.quarantined += shard.quarantined
    totals.add_stale(shard.stale)
    for path, n in shard.unknown_fields.items():
        totals.unknown_fields[path] = totals.unknown_fields.get(path, 0) + n
    totals.watermark = max(filter(None, [totals.watermark, shard.newest_update]), default=None)


MAX_WORKERS = 256  # processes of one machine (each holds a batch); a typo like 100000 is refused


def execution(workers: int | None = None, dask: str | None = None) -> tuple[int, int | None]:
    """Task threads and worker processes for a bulk load.

    Shard tasks run in threads of the flow's process and hand the work to an executor: ``workers``
    local processes (default: one per core; ``1`` = in this process), or with ``dask`` the workers
    of a Dask cluster (an address, or ``local`` for a local cluster of ``workers`` processes)."""
    if workers is not None and not 1 <= workers <= MAX_WORKERS:
        raise UsageError(f"--workers must be from 1 to {MAX_WORKERS}, got {workers}")
    n = workers or os.cpu_count() or 1
    if dask:
        # The threads only wait for the cluster: enough of them to keep a bigger cluster busy too.
        return max(2 * n, 16), n
    # Twice as many task threads as processes: the next shard is queued while the others run.
    return (2 * n if n > 1 else 1), (n if n > 1 else None)


Pool = tuple[Executor | None, int | None]  # the executor (None: this process) and its number of workers


def shard_executor(processes: int | None, dask: str | None) -> AbstractContextManager[Pool]:
    """The executor of the shard work (see ``execution``) and how many workers it has (what
    ``shard_tasks`` groups folders by), closed (and its processes gone) on exit."""
    if dask:
        return _dask_executor(dask, processes or os.cpu_count() or 1)
    if processes:
        return _local_pool(processes)
    return nullcontext((None, 1))


@contextmanager
def _local_pool(processes: int) -> Iterator[Pool]:
    with ProcessPoolExecutor(processes, mp_context=get_context("spawn"), initializer=worker_started) as pool:
        yield pool, processes


@contextmanager
def _dask_executor(address: str, n_workers: int) -> Iterator[Pool]:
    """Shard work as plain functions on Dask workers: they need this code, the archive and the
    warehouse directory at the same paths, and nothing of Prefect (no API, no server). The workers
    counted are those the cluster has when the run starts (None if it has none yet: no grouping)."""
    from distributed import Client, LocalCluster

    cluster = (LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None)
               if address == "local" else nullcontext(address))
    with cluster as target, Client(target) as client:
        executor = client.get_executor(pure=False)
        try:
            yield executor, len(client.scheduler_info().get("workers", {})) or None
        finally:
            executor.shutdown(wait=False)


def _shutdown(executor: Executor) -> None:
    try:
        executor.shutdown(wait=True, cancel_futures=True)
    except TypeError:  # a Dask ClientExecutor: no cancel_futures; running shards stop at the marker
        executor.shutdown(wait=True)


def run_load_bulk(params: dict[str, Any], *, workers: int | None = None, dask: str | None = None) -> dict[str, Any]:
    """``load_bulk`` with the chosen execution (see ``execution``)."""
    threads, processes = execution(workers, dask)
    result: dict[str, Any] = load_bulk.with_options(threads=threads)(**params, processes=processes, dask=dask)
    return result
