"""Compliance alerts: a watched study that becomes FDAAA-overdue (``fdaaa: [overdue]`` in a watch). Pure.

Becoming overdue is a time event: the record need not change, so these alerts do not come from
``changes`` but from the judgement of two days (``fdaaa_as_of``): overdue on the alerts run's day
and not on the day the watch last looked (``compliance_window``). Each one is an ``AlertChange`` of
event ``fdaaa_overdue`` (category ``compliance``, severity ``notable``) whose ``change_id`` is
the trial's event id, ``fdaaa-overdue:<NCT>:<due_from>``: the same for the same trial and due date
whatever the run, a rederive, a compaction or a backfill's renumbering, so the ledger sends it once.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

from pipeline.alerts.message import AlertChange
from pipeline.dates import utc_day

FDAAA_KINDS = ("overdue",)  # what ``fdaaa:`` can follow
FDAAA_EVENT = "fdaaa_overdue"
FDAAA_CATEGORY = "compliance"
FDAAA_SEVERITY = "notable"


def compliance_window(start: datetime, last_run: datetime | None, now: datetime) -> tuple[date, date]:
    """(a, b): the studies overdue on b (the run's day) and not on a are new. ``a`` is the day of the
    watch's last recorded alerts run, or, before its first, the start of its window (``since`` or the
    first run less ``lookback_days``); never after b."""
    b = utc_day(now)
    a = max(utc_day(start), utc_day(last_run)) if last_run is not None else utc_day(start)
    return min(a, b), b



def overdue_alert(row: Mapping[str, Any]) -> AlertChange:
    """The alert of one newly overdue trial, from a row of ``fdaaa_as_of`` on the run's day (with
    ``event_id`` and ``status_before``, its status on the window's first day, NULL when it was not an
    ACT/pACT then)."""
    due: date = row["due_date"]
    as_of: date = row["as_of"]
    days = row["days_late"] if row["days_late"] is not None else (as_of - due).days
    sponsor = row.get("lead_sponsor") or "an unknown sponsor"
    cancelled = row["status"] == "overdue-cancelled"
    submitted = ("its newest QC results submission was cancelled" if cancelled
                 else "no results submitted")
    detail = (f"{row['act_kind']} of {sponsor}: results were due {due.isoformat()} (completion "
              f"{row['completion_date_used'].isoformat()}); {submitted}; {days} days overdue on {as_of.isoformat()}")
    return AlertChange(
        change_id=row["event_id"], nct_id=row["nct_id"], title=row.get("brief_title"),
        field=f"FDAAA results due {due.isoformat()}", event=FDAAA_EVENT, category=FDAAA_CATEGORY,
        severity=FDAAA_SEVERITY, old_value=row.get("status_before"), new_value=row["status"],
        registry_updated=None, from_version=None, to_version=row.get("version"),
        path=row["event_id"],  # what the alert is: the content keys differ per trial and due date
        detail=detail,
        facts=tuple(sorted({"act_kind": row["act_kind"], "lead_sponsor": row.get("lead_sponsor"),
                            "due_date": due.isoformat(), "days_overdue": int(days),
                            "as_of": as_of.isoformat()}.items())),
    )
