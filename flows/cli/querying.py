"""Read-only commands: sql, changes, history, runs, report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

import flows  # noqa: F401 - sets Prefect's offline defaults before Prefect is imported
from flows import settings
from flows.cli.common import (
    FormatOpt,
    WarehouseOpt,
    app,
    check_format,
    console,
    split_values,
)
from flows.inputs import COUNT_MAX, not_future
from flows.output import render
from flows.readonly import check_query, reading
from pipeline.errors import UsageError
from pipeline.scope import canonical_id, parse_date_arg


@app.command()
def sql(
    statement: Annotated[str, typer.Argument(help="A SELECT query over the warehouse views")],
    fmt: FormatOpt = "table",
    warehouse: WarehouseOpt = None,
    as_of: Annotated[str | None, typer.Option(
        "--as-of", help="Show the aact views as the registry stood on YYYY-MM-DD (sets the variable as_of)")] = None,
) -> None:
    """Ad hoc SQL on a read-only connection."""
    check_format(fmt)
    check_query(statement)
    day = not_future(parse_date_arg(as_of, "--as-of"), "--as-of") if as_of is not None else None
    with reading(settings.warehouse_dir(warehouse), sandbox=True, user_query=True) as con:
        if day:
            con.execute(f"SET VARIABLE as_of = DATE '{day.isoformat()}'")
        result = con.execute(statement)
        columns = [d[0] for d in result.description or []]
        rows = result.fetchall()
    render(columns, rows, fmt, console)


@app.command()
def changes(
    since: Annotated[str | None, typer.Option("--since", help="Registry updates on or after YYYY-MM-DD")] = None,
    until: Annotated[str | None, typer.Option("--until", help="... and on or before YYYY-MM-DD")] = None,
    nct: Annotated[list[str] | None, typer.Option("--nct", help="Only these studies (repeat; commas or spaces)")]
    = None,
    category: Annotated[list[str] | None, typer.Option("--category", help="Only these categories")] = None,
    event: Annotated[list[str] | None, typer.Option("--event", help="Only these events")] = None,
    min_severity: Annotated[str | None, typer.Option("--min-severity", help="info | minor | notable | critical")]
    = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, max=COUNT_MAX, help="At most N rows")] = None,
    fmt: FormatOpt = "table",
    warehouse: WarehouseOpt = None,
) -> None:
    """The change feed: what changed, by how much, and how much it matters."""
    from warehouse.queries import ALL_CHANGE_COLUMNS, CHANGE_COLUMNS, ChangeFilter, changes_query

    check_format(fmt)
    ids = tuple(sorted({canonical_id(s.upper()) for s in split_values(nct)}))
    spec = ChangeFilter(
        since=parse_date_arg(since, "--since") if since is not None else None,
        until=parse_date_arg(until, "--until") if until is not None else None,
        nct_ids=ids, categories=tuple(split_values(category)), events=tuple(split_values(event)),
        min_severity=min_severity, limit=limit)
    if spec.since and spec.until and spec.since > spec.until:
        raise UsageError(f"--since {spec.since} is after --until {spec.until}")
    sql, params = changes_query(spec, CHANGE_COLUMNS if fmt == "table" else ALL_CHANGE_COLUMNS)
    with reading(settings.warehouse_dir(warehouse)) as con:
        result = con.execute(sql, params)
        columns, rows = [d[0] for d in result.description], result.fetchall()
    render(columns, rows, fmt, console)


@app.command()
def history(
    nct: Annotated[str, typer.Argument(help="An NCT id")],
    fmt: Annotated[str, typer.Option("--format", help="text | json")] = "text",
    warehouse: WarehouseOpt = None,
) -> None:
    """Every stored version of one study and what changed between them."""
    from flows.history import print_history

    nct_id = canonical_id(nct.strip().upper())
    if fmt not in ("text", "json"):
        raise UsageError(f"--format must be text or json, not {fmt!r}")
    print_history(settings.warehouse_dir(warehouse), nct_id, fmt, console)



@app.command()
def runs(
    limit: Annotated[int, typer.Option("--limit", min=1, max=COUNT_MAX, help="Most recent N runs")] = 20,
    fmt: FormatOpt = "table",
    warehouse: WarehouseOpt = None,
) -> None:
    """Past sync runs and their counts."""
    check_format(fmt)
    with reading(settings.warehouse_dir(warehouse)) as con:
        result = con.execute(
            "SELECT run_id, mode, scope, status, pages, studies_seen AS seen, new_studies AS new, "
            "versions_written AS versions, unchanged, changes_written AS changes, quarantined AS quar, "
            "retired, coalesce(left_scope, 0) AS left_scope, stale, since, "
            "strftime(timezone('UTC', started_at), '%Y-%m-%d %H:%M') AS started_utc, "
            "round(epoch(finished_at) - epoch(started_at), 1) AS secs "
            "FROM sync_runs ORDER BY started_at DESC LIMIT ?", [limit])
        columns, rows = [d[0] for d in result.description], result.fetchall()
    render(columns, rows, fmt, console)


@app.command()
def report(
    output: Annotated[Path, typer.Option("-o", "--output", help="The HTML file to write")],
    nct: Annotated[list[str] | None, typer.Option("--nct", help="A study's timeline (repeat; commas or spaces)")]
    = None,
    run: Annotated[str | None, typer.Option("--run", help="Digest of one run (see `trialsync runs`)")] = None,
    since: Annotated[str | None, typer.Option("--since", help="Digest of registry updates from YYYY-MM-DD")] = None,
    until: Annotated[str | None, typer.Option("--until", help="... to YYYY-MM-DD")] = None,
    warehouse: WarehouseOpt = None,
) -> None:
    """A self-contained HTML report with pictures: study timelines and a digest of what changed."""
    from flows.report import write_report

    ids = [canonical_id(s.upper()) for s in split_values(nct)]
    if output.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"-o must name an .html file, not {output}")
    path = write_report(settings.warehouse_dir(warehouse), output, ncts=list(dict.fromkeys(ids)), run_id=run,
                        since=parse_date_arg(since, "--since") if since is not None else None,
                        until=parse_date_arg(until, "--until") if until is not None else None)
    console.print(f"report written to {path}", highlight=False, markup=False)

