"""The report's analyses: FDAAA 801 compliance (counts, overdue trials, newly overdue) and a study's
registered-vs-current comparison. HTML strings, like the rest of ``pipeline.report``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.abbreviate import abbreviate_pair
from pipeline.report import svg
from pipeline.report.svg import Linear, esc

Row = Mapping[str, Any]
REGISTRY = "https://clinicaltrials.gov/study/"
STATUS_ORDER = ("overdue", "overdue-cancelled", "reported-late", "reported", "ongoing")
STATUS_COLORS = {"overdue": "#c62828", "overdue-cancelled": "#8e24aa", "reported-late": "#ef6c00",
                 "reported": "#2e7d32", "ongoing": "#90a4ae"}
WIDTH, LABEL, RIGHT, BAR, GAP = 960, 200, 60, 18, 8


def study_link(nct_id: str, title: str | None = None, sponsor: str | None = None) -> str:
    """The study's id linked to its registry page, with its title and sponsor under it where known."""
    link = f'<a href="{REGISTRY}{esc(nct_id)}">{esc(nct_id)}</a>'
    names = " · ".join(esc(x) for x in (title, sponsor) if x)
    return link + (f'<div class="meta">{names}</div>' if names else "")


def status_chart(counts: Sequence[Row]) -> str:
    """Trials per FDAAA status on the report's date (worst first)."""
    n = {str(r["status"]): int(r["n"]) for r in counts}
    shown = [s for s in STATUS_ORDER if n.get(s)]
    label = "Applicable trials by FDAAA status"
    top = 14
    height = top + max(len(shown), 1) * (BAR + GAP) + 10
    if not shown:
        return svg.svg(WIDTH, 40, [svg.text(LABEL, 24, "no applicable trials", color="#999")], chart="fdaaa-status",
                       label=label)
    x = Linear(0, max(n[s] for s in shown), LABEL, WIDTH - RIGHT)
    body = []
    for i, status in enumerate(shown):
        y0 = top + i * (BAR + GAP)
        body += [svg.text(LABEL - 8, y0 + BAR - 4, status, anchor="end"),
                 svg.rect(x(0), y0, x(n[status]) - x(0), BAR, STATUS_COLORS[status], f"{status}: {n[status]}",
                          data_status=status, data_value=n[status]),
                 svg.text(x(n[status]) + 6, y0 + BAR - 4, n[status], color="#555")]
    return svg.svg(WIDTH, height, body, chart="fdaaa-status", label=label)


def compliance_section(c: Row) -> str:
    total = sum(int(r["n"]) for r in c["counts"])
    overdue = sum(int(r["n"]) for r in c["counts"] if str(r["status"]).startswith("overdue"))
    cards = "".join(f'<div class="card"><b>{esc(n)}</b>{esc(label)}</div>' for label, n in (
        ("applicable trials", total), ("overdue", overdue), ("newly overdue", c["newly_overdue_total"])))
    return (f'<section class="compliance"><h2>FDAAA 801 results reporting on {esc(c["as_of"])}</h2>'
            f'<p class="meta">ACTs and probable ACTs judged on the version of each study valid on that date; '
            f"due one year (365 days) after primary completion, three years with a certificate of delay.</p>"
            f'<div class="cards">{cards}</div><h3>Trials by status</h3>{status_chart(c["counts"])}'
            f'<h3>Overdue</h3>{_trials_table(c["overdue"], c["overdue_total"], "fdaaa-overdue")}'
            f'<h3>Newly overdue since {esc(c["since"])}</h3>'
            f'{_trials_table(c["newly_overdue"], c["newly_overdue_total"], "fdaaa-newly-overdue", since=True)}'
            "</section>")


def _trials_table(rows: Sequence[Row], total: int, name: str, *, since: bool = False) -> str:
    """The trials' table; ``total`` is how many there are, of which ``rows`` are the first (the table
    says so when it shows fewer)."""
    if not rows:
        return f'<p class="meta" data-table="{name}">none</p>'
    cut = f'<p class="meta">showing {len(rows)} of {total}</p>' if total > len(rows) else ""
    extra = "<th>overdue from</th>" if since else ""
    body = "".join(
        f'<tr data-nct="{esc(r["nct_id"])}"><td>{study_link(r["nct_id"], r["brief_title"], r["lead_sponsor"])}</td>'
        f'<td>{esc(r["act_kind"])}</td><td>{esc(r["status"])}</td><td>{esc(r["due_date"])}</td>'
        f'<td data-days-late="{esc(_blank(r["days_late"]))}">{esc(_blank(r["days_late"]))}</td>'
        + (f'<td>{esc(r["overdue_from"])}</td>' if since else "") + "</tr>" for r in rows)
    return (f'{cut}<table data-table="{name}"><tr><th>study</th><th>kind</th><th>status</th><th>due date</th>'
            f"<th>days late</th>{extra}</tr>{body}</table>")


def registered_table(r: Row | None) -> str:
    """The study as first stored against now (``registered_vs_current``)."""
    if r is None:
        return '<p class="meta">not in the registry any more</p>'
    rows = [
        ("primary outcomes added", _items(r["primary_outcomes_added"])),
        ("primary outcomes removed", _items(r["primary_outcomes_removed"])),
        ("primary outcomes reworded", _reworded(r["primary_outcomes_reworded"])),
        ("enrollment", _moved(f"{_blank(r['enrollment_registered'])} {_lower(r['enrollment_type_registered'])}",
                              f"{_blank(r['enrollment_current'])} {_lower(r['enrollment_type_current'])}",
                              None if r["enrollment_pct_change"] is None else f"{r['enrollment_pct_change']:+.1f}%")),
        ("start", _moved(r["start_registered"], r["start_current"], _days(r["start_shift_days"]))),
        ("primary completion", _moved(r["primary_completion_registered"], r["primary_completion_current"],
                                      _days(r["primary_completion_shift_days"]))),
        ("completion", _moved(r["completion_registered"], r["completion_current"],
                              _days(r["completion_shift_days"]))),
        ("phases", _moved(", ".join(r["phases_registered"] or []), ", ".join(r["phases_current"] or []), None)),
        ("arms", _moved(", ".join(r["arms_registered"] or []), ", ".join(r["arms_current"] or []), None)),
    ]
    body = "".join(f'<tr data-row="{esc(name)}"><th>{esc(name)}</th><td>{value}</td></tr>' for name, value in rows)
    return (f'<p class="meta">version {esc(r["first_version"])} ({esc(r["registered_source"])}, valid from '
            f'{esc(r["registered_valid_from"])}) against version {esc(r["current_version"])}</p>'
            f'<table data-table="registered-vs-current">{body}</table>')


def _items(values: Sequence[str] | None) -> str:
    return "".join(f"<div>{esc(v)}</div>" for v in values or []) or '<span class="meta">none</span>'


DESCRIPTION_WIDTH = 120  # characters of each description shown (abbreviated around the first difference)


def _reworded(items: Sequence[Row] | None) -> str:
    """Each reworded primary outcome: its text before → after, and its description's where that changed
    (a description alone may have changed: the text is then shown once, not as "X → X")."""
    lines = []
    for x in items or []:
        line = esc(x["before"]) if x["before"] == x["after"] else f"{esc(x['before'])} → {esc(x['after'])}"
        old, new = x.get("description_before"), x.get("description_after")
        if old != new:
            old, new = abbreviate_pair(old, new, DESCRIPTION_WIDTH)
            line += (f'<div class="meta" data-description="changed">description: {esc(old)} → {esc(new)}'
                     "</div>")
        lines.append(f"<div>{line}</div>")
    return "".join(lines) or '<span class="meta">none</span>'


def _moved(before: object, after: object, delta: str | None) -> str:
    if str(before) == str(after):
        return f'{esc(_blank(after))} <span class="meta">(unchanged)</span>'
    return f"{esc(_blank(before))} → {esc(_blank(after))}" + (f" <b>({esc(delta)})</b>" if delta else "")


def _days(value: int | None) -> str | None:
    return None if value is None else f"{int(value):+d} days"


def _lower(value: str | None) -> str:
    return (value or "").lower()


def _blank(value: object) -> str:
    return "" if value is None else str(value)
