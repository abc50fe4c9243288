"""SVG built as strings: scales, axes and the marks every chart uses. Each mark carries ``data-mark``
and its value in ``data-*`` attributes, so a reader (or a test) can find what was drawn."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from html import escape
from itertools import pairwise

STATUS_COLORS = {
    "NOT_YET_RECRUITING": "#90caf9", "RECRUITING": "#2e7d32", "ENROLLING_BY_INVITATION": "#00897b",
    "ACTIVE_NOT_RECRUITING": "#1565c0", "COMPLETED": "#616161", "SUSPENDED": "#ef6c00", "TERMINATED": "#c62828",
    "WITHDRAWN": "#6a1b9a", "UNKNOWN": "#bdbdbd", "REMOVED": "#212121",
}
SEVERITY_COLORS = {"critical": "#c62828", "notable": "#ef6c00", "minor": "#1e88e5", "info": "#b0bec5"}
SERIES_COLORS = ("#1565c0", "#ef6c00", "#2e7d32", "#6a1b9a")
FONT = "font-family:system-ui,-apple-system,'Segoe UI',sans-serif"


def esc(value: object) -> str:
    return escape(str(value), quote=True)


def attrs(**values: object) -> str:
    """``data_value=3`` -> ``data-value="3"``; None values are left out."""
    return " ".join(f'{k.rstrip("_").replace("_", "-")}="{esc(v)}"' for k, v in values.items() if v is not None)


@dataclass(frozen=True)
class Linear:
    """Maps [lo, hi] onto [a, b] pixels."""

    lo: float
    hi: float
    a: float
    b: float

    def __call__(self, value: float) -> float:
        span = (self.hi - self.lo) or 1.0
        return round(self.a + (value - self.lo) / span * (self.b - self.a), 1)


@dataclass(frozen=True)
class DateScale:
    first: date
    last: date
    a: float
    b: float

    def __call__(self, day: date) -> float:
        return Linear(self.first.toordinal(), self.last.toordinal(), self.a, self.b)(day.toordinal())

    def ticks(self, most: int = 8) -> list[tuple[date, str]]:
        """Year, quarter or month starts, whichever gives at most ``most`` ticks."""
        for months, fmt in ((1, "%Y-%m"), (3, "%Y-%m"), (6, "%Y-%m"), (12, "%Y"), (24, "%Y"), (60, "%Y")):
            ticks = _month_starts(self.first, self.last, months)
            if len(ticks) <= most:
                return [(d, d.strftime(fmt)) for d in ticks]
        return [(self.first, str(self.first.year)), (self.last, str(self.last.year))]


def _month_starts(first: date, last: date, step: int) -> list[date]:
    index = first.year * 12 + first.month - 1
    index += (-index) % step  # the first multiple of ``step`` months on or after ``first``'s month
    out: list[date] = []
    while True:
        day = date(index // 12, index % 12 + 1, 1)
        if day > last:
            return out
        if day >= first:
            out.append(day)
        index += step


def svg(width: int, height: int, body: Iterable[str], *, chart: str, label: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
            f'height="{height}" role="img" {attrs(aria_label=label, data_chart=chart)} style="{FONT};font-size:11px">'
            f"<title>{esc(label)}</title>{''.join(body)}</svg>")


def rect(x: float, y: float, w: float, h: float, fill: str, tip: str, **data: object) -> str:
    return (f'<rect data-mark="1" x="{x}" y="{y}" width="{max(w, 1.0)}" height="{h}" fill="{fill}" '
            f'{attrs(**data)}><title>{esc(tip)}</title></rect>')


def circle(x: float, y: float, r: float, fill: str, tip: str, *, hollow: bool = False, **data: object) -> str:
    paint = f'fill="#fff" stroke="{fill}" stroke-width="2"' if hollow else f'fill="{fill}"'
    return f'<circle data-mark="1" cx="{x}" cy="{y}" r="{r}" {paint} {attrs(**data)}><title>{esc(tip)}</title></circle>'


def path(points: list[tuple[float, float]], color: str, *, step: bool = True, dash: bool = False,
         width: float = 2, **data: object) -> str:
    """A line through ``points``; ``step`` holds each value until the next point (what a version does)."""
    if not points:
        return ""
    d = [f"M{points[0][0]},{points[0][1]}"]
    for _, (x1, y1) in pairwise(points):
        d.append(f"H{x1}V{y1}" if step else f"L{x1},{y1}")
    extra = ' stroke-dasharray="4 3"' if dash else ""
    extra += f' stroke-opacity="{0.5 if width > 3 else 1}"'
    return (f'<path data-mark="1" d="{" ".join(d)}" fill="none" stroke="{color}" stroke-width="{width}"{extra} '
            f"{attrs(**data)}/>")


def text(x: float, y: float, value: object, *, anchor: str = "start", size: int = 11, color: str = "#333",
         weight: str = "normal") -> str:
    return (f'<text x="{x}" y="{y}" text-anchor="{anchor}" font-size="{size}" fill="{color}" '
            f'font-weight="{weight}">{esc(value)}</text>')


def line(x1: float, y1: float, x2: float, y2: float, color: str = "#ccc", dash: bool = False) -> str:
    extra = ' stroke-dasharray="3 3"' if dash else ""
    return f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="{color}"{extra}/>'


def date_axis(scale: DateScale, top: float, bottom: float) -> list[str]:
    """Vertical grid lines with labels under ``bottom``."""
    out = []
    for day, label in scale.ticks():
        x = scale(day)
        out += [line(x, top, x, bottom, "#e0e0e0"), text(x, bottom + 14, label, anchor="middle", color="#666")]
    return out
