"""``scheduled_sync``: the flow behind the scheduled deployments of ``deploy/prefect.yaml`` (and the
Prefect flow of ``send_alerts`` for the alerts deployment).

It syncs each configured scope in turn (one ``sync_registry`` subflow per scope, each with its own
reconciliation), skips itself when it starts too late to matter (the next run catches up from the
watermark), and fails at the end if any scope failed, after trying every scope.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows import alerts
from flows.sync import sync_registry
from pipeline.errors import TrialsyncError
from pipeline.operations import scope_kwargs, stale_reason
from pipeline.registry.defaults import DEFAULT_INTERVAL

# Deployment entrypoints must name Prefect flows: the one of ``send_alerts`` (``flows.engine`` builds it
# on first use; ``trialsync alerts run`` calls the same function without Prefect when no server is there).
send_alerts = alerts.send_alerts.prefect


class ScheduledSyncFailed(TrialsyncError):
    """One or more scopes of a scheduled sync failed (the others committed)."""


@flow(name="scheduled_sync", validate_parameters=True, retries=0)  # never PREFECT_FLOWS_DEFAULT_RETRIES
def scheduled_sync(
    scopes: list[dict[str, Any]] | None = None,
    full: bool = False,
    max_lateness_hours: float = 20.0,
    warehouse: str | None = None,
    api_url: str | None = None,
    page_size: int = 1000,
    request_interval: float = DEFAULT_INTERVAL,
    rules_file: str | None = None,
) -> dict[str, Any]:
    """Sync every scope (incremental from each scope's watermark, or ``full``); returns each run's summary."""
    logger = get_run_logger()
    plans = scope_kwargs(scopes)
    if reason := stale_reason(_scheduled_start(), datetime.now(UTC), timedelta(hours=max_lateness_hours)):
        logger.warning(reason)
        return {"skipped": reason, "runs": []}
    common = {"full": full, "warehouse": warehouse, "api_url": api_url, "page_size": page_size,
              "request_interval": request_interval, "rules_file": rules_file}
    runs: list[dict[str, Any]] = []
    failed: list[str] = []
    for plan in plans:
        kwargs = {k: v for k, v in {**plan, **common}.items() if v is not None}
        state = sync_registry(**kwargs, return_state=True)
        if state.is_completed():
            runs.append(state.result())
        else:
            failed.append(f"{_describe(plan)}: {state.message or state.name}")
    _publish(runs, failed, full)
    if failed:
        raise ScheduledSyncFailed(f"{len(failed)} of {len(plans)} scopes failed: " + "; ".join(failed))
    return {"skipped": None, "runs": runs}


def _scheduled_start() -> datetime | None:
    from prefect.runtime import flow_run

    value = flow_run.scheduled_start_time
    return datetime.fromisoformat(value.isoformat()) if value else None


def _describe(plan: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in plan.items() if v) or "the whole registry"


def _publish(runs: list[dict[str, Any]], failed: list[str], full: bool) -> None:
    lines = [f"# {'Full' if full else 'Incremental'} sync of {len(runs) + len(failed)} scope(s)", "",
             "| scope | run | mode | seen | new versions | changes | retired | reconciliation |",
             "|---|---|---|---:|---:|---:|---:|---|"]
    for r in runs:
        lines.append(f"| `{r['scope']}` | `{r['run_id']}` | {r['mode']} | {r['studies_seen']} | "
                     f"{r['versions_written']} | {r['changes_written']} | {r['retired']} | "
                     f"{r['reconciliation']['status']} |")
    lines += [f"| {f} | failed | | | | | | |" for f in failed]
    try:
        create_markdown_artifact(key="scheduled-sync", markdown="\n".join(lines) + "\n",
                                 description="The scopes of the last scheduled sync")
    except Exception as exc:  # the runs are committed; a lost summary is no reason to fail
        get_run_logger().warning("could not publish the summary artifact: %s", exc)
