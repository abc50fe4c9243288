"""Commands that rework the stored warehouse: rederive, compact."""

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
from pipeline.errors import UsageError


@app.command()
def rederive(
    rules: Annotated[Path | None, typer.Option("--rules", help="YAML file with a 'severity:' mapping")] = None,
    warehouse: WarehouseOpt = None,
) -> None:
    """Recompute every change from the stored versions (nothing is fetched), e.g. after a rule changed."""
    from flows.sync import rederive_changes

    if rules is not None:
        settings.rules(str(rules), {})  # fail fast on a bad file
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

    if keep_hours < 0:  # here too, so bad input fails before the run starts
        raise UsageError("--keep-hours must be 0 or more")
    quiet_prefect_failures()
    result = compact_warehouse(warehouse=str(settings.warehouse_dir(warehouse)), keep_hours=keep_hours)
    console.print(f"[bold green]run {result['run_id']}[/] (compact): {result['files_before']} files -> "
                  f"{result['files_after']}, {result['deleted_runs']} superseded run directories deleted; "
                  f"the rest are kept until {result['kept_until'][:16]} UTC "
                  f"({result['duration_seconds']:.1f}s)", highlight=False)

