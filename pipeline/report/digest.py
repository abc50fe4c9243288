"""A run's (or a date range's) digest: changes by category and severity, top date slips, status moves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.changes import SEVERITIES
from pipeline.report import svg
from pipeline.report.svg import SEVERITY_COLORS, STATUS_COLORS, Linear

Row = Mapping[str, Any]
WIDTH, LABEL, RIGHT, BAR, GAP = 960, 300, 60, 18, 8


def _frame(rows: int) -> tuple[int, int]:
    top = 14
    return top, top + max(rows, 1) * (BAR + GAP) + 26


def by_category(counts: Sequence[Row]) -> str:
    """Stacked bars: one per category, a segment per severity (most severe first)."""
    totals: dict[str, dict[str, int]] = {}
    for row in counts:
        totals.setdefault(row["category"], {})[row["severity"]] = int(row["n"])
    order = sorted(totals, key=lambda c: (-sum(totals[c].values()), c))
    top, height = _frame(len(order))
    label = "Changes by category and severity"
    if not order:
        return _empty("changes-by-category", label)
    x = Linear(0, max(sum(t.values()) for t in totals.values()), LABEL, WIDTH - RIGHT)
    body = []
    for i, category in enumerate(order):
        y0, start = top + i * (BAR + GAP), 0
        body.append(svg.text(LABEL - 8, y0 + BAR - 4, category, anchor="end"))
        for severity in reversed(SEVERITIES):
            n = totals[category].get(severity, 0)
            if n:
                body.append(svg.rect(x(start), y0, x(start + n) - x(start), BAR, SEVERITY_COLORS[severity],
                                     f"{category}: {n} {severity}", data_category=category, data_severity=severity,
                                     data_value=n))
                start += n
        body.append(svg.text(x(start) + 6, y0 + BAR - 4, start, color="#555"))
    body += _severity_legend(height - 6)
    return svg.svg(WIDTH, height, body, chart="changes-by-category", label=label)


def _severity_legend(y: float) -> list[str]:
    out, x = [], float(LABEL)
    for severity in reversed(SEVERITIES):
        out += [f'<rect x="{x}" y="{y - 9}" width="10" height="10" fill="{SEVERITY_COLORS[severity]}"/>',
                svg.text(x + 14, y, severity, color="#555")]
        x += 80
    return out


def date_slips(slips: Sequence[Row]) -> str:
    """The largest moves of plan dates, in days (slips right, pull-ins left)."""
    label = "Top date slips (days)"
    if not slips:
        return _empty("date-slips", label)
    top, height = _frame(len(slips))
    reach = max(abs(int(s["shift_days"])) for s in slips)
    lo = -reach if any(int(s["shift_days"]) < 0 for s in slips) else 0
    x = Linear(lo, reach, LABEL, WIDTH - 230)  # room for the values' text on the right
    body = [svg.line(x(0), top - 4, x(0), height - 20, "#999")]
    for i, s in enumerate(slips):
        y0, days = top + i * (BAR + GAP), int(s["shift_days"])
        left, right = sorted((x(0), x(days)))
        color = SEVERITY_COLORS.get(s["severity"], "#999")
        names = " · ".join(str(x) for x in (s.get("brief_title"), s.get("lead_sponsor")) if x)
        body += [f'<a href="https://clinicaltrials.gov/study/{svg.esc(s["nct_id"])}">'
                 + svg.text(LABEL - 8, y0 + BAR - 4, f"{s['nct_id']} {s['field']}", anchor="end") + "</a>",
                 svg.rect(left, y0, right - left, BAR, color,
                          f"{s['nct_id']} {s['field']}: {s['old_value']} → {s['new_value']} ({days:+d} days)"
                          + (f"\n{names}" if names else ""),
                          data_nct=s["nct_id"], data_value=days, data_field=s["field"]),
                 svg.text(right + 6, y0 + BAR - 4, f"{days:+d} d  {s['old_value']} → {s['new_value']}", color="#555")]
    return svg.svg(WIDTH, height, body, chart="date-slips", label=label)


def status_transitions(moves: Sequence[Row]) -> str:
    """How many studies moved from one overall status to another, coloured by where they went."""
    label = "Status transitions"
    if not moves:
        return _empty("status-transitions", label)
    top, height = _frame(len(moves))
    x = Linear(0, max(int(m["n"]) for m in moves), LABEL, WIDTH - RIGHT)
    body = []
    for i, m in enumerate(moves):
        y0, n = top + i * (BAR + GAP), int(m["n"])
        old, new = m["old_value"] or "(none)", m["new_value"] or "(none)"
        body += [svg.text(LABEL - 8, y0 + BAR - 4, f"{_short(old)} → {_short(new)}", anchor="end"),
                 svg.rect(x(0), y0, x(n) - x(0), BAR, STATUS_COLORS.get(new, "#9e9e9e"), f"{old} → {new}: {n}",
                          data_from=old, data_to=new, data_value=n),
                 svg.text(x(n) + 6, y0 + BAR - 4, n, color="#555")]
    return svg.svg(WIDTH, height, body, chart="status-transitions", label=label)


def _short(status: str) -> str:
    return status.replace("_", " ").lower()


def _empty(chart: str, label: str) -> str:
    return svg.svg(WIDTH, 40, [svg.text(LABEL, 24, "nothing in this period", color="#999")], chart=chart, label=label)


def charts(digest: Row) -> list[tuple[str, str]]:
    """(heading, svg) of each digest chart."""
    return [("Changes by category and severity", by_category(digest["counts"])),
            ("Top date slips", date_slips(digest["slips"])),
            ("Status transitions", status_transitions(digest["transitions"]))]
