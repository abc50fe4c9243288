"""The data dictionary (docs/data-dictionary.md) against a real warehouse: coverage, types, sources."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
import pytest

from tests.conftest import nct
from tests.datadict import Column, dictionary, values_at
from warehouse import Warehouse

pytestmark = pytest.mark.usefixtures("prefect_api")


def view_columns(con: duckdb.DuckDBPyConnection) -> dict[str, list[tuple[str, str]]]:
    rows = con.execute("""SELECT c.table_name, c.column_name, c.data_type FROM information_schema.columns c
        JOIN duckdb_views() v ON v.view_name = c.table_name AND v.schema_name = c.table_schema
        WHERE NOT v.internal AND c.table_schema = 'main' ORDER BY c.table_name, c.ordinal_position""").fetchall()
    out: dict[str, list[tuple[str, str]]] = {}
    for view, column, kind in rows:
        out.setdefault(view, []).append((column, kind))
    return out


def coverage_problems(actual: dict[str, list[tuple[str, str]]], documented: dict[str, list[Column]]) -> list[str]:
    """What the dictionary misses, or says and is no longer true. ``raw_<table>`` views are internal:
    their columns must be documented under the friendly view of the same name."""
    problems = []
    public = {view for view in actual if not view.startswith("raw_")}
    problems += [f"view {v} is not documented" for v in sorted(public - set(documented))]
    problems += [f"documented view {v} does not exist" for v in sorted(set(documented) - public)]
    for view in sorted(public & set(documented)):
        have = dict(actual[view])
        said = {c.name: c.type for c in documented[view]}
        problems += [f"{view}.{c} ({t}) is not documented" for c, t in actual[view] if c not in said]
        problems += [f"documented column {view}.{c} does not exist" for c in said if c not in have]
        problems += [f"{view}.{c} is {have[c]}, documented as {said[c]}" for c in said
                     if c in have and have[c] != said[c]]
    for view in sorted(v for v in actual if v.startswith("raw_")):
        said = {c.name for c in documented.get(view.removeprefix("raw_"), [])}
        problems += [f"{view}.{c} is not documented under {view.removeprefix('raw_')}"
                     for c, _ in actual[view] if c not in said]
    return problems


def test_every_view_and_column_is_documented_with_its_type(loaded_warehouse: Path) -> None:
    with Warehouse(loaded_warehouse).connect() as con:
        actual = view_columns(con)
        macros = {r[0] for r in con.execute(
            "SELECT function_name FROM duckdb_functions() WHERE NOT internal AND function_type LIKE '%macro%'"
        ).fetchall()}
    assert len(actual) > 40
    assert coverage_problems(actual, dictionary().views) == []
    assert set(dictionary().macros) == macros


def test_the_coverage_check_catches_undocumented_and_vanished_columns(loaded_warehouse: Path) -> None:
    with Warehouse(loaded_warehouse).connect() as con:
        actual = view_columns(con)
    documented = {view: list(columns) for view, columns in dictionary().views.items()}
    documented["locations"] = [c for c in documented["locations"] if c.name != "site_key"]
    documented["design"].append(Column("old_column", "VARCHAR", "gone", "*—*"))
    documented["eligibility"] = [Column(c.name, "INTEGER" if c.name == "sex" else c.type, c.meaning, c.source)
                                 for c in documented["eligibility"]]
    del documented["current_keywords"]
    actual["new_feature"] = [("feature_id", "BIGINT")]
    assert coverage_problems(actual, documented) == [
        "view current_keywords is not documented",
        "view new_feature is not documented",
        "documented column design.old_column does not exist",
        "eligibility.sex is VARCHAR, documented as INTEGER",
        "locations.site_key (VARCHAR) is not documented",
        "raw_locations.site_key is not documented under locations",
    ]


def _flat(value: Any) -> list[Any]:
    return [v for v in value if v is not None] if isinstance(value, list) else [] if value is None else [value]


def test_columns_hold_the_values_at_their_documented_json_paths(loaded_warehouse: Path,
                                                                  records: list[dict[str, Any]]) -> None:
    """Every column whose source is a plain JSON path holds exactly the values at that path, per study."""
    checked = 0
    with Warehouse(loaded_warehouse).connect() as con:
        for view, columns in dictionary().views.items():
            for column in columns:
                if not column.paths or column.name == "nct_id":
                    continue
                expected = Counter((nct(r), v) for r in records for p in column.paths for v in values_at(r, p))
                got = Counter((n, v) for n, value in con.execute(f'SELECT nct_id, "{column.name}" FROM {view}')
                              .fetchall() for v in _flat(value))
                assert got == expected, f"{view}.{column.name}: {column.source}"
                checked += 1
    assert checked > 150
