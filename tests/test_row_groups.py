"""Row groups fill before they are written: a file's footer does not grow with the batches or pages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.registry.fake_server import FakeRegistry
from tests.conftest import fast_sync
from warehouse import parts
from warehouse.parts import PendingRows
from warehouse.tables import TABLES


def _rows(table: str, n: int) -> pa.Table:
    """``n`` rows of ``table``'s schema (every column null but the first, a text key)."""
    schema = TABLES[table]
    columns = [pa.array([f"NCT{i:08d}" for i in range(n)], schema.field(0).type) if j == 0
               else pa.nulls(n, schema.field(j).type) for j in range(len(schema))]
    return pa.Table.from_arrays(columns, schema=schema)


def test_rows_are_held_until_a_row_group_is_full() -> None:
    pending = PendingRows()
    assert pending.add("conditions", _rows("conditions", 10)) == []
    assert pending.add("conditions", _rows("conditions", 5)) == []
    assert pending.tables() == ["conditions"]
    held = pending.take("conditions")
    assert held.num_rows == 15 and held.schema == TABLES["conditions"]
    assert pending.tables() == [] and pending.take("conditions").num_rows == 0


def test_a_table_that_reaches_a_row_group_of_rows_goes_out_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parts, "ROW_GROUP_ROWS", 20)
    pending = PendingRows()
    assert pending.add("conditions", _rows("conditions", 12)) == []
    [(table, due)] = pending.add("conditions", _rows("conditions", 8))
    assert (table, due.num_rows) == ("conditions", 20) and pending.tables() == []


def test_past_the_memory_budget_the_biggest_tables_rows_go_out(monkeypatch: pytest.MonkeyPatch) -> None:
    small, big = _rows("conditions", 3), _rows("keywords", 300)
    monkeypatch.setattr(parts, "PENDING_BYTES", small.nbytes + big.nbytes - 1)
    pending = PendingRows()
    assert pending.add("conditions", small) == []
    due = pending.add("keywords", big)
    assert [(t, rows.num_rows) for t, rows in due] == [("keywords", 300)]
    assert pending.tables() == ["conditions"]


def test_a_sync_of_many_pages_writes_one_row_group_per_file(
        warehouse_dir: Path, records: list[dict[str, Any]], prefect_api: None) -> None:
    with FakeRegistry(records[:60]).start() as registry:
        summary = fast_sync(registry, warehouse_dir, page_size=10)
    assert summary["pages"] == 6
    files = sorted(warehouse_dir.glob("runs/*/*.parquet"))
    assert any(f.name == "study_versions.parquet" for f in files)
    assert {f.name: pq.ParquetFile(f).metadata.num_row_groups for f in files} == {f.name: 1 for f in files}
