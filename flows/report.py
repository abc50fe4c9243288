"""``trialsync report``: read what to show from the warehouse, draw it, write one HTML file."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from flows.readonly import reading
from pipeline.errors import UsageError
from pipeline.leftovers import replace_atomically
from pipeline.report.page import render
from warehouse import Warehouse
from warehouse.manifest import ManifestDamaged
from warehouse.report_data import Period, compliance, digest, latest_run, study

COMPLIANCE_WINDOW_DAYS = 30  # the newly overdue trials' window when the report has no --since


def write_report(warehouse_dir: Path, output: Path, *, ncts: Sequence[str] = (), run_id: str | None = None,
                 since: date | None = None, until: date | None = None, now: datetime | None = None) -> Path:
    """Studies' timelines (``ncts``) and a digest (of ``run_id``, of ``since``..``until``, or, with
    neither and no study, of the latest run) with FDAAA compliance on ``until`` (default: today; newly
    overdue since ``since``, default 30 days earlier). Written atomically; returns the file's path."""
    if run_id and (since or until):
        raise UsageError("--run and --since/--until exclude each other")
    generated = now or datetime.now(UTC)
    as_of = until or generated.astimezone(UTC).date()  # the day compliance is judged on; today is UTC's
    if since and since > as_of:  # as `trialsync compliance` refuses a window ending before it starts
        judged = f"--until {until}" if until else f"--until (default today, UTC: {as_of})"
        raise UsageError(f"--since {since} is after {judged}")
    store = Warehouse(warehouse_dir)
    with reading(store.root) as con:
        studies = [study(con, nct) for nct in ncts]
        period = None
        if run_id or since or until:
            period = Period(run_id, since, until)
        elif not ncts:
            period = Period(latest_run(con, _commit_order(store)))
        summary = digest(con, period) if period else None
        fdaaa = (compliance(con, as_of, since or as_of - timedelta(days=COMPLIANCE_WINDOW_DAYS))
                 if period else None)
    # A report is mailed: it names the warehouse directory, not where it lives on this machine.
    html = render(studies=studies, digest=summary, compliance=fdaaa, generated_at=generated,
                  source=store.root.resolve().name)
    output = output.expanduser().resolve()
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        replace_atomically(output, html.encode("utf-8"))
    except OSError as exc:  # a place that cannot be written: the user's to change
        raise UsageError(f"cannot write the report to {output}: {exc.strerror or exc}") from None
    return output


def _commit_order(store: Warehouse) -> list[str]:
    """Run ids in commit order; none when a manifest generation is damaged (readers still answer)."""
    try:
        return [run_id for _, run_id in store.run_order()]
    except ManifestDamaged:
        return []
