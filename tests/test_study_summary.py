"""Table ``study_summary`` (issue 15's speed: ``aact.studies`` and ``aact.calculated_values`` read one
table, not ten): the views over it answer what the joins answer, and an earlier release's warehouse
gets its summary from SQL on the first writing command, equal to what ``flatten`` gives."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import summary
from pipeline.flatten import flatten
from pipeline.parse import parse_record
from pipeline.registry.fake_server import FakeRegistry
from tests.conftest import STUDIES_DIR, copy_warehouse, fast_sync
from warehouse import Warehouse, catalog
from warehouse import summary as stored_summary
from warehouse.manifest import Manifest
from warehouse.store import RunWriter

pytestmark = pytest.mark.usefixtures("prefect_api")
VIEWS = ("studies", "calculated_values")
RECORD = sorted(STUDIES_DIR.glob("NCT*.json"))[0]


def aact_rows(root: Path, manifest: Manifest, view: str, as_of: str | None) -> list[tuple[Any, ...]]:
    """Every row of ``aact.<view>`` as the catalog of ``manifest`` defines it, sorted."""
    con = duckdb.connect()
    try:
        catalog.build(con, root, manifest)
        if as_of:
            con.execute(f"SET VARIABLE as_of = DATE '{as_of}'")
        return sorted(con.execute(f"SELECT * FROM aact.{view}").fetchall(), key=repr)
    finally:
        con.close()


def without_summary(manifest: Manifest) -> Manifest:
    meta = {k: v for k, v in manifest.meta.items() if k != stored_summary.SUMMARY_KEY}
    return Manifest(manifest.entries, meta, manifest.generation)


def test_the_views_over_the_summary_answer_what_the_joins_answer(loaded_warehouse: Path) -> None:
    manifest = Warehouse(loaded_warehouse).manifest()
    assert stored_summary.is_complete(manifest)  # a warehouse begun by this release
    with Warehouse(loaded_warehouse).connect() as con:  # days on which a quarter, half, most were valid
        days = [str(d) for (d,) in con.execute(
            "SELECT unnest(quantile_disc(valid_from, [0.25, 0.5, 0.9])) FROM study_versions").fetchall()]
    for view in VIEWS:
        for day in (None, *days):
            fast = aact_rows(loaded_warehouse, manifest, view, day)
            joined = aact_rows(loaded_warehouse, without_summary(manifest), view, day)
            assert fast == joined, (view, day)
            assert len(fast) > (0 if day else 300)


def test_the_summary_views_are_used_only_when_every_version_has_its_row(loaded_warehouse: Path) -> None:
    manifest = Warehouse(loaded_warehouse).manifest()
    plan = "\n".join(catalog.plan_catalog(loaded_warehouse, manifest))
    joined = "\n".join(catalog.plan_catalog(loaded_warehouse, without_summary(manifest)))
    assert "raw_study_summary AS ss" in plan and "registry_dates AS rd" not in plan
    assert "raw_study_summary AS ss" not in joined and "registry_dates AS rd" in joined


def as_before_the_summary(root: Path) -> None:
    """Rewrite a warehouse into what a release before ``study_summary`` left: no such rows, no mark."""
    store = Warehouse(root)
    run = RunWriter(store, "20000101T000000Z-oldrel", without_summary(store.manifest()))
    run.commit(replace=frozenset({"study_summary"}))


def summary_table(con: duckdb.DuckDBPyConnection) -> pa.Table:
    return con.sql("SELECT * FROM raw_study_summary ORDER BY nct_id, version").to_arrow_table()


def test_an_earlier_warehouse_gets_its_summary_on_the_first_write_equal_to_what_flatten_gives(
        loaded_warehouse: Path, tmp_path: Path, records: list[dict[str, Any]]) -> None:
    root = copy_warehouse(loaded_warehouse, tmp_path / "wh")
    with Warehouse(root).connect() as con:
        from_flatten = summary_table(con)
        before = {view: con.execute(f"SELECT * FROM aact.{view} ORDER BY nct_id").fetchall() for view in VIEWS}
    assert from_flatten.num_rows == len(records)
    as_before_the_summary(root)
    assert not stored_summary.is_complete(Warehouse(root).manifest())
    with Warehouse(root).connect() as con:  # readers answer the same through the joins
        assert con.execute("SELECT count(*) FROM raw_study_summary").fetchone() == (0,)
        assert {view: con.execute(f"SELECT * FROM aact.{view} ORDER BY nct_id").fetchall() for view in VIEWS} == before

    with FakeRegistry(records).start() as registry:
        result = fast_sync(registry, root, full=True)  # the first writing command
    assert result["versions_written"] == 0
    store = Warehouse(root)
    assert stored_summary.is_complete(store.manifest())
    with store.connect() as con:
        assert summary_table(con) == from_flatten
        migrations = con.execute("SELECT params FROM sync_runs WHERE mode = 'migrate'").fetchall()
        assert [orjson.loads(p)["versions"] for (p,) in migrations] == [len(records)]
        assert {view: con.execute(f"SELECT * FROM aact.{view} ORDER BY nct_id").fetchall() for view in VIEWS} == before
        assert con.execute("SELECT count(*) FROM duckdb_views() WHERE schema_name = 'aact' AND view_name = "
                           "'studies' AND contains(sql, 'raw_study_summary AS ss')").fetchall() == [(1,)]

    with FakeRegistry(records).start() as registry:
        fast_sync(registry, root, full=True)  # already filled: no second migration
    with Warehouse(root).connect() as con:
        assert con.execute("SELECT count(*) FROM sync_runs WHERE mode = 'migrate'").fetchone() == (1,)


@settings(max_examples=60, deadline=None)
@given(countries=st.lists(st.sampled_from([None, "United States", "Guam", "France", "Canada"]), max_size=5),
       events=st.lists(st.tuples(st.sampled_from(["serious", "other"]), st.sampled_from([None, "EG000"]),
                                 st.one_of(st.none(), st.integers(0, 50))), max_size=6),
       types=st.lists(st.sampled_from(["primary", "secondary", "other"]), max_size=6))
def test_the_counts_follow_sql_aggregates_over_the_same_rows(countries: list[str | None],
                                                            events: list[tuple[str, str | None, int | None]],
                                                            types: list[str]) -> None:
    """``summary_row`` (Python, new versions) and ``COUNTS`` (SQL, older versions) agree on any rows,
    NULLs and empty lists included (a sum over nothing is NULL, a count 0)."""
    rows = flatten(parse_record(orjson.loads(RECORD.read_bytes())).study)
    rows["locations"] = {"country": countries}
    rows["adverse_events"] = {"kind": [e[0] for e in events], "group_id": [e[1] for e in events],
                              "num_affected": [e[2] for e in events]}
    rows["outcomes"] = {"outcome_type": types}
    python = summary.summary_row(rows)
    con = duckdb.connect()
    try:
        con.register("locations", pa.table({"country": pa.array(countries, pa.string())}))
        con.register("adverse_events", pa.table({
            "kind": pa.array([e[0] for e in events], pa.string()),
            "group_id": pa.array([e[1] for e in events], pa.string()),
            "num_affected": pa.array([e[2] for e in events], pa.int32())}))
        con.register("outcomes", pa.table({"outcome_type": pa.array(types, pa.string())}))
        for column, table, aggregate in summary.COUNTS:
            if table in ("locations", "adverse_events", "outcomes"):
                (value,) = con.execute(f"SELECT {aggregate} FROM {table}").fetchone() or (None,)
                assert python[column] == [value], column
    finally:
        con.close()

