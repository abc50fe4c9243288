"""The report page: one HTML string with its style, charts and a few lines of script inline."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import Any

from pipeline.abbreviate import abbreviate_pair
from pipeline.report import analyses
from pipeline.report import digest as digest_charts
from pipeline.report import study as study_charts
from pipeline.report.svg import SEVERITY_COLORS, esc

Row = Mapping[str, Any]

STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;background:#f5f6f8;color:#222}
header{background:#263238;color:#fff;padding:18px 32px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;color:#b0bec5;font-size:13px}main{padding:8px 32px 40px;max-width:1040px}
section{background:#fff;border-radius:6px;box-shadow:0 1px 3px rgba(0,0,0,.12);padding:16px 24px;margin:18px 0}
h2{font-size:18px;margin:4px 0 6px}h3{font-size:14px;margin:18px 0 6px;color:#455a64}
.meta{color:#555;font-size:13px;margin:0 0 8px}table{border-collapse:collapse;font-size:12px;width:100%}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eceff1;vertical-align:top}th{color:#546e7a}
.pill{display:inline-block;border-radius:9px;padding:0 7px;color:#fff;font-size:11px;margin:1px 2px}
.cards{display:flex;gap:12px;margin:8px 0}.card{background:#eceff1;border-radius:6px;padding:8px 14px}
.card b{display:block;font-size:20px}.ok{background:#2e7d32}.warn{background:#ef6c00}.fail{background:#c62828}
.skipped{background:#90a4ae}svg{display:block;max-width:100%;height:auto}
details summary{cursor:pointer;color:#555}details[open] summary{margin-bottom:2px}
"""

# Marks each chart with how many of its marks the browser actually laid out (data-drawn), so a
# headless browser's DOM dump shows that the charts were drawn, not merely present in the file.
SCRIPT = """
document.querySelectorAll('svg[data-chart]').forEach(function (chart) {
  var drawn = 0;
  chart.querySelectorAll('[data-mark]').forEach(function (mark) {
    var box = mark.getBoundingClientRect();
    if (box.width > 0 || box.height > 0) { drawn += 1; }
  });
  chart.setAttribute('data-drawn', String(drawn));
});
document.body.setAttribute('data-charts', String(document.querySelectorAll('svg[data-chart]').length));
"""


def render(*, studies: Sequence[Row], digest: Row | None, generated_at: datetime, source: str,
           compliance: Row | None = None) -> str:
    """The whole report: a section per study, then the digest and FDAAA compliance (each may be absent).
    ``source``: the warehouse's name as the reader should see it (its directory's name)."""
    parts = [study_section(s, generated_at.date()) for s in studies]
    if digest is not None:
        parts.append(digest_section(digest))
    if compliance is not None:
        parts.append(analyses.compliance_section(compliance))
    title = "trialsync report"
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>'
            f"<body><header><h1>{esc(title)}</h1><p>Generated {generated_at:%Y-%m-%d %H:%M} UTC from "
            f"{esc(source)}</p></header><main>{''.join(parts)}</main><script>{SCRIPT}</script></body></html>")


def study_section(s: Row, as_of: date) -> str:
    versions, head = s["versions"], s["versions"][-1]
    state = "removed from its scope" if head["is_removed"] else head["overall_status"]
    meta = (f"{esc(s['nct_id'])} · {esc(s.get('lead_sponsor') or 'sponsor unknown')} · {len(versions)} "
            f"version{'s' if len(versions) != 1 else ''} · now {esc(state)}")
    charts = study_charts.charts(versions, as_of)
    return (f'<section class="study" data-nct="{esc(s["nct_id"])}"><h2>{esc(s.get("brief_title") or s["nct_id"])}'
            f'</h2><p class="meta">{meta} · <a href="https://clinicaltrials.gov/study/{esc(s["nct_id"])}?tab=history">'
            f"registry history</a></p><h3>Status over time</h3>{charts[0]}<h3>Enrollment</h3>{charts[1]}"
            f"<h3>Key dates, as each version stated them</h3>{charts[2]}"
            f"<h3>Registered vs now</h3>{analyses.registered_table(s.get('registered'))}"
            f"<h3>Versions and what changed</h3>{_versions_table(versions, s['changes'])}</section>")


def _versions_table(versions: Sequence[Row], changes: Sequence[Row]) -> str:
    by_version: dict[int, list[Row]] = {}
    for c in changes:
        by_version.setdefault(int(c["to_version"]), []).append(c)
    rows = []
    for v in versions:
        typed = [c for c in by_version.get(int(v["version"]), []) if c["severity"] != "info"]
        hidden = [c for c in by_version.get(int(v["version"]), []) if c["severity"] == "info"]
        what = "".join(f"<div>{_pill(c['severity'])} {esc(describe(c))}</div>" for c in typed)
        if hidden:  # info-level field changes: collapsed, a click away
            what += (f'<details class="meta" data-hidden="{len(hidden)}"><summary>+ {len(hidden)} other field '
                     f'change{"s" if len(hidden) != 1 else ""}</summary>'
                     + "".join(f"<div>{esc(describe(c))}</div>" for c in hidden) + "</details>")
        rows.append(f"<tr><td>v{v['version']}</td><td>{esc(v['valid_from'])}</td>"
                    f"<td>{esc('removed' if v['is_removed'] else v['overall_status'])}</td>"
                    f"<td>{esc(_blank(v['enrollment_count']))} {esc((v['enrollment_type'] or '').lower())}</td>"
                    f"<td>{esc(_blank(v['primary_completion_date_raw']))}</td>"
                    f"<td>{esc(_blank(v['completion_date_raw']))}</td><td>{what}</td></tr>")
    return ("<table><tr><th>version</th><th>registry date</th><th>status</th><th>enrollment</th>"
            "<th>primary completion</th><th>completion</th><th>changes</th></tr>" + "".join(rows) + "</table>")


def describe(c: Row) -> str:
    text = f"{c['event']}: {c['field']}"
    if c["old_value"] is not None or c["new_value"] is not None:
        old, new = abbreviate_pair(c["old_value"], c["new_value"], 70)
        text += f": {old} → {new}"
    if c.get("shift_days") is not None:
        text += f" ({int(c['shift_days']):+d} days)"
    if c.get("pct_change") is not None:
        text += f" ({float(c['pct_change']):+.1f}%)"
    return text


def digest_section(d: Row) -> str:
    totals = d["totals"]
    cards = "".join(f'<div class="card"><b>{esc(n)}</b>{esc(label)}</div>' for label, n in (
        ("changes", totals["changes"]), ("studies changed", totals["studies"]),
        ("critical", totals["critical"]), ("notable", totals["notable"])))
    charts = "".join(f"<h3>{esc(heading)}</h3>{chart}" for heading, chart in digest_charts.charts(d))
    return (f'<section class="digest"><h2>What changed: {esc(d["title"])}</h2><div class="cards">{cards}</div>'
            f"{charts}<h3>Critical and notable changes</h3>{_changes_table(d['notable'])}"
            f"<h3>Runs</h3>{_runs_table(d['runs'])}<h3>Reconciliation</h3>{_checks_table(d['reconciliation'])}"
            "</section>")


def _changes_table(changes: Sequence[Row]) -> str:
    if not changes:
        return '<p class="meta">none</p>'
    rows = "".join(f"<tr><td>{esc(_blank(c['registry_updated']))}</td>"
                   f"<td>{analyses.study_link(c['nct_id'], c.get('brief_title'), c.get('lead_sponsor'))}</td>"
                   f"<td>{_pill(c['severity'])}</td><td>{esc(describe(c))}</td></tr>" for c in changes)
    return f"<table><tr><th>registry date</th><th>study</th><th>severity</th><th>change</th></tr>{rows}</table>"


def _runs_table(runs: Sequence[Row]) -> str:
    rows = "".join(f"<tr><td>{esc(r['run_id'])}</td><td>{esc(r['mode'])}</td><td>{esc(r['scope'])}</td>"
                   f"<td>{esc(r['studies_seen'])}</td><td>{esc(r['versions_written'])}</td>"
                   f"<td>{esc(r['changes_written'])}</td><td>{esc(r['retired'])}</td></tr>" for r in runs)
    return ("<table><tr><th>run</th><th>mode</th><th>scope</th><th>seen</th><th>new versions</th><th>changes</th>"
            f"<th>retired</th></tr>{rows}</table>")


def _checks_table(checks: Sequence[Row]) -> str:
    if not checks:
        return '<p class="meta">no reconciliation recorded for these runs</p>'
    rows = "".join(f"<tr><td>{esc(c['run_id'])}</td><td>{esc(c['check'])}</td>"
                   f'<td><span class="pill {esc(c["status"])}">{esc(c["status"])}</span></td>'
                   f"<td>{esc(c['detail'])}</td></tr>" for c in checks)
    return f"<table><tr><th>run</th><th>check</th><th>status</th><th>detail</th></tr>{rows}</table>"


def _pill(severity: str) -> str:
    return f'<span class="pill" style="background:{SEVERITY_COLORS.get(severity, "#999")}">{esc(severity)}</span>'


def _blank(value: object) -> str:
    return "" if value is None else str(value)


