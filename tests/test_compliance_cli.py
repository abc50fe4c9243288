"""``trialsync compliance`` as a user runs it (a real subprocess) over a warehouse of edited real records."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.fdaaa_support import store, trial
from tests.test_cli import run_cli


@pytest.fixture(scope="module")
def trials(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("compliance") / "warehouse"
    store(root, [
        trial("NCT90000001", sponsor="Acme 100% Pharma"),                     # due 2021-06-30; overdue
        trial("NCT90000002", sponsor="Acme 100% Pharma", results="2021-07-11"),  # 11 days late
        trial("NCT90000003", sponsor="Beta Devices", primary_completion="2020-01-31"),  # overdue since 2021-03-03
        trial("NCT90000004", sponsor="Beta Devices", results="2021-06-01"),   # on time
    ])
    return root


def _json(*args: str) -> list[dict[str, object]]:
    result = run_cli("compliance", *args, "--format", "json")
    assert result.returncode == 0, result.stderr
    rows: list[dict[str, object]] = json.loads(result.stdout)
    return rows


def test_the_trials_on_a_date_worst_first_with_every_column_in_json(trials: Path) -> None:
    rows = _json("--as-of", "2022-01-01", "--warehouse", str(trials))
    assert [(r["nct_id"], r["status"], r["days_late"]) for r in rows] == [
        ("NCT90000003", "overdue", 336), ("NCT90000001", "overdue", 185), ("NCT90000002", "reported-late", 11),
        ("NCT90000004", "reported", None)]
    assert rows[0]["due_date"] == "2021-01-30" and rows[0]["lead_sponsor"] == "Beta Devices"


def test_sponsor_is_a_literal_part_of_the_name_and_status_filters(trials: Path) -> None:
    rows = _json("--as-of", "2022-01-01", "--sponsor", "acme 100%", "--status", "overdue,reported-late",
                 "--warehouse", str(trials))
    assert [r["nct_id"] for r in rows] == ["NCT90000001", "NCT90000002"]
    assert _json("--as-of", "2022-01-01", "--sponsor", "Acme _00", "--warehouse", str(trials)) == []


def test_newly_overdue_in_a_window_is_a_time_event(trials: Path) -> None:
    rows = _json("--newly-overdue", "--since", "2021-07-01", "--as-of", "2021-08-15", "--warehouse", str(trials))
    assert [(r["nct_id"], r["overdue_from"], r["event_id"]) for r in rows] == [
        ("NCT90000001", "2021-07-31", "fdaaa-overdue:NCT90000001:2021-07-31")]


def test_the_sponsor_ranking(trials: Path) -> None:
    rows = _json("--by", "sponsor", "--as-of", "2022-01-01", "--warehouse", str(trials))
    assert [tuple(r.values()) for r in rows] == [
        ("Beta Devices", 2, 2, 1, 1, 50.0, 1, 336), ("Acme 100% Pharma", 2, 2, 1, 0, 0.0, 1, 196)]


def test_the_terminal_table_and_csv(trials: Path) -> None:
    table = run_cli("compliance", "--as-of", "2022-01-01", "--warehouse", str(trials))
    assert table.returncode == 0 and "NCT90000003" in table.stdout and "4 rows" in table.stdout
    csv = run_cli("compliance", "--as-of", "2022-01-01", "--format", "csv", "--limit", "1", "--warehouse",
                  str(trials))
    assert csv.stdout.splitlines()[0].startswith("nct_id,version,as_of,act_kind,")
    assert csv.stdout.splitlines()[1].startswith("NCT90000003,1,2022-01-01,ACT,")


@pytest.mark.parametrize(("args", "message"), [
    (["--status", "late"], "unknown --status 'late' (valid: overdue, overdue-cancelled, reported-late, reported, "
                           "ongoing)"),
    (["--by", "country"], "--by takes only 'sponsor', not 'country'"),
    (["--newly-overdue"], "--newly-overdue needs --since YYYY-MM-DD"),
    (["--since", "2021-01-01"], "--since needs --newly-overdue"),
    (["--newly-overdue", "--since", "2022-02-01", "--as-of", "2022-01-01"],
     "--since 2022-02-01 must be before --as-of 2022-01-01"),
    (["--as-of", "2022-13-01"], "--as-of expects a date as YYYY-MM-DD, got '2022-13-01'"),
    (["--by", "sponsor", "--status", "overdue"],
     "--by sponsor ranks every applicable trial: leave out --status and --newly-overdue"),
])
def test_bad_flags_are_one_line_errors_with_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    result = run_cli("compliance", *args, "--warehouse", str(tmp_path / "w"))
    assert (result.returncode, result.stderr.strip()) == (2, f"trialsync: error: {message}")


def _zone_whose_date_is_not_utcs() -> tuple[str, str]:
    """(a time zone whose local date differs from the UTC date right now, the UTC date): UTC-11 before
    11:00 UTC, UTC+14 from 10:00 UTC."""
    now = datetime.now(UTC)
    return ("Pacific/Pago_Pago" if now.hour < 11 else "Pacific/Kiritimati"), now.date().isoformat()


def test_today_is_the_utc_date_whatever_the_local_time_zone(trials: Path) -> None:
    zone, today = _zone_whose_date_is_not_utcs()
    env = {"TZ": zone}
    judged = run_cli("compliance", "--format", "json", "--warehouse", str(trials), env=env)
    viewed = run_cli("sql", "SELECT DISTINCT as_of FROM fdaaa_status UNION ALL "
                     "SELECT DISTINCT to_date FROM status_spans WHERE is_open", "--format", "json",
                     "--warehouse", str(trials), env=env)
    assert judged.returncode == 0 and viewed.returncode == 0, judged.stderr + viewed.stderr
    if datetime.now(UTC).date().isoformat() != today:
        pytest.skip("UTC midnight passed during the test")
    assert {r["as_of"] for r in json.loads(judged.stdout)} == {today}
    assert [list(r.values()) for r in json.loads(viewed.stdout)] == [[today], [today]]
