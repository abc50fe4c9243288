"""Query output: terminal text shows registry text as text; JSON and CSV carry every DuckDB type."""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import duckdb
import pytest
from rich.console import Console

from flows.output import render
from pipeline import mutate
from pipeline.registry.fake_server import FakeRegistry
from tests.conftest import fast_sync, nct, real_records
from tests.test_cli import run_cli

BRACKETED = "NCT06836752"  # its primary outcome "Change in FPG [mmol/L]" is real registry text


def _query(sql: str) -> tuple[list[str], list[Any]]:
    result = duckdb.connect().execute(sql)
    return [d[0] for d in result.description], result.fetchall()


def _render(sql: str, fmt: str) -> str:
    out = io.StringIO()
    render(*_query(sql), fmt, Console(file=out, width=200))
    return out.getvalue()


def _strict_json(text: str) -> Any:
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def _measure() -> str:
    record = next(r for r in real_records() if nct(r) == BRACKETED)
    return str(record["protocolSection"]["outcomesModule"]["primaryOutcomes"][1]["measure"])


def test_json_gives_an_interval_in_seconds_and_a_blob_in_base64() -> None:
    rows = _strict_json(_render("SELECT INTERVAL 90 MINUTE AS took, -INTERVAL 1 DAY AS back, "
                                "INTERVAL 1 MONTH AS month, '\\xAA\\x00'::BLOB AS raw", "json"))
    assert rows == [{"took": 5400.0, "back": -86400.0, "month": 30 * 86400.0,
                     "raw": base64.b64encode(b"\xaa\x00").decode()}]


def test_json_writes_nan_and_infinity_as_null() -> None:
    rows = _strict_json(_render("SELECT 'nan'::DOUBLE AS n, 'inf'::FLOAT AS i, '-inf'::DOUBLE AS m, "
                                "['nan'::DOUBLE, 1.5] AS l, {'x': 'inf'::DOUBLE} AS s", "json"))
    assert rows == [{"n": None, "i": None, "m": None, "l": [None, 1.5], "s": {"x": None}}]


def test_json_serialises_every_other_duckdb_type() -> None:
    rows = _strict_json(_render(
        "SELECT '4b91b058-edd0-45bd-9cfe-a5f2f5a391dd'::UUID AS u, TIME '12:30:00' AS t, "
        "'12:00:00+02'::TIMETZ AS ttz, TIMESTAMPTZ '2026-01-01 10:00:00+00' AS tz, MAP {1: 'a'} AS m, "
        "123456789012345678901234567890::HUGEINT AS h, 1.25::DECIMAL(5,2) AS d, [1, 2]::INTEGER[2] AS a, "
        "'101'::BIT AS b, union_value(k := 2) AS un, DATE '2026-05-01' AS day", "json"))
    assert rows == [{"u": "4b91b058-edd0-45bd-9cfe-a5f2f5a391dd", "t": "12:30:00", "ttz": "12:00:00+02:00",
                     "tz": "2026-01-01T10:00:00+00:00", "m": {"1": "a"}, "h": 123456789012345678901234567890,
                     "d": 1.25, "a": [1, 2], "b": "101", "un": 2, "day": "2026-05-01"}]


def test_csv_writes_the_same_plain_values_and_nan_as_empty() -> None:
    text = _render("SELECT INTERVAL 90 MINUTE AS took, '\\xAA\\x00'::BLOB AS raw, 'nan'::DOUBLE AS n, "
                   "'4b91b058-edd0-45bd-9cfe-a5f2f5a391dd'::UUID AS u", "csv")
    assert text.splitlines() == ["took,raw,n,u", "5400.0,qgA=,,4b91b058-edd0-45bd-9cfe-a5f2f5a391dd"]


def test_booleans_read_true_and_false_in_every_format() -> None:
    sql = "SELECT true AS yes, false AS no, NULL::BOOLEAN AS unknown, [true, false] AS both"
    assert _render(sql, "csv").splitlines() == ["yes,no,unknown,both", 'true,false,,"[true, false]"']
    assert _strict_json(_render(sql, "json")) == [{"yes": True, "no": False, "unknown": None, "both": [True, False]}]
    table = _render(sql, "table")
    assert "True" not in table and "False" not in table
    assert re.search(r"│ true\s+│ false\s+│\s+│ \[true, false\] │", table), table


def test_a_table_shows_bracketed_registry_text_and_column_names_as_they_are() -> None:
    measure = _measure()
    out = _render(f"SELECT '{measure}' AS measure, '[/]' AS \"[/]\", '[bold]x[/bold]' AS tag", "table")
    assert "Change in FPG [mmol/L]" in out and "[bold]x[/bold]" in out
    assert out.count("[/]") == 2


@pytest.fixture(scope="module")
def bracketed_warehouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """NCT06836752 synced twice: its bracketed primary outcome reworded in between (a real change's shape)."""
    record = next(r for r in real_records() if nct(r) == BRACKETED)
    directory = tmp_path_factory.mktemp("bracketed") / "warehouse"
    with FakeRegistry([record]).start() as registry:
        fast_sync(registry, directory)
        reworded = mutate.set_primary_outcome_measure(record, 1, "FPG [/] [mmol/L]")
        registry.put(mutate.posted_on(reworded, date(2026, 6, 1)))
        fast_sync(registry, directory)
    yield directory


def test_the_changes_table_shows_bracketed_registry_text(bracketed_warehouse: Path) -> None:
    result = run_cli("changes", "--nct", BRACKETED, "--event", "primary_outcome_changed",
                     "--warehouse", str(bracketed_warehouse))
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if BRACKETED in line)
    assert [cell.strip() for cell in row.split("│")][6:8] == ["Change in FPG [mmol/L]", "FPG [/] [mmol/L]"]


def test_history_shows_bracketed_registry_text(bracketed_warehouse: Path) -> None:
    result = run_cli("history", BRACKETED, "--warehouse", str(bracketed_warehouse))
    assert result.returncode == 0, result.stderr
    assert "primary_outcome_changed: primary outcome: Change in FPG [mmol/L] → FPG [/] [mmol/L]" in result.stdout


def test_the_sql_table_shows_brackets_as_they_are(bracketed_warehouse: Path) -> None:
    table = run_cli("sql", "SELECT '[/]' AS a, '[kg]' AS b", "--warehouse", str(bracketed_warehouse))
    assert table.returncode == 0, table.stderr
    assert "[/]" in table.stdout and "[kg]" in table.stdout


def test_sql_json_serialises_run_durations(bracketed_warehouse: Path) -> None:
    where = ["--warehouse", str(bracketed_warehouse)]
    took = run_cli("sql", "SELECT run_id, finished_at - started_at AS took FROM sync_runs", "--format", "json",
                   *where)
    assert took.returncode == 0, took.stderr
    assert [type(row["took"]) for row in _strict_json(took.stdout)] == [float, float]


def test_the_report_command_names_a_bracketed_path_as_it_is(bracketed_warehouse: Path, tmp_path: Path) -> None:
    target = tmp_path / "[b]" / "[mg] report.html"
    target.parent.mkdir()
    result = run_cli("report", "-o", str(target), "--nct", BRACKETED, "--warehouse", str(bracketed_warehouse))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"report written to {target}"


def test_a_sync_summary_shows_a_bracketed_scope_as_it_is(registry: FakeRegistry, tmp_path: Path) -> None:
    result = run_cli("sync", "--condition", "diabetes [/]", "--api-url", registry.url, "--request-interval", "0",
                     "-q", "--warehouse", str(tmp_path / "w"))
    assert result.returncode == 0, result.stderr
    assert "scope query.cond=diabetes [/])" in result.stdout
