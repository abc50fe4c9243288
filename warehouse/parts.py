"""A run's Parquet files: staged by the run's writer itself, or as parts by workers (one per shard).

Workers of a bulk load (other processes, or Dask workers that see the same filesystem) write a
shard's rows into the run's directory with ``PartWriter``; the run's writer adopts the finished
parts at commit. Until then no catalog lists them, so nobody sees them, and a failed run deletes
them with the rest of its directory.
"""

from __future__ import annotations

import os
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.versioning import BatchPlan, RunContext
from warehouse.catalog import fsync_path
from warehouse.rows import plan_tables
from warehouse.tables import TABLES

# Whole JSON documents: dictionary encoding never pays and min/max statistics of them are useless.
LARGE_TEXT_COLUMNS = frozenset({"raw"})


@dataclass(frozen=True)
class StagedFile:
    """A finished Parquet file of a run: ``name`` inside the run's directory."""

    table: str
    name: str
    rows: int


class TableFiles:
    """One Parquet file per table, appended to batch by batch (memory: one batch)."""

    def __init__(self, directory: Path, suffix: str = "") -> None:
        self.dir = directory
        self.suffix = suffix
        self._writers: dict[str, pq.ParquetWriter] = {}
        self.rows: dict[str, int] = {}

    def file_name(self, table: str) -> str:
        return f"{table}{self.suffix}.parquet"

    def append(self, table: str, rows: pa.Table) -> None:
        if rows.num_rows == 0:
            return
        schema = TABLES[table]
        if table not in self._writers:
            plain = [f.name for f in schema if f.name not in LARGE_TEXT_COLUMNS]
            self._writers[table] = pq.ParquetWriter(
                self.dir / self.file_name(table), schema, compression="zstd",
                use_dictionary=plain, write_statistics=plain)
        self._writers[table].write_table(rows.cast(schema) if rows.schema != schema else rows)
        self.rows[table] = self.rows.get(table, 0) + rows.num_rows

    def append_plan(self, plan: BatchPlan, ctx: RunContext) -> None:
        for table, rows in plan_tables(plan, ctx).items():
            self.append(table, rows)

    def close(self) -> list[StagedFile]:
        """Finish every file and make it durable."""
        staged = []
        for table, writer in self._writers.items():
            writer.close()
            path = self.dir / self.file_name(table)
            fsync_path(path)
            staged.append(StagedFile(table, path.name, self.rows[table]))
        self._writers.clear()
        return staged

    def abort(self) -> None:
        for writer in self._writers.values():
            with suppress(Exception):  # best effort: the run's directory is deleted next
                writer.close()
        self._writers.clear()


class PartWriter(TableFiles):
    """A shard's part of a run: ``<table>.part-<key>.parquet`` in the run's directory."""

    def __init__(self, run_dir: str | os.PathLike[str], key: str) -> None:
        super().__init__(Path(run_dir), f".part-{key}")
