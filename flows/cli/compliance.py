"""``trialsync compliance``: FDAAA 801 results reporting on any date, from the stored history."""

from __future__ import annotations

from typing import Annotated

import typer

import flows  # noqa: F401 - sets Prefect's offline defaults before Prefect is imported
from flows import settings
from flows.cli.common import FormatOpt, WarehouseOpt, app, check_format, console, split_values
from flows.inputs import COUNT_MAX, not_future, utc_today
from flows.output import render
from pipeline.errors import UsageError
from pipeline.scope import parse_date_arg


@app.command()
def compliance(
    as_of: Annotated[str | None, typer.Option("--as-of", help="Judge on YYYY-MM-DD [default: today, UTC]")] = None,
    sponsor: Annotated[str | None, typer.Option("--sponsor", help="Lead sponsors whose name contains this "
                                                "(literal, any case)")] = None,
    status: Annotated[list[str] | None, typer.Option("--status", help="reported | reported-late | overdue | "
                                                     "overdue-cancelled | ongoing (repeat; commas or spaces)")]
    = None,
    newly_overdue: Annotated[bool, typer.Option("--newly-overdue", help="Trials overdue on --as-of that were "
                                                "not on --since (time passing is enough)")] = False,
    since: Annotated[str | None, typer.Option("--since", help="Start of the --newly-overdue window")] = None,
    by: Annotated[str | None, typer.Option("--by", help="sponsor: a ranking (due, reported, % on time, "
                                           "overdue, days late)")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, max=COUNT_MAX, help="At most N rows")] = None,
    fmt: FormatOpt = "table",
    warehouse: WarehouseOpt = None,
) -> None:
    """FDAAA 801 results reporting: applicable trials judged on the version valid on a date."""
    from flows.readonly import reading
    from warehouse.analyses import FDAAA_COLUMNS, STATUSES
    from warehouse.compliance import TABLE_COLUMNS, ComplianceQuery, compliance_sql

    check_format(fmt)
    day = not_future(parse_date_arg(as_of, "--as-of"), "--as-of") if as_of is not None else utc_today()
    statuses = tuple(split_values(status))
    if unknown := [s for s in statuses if s not in STATUSES]:
        raise UsageError(f"unknown --status {unknown[0]!r} (valid: {', '.join(STATUSES)})")
    if by is not None and by != "sponsor":
        raise UsageError(f"--by takes only 'sponsor', not {by!r}")
    if since is not None and not newly_overdue:
        raise UsageError("--since needs --newly-overdue")
    if newly_overdue and since is None:
        raise UsageError("--newly-overdue needs --since YYYY-MM-DD")
    start = parse_date_arg(since, "--since") if since is not None else None
    if start is not None and start >= day:
        raise UsageError(f"--since {start} must be before --as-of {day}")
    if by and (newly_overdue or statuses):
        raise UsageError("--by sponsor ranks every applicable trial: leave out --status and --newly-overdue")
    query = ComplianceQuery(as_of=day, sponsor=sponsor, statuses=statuses, newly_overdue_since=start,
                            by_sponsor=by == "sponsor", limit=limit)
    sql, params = compliance_sql(query, TABLE_COLUMNS if fmt == "table" else FDAAA_COLUMNS)
    with reading(settings.warehouse_dir(warehouse)) as con:
        result = con.execute(sql, params)
        columns, rows = [d[0] for d in result.description], result.fetchall()
    render(columns, rows, fmt, console)
