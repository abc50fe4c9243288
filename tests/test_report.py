"""Issue 6: the HTML report: the charts' data from a real warehouse, self-contained, drawn by Chromium."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from datetime import UTC, date, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from flows.report import write_report
from pipeline import mutate
from pipeline.registry.fake_server import FakeRegistry
from tests.conftest import REPO, snapshot_pairs
from tests.test_cli import run_cli

pytestmark = pytest.mark.usefixtures("prefect_api")
PAIR = "NCT05766735"
NOW = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)
ARTIFACTS = Path(os.environ.get("TRIALSYNC_TEST_ARTIFACTS", REPO / "test-artifacts"))
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                  "--hide-scrollbars"]


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory, prefect_api: str) -> Path:
    """The 8 real pairs (NCT05766735's real 46-day slip) and a third version derived from its newer
    record: terminated, with its enrollment made actual and cut, on 2026-06-01."""
    from tests.conftest import fast_sync

    pairs = snapshot_pairs()
    warehouse_dir = tmp_path_factory.mktemp("report") / "w"
    with FakeRegistry([older for older, _ in pairs.values()]).start() as registry:
        fast_sync(registry, warehouse_dir)
        registry.put(*(newer for _, newer in pairs.values()))
        fast_sync(registry, warehouse_dir, full=True)
        newer = pairs[PAIR][1]
        third = mutate.set_enrollment(mutate.set_status(newer, "TERMINATED", "Sponsor decision"), 120, "ACTUAL")
        registry.put(mutate.posted_on(third, date(2026, 6, 1)))
        fast_sync(registry, warehouse_dir)
    return warehouse_dir


class Marks(HTMLParser):
    """Every chart (svg[data-chart]) with the attributes of its marks, and every external reference."""

    def __init__(self) -> None:
        super().__init__()
        self.charts: dict[str, dict[str, Any]] = {}
        self.current: str | None = None
        self.references: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "svg" and "data-chart" in a:
            self.current = f"{a['data-chart']}#{len(self.charts)}"
            self.charts[self.current] = {"drawn": a.get("data-drawn"), "marks": []}
        elif "data-mark" in a and self.current:
            self.charts[self.current]["marks"].append(a)
        for key in ("src", "href"):
            if a.get(key) and tag != "a":
                self.references.append(f"{tag} {key}={a[key]}")
        if tag in ("link", "iframe", "object", "embed", "img"):
            self.references.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self.current = None


def parse(html: str) -> Marks:
    marks = Marks()
    marks.feed(html)
    return marks


def by_chart(marks: Marks, name: str) -> list[list[dict[str, Any]]]:
    return [c["marks"] for key, c in marks.charts.items() if key.startswith(name + "#")]


def test_the_study_timeline_draws_each_version_its_enrollment_and_its_date_moves(history: Path,
                                                                                 tmp_path: Path) -> None:
    html = write_report(history, tmp_path / "r.html", ncts=[PAIR], now=NOW).read_text()
    marks = parse(html)
    [bands] = by_chart(marks, "status-bands")
    assert [(m["data-version"], m["data-status"], m["data-from"]) for m in bands] == [
        ("1", "RECRUITING", "2025-05-07"), ("2", "RECRUITING", "2026-04-09"), ("3", "TERMINATED", "2026-06-01")]
    [enrollment] = by_chart(marks, "enrollment")
    assert [(m.get("data-value"), m.get("data-type")) for m in enrollment if "data-version" in m] == [
        ("200", "ESTIMATED"), ("200", "ESTIMATED"), ("120", "ACTUAL")]
    [dates] = by_chart(marks, "key-dates")
    completion = [m["data-value"] for m in dates if m.get("data-series") == "completion_date" and "data-version" in m]
    assert completion == ["2027-04-15", "2027-05-31", "2027-05-31"]
    assert "date_slipped: completion date: 2027-04-15 → 2027-05-31 (+46 days)" in html


def test_the_digest_counts_changes_and_shows_slips_and_status_moves(history: Path, tmp_path: Path) -> None:
    html = write_report(history, tmp_path / "r.html", since=date(2026, 4, 1), until=date(2026, 6, 30),
                        now=NOW).read_text()
    marks = parse(html)
    [categories] = by_chart(marks, "changes-by-category")
    counts = {(m["data-category"], m["data-severity"]): int(m["data-value"]) for m in categories}
    assert counts[("dates", "notable")] == 2 and counts[("status", "critical")] == 1
    assert counts[("enrollment", "notable")] == 1 and counts[("enrollment", "minor")] == 1
    [slips] = by_chart(marks, "date-slips")
    assert [(m["data-nct"], m["data-field"], m["data-value"]) for m in slips] == [
        (PAIR, "completion date", "46"), (PAIR, "primary completion date", "46")]
    [moves] = by_chart(marks, "status-transitions")
    assert [(m["data-from"], m["data-to"], m["data-value"]) for m in moves] == [("RECRUITING", "TERMINATED", "1")]


def test_the_report_is_one_self_contained_file(history: Path, tmp_path: Path) -> None:
    html = write_report(history, tmp_path / "r.html", ncts=[PAIR], since=date(2026, 4, 1), now=NOW).read_text()
    assert parse(html).references == []  # no script, style, font or image from anywhere else
    assert not re.search(r"@import|url\(", html)
    assert re.findall(r'<a href="([^"]+)"', html) == [f"https://clinicaltrials.gov/study/{PAIR}?tab=history"]


def test_the_report_command_writes_the_file_and_rejects_bad_input(history: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli.html"
    result = run_cli("report", "--warehouse", str(history), "--nct", PAIR, "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"report written to {out}"
    assert 'data-chart="key-dates"' in out.read_text()
    for args, message in [(["--nct", "NCT1"], "invalid NCT id 'NCT1'"),
                          (["--nct", "NCT00000000"], "NCT00000000 is not in the warehouse"),
                          (["--run", "nope"], "no run nope in the warehouse"),
                          (["--run", "x", "--since", "2026-01-01"], "--run and --since/--until exclude each other")]:
        bad = run_cli("report", "--warehouse", str(history), *args, "-o", str(tmp_path / "bad.html"))
        assert bad.returncode in (1, 2) and bad.stderr.strip().startswith(f"trialsync: error: {message}"), bad.stderr
    assert not (tmp_path / "bad.html").exists()


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.skip("chromium is not installed and `make setup` could not install it here (it needs apt-get "
                    "as root): the report's browser test cannot run")
    return found


def test_chromium_draws_every_chart_of_the_report_and_a_screenshot_is_kept(history: Path, tmp_path: Path) -> None:
    browser = chromium()
    report = write_report(history, tmp_path / "report.html", ncts=[PAIR], since=date(2026, 4, 1), now=NOW)
    profile = tmp_path / "profile"
    dom = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", report.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    marks = parse(dom.stdout)
    assert 'data-charts="6"' in dom.stdout  # the page's script ran: 3 timeline + 3 digest charts
    drawn = {name.split("#")[0]: (int(c["drawn"]), len(c["marks"])) for name, c in marks.charts.items()}
    assert set(drawn) == {"status-bands", "enrollment", "key-dates", "changes-by-category", "date-slips",
                          "status-transitions"}
    assert all(n_drawn == n_marks > 0 for n_drawn, n_marks in drawn.values()), drawn
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    result = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile2'}",
                             "--window-size=1100,2600", f"--screenshot={shot}", report.as_uri()],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    header = shot.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    assert (int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")) == (1100, 2600)
    shutil.copy(report, ARTIFACTS / "report.html")
