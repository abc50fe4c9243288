"""Commands that rework or look after the stored warehouse: rederive, compact, check, repair, backup."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

import flows  # noqa: F401 - sets Prefect's offline defaults before Prefect is imported
from flows import settings
from flows.cli.common import (
    WarehouseOpt,
    app,
    console,
    quiet_prefect_failures,
)
from flows.inputs import check_hours, check_seconds
from pipeline.errors import WarehouseError
from pipeline.registry.defaults import DEFAULT_INTERVAL


@app.command()
def rederive(
    rules: Annotated[Path | None, typer.Option("--rules", help="YAML file with a 'severity:' mapping")] = None,
    warehouse: WarehouseOpt = None,
) -> None:
    """Recompute every change from the stored versions (nothing is fetched), e.g. after a rule changed."""
    from flows.derive import rederive_changes

    if rules is not None:
        settings.rules(str(rules), {})  # fail fast on a bad file
    from warehouse import Warehouse

    Warehouse(settings.warehouse_dir(warehouse)).check_location()  # a damaged one: before Prefect starts
    quiet_prefect_failures()
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

    check_hours("--keep-hours", keep_hours)  # here too, so bad input fails before the run starts
    from warehouse import Warehouse

    Warehouse(settings.warehouse_dir(warehouse)).check_location()  # a damaged one: before Prefect starts
    quiet_prefect_failures()
    result = compact_warehouse(warehouse=str(settings.warehouse_dir(warehouse)), keep_hours=keep_hours)
    console.print(f"[bold green]run {result['run_id']}[/] (compact): {result['files_before']} files -> "
                  f"{result['files_after']}, {result['deleted_runs']} superseded run directories deleted; "
                  f"the rest are kept until {result['kept_until'][:16]} UTC "
                  f"({result['duration_seconds']:.1f}s)", highlight=False)



@app.command()
def check(
    deep: Annotated[bool, typer.Option("--deep", help="Also verify every file's checksum and decode every "
                                       "row group (reads all data)")] = False,
    warehouse: WarehouseOpt = None,
) -> None:
    """Verify the warehouse (changes nothing). Exit 0 with one line, or exit 1 listing each problem:
    file, table, run, studies affected."""
    from flows.care import check_warehouse

    report = check_warehouse(warehouse, deep=deep)
    if report.ok:
        console.print(report.summary(), highlight=False, markup=False)
        return
    for problem in report.problems:
        console.print(problem.line(), highlight=False, markup=False, soft_wrap=True)
    raise WarehouseError(report.summary())  # exit 1, the summary as the one-line reason on stderr


@app.command()
def repair(
    resync: Annotated[bool, typer.Option("--resync", help="Fetch the studies whose newer versions were lost "
                                         "again (one sync run of --ids)")] = False,
    api_url: Annotated[str | None, typer.Option("--api-url", help="API base URL for --resync "
                                                "[env TRIALSYNC_API_URL]")] = None,
    request_interval: Annotated[float, typer.Option("--request-interval",
                                                    help="Seconds between requests of --resync")] = DEFAULT_INTERVAL,
    warehouse: WarehouseOpt = None,
) -> None:
    """Rebuild a missing or corrupt catalog from the manifest; roll back past damaged files to the last
    intact committed run. Damaged files move to damaged/, nothing is deleted."""
    from flows.care import repair_warehouse, resync_lost

    check_seconds("--request-interval", request_interval)  # before the repair, not when a resync starts
    if resync or api_url is not None:
        settings.api_url(api_url)
    result = repair_warehouse(warehouse)
    if not result.changed:
        console.print("nothing to repair: every committed file is intact and the catalog matches the manifest",
                      highlight=False)
        return
    console.print(f"repaired: generation {result.generation}; catalog rebuilt; "
                  f"{len(result.moved)} path(s) moved to {result.damaged_dir}/"
                  + (f"; manifest generation(s) {result.restored_manifest} restored from their copies"
                     if result.restored_manifest else "")
                  + (f"; manifest checkpoint(s) {result.checkpoints_taken} taken again"
                     if result.checkpoints_taken else ""), highlight=False, markup=False)
    if result.rolled_back:
        console.print(f"rolled back {len(result.rolled_back)} run(s): {', '.join(result.rolled_back)}",
                      highlight=False, markup=False)
    if result.lost_studies:
        console.print(f"{len(result.lost_studies)} studies lost newer versions: {','.join(result.lost_studies)}",
                      highlight=False, markup=False, soft_wrap=True)
        if resync:
            quiet_prefect_failures()
            summary = resync_lost(warehouse, result.lost_studies, api_url=api_url,
                                  request_interval=request_interval)
            console.print(f"[bold green]run {summary['run_id']}[/] (resync): {summary['studies_seen']} seen, "
                          f"{summary['versions_written']} new versions", highlight=False)
        else:
            console.print("fetch them again with `trialsync repair --resync` or `trialsync sync --ids ...`",
                          highlight=False)


@app.command()
def backup(
    dest: Annotated[Path, typer.Argument(help="A new directory (must not exist)")],
    copy: Annotated[bool, typer.Option("--copy", help="Copy every file (default: hard links where the "
                                       "file system allows)")] = False,
    warehouse: WarehouseOpt = None,
) -> None:
    """A consistent copy of the committed warehouse (also while a sync runs); DEST is a working warehouse."""
    from flows.care import backup_warehouse

    result = backup_warehouse(str(dest), warehouse, hard_links=not copy)
    console.print(f"backup at {result.dest}: generation {result.generation}, {result.files} files "
                  f"({result.linked} hard-linked, {result.copied} copied), {result.size / 1e6:.1f} MB", highlight=False,
                  markup=False)
