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
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.versioning import BatchPlan, RunContext
from warehouse.catalog_file import fsync_path
from warehouse.rows import plan_tables
from warehouse.tables import TABLES

# Whole JSON documents: dictionary encoding never pays and min/max statistics of them are useless.
LARGE_TEXT_COLUMNS = frozenset({"raw"})

ROW_GROUP_ROWS = 100_000
ROW_GROUP_BYTES = 64 << 20  # of Arrow memory (a study_versions row holds its raw JSON)
PENDING_BYTES = 32 << 20  # what one writer holds back, over all its tables


def new_parquet_writer(path: Path, table: str) -> pq.ParquetWriter:
    schema = TABLES[table]
    plain = [f.name for f in schema if f.name not in LARGE_TEXT_COLUMNS]
    return pq.ParquetWriter(path, schema, compression="zstd", use_dictionary=plain, write_statistics=plain)


class PendingRows:
    """Rows held back per table until they fill a row group (``ROW_GROUP_ROWS`` or ``ROW_GROUP_BYTES``),
    within ``PENDING_BYTES`` over all tables (past it, the biggest table's rows go out).

    Written batch by batch, a 600,000-study load gave each file 12 row groups of a few rows: 136 MB of
    footers, which every view build reads and DuckDB's metadata cache held as ~0.9 GB."""

    def __init__(self) -> None:
        self._tables: dict[str, list[pa.Table]] = {}
        self._rows: dict[str, int] = {}
        self._bytes: dict[str, int] = {}

    def add(self, table: str, rows: pa.Table) -> list[tuple[str, pa.Table]]:
        """Hold ``rows`` (already of the table's schema); returns what is to be written now."""
        self._tables.setdefault(table, []).append(rows)
        self._rows[table] = self._rows.get(table, 0) + rows.num_rows
        self._bytes[table] = self._bytes.get(table, 0) + rows.nbytes
        due = []
        if self._rows[table] >= ROW_GROUP_ROWS or self._bytes[table] >= ROW_GROUP_BYTES:
            due.append((table, self.take(table)))
        while self._bytes and sum(self._bytes.values()) > PENDING_BYTES:
            biggest = max(self._bytes, key=self._bytes.__getitem__)
            due.append((biggest, self.take(biggest)))
        return due

    def take(self, table: str) -> pa.Table:
        """The rows held for ``table`` as one table (empty if none), no longer held."""
        parts = self._tables.pop(table, [])
        self._rows.pop(table, None)
        self._bytes.pop(table, None)
        return pa.concat_tables(parts) if parts else TABLES[table].empty_table()

    def tables(self) -> list[str]:
        return list(self._tables)


def one_row_per_study(path: Path) -> int:
    """Make a finished ``run_studies`` file hold one row per study, at the highest version the run
    saw it at (the version the run ended at: a run's versions of a study only grow), and return its
    rows. A study can be met twice in one run: listed twice in a bulk zip, or on two pages of a
    moving listing (once unchanged, once at a new version); each sighting was a row, and readers
    that join ``run_studies`` to ``study_versions`` then saw the study twice. Costs one read of the
    ``nct_id`` column; the file is rewritten (atomically) only when a study is in it twice."""
    ids = pq.read_table(path, columns=["nct_id"]).column("nct_id")
    if pc.count_distinct(ids).as_py() == len(ids):
        return len(ids)
    rows = pq.read_table(path)
    # use_threads=False keeps the groups in the order each study was first met
    kept = rows.group_by(["run_id", "nct_id"], use_threads=False).aggregate([("version", "max")])
    kept = kept.rename_columns(["run_id", "nct_id", "version"]).select(TABLES["run_studies"].names)
    tmp = path.with_name(path.name + ".tmp")
    writer = new_parquet_writer(tmp, "run_studies")
    writer.write_table(kept.cast(TABLES["run_studies"]))
    writer.close()
    fsync_path(tmp)
    os.replace(tmp, path)
    return kept.num_rows


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
        self._pending = PendingRows()
        self.rows: dict[str, int] = {}

    def file_name(self, table: str) -> str:
        return f"{table}{self.suffix}.parquet"

    def append(self, table: str, rows: pa.Table) -> None:
        if rows.num_rows == 0:
            return
        schema = TABLES[table]
        for due, data in self._pending.add(table, rows.cast(schema) if rows.schema != schema else rows):
            self._write(due, data)
        self.rows[table] = self.rows.get(table, 0) + rows.num_rows

    def _write(self, table: str, rows: pa.Table) -> None:
        if table not in self._writers:
            self._writers[table] = new_parquet_writer(self.dir / self.file_name(table), table)
        self._writers[table].write_table(rows)

    def append_plan(self, plan: BatchPlan, ctx: RunContext) -> None:
        for table, rows in plan_tables(plan, ctx).items():
            self.append(table, rows)

    def close(self) -> list[StagedFile]:
        """Finish every file and make it durable."""
        for table in self._pending.tables():
            self._write(table, self._pending.take(table))
        staged = []
        for table, writer in self._writers.items():
            writer.close()
            path = self.dir / self.file_name(table)
            if table == "run_studies":
                self.rows[table] = one_row_per_study(path)
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
