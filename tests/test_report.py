"""Issue 6: the HTML report: the charts' data from a real warehouse, self-contained, drawn by Chromium."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from datetime import UTC, date, datetime, timedelta
from html import escape
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from flows.inputs import utc_today
from flows.report import write_report
from pipeline import mutate
from pipeline.registry.fake_server import FakeRegistry
from tests.conftest import REPO, snapshot_pairs
from tests.fdaaa_support import trial
from tests.test_cli import run_cli

pytestmark = pytest.mark.usefixtures("prefect_api")
PAIR = "NCT05766735"
NOW = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)
# Applicable trials derived from a real one: overdue from 2026-06-15 (due 2026-05-15), and long overdue.
ACTS = [trial("NCT90000001", updated="2025-01-02", primary_completion="2025-05-15", sponsor="Acme Pharma"),
        trial("NCT90000002", updated="2025-01-02", primary_completion="2020-06-30", sponsor="Beta Devices")]
ARTIFACTS = Path(os.environ.get("TRIALSYNC_TEST_ARTIFACTS", REPO / "test-artifacts"))
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                  "--hide-scrollbars"]


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory, prefect_api: str) -> Path:
    """The 8 real pairs (NCT05766735's real 46-day slip) and a third version derived from its newer
    record: terminated, with its enrollment made actual and cut, on 2026-06-01; and two applicable trials
    (``ACTS``) overdue in mid-2026."""
    from tests.conftest import fast_sync

    pairs = snapshot_pairs()
    warehouse_dir = tmp_path_factory.mktemp("report") / "w"
    with FakeRegistry([*(older for older, _ in pairs.values()), *ACTS]).start() as registry:
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
    chart = html.split('data-chart="date-slips"')[1].split("</svg>")[0]  # each study linked, named in its tip
    assert chart.count(f'<a href="https://clinicaltrials.gov/study/{PAIR}">') == 2
    newer = snapshot_pairs()[PAIR][1]["protocolSection"]
    names = (f'{escape(newer["identificationModule"]["briefTitle"])} · '
             f'{escape(newer["sponsorCollaboratorsModule"]["leadSponsor"]["name"])}</title>')
    assert chart.count(names) == 2
    [moves] = by_chart(marks, "status-transitions")
    assert [(m["data-from"], m["data-to"], m["data-value"]) for m in moves] == [("RECRUITING", "TERMINATED", "1")]


def test_the_report_is_one_self_contained_file(history: Path, tmp_path: Path) -> None:
    html = write_report(history, tmp_path / "r.html", ncts=[PAIR], since=date(2026, 4, 1), now=NOW).read_text()
    assert parse(html).references == []  # no script, style, font or image from anywhere else
    assert not re.search(r"@import|url\(", html)
    links = re.findall(r'<a href="([^"]+)"', html)
    assert links[0] == f"https://clinicaltrials.gov/study/{PAIR}?tab=history"
    assert all(re.fullmatch(r"https://clinicaltrials\.gov/study/NCT\d{8}", link) for link in links[1:]), links


def test_the_report_command_writes_the_file_and_rejects_bad_input(history: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli.html"
    result = run_cli("report", "--warehouse", str(history), "--nct", PAIR, "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"report written to {out}"
    assert 'data-chart="key-dates"' in out.read_text()
    today = utc_today()
    after_today = today + timedelta(days=1)
    for args, message in [(["--nct", "NCT00000000"], "invalid NCT id 'NCT00000000'"),
                          (["--nct", "nct1"], "NCT00000001 is not in the warehouse"),
                          (["--run", "nope"], "no run nope in the warehouse"),
                          (["--run", "x", "--since", "2026-01-01"], "--run and --since/--until exclude each other"),
                          (["--since", "2026-06-02", "--until", "2026-06-01"],
                           "--since 2026-06-02 is after --until 2026-06-01"),
                          (["--since", after_today.isoformat()],
                           f"--since {after_today} is after --until (default today, UTC: {today})")]:
        bad = run_cli("report", "--warehouse", str(history), *args, "-o", str(tmp_path / "bad.html"))
        assert bad.returncode in (1, 2) and bad.stderr.strip().startswith(f"trialsync: error: {message}"), bad.stderr
        assert bad.stderr.count("\n") == 1
        if args[0] == "--since":  # as `trialsync compliance` refuses a window that ends before it starts
            assert bad.returncode == 2
    assert not (tmp_path / "bad.html").exists()
    (tmp_path / "a-file").write_text("")
    for place in (tmp_path / "a-file" / "r.html", Path("/proc/r.html")):  # below a file; not writable
        unwritable = run_cli("report", "--warehouse", str(history), "--nct", PAIR, "-o", str(place))
        assert unwritable.returncode == 2, unwritable.stderr
        assert unwritable.stderr.count("\n") == 1 and unwritable.stderr.startswith(
            f"trialsync: error: cannot write the report to {place}: "), unwritable.stderr


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
    assert 'data-charts="7"' in dom.stdout  # the page's script ran: 3 timeline + 3 digest + 1 compliance
    # the collapsed field changes open on a click
    assert '<details class="meta"' in dom.stdout and "<summary>+ " in dom.stdout
    drawn = {name.split("#")[0]: (int(c["drawn"]), len(c["marks"])) for name, c in marks.charts.items()}
    assert set(drawn) == {"status-bands", "enrollment", "key-dates", "changes-by-category", "date-slips",
                          "status-transitions", "fdaaa-status"}
    [dates] = by_chart(marks, "key-dates")  # each move labelled, drawn, and not on top of another
    labels = [m for m in dates if m.get("data-move")]
    assert {(m["data-series"], m["data-shift"]) for m in labels} == {("primary_completion_date", "46"),
                                                                     ("completion_date", "46")}
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


def test_each_key_date_move_is_labelled_with_its_days_and_coinciding_series_stay_apart(history: Path,
                                                                                     tmp_path: Path) -> None:
    html = write_report(history, tmp_path / "r.html", ncts=[PAIR], now=NOW).read_text()
    [dates] = by_chart(parse(html), "key-dates")
    labels = {m["data-series"]: m for m in dates if m.get("data-move")}
    assert {s: (m["data-at-version"], m["data-shift"]) for s, m in labels.items()} == {
        "primary_completion_date": ("2", "46"), "completion_date": ("2", "46")}  # the real slip, both dates
    assert ">primary completion +46 d</text>" in html and ">completion +46 d</text>" in html
    ys = sorted(float(m["y"]) for m in labels.values())
    assert ys[1] - ys[0] >= 13  # the same step: stacked, not drawn over each other
    paths = {m["data-series"]: m for m in dates if m.get("d")}
    assert "stroke-dasharray" in paths["primary_completion_date"] and "stroke-dasharray" not in paths["completion_date"]


def test_info_changes_are_expandable_and_the_header_names_only_the_directory(history: Path, tmp_path: Path) -> None:
    html = write_report(history, tmp_path / "r.html", ncts=[PAIR], now=NOW).read_text()
    hidden = re.findall(r'<details class="meta" data-hidden="(\d+)"><summary>\+ (\d+) other field changes?</summary>'
                        r"((?:<div>[^<]*</div>)+)</details>", html)
    assert hidden and all(int(n) == int(m) == c.count("<div>") for n, m, c in hidden)
    assert "field_changed: " in hidden[0][2]
    assert f"from {history.name}</p>" in html and str(history.parent) not in html


def test_the_study_shows_what_was_registered_against_now(history: Path, tmp_path: Path) -> None:
    html = write_report(history, tmp_path / "r.html", ncts=[PAIR], now=NOW).read_text()
    table = html.split('data-table="registered-vs-current"')[1].split("</table>")[0]
    rows = dict(re.findall(r'<tr data-row="([^"]+)"><th>[^<]*</th><td>(.*?)</td></tr>', table))
    assert rows["enrollment"] == "200 estimated → 120 actual <b>(-40.0%)</b>"
    assert rows["completion"] == "2027-04-15 → 2027-05-31 <b>(+46 days)</b>"
    assert rows["primary completion"] == "2027-04-15 → 2027-05-31 <b>(+46 days)</b>"
    assert rows["start"].endswith("(unchanged)</span>")
    assert rows["primary outcomes added"] == '<span class="meta">none</span>'


def test_the_digest_names_studies_with_titles_sponsors_and_registry_links(history: Path, tmp_path: Path) -> None:
    html = write_report(history, tmp_path / "r.html", since=date(2026, 4, 1), until=date(2026, 6, 30),
                        now=NOW).read_text()
    changes = html.split("<h3>Critical and notable changes</h3>")[1].split("</table>")[0]
    newer = snapshot_pairs()[PAIR][1]["protocolSection"]
    title = newer["identificationModule"]["briefTitle"]
    sponsor = newer["sponsorCollaboratorsModule"]["leadSponsor"]["name"]
    assert (f'<a href="https://clinicaltrials.gov/study/{PAIR}">{PAIR}</a><div class="meta">'
            f"{escape(title)} · {escape(sponsor)}</div>") in changes


def test_the_compliance_section_counts_lists_overdue_trials_and_those_newly_overdue(history: Path,
                                                                                   tmp_path: Path) -> None:
    html = write_report(history, tmp_path / "r.html", since=date(2026, 4, 1), until=date(2026, 6, 30),
                        now=NOW).read_text()
    section = html.split('<section class="compliance">')[1].split("</section>")[0]
    assert "FDAAA 801 results reporting on 2026-06-30" in section
    [bars] = by_chart(parse(section), "fdaaa-status")
    assert [(m["data-status"], m["data-value"]) for m in bars] == [("overdue", "2"), ("reported", "1")]
    overdue = section.split('data-table="fdaaa-overdue"')[1].split("</table>")[0]
    assert re.findall(r'<tr data-nct="(NCT\d+)">.*?data-days-late="(\d+)"', overdue) == [
        ("NCT90000002", "1826"), ("NCT90000001", "46")]
    assert "Beta Devices" in overdue and "Acme Pharma" in overdue
    newly = section.split("Newly overdue since 2026-04-01</h3>")[1]
    assert re.findall(r'<tr data-nct="(NCT\d+)">', newly) == ["NCT90000001"]
    assert "<td>2026-06-15</td>" in newly


def test_the_compliance_section_counts_every_overdue_trial_and_says_when_a_table_is_cut(tmp_path: Path) -> None:
    """120 trials (derived from a real one) that all become overdue on 2026-12-02: more than a table shows."""
    from tests.fdaaa_support import store

    root = tmp_path / "w"
    store(root, [trial(f"NCT9{i:07d}", primary_completion="2025-11-01", completion="2025-11-01",
                       updated="2025-01-02") for i in range(120)])
    html = write_report(root, tmp_path / "r.html", since=date(2026, 11, 1), until=date(2026, 12, 31),
                        now=NOW).read_text()
    section = html.split('<section class="compliance">')[1].split("</section>")[0]
    cards = dict((label, int(n)) for n, label in re.findall(r'<div class="card"><b>(\d+)</b>([^<]+)</div>', section))
    assert cards == {"applicable trials": 120, "overdue": 120, "newly overdue": 120}
    for table in ("fdaaa-overdue", "fdaaa-newly-overdue"):
        shown = section.split(f'data-table="{table}"')[1].split("</table>")[0]
        assert len(re.findall(r"<tr data-nct=", shown)) == 100
    assert section.count('<p class="meta">showing 100 of 120</p>') == 2
