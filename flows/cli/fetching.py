"""Commands that fetch from the registry: sync, load-bulk, backfill."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import flows  # noqa: F401 - sets Prefect's offline defaults before Prefect is imported
from flows import settings
from flows.cli.common import (
    WarehouseOpt,
    app,
    console,
    err,
    print_summary,
    quiet_prefect_failures,
    split_values,
    with_progress,
)
from flows.inputs import COUNT_MAX, check_seconds, not_future
from pipeline.errors import UsageError
from pipeline.registry.defaults import DEFAULT_INTERVAL
from pipeline.scope import Scope, check_page_size, parse_date_arg, resolve_window

# The retry and pacing options sync and backfill share (checked alike by ``check_request_flags``).
MaxAttemptsOpt = Annotated[int, typer.Option("--max-attempts", help="Total tries of one request (429, 5xx, "
                                             "timeouts, refused connections)")]
BackoffOpt = Annotated[float, typer.Option("--backoff", help="First retry wait in seconds (doubles each try)")]
RetryBudgetOpt = Annotated[float, typer.Option("--retry-budget", help="Seconds the whole run may spend on "
                                               "failed tries and the waits between them")]
MAX_ATTEMPTS = 100
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar")]


def check_request_flags(*, request_interval: float, backoff: float, lock_timeout: float, retry_budget: float,
                        max_attempts: int) -> None:
    """Seconds are finite, >= 0 and at most a day, tries from 1 to 100 (a watchlist channel's bound):
    one line naming the first flag that is not."""
    for flag, value in (("--request-interval", request_interval), ("--backoff", backoff),
                        ("--lock-timeout", lock_timeout), ("--retry-budget", retry_budget)):
        check_seconds(flag, value)
    if not 1 <= max_attempts <= MAX_ATTEMPTS:
        raise UsageError(f"--max-attempts must be >= 1 and <= {MAX_ATTEMPTS}")


@app.command()
def sync(
    query: Annotated[str | None, typer.Option("--query", help="Free-text scope (query.term)")] = None,
    condition: Annotated[str | None, typer.Option("--condition", help="Condition scope (query.cond)")] = None,
    sponsor: Annotated[str | None, typer.Option("--sponsor", help="Sponsor scope (query.spons)")] = None,
    ids: Annotated[list[str] | None, typer.Option("--ids", help="NCT ids (filter.ids), comma-separated")] = None,
    status: Annotated[str | None, typer.Option("--status", help="Overall statuses, comma-separated")] = None,
    since: Annotated[str | None, typer.Option("--since", help="Only records updated since YYYY-MM-DD")] = None,
    full: Annotated[bool, typer.Option("--full", help="Fetch the whole scope (may retire vanished studies)")]
    = False,
    page_size: Annotated[int, typer.Option("--page-size", help="Studies per page (1-1000)")] = 1000,
    api_url: Annotated[str | None, typer.Option("--api-url", help="API base URL [env TRIALSYNC_API_URL]")]
    = None,
    warehouse: WarehouseOpt = None,
    request_interval: Annotated[float, typer.Option("--request-interval",
                                                    help="Seconds between requests (robots.txt asks 1; the "
                                                    "registry is reported to allow ~50 a minute; doubled "
                                                    "after a 429; 0: no pacing)")] = DEFAULT_INTERVAL,
    lock_timeout: Annotated[float, typer.Option("--lock-timeout",
                                                help="Seconds to wait for another sync to finish")] = 30.0,
    rules: Annotated[Path | None, typer.Option("--rules", help="Severity rules (YAML); default: the "
                                               "warehouse's stored rules, else SPEC's defaults")] = None,
    max_attempts: MaxAttemptsOpt = 8,
    backoff: BackoffOpt = 1.0,
    retry_budget: RetryBudgetOpt = 60.0,
    quiet: QuietOpt = False,
    alerts: Annotated[Path | None, typer.Option("--alerts", help="A watchlist (YAML): send its alerts after "
                                                "the sync commits (trialsync alerts run)")] = None,
) -> None:
    """One sync run of a scope: fetch, version, commit atomically."""
    from warehouse import Warehouse

    since_date = not_future(parse_date_arg(since, "--since"), "--since") if since is not None else None
    check_request_flags(request_interval=request_interval, backoff=backoff, lock_timeout=lock_timeout,
                        retry_budget=retry_budget, max_attempts=max_attempts)
    # Check every input before Prefect starts (its server takes seconds to come up).
    Scope.build(query=query, condition=condition, sponsor=sponsor, ids=ids, statuses=status)
    check_page_size(page_size)
    resolve_window(full=full, since=since_date, watermark=None)
    Warehouse(settings.warehouse_dir(warehouse)).check_location()
    if rules is not None:
        settings.rules(str(rules), {})
    if alerts is not None:
        from flows.alert_config import check_config

        check_config(alerts)
    summary = run_sync(
        dict(query=query, condition=condition, sponsor=sponsor, ids=ids,
             status=status.split(",") if status else None, since=since_date, full=full,
             page_size=page_size, api_url=settings.api_url(api_url),
             warehouse=str(settings.warehouse_dir(warehouse)), request_interval=request_interval,
             lock_timeout=lock_timeout, max_attempts=max_attempts, backoff_seconds=backoff,
             retry_budget=retry_budget, rules_file=str(rules) if rules else None,
             alerts=str(alerts) if alerts else None),
        show_progress=not quiet,
    )
    print_summary(summary)
    if "alerts" in summary:
        from flows.cli.alerts import finish_alerts

        finish_alerts(summary["alerts"])


def _refuse_damaged(warehouse: str | None) -> None:
    """Before Prefect starts: not a warehouse's directory, or a damaged warehouse (one line, see repair)."""
    from warehouse import Warehouse

    Warehouse(settings.warehouse_dir(warehouse)).check_location()


def run_sync(params: dict[str, Any], *, show_progress: bool = True) -> dict[str, Any]:
    """Run the ``sync_registry`` flow with a progress bar fed by its page events."""
    from flows.sync import sync_registry

    return with_progress(lambda: sync_registry(**{k: v for k, v in params.items() if v is not None}),
                          show_progress=show_progress)


@app.command("load-bulk")
def load_bulk(
    source: Annotated[str, typer.Argument(help="ctg-studies.json.zip: a path or an http(s) URL")],
    warehouse: WarehouseOpt = None,
    workers: Annotated[int | None, typer.Option("--workers", help="Worker processes [default: one per core]")]
    = None,
    dask: Annotated[str | None, typer.Option("--dask", help="Run shard tasks on Dask: a scheduler address, "
                                             "or 'local' for a local cluster")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=COUNT_MAX,
                                            help="Studies a worker holds at once")] = 500,
    lock_timeout: Annotated[float, typer.Option("--lock-timeout",
                                                help="Seconds to wait for another sync to finish")] = 30.0,
    download_dir: Annotated[str | None, typer.Option("--download-dir",
                                                     help="Where a URL is downloaded [default: beside the warehouse]")]
    = None,
    verify: Annotated[bool, typer.Option("--verify", help="Read and hash every member, also those whose bytes "
                                         "the warehouse already holds (otherwise skipped, checked on a sample)")]
    = False,
    quiet: QuietOpt = False,
) -> None:
    """Load the registry's bulk download as one run (later syncs continue from it)."""
    from flows.bulk import execution
    from pipeline.registry.bulk import check_bulk_file, is_url

    execution(workers, dask)  # refuses a --workers out of range (exit 2) before anything starts
    check_seconds("--lock-timeout", lock_timeout)
    if not is_url(source):
        source = str(check_bulk_file(source).resolve())
    else:
        settings.check_bulk_url(source)
        _check_download_dir(download_dir)
    _refuse_damaged(warehouse)
    summary = run_bulk(dict(source=source, warehouse=str(settings.warehouse_dir(warehouse)), batch_size=batch_size,
                            lock_timeout=lock_timeout, download_dir=download_dir, verify=verify),
                       workers=workers, dask=dask, show_progress=not quiet)
    print_summary(summary)


def _check_download_dir(directory: str | None) -> None:
    """``--download-dir`` must be, or be creatable as, a directory (a file there, or above it, made an
    OSError traceback line, exit 1, after the warehouse had been checked)."""
    if directory is None:
        return
    path = Path(directory).expanduser()
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        what = "is" if existing == path else f"is under {existing}, which is"
        raise UsageError(f"--download-dir {directory} {what} a file, not a directory")


def run_bulk(params: dict[str, Any], *, workers: int | None = None, dask: str | None = None,
             show_progress: bool = True) -> dict[str, Any]:
    """Run the ``load_bulk`` flow with a progress bar fed by its shard events."""
    from flows.bulk import run_load_bulk

    return with_progress(lambda: run_load_bulk({k: v for k, v in params.items() if v is not None},
                                                workers=workers, dask=dask), show_progress=show_progress)



@app.command()
def backfill(
    ids: Annotated[list[str] | None, typer.Argument(help="NCT ids (space or comma separated)")] = None,
    all_studies: Annotated[bool, typer.Option("--all", help="Every study the warehouse follows")] = False,
    status_design_only: Annotated[bool, typer.Option(
        "--status-design-only", help="Fetch only version 0 and the versions whose module labels include "
        "Study Status or Study Design (status, dates, enrollment, design); others carry forward")] = False,
    api_url: Annotated[str | None, typer.Option("--api-url", help="API v2 base URL [env TRIALSYNC_API_URL]; "
                                                "the history API is beside it, at /api/int")] = None,
    warehouse: WarehouseOpt = None,
    request_interval: Annotated[float, typer.Option("--request-interval",
                                                    help="Seconds between requests (doubled after a 429; "
                                                    "0: no pacing)")] = DEFAULT_INTERVAL,
    lock_timeout: Annotated[float, typer.Option("--lock-timeout",
                                                help="Seconds to wait for another run to finish")] = 30.0,
    max_attempts: MaxAttemptsOpt = 8,
    backoff: BackoffOpt = 1.0,
    retry_budget: RetryBudgetOpt = 60.0,
    quiet: QuietOpt = False,
) -> None:
    """Import studies' past versions from the registry's record history (its website's internal API)."""
    from pipeline.history import KEY_MODULES, check_backfill_args
    from pipeline.registry.history import internal_api_url

    wanted = check_backfill_args(split_values(ids), all_studies)
    url = settings.api_url(api_url)
    internal_api_url(url)
    check_request_flags(request_interval=request_interval, backoff=backoff, lock_timeout=lock_timeout,
                        retry_budget=retry_budget, max_attempts=max_attempts)
    params = dict(ids=wanted or None, all_studies=all_studies,
                  modules=list(KEY_MODULES) if status_design_only else None, api_url=url,
                  warehouse=str(settings.warehouse_dir(warehouse)), request_interval=request_interval,
                  lock_timeout=lock_timeout, max_attempts=max_attempts, backoff_seconds=backoff,
                  retry_budget=retry_budget)
    _refuse_damaged(warehouse)
    summary = run_backfill(params, show_progress=not quiet)
    console.print(
        f"[bold green]run {summary['run_id']}[/] (backfill of {summary['studies_seen']} studies): "
        f"{summary['fetched']} history versions fetched, {summary['versions_written']} new versions, "
        f"{summary['rewritten']} studies merged, {summary['unchanged']} unchanged, "
        f"{summary['changes_written']} changes, {summary['quarantined']} quarantined "
        f"in {summary['duration_seconds']:.1f}s", highlight=False)
    if summary["not_found"]:
        err.print(f"trialsync: warning: the registry has no history for {', '.join(summary['not_found'])}",
                  highlight=False, markup=False)
    for nct, why in summary.get("failed", {}).items():
        err.print(f"trialsync: warning: {nct} skipped: {why}", highlight=False, markup=False)


def run_backfill(params: dict[str, Any], *, show_progress: bool = True) -> dict[str, Any]:
    """Run the ``backfill_history`` flow with a progress bar fed by its batch events."""
    from flows import progress
    from flows.backfill import backfill_history

    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[versions]} new versions"), TimeElapsedColumn(),
                   console=err, disable=not show_progress or not err.is_terminal, transient=True)
    task_id = bar.add_task("backfilling", total=None, versions=0)

    def on_event(event: str, data: dict[str, Any]) -> None:
        if event == "start":
            bar.update(task_id, total=data["studies"] or None)
        elif event == "batch":
            bar.update(task_id, completed=data["seen"], versions=data["versions"])

    unsubscribe = progress.subscribe(on_event)
    quiet_prefect_failures()
    try:
        with bar:
            return backfill_history(**{k: v for k, v in params.items() if v is not None})
    finally:
        unsubscribe()

