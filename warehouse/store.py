"""Open a warehouse, read its committed state, and write one run atomically.

One writer at a time (a lock file with a timeout); any number of readers, never blocked: the
writer never opens ``warehouse.duckdb`` for writing, it replaces it (see ``catalog``).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from pipeline.errors import WarehouseBusy, WarehouseError
from pipeline.versioning import BatchPlan, Head, RunContext
from warehouse import catalog
from warehouse.catalog import CATALOG_NAME, Manifest, ManifestEntry
from warehouse.heads import HEADS_SQL, HeadIndex, to_dict
from warehouse.parts import StagedFile, TableFiles
from warehouse.tables import TABLES

LOCK_NAME = ".writer.lock"
RUNS_DIR = "runs"


class Warehouse:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()

    @property
    def catalog_path(self) -> Path:
        return self.root / CATALOG_NAME

    def exists(self) -> bool:
        return self.catalog_path.exists()

    def manifest(self) -> Manifest:
        try:
            return catalog.read_manifest(self.root)
        except duckdb.Error as exc:
            raise WarehouseError(f"cannot read {self.catalog_path}: {exc}") from None

    # -- readers -----------------------------------------------------------------------------
    def connect(self) -> duckdb.DuckDBPyConnection:
        """A read-only connection with every view; works even if the directory was moved."""
        if not self.exists():
            raise WarehouseError(f"no warehouse at {self.root} (run `trialsync sync` first)")
        con = duckdb.connect(str(self.catalog_path), read_only=True)
        stored_root = con.execute("SELECT value FROM _meta WHERE key = 'root'").fetchone()
        if stored_root and stored_root[0] == str(self.root):
            return con
        # The directory moved since the last commit: rebuild the views in memory for this reader.
        manifest = self.manifest()
        con.close()
        mem = duckdb.connect()
        catalog.build(mem, self.root, manifest)
        return mem

    def committed(self) -> duckdb.DuckDBPyConnection:
        """An in-memory connection with the views over the committed files (for the writer)."""
        mem = duckdb.connect()
        catalog.ensure_schema_files(self.root)
        catalog.build(mem, self.root, self.manifest() if self.exists() else Manifest())
        return mem

    # -- the writer --------------------------------------------------------------------------
    @contextmanager
    def writer(self, run_id: str, *, lock_timeout: float = 30.0) -> Iterator[RunWriter]:
        """Hold the writer lock for one run; commit explicitly, anything else rolls back."""
        self.root.mkdir(parents=True, exist_ok=True)
        with _exclusive_lock(self.root / LOCK_NAME, run_id, lock_timeout):
            manifest = self.manifest()
            self._remove_uncommitted(manifest)
            run = RunWriter(self, run_id, manifest)
            try:
                yield run
            finally:
                if not run.committed:
                    run.abort()

    def _remove_uncommitted(self, manifest: Manifest) -> None:
        """Leftovers of a crashed run: its files were never in a catalog, so nobody sees them."""
        runs = self.root / RUNS_DIR
        if runs.is_dir():
            for child in runs.iterdir():
                if child.name not in manifest.run_ids:
                    shutil.rmtree(child, ignore_errors=True)
        for leftover in self.root.glob(f"{CATALOG_NAME}.tmp-*"):
            leftover.unlink(missing_ok=True)


class RunWriter:
    """Stages one run's Parquet files; ``commit`` publishes them all at once."""

    def __init__(self, warehouse: Warehouse, run_id: str, manifest: Manifest) -> None:
        self.warehouse = warehouse
        self.run_id = run_id
        self.manifest = manifest
        self.dir = warehouse.root / RUNS_DIR / run_id
        self.dir.mkdir(parents=True, exist_ok=False)
        self._files = TableFiles(self.dir)
        self._adopted: list[StagedFile] = []
        self.committed = False

    @property
    def rows(self) -> dict[str, int]:
        rows = dict(self._files.rows)
        for part in self._adopted:
            rows[part.table] = rows.get(part.table, 0) + part.rows
        return rows

    def append(self, table: str, rows: pa.Table) -> None:
        self._files.append(table, rows)

    def append_rows(self, table: str, rows: list[dict[str, Any]]) -> None:
        if rows:
            self.append(table, pa.Table.from_pylist(rows, schema=TABLES[table]))

    def append_plan(self, plan: BatchPlan, ctx: RunContext) -> None:
        self._files.append_plan(plan, ctx)

    def adopt(self, parts: list[StagedFile]) -> None:
        """Finished part files that workers wrote into this run's directory (see ``PartWriter``)."""
        for part in parts:
            if not (self.dir / part.name).is_file() or part.table not in TABLES:
                raise WarehouseError(f"run {self.run_id}: part {part.name} is missing")
        self._adopted.extend(parts)

    def head_index(self) -> HeadIndex:
        """The latest committed version of every study, columnar (see ``warehouse.heads``)."""
        with self.warehouse.committed() as con:
            return HeadIndex(con.sql(HEADS_SQL).to_arrow_table())

    def heads(self) -> dict[str, Head]:
        """The latest committed version of every study, as a dict (small warehouses, tests)."""
        return to_dict(self.head_index().table)

    def watermark(self, scope: str) -> Any:
        with self.warehouse.committed() as con:
            row = con.execute(
                "SELECT max(watermark) FROM raw_sync_runs WHERE scope = ? AND status = 'succeeded'", [scope]
            ).fetchone()
        return row[0] if row else None

    def commit(self, meta: dict[str, str] | None = None) -> None:
        """Close the run's files, make them durable, then swap in a catalog that lists them."""
        staged = self._files.close() + self._adopted
        rel = self.dir.relative_to(self.warehouse.root)
        entries = [ManifestEntry(self.run_id, part.table, str(rel / part.name)) for part in staged]
        manifest = self.manifest.plus(entries)
        manifest = Manifest(manifest.entries, {**manifest.meta, **(meta or {}), "last_run_id": self.run_id})
        catalog.write_catalog(self.warehouse.root, manifest, tag=self.run_id)
        self.committed = True

    def abort(self) -> None:
        self._files.abort()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def _exclusive_lock(path: Path, holder: str, timeout: float) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    other = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                    raise WarehouseBusy(
                        f"the warehouse {path.parent} is busy: a sync is running ({other}); "
                        f"waited {timeout:g}s"
                    ) from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"run {holder}, pid {os.getpid()}".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock

