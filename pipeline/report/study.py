"""One study's timeline: its versions as status bands, its enrollment, and the moves of its key dates."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, timedelta
from itertools import pairwise
from typing import Any

from pipeline.report import svg
from pipeline.report.svg import SERIES_COLORS, STATUS_COLORS, DateScale, Linear

Row = Mapping[str, Any]
WIDTH, LEFT, RIGHT = 960, 150, 30
KEY_DATES = (("start_date", "start"), ("primary_completion_date", "primary completion"),
             ("completion_date", "completion"))
# Drawn dashed over the wider completion line, so the two stay apart where they coincide.
DASHED = frozenset({"primary_completion_date"})


def time_scale(versions: Sequence[Row], as_of: date) -> DateScale:
    """When each version was the registry's word: from the first version to ``as_of`` (30 days at least)."""
    first = min(v["valid_from"] for v in versions)
    last = max(as_of, max(v["valid_from"] for v in versions))
    if (last - first).days < 30:
        first, last = first - timedelta(days=15), last + timedelta(days=15)
    return DateScale(first, last, LEFT, WIDTH - RIGHT)


def _until(v: Row, scale: DateScale) -> date:
    return v["valid_to"] or scale.last


def _status(v: Row) -> str:
    return "REMOVED" if v["is_removed"] else str(v["overall_status"] or "UNKNOWN")


def status_bands(versions: Sequence[Row], scale: DateScale) -> str:
    """One band per version, coloured by its overall status, with the version numbers above it."""
    top, height = 26, 34
    body = svg.date_axis(scale, top - 6, top + height + 4)
    body.append(svg.text(4, top + height / 2 + 4, "overall status", weight="bold"))
    for v in versions:
        x0, x1 = scale(v["valid_from"]), scale(_until(v, scale))
        status = _status(v)
        tip = f"v{v['version']}: {status} from {v['valid_from']} to {v['valid_to'] or 'now'}"
        body.append(svg.rect(x0, top, x1 - x0, height, STATUS_COLORS.get(status, "#9e9e9e"), tip,
                             data_version=v["version"], data_status=status, data_from=v["valid_from"]))
        body.append(svg.text(x0 + 3, top - 4, f"v{v['version']}", size=10, color="#555"))
        if x1 - x0 > 7 * len(status):
            body.append(svg.text(x0 + 6, top + height / 2 + 4, status.replace("_", " ").lower(), color="#fff"))
    body += _legend(sorted({_status(v) for v in versions}), top + height + 36)
    return svg.svg(WIDTH, top + height + 46, body, chart="status-bands", label="Overall status of each version")


def _legend(statuses: list[str], y: float) -> list[str]:
    out, x = [], float(LEFT)
    for status in statuses:
        out += [f'<rect x="{x}" y="{y - 9}" width="10" height="10" fill="{STATUS_COLORS.get(status, "#9e9e9e")}"/>',
                svg.text(x + 14, y, status.replace("_", " ").lower(), color="#555")]
        x += 24 + 6.5 * len(status)
    return out


def enrollment(versions: Sequence[Row], scale: DateScale) -> str:
    """Enrollment per version: a step line, hollow dots for estimates, filled dots for actual counts."""
    points = [v for v in versions if v["enrollment_count"] is not None and not v["is_removed"]]
    top, height = 16, 120
    body = svg.date_axis(scale, top, top + height)
    body.append(svg.text(4, top + height / 2, "enrollment", weight="bold"))
    if not points:
        body.append(svg.text(LEFT + 10, top + height / 2, "no enrollment recorded", color="#999"))
        return svg.svg(WIDTH, top + height + 24, body, chart="enrollment", label="Enrollment per version")
    counts = [int(v["enrollment_count"]) for v in points]
    y = Linear(0, max(counts) * 1.15 or 1, top + height, top)
    for tick in _value_ticks(max(counts)):
        body += [svg.line(LEFT, y(tick), WIDTH - RIGHT, y(tick), "#eee"),
                 svg.text(LEFT - 6, y(tick) + 4, tick, anchor="end", color="#666")]
    steps = [(scale(v["valid_from"]), y(int(v["enrollment_count"]))) for v in points]
    steps.append((scale(_until(points[-1], scale)), steps[-1][1]))
    body.append(svg.path(steps, SERIES_COLORS[0], data_series="enrollment"))
    for v in points:
        kind = v["enrollment_type"] or "?"
        body.append(svg.circle(scale(v["valid_from"]), y(int(v["enrollment_count"])), 5, SERIES_COLORS[0],
                               f"v{v['version']} ({v['valid_from']}): {v['enrollment_count']} {kind.lower()}",
                               hollow=kind != "ACTUAL", data_version=v["version"], data_value=v["enrollment_count"],
                               data_type=kind))
    return svg.svg(WIDTH, top + height + 24, body, chart="enrollment", label="Enrollment per version")


def _value_ticks(top: int) -> list[int]:
    if top <= 0:
        return [0]
    step = 10 ** max(0, len(str(top)) - 1)
    if top / step < 3:
        step = max(step // 2, 1)
    return list(range(0, top + 1, max(step, 1)))


def key_dates(versions: Sequence[Row], scale: DateScale) -> str:
    """What each version said of the start, primary completion and completion dates: a slip is a step
    up, a pull-in a step down; hollow dots are estimates, filled dots actual dates."""
    live = [v for v in versions if not v["is_removed"]]
    said = [v[col] for v in live for col, _ in KEY_DATES if v[col] is not None]
    top, height = 16, 190
    body = svg.date_axis(scale, top, top + height)
    body.append(svg.text(4, top + height / 2, "key dates", weight="bold"))
    if not said:
        body.append(svg.text(LEFT + 10, top + height / 2, "no dates recorded", color="#999"))
        return svg.svg(WIDTH, top + height + 24, body, chart="key-dates", label="Key dates per version")
    lo, hi = min(said), max(said)
    pad = max(30, (hi - lo).days // 10)
    y = DateScale(lo - timedelta(days=pad), hi + timedelta(days=pad), top + height, top)
    for day, label in y.ticks(most=6):
        body += [svg.line(LEFT, y(day), WIDTH - RIGHT, y(day), "#eee"),
                 svg.text(LEFT - 6, y(day) + 4, label, anchor="end", color="#666")]
    for i, (col, name) in reversed(list(enumerate(KEY_DATES))):  # completion first: widest, underneath
        body += _date_series(live, col, name, SERIES_COLORS[i], scale, y, width=2 + 2 * i, dash=col in DASHED)
    body += _move_labels(live, scale, y)
    for i, (col, name) in enumerate(KEY_DATES):
        x = LEFT + i * 170
        dash = ' stroke-dasharray="4 3"' if col in DASHED else ""
        body += [f'<line x1="{x}" y1="{top + height + 30}" x2="{x + 18}" y2="{top + height + 30}" '
                 f'stroke="{SERIES_COLORS[i]}" stroke-width="4"{dash}/>',
                 svg.text(x + 22, top + height + 34, name, color="#555")]
    return svg.svg(WIDTH, top + height + 42, body, chart="key-dates", label="Key dates per version")


def moves(versions: Sequence[Row]) -> list[tuple[Row, str, int]]:
    """(version, column, days) for each move of a key date from one version to the next. A refinement of
    precision (``2025-05`` -> ``2025-05-30``) or its reverse is not a move."""
    out = []
    for col, _ in KEY_DATES:
        points = [v for v in versions if v[col] is not None]
        for before, after in pairwise(points):
            old, new = str(before[f"{col}_raw"] or ""), str(after[f"{col}_raw"] or "")
            if old == new or new.startswith(old) or old.startswith(new):
                continue
            out.append((after, col, (after[col] - before[col]).days))
    return out


def _move_labels(versions: Sequence[Row], scale: DateScale, y: DateScale) -> list[str]:
    """Each move's days beside its step, in its series' colour and with its series' name, so a 46-day
    slip is read, not guessed; labels of one version that would overlap are stacked."""
    names = {col: name for col, name in KEY_DATES}
    colors = {col: SERIES_COLORS[i] for i, (col, _) in enumerate(KEY_DATES)}
    out: list[str] = []
    placed: dict[float, list[float]] = {}
    for version, col, days in sorted(moves(versions), key=lambda m: (m[0]["version"], -y(m[0][m[1]]))):
        x = scale(version["valid_from"]) + 6
        ty = y(version[col]) - 6
        taken = placed.setdefault(x, [])
        while any(abs(ty - other) < 13 for other in taken):
            ty -= 13
        taken.append(ty)
        label = f"{names[col]} {days:+d} d"
        out.append(f'<text data-mark="1" data-move="1" data-series="{col}" data-shift="{days}" '
                   f'data-at-version="{version["version"]}" x="{x}" y="{ty}" font-size="11" font-weight="bold" '
                   f'fill="{colors[col]}"><title>v{version["version"]}: {svg.esc(names[col])} moved {days:+d} days '
                   f'to {svg.esc(version[f"{col}_raw"])}</title>{svg.esc(label)}</text>')
    return out


def _date_series(versions: Sequence[Row], col: str, name: str, color: str, scale: DateScale,
                 y: DateScale, *, width: float = 2, dash: bool = False) -> list[str]:
    points = [v for v in versions if v[col] is not None]
    if not points:
        return []
    steps = [(scale(v["valid_from"]), y(v[col])) for v in points]
    steps.append((scale(_until(points[-1], scale)), steps[-1][1]))
    out = [svg.path(steps, color, width=width, dash=dash, data_series=col)]
    for v in points:
        kind = v[f"{col}_type"] or "?"
        out.append(svg.circle(scale(v["valid_from"]), y(v[col]), 3 + width / 2, color,
                              f"v{v['version']} ({v['valid_from']}): {name} {v[f'{col}_raw']} ({kind.lower()})",
                              hollow=kind != "ACTUAL", data_version=v["version"], data_series=col,
                              data_value=v[f"{col}_raw"]))
    return out


def charts(versions: Sequence[Row], as_of: date) -> list[str]:
    scale = time_scale(versions, as_of)
    return [status_bands(versions, scale), enrollment(versions, scale), key_dates(versions, scale)]
