"""Reconciliation of a sync run: checked before the commit (so the checks commit with the run), then
published as Prefect artifacts (a Markdown summary and a table, keyed by scope)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import date, datetime
from typing import Any

from flows.engine import NONE, create_markdown_artifact, create_table_artifact, get_run_logger, task
from pipeline.reconcile import FAIL, OK, SKIPPED, WARN, Check, RunFacts, reconcile, to_markdown, worst
from warehouse import RunWriter
from warehouse.health import reconciliation_rows, scope_state


@task(name="reconcile-run", cache_policy=NONE)
def reconcile_run(run: RunWriter, *, scope: str, mode: str, baseline: bool, total_count: int | None,
                  studies_seen: int, seen: set[str], previous_watermark: date | None, since: date | None,
                  started: datetime, requested_ids: tuple[str, ...] = (), exited: Iterable[str] = (),
                  left_scope: Iterable[str] = (), omitted: Iterable[str] = (), unverified: Iterable[str] = (),
                  unverified_why: str = "", merged: dict[str, str] | None = None) -> list[Check]:
    """Run every check and stage its rows in the run's ``reconciliation`` table."""
    state = scope_state(run, scope, seen, exited)
    facts = RunFacts(scope=scope, mode=mode, baseline=baseline, total_count=total_count,
                     studies_seen=studies_seen, seen_dates=state.seen_dates, members_before=state.members_before,
                     previous_watermark=previous_watermark, since=since, today=started.date(),
                     status_counts=state.status_counts, previous_status_counts=state.previous_status_counts,
                     requested_ids=requested_ids, left_scope=frozenset(left_scope),
                     omitted=frozenset(omitted), former_members=state.former_members,
                     unverified=frozenset(unverified), unverified_why=unverified_why, merged=dict(merged or {}))
    checks = reconcile(facts)
    run.append_rows("reconciliation", reconciliation_rows(run.run_id, scope, mode, started, checks))
    logger = get_run_logger()
    for check in checks:
        if check.status in (WARN, FAIL):
            logger.warning("reconciliation %s: %s: %s", check.check, check.status, check.detail)
    return checks


def publish_reconciliation(run_id: str, scope: str, checks: list[Check]) -> None:
    """The run's checks as Prefect artifacts: a table and a Markdown summary, keyed by scope.
    The run is committed by now: an artifact that cannot be stored is logged, not raised."""
    try:
        _publish(run_id, scope, checks)
    except Exception as exc:
        get_run_logger().warning("could not publish the reconciliation artifacts: %s", exc)


def _publish(run_id: str, scope: str, checks: list[Check]) -> None:
    key = artifact_key(scope)
    create_table_artifact(key=f"reconciliation-{key}", table=summary_rows(checks),
                          description=f"Reconciliation of run {run_id} (scope {scope}): {worst(checks)}")
    create_markdown_artifact(key=f"reconciliation-{key}-summary", markdown=to_markdown(run_id, scope, checks),
                             description=f"Reconciliation of run {run_id}")


def summary_rows(checks: list[Check]) -> list[dict[str, Any]]:
    return [{"check": c.check, "status": c.status, "expected": c.expected, "observed": c.observed,
             "flagged": c.flagged, "detail": c.detail} for c in checks]


def summary(checks: list[Check]) -> dict[str, Any]:
    """For the run's returned summary: the worst status and the checks that need a look."""
    return {"status": worst(checks),
            "flags": {c.check: c.detail for c in checks if c.status not in (OK, SKIPPED)}}


def artifact_key(scope: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9]+", "-", scope.lower()).strip("-")[:80] or "all"
