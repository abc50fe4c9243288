"""``trialsync``: the command line. One-line errors on stderr, exit 1 (tracebacks with --debug)."""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import traceback
from collections.abc import Callable
from contextlib import suppress
from datetime import date, timedelta
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import flows  # noqa: F401 - sets Prefect's offline defaults before Prefect is imported
from flows import settings
from flows.output import FORMATS, render
from flows.readonly import check_query, query_error
from pipeline.errors import TrialsyncError, UsageError
from pipeline.redact import redact
from pipeline.scope import Scope, check_page_size, parse_date_arg, resolve_window

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Keep a local, versioned, queryable mirror of ClinicalTrials.gov.",
                  epilog="Errors are one line on stderr (exit 2: bad input, 1: failure, 130: interrupted); "
                         "add --debug anywhere (or TRIALSYNC_DEBUG=1) for the traceback.")
# Piped output is not cut at 80 columns: tables go to files and other programs whole.
console = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True)

_DEBUG = False
_INTERRUPTED = False
WarehouseOpt = Annotated[str | None, typer.Option("--warehouse", help="Warehouse directory "
                                                  "[env TRIALSYNC_WAREHOUSE; default ./trialsync-warehouse]")]
FormatOpt = Annotated[str, typer.Option("--format", help="table | json | csv")]


def _format(value: str) -> str:
    if value not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {value!r}")
    return value


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
                                                    help="Seconds between requests (robots.txt asks 1)")] = 1.0,
    lock_timeout: Annotated[float, typer.Option("--lock-timeout",
                                                help="Seconds to wait for another sync to finish")] = 30.0,
    rules: Annotated[Path | None, typer.Option("--rules", help="Severity rules (YAML); default: the "
                                               "warehouse's stored rules, else SPEC's defaults")] = None,
    max_attempts: Annotated[int, typer.Option("--max-attempts", help="Tries per request on 429/5xx/timeouts")]
    = 8,
    backoff: Annotated[float, typer.Option("--backoff", help="First retry wait in seconds (doubles each try)")]
    = 1.0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar")] = False,
    alerts: Annotated[Path | None, typer.Option("--alerts", help="A watchlist (YAML): send its alerts after "
                                                "the sync commits (trialsync alerts run)")] = None,
) -> None:
    """One sync run of a scope: fetch, version, commit atomically."""
    from warehouse import Warehouse

    since_date = parse_date_arg(since, "--since") if since else None
    if since_date and since_date > date.today() + timedelta(days=1):
        raise UsageError(f"--since {since} is in the future")
    for flag, value in (("--request-interval", request_interval), ("--backoff", backoff),
                        ("--lock-timeout", lock_timeout)):
        if not math.isfinite(value) or value < 0:
            raise UsageError(f"{flag} must be a number of seconds >= 0, not {value}")
    if max_attempts < 1:
        raise UsageError("--max-attempts must be >= 1")
    # Check every input before Prefect starts (its server takes seconds to come up).
    Scope.build(query=query, condition=condition, sponsor=sponsor, ids=ids, statuses=status)
    check_page_size(page_size)
    resolve_window(full=full, since=since_date, watermark=None)
    Warehouse(settings.warehouse_dir(warehouse)).check_location()
    if rules is not None:
        settings.rules(str(rules), {})
    if alerts is not None:
        from flows.alerts import check_config

        check_config(alerts)
    summary = run_sync(
        dict(query=query, condition=condition, sponsor=sponsor, ids=ids,
             status=status.split(",") if status else None, since=since_date, full=full,
             page_size=page_size, api_url=settings.api_url(api_url),
             warehouse=str(settings.warehouse_dir(warehouse)), request_interval=request_interval,
             lock_timeout=lock_timeout, max_attempts=max_attempts, backoff_seconds=backoff,
             rules_file=str(rules) if rules else None, alerts=str(alerts) if alerts else None),
        show_progress=not quiet,
    )
    print_summary(summary)
    if "alerts" in summary:
        finish_alerts(summary["alerts"])


def run_sync(params: dict[str, Any], *, show_progress: bool = True) -> dict[str, Any]:
    """Run the ``sync_registry`` flow with a progress bar fed by its page events."""
    from flows.sync import sync_registry

    return _with_progress(lambda: sync_registry(**{k: v for k, v in params.items() if v is not None}),
                          show_progress=show_progress)


@app.command("load-bulk")
def load_bulk(
    source: Annotated[str, typer.Argument(help="ctg-studies.json.zip: a path or an http(s) URL")],
    warehouse: WarehouseOpt = None,
    workers: Annotated[int | None, typer.Option("--workers", help="Worker processes [default: one per core]")]
    = None,
    dask: Annotated[str | None, typer.Option("--dask", help="Run shard tasks on Dask: a scheduler address, "
                                             "or 'local' for a local cluster")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Studies a worker holds at once")] = 500,
    lock_timeout: Annotated[float, typer.Option("--lock-timeout",
                                                help="Seconds to wait for another sync to finish")] = 30.0,
    download_dir: Annotated[str | None, typer.Option("--download-dir",
                                                     help="Where a URL is downloaded [default: beside the warehouse]")]
    = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar")] = False,
) -> None:
    """Load the registry's bulk download as one run (later syncs continue from it)."""
    from pipeline.registry.bulk import check_bulk_file, is_url

    if not is_url(source):
        source = str(check_bulk_file(source).resolve())
    if (workers is not None and workers < 1) or batch_size < 1:
        raise UsageError("--workers and --batch-size must be at least 1")
    summary = run_bulk(dict(source=source, warehouse=str(settings.warehouse_dir(warehouse)), batch_size=batch_size,
                            lock_timeout=lock_timeout, download_dir=download_dir),
                       workers=workers, dask=dask, show_progress=not quiet)
    print_summary(summary)


def run_bulk(params: dict[str, Any], *, workers: int | None = None, dask: str | None = None,
             show_progress: bool = True) -> dict[str, Any]:
    """Run the ``load_bulk`` flow with a progress bar fed by its shard events."""
    from flows.bulk import run_load_bulk

    return _with_progress(lambda: run_load_bulk({k: v for k, v in params.items() if v is not None},
                                                workers=workers, dask=dask), show_progress=show_progress)


def _with_progress(run: Callable[[], dict[str, Any]], *, show_progress: bool) -> dict[str, Any]:
    from flows import progress

    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[versions]} new versions"), TimeElapsedColumn(),
                   console=err, disable=not show_progress, transient=True)
    task_id = bar.add_task("syncing", total=None, versions=0)

    def on_event(event: str, data: dict[str, Any]) -> None:
        if event == "start":
            bar.update(task_id, description=f"{data['mode']} sync of {data['scope']}")
        elif event == "page":
            bar.update(task_id, completed=data["seen"], total=data["total"] or None, versions=data["versions"])

    unsubscribe = progress.subscribe(on_event)
    _quiet_prefect_failures()
    try:
        with bar:
            return run()
    finally:
        unsubscribe()


def _quiet_prefect_failures() -> None:
    """Prefect logs a failed run's traceback; the CLI reports one line instead (--debug shows all)."""
    if not _DEBUG:
        for name in ("prefect.flow_runs", "prefect.task_runs", "prefect.flow_engine", "prefect.task_engine"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def print_summary(summary: dict[str, Any]) -> None:
    since = f" since {summary['since']}" if summary.get("since") else ""
    units = "shards" if summary["mode"] == "bulk" else "pages"
    console.print(
        f"[bold green]run {summary['run_id']}[/] ({summary['mode']}{since}, scope {summary['scope']}): "
        f"{summary['pages']} {units}, {summary['studies_seen']} seen, {summary['new_studies']} new studies, "
        f"{summary['versions_written']} new versions, {summary['unchanged']} unchanged, "
        f"{summary['changes_written']} changes, {summary['retired']} retired, "
        f"{left_scope(summary)}"
        f"{summary['quarantined']} quarantined in {summary['duration_seconds']:.1f}s",
        highlight=False,
    )


def left_scope(summary: dict[str, Any]) -> str:
    n = summary.get("left_scope") or 0
    return f"{n} left the scope (still in the registry), " if n else ""


def finish_alerts(result: dict[str, Any]) -> None:
    """Print an alerts run's summary; failed deliveries (due again next run) make the exit code 1."""
    from pipeline.errors import DeliveryFailed

    if "error" in result:
        raise DeliveryFailed(f"alerts: {result['error']}")
    console.print(
        f"[bold green]alerts {result['run_id']}[/]: {result['matched']} matching changes, "
        f"{result['messages']} messages, {result['messages_sent']} delivered, {result['messages_failed']} failed, "
        f"{result['already_sent']} deliveries already made, {result['retried']} retried "
        f"in {result['duration_seconds']:.1f}s", highlight=False)
    if result["failures"]:
        first = result["failures"][0]
        raise DeliveryFailed(
            f"alerts: {result['deliveries_failed']} deliveries failed (channel {first['channel']}: "
            f"{first['error']}); they are retried on the next run")


alerts_app = typer.Typer(no_args_is_help=True, help="Watchlists: evaluate them and deliver change alerts.")
app.add_typer(alerts_app, name="alerts")
ConfigOpt = Annotated[Path, typer.Option("--config", help="The watchlist file (YAML; see "
                                         "deploy/watchlist.example.yaml)")]


@alerts_app.command("run")
def alerts_run(
    config: ConfigOpt,
    warehouse: WarehouseOpt = None,
    lock_timeout: Annotated[float, typer.Option("--lock-timeout", help="Seconds to wait for another run")] = 30.0,
) -> None:
    """Deliver the alerts of every watch: each (watch, change, channel) once; failures retried next run."""
    from flows.alerts import check_config, send_alerts

    check_config(config)
    directory = settings.warehouse_dir(warehouse)
    from warehouse import Warehouse

    if not Warehouse(directory).exists():
        raise UsageError(f"no warehouse at {Warehouse(directory).root} (run `trialsync sync` first)")
    _quiet_prefect_failures()
    finish_alerts(send_alerts(config=str(config), warehouse=str(directory), lock_timeout=lock_timeout))


@alerts_app.command("test")
def alerts_test(
    config: ConfigOpt,
    channel: Annotated[str | None, typer.Option("--channel", help="Only this channel")] = None,
) -> None:
    """Send one sample alert to each channel (nothing is recorded in the ledger)."""
    from flows.alerts import send_test
    from pipeline.errors import DeliveryFailed

    results = send_test(str(config), channel)
    for name, error in results:
        console.print(f"{name}: " + (f"[red]failed[/]: {error}" if error else "[green]sent[/]"), highlight=False)
    if failed := [name for name, error in results if error]:
        raise DeliveryFailed(f"the sample alert did not reach {', '.join(failed)}")


@alerts_app.command("list")
def alerts_list(
    config: ConfigOpt,
    fmt: FormatOpt = "table",
    warehouse: WarehouseOpt = None,
) -> None:
    """The watches, the studies each follows now, and their deliveries so far (sent, failed awaiting retry)."""
    from flows.alerts import load_watchlist
    from warehouse import Warehouse
    from warehouse.alerts import watch_overview

    _format(fmt)
    watchlist = load_watchlist(config)
    store = Warehouse(settings.warehouse_dir(warehouse))
    if store.exists():
        with store.committed() as con:
            rows = watch_overview(con, watchlist)
    else:
        rows = watch_overview(None, watchlist)
    render(list(rows[0]), [list(r.values()) for r in rows], fmt, console)


@app.command()
def sql(
    statement: Annotated[str, typer.Argument(help="A SELECT query over the warehouse views")],
    fmt: FormatOpt = "table",
    warehouse: WarehouseOpt = None,
) -> None:
    """Ad hoc SQL on a read-only connection."""
    from warehouse import Warehouse

    _format(fmt)
    check_query(statement)
    with Warehouse(settings.warehouse_dir(warehouse)).connect(sandbox=True) as con:
        try:
            result = con.execute(statement)
            columns = [d[0] for d in result.description or []]
            rows = result.fetchall()
        except Exception as exc:  # duckdb errors: one line is enough
            raise query_error(exc) from None
        render(columns, rows, fmt, console)


@app.command()
def changes(
    since: Annotated[str | None, typer.Option("--since", help="Registry updates on or after YYYY-MM-DD")] = None,
    until: Annotated[str | None, typer.Option("--until", help="... and on or before YYYY-MM-DD")] = None,
    nct: Annotated[list[str] | None, typer.Option("--nct", help="Only these studies (repeat or comma-separate)")]
    = None,
    category: Annotated[list[str] | None, typer.Option("--category", help="Only these categories")] = None,
    event: Annotated[list[str] | None, typer.Option("--event", help="Only these events")] = None,
    min_severity: Annotated[str | None, typer.Option("--min-severity", help="info | minor | notable | critical")]
    = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="At most N rows")] = None,
    fmt: FormatOpt = "table",
    warehouse: WarehouseOpt = None,
) -> None:
    """The change feed: what changed, by how much, and how much it matters."""
    from warehouse import Warehouse
    from warehouse.queries import ALL_CHANGE_COLUMNS, CHANGE_COLUMNS, ChangeFilter, changes_query

    _format(fmt)
    ids = tuple(sorted({s.upper() for s in _split(nct)}))
    Scope.build(ids=ids)  # validates the ids
    spec = ChangeFilter(
        since=parse_date_arg(since, "--since") if since else None,
        until=parse_date_arg(until, "--until") if until else None,
        nct_ids=ids, categories=tuple(_split(category)), events=tuple(_split(event)),
        min_severity=min_severity, limit=limit)
    if spec.since and spec.until and spec.since > spec.until:
        raise UsageError(f"--since {spec.since} is after --until {spec.until}")
    sql, params = changes_query(spec, CHANGE_COLUMNS if fmt == "table" else ALL_CHANGE_COLUMNS)
    with Warehouse(settings.warehouse_dir(warehouse)).connect() as con:
        result = con.execute(sql, params)
        render([d[0] for d in result.description], result.fetchall(), fmt, console)


@app.command()
def history(
    nct: Annotated[str, typer.Argument(help="An NCT id")],
    fmt: Annotated[str, typer.Option("--format", help="text | json")] = "text",
    warehouse: WarehouseOpt = None,
) -> None:
    """Every stored version of one study and what changed between them."""
    from flows.history import print_history

    nct_id = nct.strip().upper()
    Scope.build(ids=[nct_id])
    if fmt not in ("text", "json"):
        raise UsageError(f"--format must be text or json, not {fmt!r}")
    print_history(settings.warehouse_dir(warehouse), nct_id, fmt, console)


@app.command()
def rederive(
    rules: Annotated[Path | None, typer.Option("--rules", help="YAML file with a 'severity:' mapping")] = None,
    warehouse: WarehouseOpt = None,
) -> None:
    """Recompute every change from the stored versions (nothing is fetched), e.g. after a rule changed."""
    from flows.sync import rederive_changes

    if rules is not None:
        settings.rules(str(rules), {})  # fail fast on a bad file
    _quiet_prefect_failures()
    summary = rederive_changes(warehouse=str(settings.warehouse_dir(warehouse)),
                               rules_file=str(rules) if rules else None)
    console.print(f"[bold green]run {summary['run_id']}[/] (rederive): {summary['changes_written']} changes "
                  f"in {summary['duration_seconds']:.1f}s", highlight=False)


@app.command()
def compact(
    keep_hours: Annotated[float, typer.Option(
        "--keep-hours", help="Keep the superseded files this long for readers that still hold the "
        "previous catalog (0: delete them now)")] = 24.0,
    warehouse: WarehouseOpt = None,
) -> None:
    """Rewrite every table into one Parquet file (queries open fewer files; rows hidden by a backfill
    and changes replaced by a rederive are dropped). Views show exactly the same rows afterwards."""
    from flows.compact import compact_warehouse

    if keep_hours < 0:  # here too, so bad input fails before Prefect's temporary server starts
        raise UsageError("--keep-hours must be 0 or more")
    _quiet_prefect_failures()
    result = compact_warehouse(warehouse=str(settings.warehouse_dir(warehouse)), keep_hours=keep_hours)
    console.print(f"[bold green]run {result['run_id']}[/] (compact): {result['files_before']} files -> "
                  f"{result['files_after']}, {result['deleted_runs']} superseded run directories deleted; "
                  f"the rest are kept until {result['kept_until'][:16]} UTC "
                  f"({result['duration_seconds']:.1f}s)", highlight=False)


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
                                                    help="Seconds between requests (robots.txt asks 1)")] = 1.0,
    lock_timeout: Annotated[float, typer.Option("--lock-timeout",
                                                help="Seconds to wait for another run to finish")] = 30.0,
    max_attempts: Annotated[int, typer.Option("--max-attempts", help="Tries per request on 429/5xx/timeouts")]
    = 8,
    backoff: Annotated[float, typer.Option("--backoff", help="First retry wait in seconds (doubles each try)")]
    = 1.0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar")] = False,
) -> None:
    """Import studies' past versions from the registry's record history (its website's internal API)."""
    from pipeline.history import KEY_MODULES, check_backfill_args
    from pipeline.registry.history import internal_api_url

    wanted = check_backfill_args(_split(ids), all_studies)
    url = settings.api_url(api_url)
    internal_api_url(url)
    if request_interval < 0 or backoff < 0 or max_attempts < 1:
        raise UsageError("--request-interval and --backoff must be >= 0, --max-attempts >= 1")
    params = dict(ids=wanted or None, all_studies=all_studies,
                  modules=list(KEY_MODULES) if status_design_only else None, api_url=url,
                  warehouse=str(settings.warehouse_dir(warehouse)), request_interval=request_interval,
                  lock_timeout=lock_timeout, max_attempts=max_attempts, backoff_seconds=backoff)
    summary = run_backfill(params, show_progress=not quiet)
    console.print(
        f"[bold green]run {summary['run_id']}[/] (backfill of {summary['studies_seen']} studies): "
        f"{summary['fetched']} history versions fetched, {summary['versions_written']} new versions, "
        f"{summary['rewritten']} studies merged, {summary['unchanged']} unchanged, "
        f"{summary['changes_written']} changes, {summary['quarantined']} quarantined "
        f"in {summary['duration_seconds']:.1f}s", highlight=False)
    if summary["not_found"]:
        err.print(f"trialsync: warning: the registry has no history for {', '.join(summary['not_found'])}",
                  highlight=False)


def run_backfill(params: dict[str, Any], *, show_progress: bool = True) -> dict[str, Any]:
    """Run the ``backfill_history`` flow with a progress bar fed by its batch events."""
    from flows import progress
    from flows.backfill import backfill_history

    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[versions]} new versions"), TimeElapsedColumn(),
                   console=err, disable=not show_progress, transient=True)
    task_id = bar.add_task("backfilling", total=None, versions=0)

    def on_event(event: str, data: dict[str, Any]) -> None:
        if event == "start":
            bar.update(task_id, total=data["studies"] or None)
        elif event == "batch":
            bar.update(task_id, completed=data["seen"], versions=data["versions"])

    unsubscribe = progress.subscribe(on_event)
    _quiet_prefect_failures()
    try:
        with bar:
            return backfill_history(**{k: v for k, v in params.items() if v is not None})
    finally:
        unsubscribe()


def _split(values: list[str] | None) -> list[str]:
    return [part.strip() for value in values or [] for part in value.split(",") if part.strip()]


@app.command()
def runs(
    limit: Annotated[int, typer.Option("--limit", min=1, help="Most recent N runs")] = 20,
    fmt: FormatOpt = "table",
    warehouse: WarehouseOpt = None,
) -> None:
    """Past sync runs and their counts."""
    from warehouse import Warehouse

    _format(fmt)
    with Warehouse(settings.warehouse_dir(warehouse)).connect() as con:
        result = con.execute(
            "SELECT run_id, mode, scope, status, pages, studies_seen AS seen, new_studies AS new, "
            "versions_written AS versions, unchanged, changes_written AS changes, quarantined AS quar, "
            "retired, coalesce(left_scope, 0) AS left_scope, since, "
            "strftime(timezone('UTC', started_at), '%Y-%m-%d %H:%M') AS started_utc, "
            "round(epoch(finished_at) - epoch(started_at), 1) AS secs "
            "FROM sync_runs ORDER BY started_at DESC LIMIT ?", [limit])
        render([d[0] for d in result.description], result.fetchall(), fmt, console)


@app.command()
def report(
    output: Annotated[Path, typer.Option("-o", "--output", help="The HTML file to write")],
    nct: Annotated[list[str] | None, typer.Option("--nct", help="A study's timeline (repeat or comma-separate)")]
    = None,
    run: Annotated[str | None, typer.Option("--run", help="Digest of one run (see `trialsync runs`)")] = None,
    since: Annotated[str | None, typer.Option("--since", help="Digest of registry updates from YYYY-MM-DD")] = None,
    until: Annotated[str | None, typer.Option("--until", help="... to YYYY-MM-DD")] = None,
    warehouse: WarehouseOpt = None,
) -> None:
    """A self-contained HTML report with pictures: study timelines and a digest of what changed."""
    from flows.report import write_report

    ids = [s.upper() for s in _split(nct)]
    Scope.build(ids=ids)  # validates the ids
    if output.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"-o must name an .html file, not {output}")
    path = write_report(settings.warehouse_dir(warehouse), output, ncts=list(dict.fromkeys(ids)), run_id=run,
                        since=parse_date_arg(since, "--since") if since else None,
                        until=parse_date_arg(until, "--until") if until else None)
    console.print(f"report written to {path}", highlight=False)


@app.command()
def serve(
    file: Annotated[Path | None, typer.Option("--file", help="Deployments file [default: deploy/prefect.yaml]")]
    = None,
    list_only: Annotated[bool, typer.Option("--list", help="Show the deployments and exit")] = False,
) -> None:
    """Run the schedules of deploy/prefect.yaml on this machine (Prefect serve; Ctrl-C stops)."""
    from flows.deployments import DEPLOY_FILE, describe, load

    deployments = load(file or DEPLOY_FILE)
    for d in deployments:
        console.print(describe(d), highlight=False)
    if list_only:
        return
    from flows.serving import serve_deployments

    serve_deployments(deployments, console)


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option("--workdir", help="Where the demo writes its warehouse")]
    = Path("demo-output"),
    data: Annotated[Path | None, typer.Option("--data", help="The shared real data (default ../shared/data)")]
    = None,
) -> None:
    """The offline demo: a local fake registry replays real records over two "days"."""
    from flows.demo import run_demo

    run_demo(workdir, settings.shared_data_dir(str(data) if data else None), console)


@app.command("fake-registry")
def fake_registry(
    port: Annotated[int, typer.Option("--port")] = 8765,
    data: Annotated[Path | None, typer.Option("--data")] = None,
) -> None:
    """Serve the real records on 127.0.0.1 with the API's semantics (for manual trials)."""
    import time

    from pipeline.registry.fake_history import real_history
    from pipeline.registry.fake_server import FakeRegistry

    shared = settings.shared_data_dir(str(data) if data else None) / "ctgov"
    server = FakeRegistry.from_directory(shared / "studies")
    history = real_history(shared / "history")
    server.put_history(history)  # NCT03690141's real index, its version records derived
    server.start(port=port)
    console.print(f"fake registry with {len(server.nct_ids())} studies at {server.url}, the history of "
                  f"{history.nct_id} at {server.int_url} (Ctrl-C stops)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


def _on_interrupt(signum: int, frame: Any) -> None:
    """Ctrl-C. Without a Prefect server of its own the CLI runs on Prefect's temporary server, a child
    process that dies of the same Ctrl-C; Prefect would then retry reporting the crash to it for
    minutes. So leave at once: a run is crash-safe by design (its uncommitted files are removed by the
    next run, the writer lock goes with the process, fetched pages stay in the spool for a re-run).
    With a real server, let Prefect record the crash; a second Ctrl-C leaves at once."""
    global _INTERRUPTED
    if _INTERRUPTED or not _prefect_server_configured():
        _leave_interrupted()
    _INTERRUPTED = True
    signal.default_int_handler(signum, frame)


def _prefect_server_configured() -> bool:
    """PREFECT_API_URL from the environment or the active Prefect profile."""
    try:
        from prefect.settings import get_current_settings

        return bool(get_current_settings().api.url)
    except Exception:
        return bool(os.environ.get("PREFECT_API_URL"))


def _leave_interrupted() -> None:
    """Exit without Prefect's exit hooks, which may wait for a server that is gone."""
    print("trialsync: interrupted (an unfinished run commits nothing; the next run cleans up after it)",
          file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        with suppress(Exception):
            stream.flush()
    os._exit(130)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    global _DEBUG
    debug = _DEBUG = "--debug" in args or os.environ.get("TRIALSYNC_DEBUG") == "1"
    args = [a for a in args if a != "--debug"]
    signal.signal(signal.SIGINT, _on_interrupt)
    try:
        app(args=args, prog_name="trialsync", standalone_mode=False)
    except (click.exceptions.Exit, typer.Exit) as exc:
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, typer.Abort, KeyboardInterrupt):
        _leave_interrupted()
    except TrialsyncError as exc:
        if _INTERRUPTED:
            _leave_interrupted()
        if debug:
            traceback.print_exc()
        print(f"trialsync: error: {_one_line(exc)}", file=sys.stderr)
        sys.exit(2 if isinstance(exc, UsageError) else 1)
    except Exception as exc:
        if _INTERRUPTED:  # e.g. the temporary Prefect server died of the same Ctrl-C
            _leave_interrupted()
        if _is_click_error(exc):
            _click_error(exc)
        if debug:
            traceback.print_exc()
        print(f"trialsync: error: {type(exc).__name__}: {_one_line(exc)} (rerun with --debug for details)",
              file=sys.stderr)
        sys.exit(1)
    if _INTERRUPTED:  # a command that caught the interrupt itself
        _leave_interrupted()


def _is_click_error(exc: Exception) -> bool:
    """Typer carries its own copy of click (``typer._click``): recognise both by their base class."""
    return any(cls.__name__ == "ClickException" for cls in type(exc).__mro__)


def _click_error(exc: Any) -> None:
    """A bad flag or value: one line, like our own errors (``trialsync`` alone shows the help)."""
    if type(exc).__name__ == "NoArgsIsHelpError":
        exc.show()
        sys.exit(0)
    ctx = getattr(exc, "ctx", None)
    command = ctx.command_path if ctx is not None and ctx.command_path != "trialsync" else None
    hint = f" (see `{command} --help`)" if command else ""
    print(f"trialsync: error: {_one_line(exc, exc.format_message())}{hint}", file=sys.stderr)
    sys.exit(exc.exit_code)


def _one_line(exc: BaseException, message: str | None = None) -> str:
    """The first line of an error (all of a click message, joined), with secrets masked."""
    if message is not None:
        text = " ".join(line.strip() for line in message.splitlines() if line.strip())
    else:
        lines = str(exc).strip().splitlines()
        text = lines[0] if lines else ""
    return redact(text) if text else type(exc).__name__


if __name__ == "__main__":
    main()
