"""An alerts run's artifacts: a markdown summary (``alerts-run``: counts, failures, the changes with
links) and a table (``alerts-changes``: one row per watch and change with the channels that took it or
failed), secrets masked."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flows.engine import create_markdown_artifact, create_table_artifact, get_run_logger
from pipeline.abbreviate import abbreviate_pair
from pipeline.alerts.redact import Redactor

if TYPE_CHECKING:
    from flows.alerts import Outcome

CHANGE_WIDTH = 120  # each of old and new in the changes table (on one line, their difference in sight)


def publish_artifacts(redactor: Redactor, run_id: str, summary: dict[str, Any], outcomes: list[Outcome]) -> None:
    """The run's artifacts. Its deliveries are recorded by now: an artifact that cannot be stored (the
    Prefect server went away) is logged, not raised, so the run does not look failed and send again."""
    try:
        _publish(redactor, run_id, summary, outcomes)
    except Exception as exc:
        get_run_logger().warning("could not publish the alerts run's artifacts: %s", exc)


def _publish(redactor: Redactor, run_id: str, summary: dict[str, Any], outcomes: list[Outcome]) -> None:
    rows = change_rows(outcomes)
    create_markdown_artifact(redactor(summary_markdown(summary, rows)), key="alerts-run",
                             description=f"alerts run {run_id}")
    create_table_artifact([{k: redactor(str(v)) if isinstance(v, str) else v for k, v in row.items()}
                           for row in rows], key="alerts-changes", description=f"changes alerted by {run_id}")


def change_rows(outcomes: list[Outcome]) -> list[dict[str, Any]]:
    """One row per (watch, change) with the channels that took it and those that failed."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for o in outcomes:
        for study in o.message.studies:
            for c in study.changes:
                row = rows.setdefault((o.message.watch, c.change_id), {
                    "watch": o.message.watch, "nct_id": c.nct_id, "title": study.title, "field": c.field,
                    "event": c.event, "old_value": c.old_value, "new_value": c.new_value,
                    "shift_days": c.shift_days, "pct_change": c.pct_change, "severity": c.severity,
                    "url": study.url, "history_url": study.history_url, "sent_to": "", "failed_to": ""})
                column = "failed_to" if o.error else "sent_to"
                row[column] = ", ".join(filter(None, [row[column], o.message.channel]))
    return sorted(rows.values(), key=lambda row: (row["watch"], row["nct_id"], row["field"]))


def summary_markdown(summary: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    lines = [f"# Alerts run {summary['run_id']}", "",
             f"{summary['watches']} watches, {summary['matched']} matching changes: {summary['messages']} messages, "
             f"{summary['messages_sent']} delivered, {summary['messages_failed']} failed; "
             f"{summary['already_sent']} deliveries already made earlier (skipped), {summary['retried']} retried "
             f"({summary['resent']} messages re-sent unchanged from the outbox)."]
    if summary["failures"]:
        lines += ["", "## Failed (due again on the next run, unless rejected)", "",
                  "| watch | channel | changes | error |", "|---|---|---|---|"]
        lines += [f"| {f['watch']} | {f['channel']} | {f['changes']} | "
                  f"{_cell(f['error'] + (' (rejected: not re-sent)' if f['rejected'] else ''))} |"
                  for f in summary["failures"]]
    if not rows:
        lines += ["", "No new changes for any watch."]
        return "\n".join(lines) + "\n"
    lines += ["", "## Changes", "", "| watch | study | severity | change | sent to | failed |",
              "|---|---|---|---|---|---|"]
    for row in rows:
        old, new = abbreviate_pair(row["old_value"], row["new_value"], CHANGE_WIDTH)
        change = f"{row['field']}: {old} → {new}"
        if row["shift_days"] is not None:
            change += f" ({row['shift_days']:+d} days)"
        if row["pct_change"] is not None:
            change += f" ({row['pct_change']:+.1f}%)"
        study = f"[{row['nct_id']}]({row['url']}) {row['title'] or ''} ([history]({row['history_url']}))"
        change = change.replace("|", "\\|")  # not _cell: white space squeezed, cut at 300: a difference hidden
        lines.append(f"| {row['watch']} | {_cell(study)} | {row['severity']} | {change} | "
                     f"{row['sent_to']} | {row['failed_to']} |")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return " ".join(text.replace("|", "\\|").split())[:300]
