"""One run being written: stage Parquet files, read the committed state it builds on, commit atomically."""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import WarehouseError
from pipeline.versioning import BatchPlan, Head, RunContext
from warehouse import catalog, catalog_file, committing
from warehouse import manifest as manifests
from warehouse.crashpoints import crashpoint
from warehouse.heads import HEADS_SQL, HeadIndex, to_dict
from warehouse.manifest import Generation, Manifest, ManifestEntry
from warehouse.markers import COMMITTED_MARKER, write_marker
from warehouse.parts import PendingRows, StagedFile, new_parquet_writer, one_row_per_study
from warehouse.rows import plan_tables
from warehouse.tables import TABLES, version_keyed_tables

if TYPE_CHECKING:
    from warehouse.checkpoints import Checkpoint
    from warehouse.store import Warehouse

logger = logging.getLogger("trialsync.warehouse")

__all__ = ["COMMITTED_MARKER", "RUNS_DIR", "RunWriter"]

RUNS_DIR = "runs"


class RunWriter:
    """Stages one run's Parquet files; ``commit`` publishes them all at once."""

    def __init__(self, warehouse: Warehouse, run_id: str, manifest: Manifest,
                 log: list[Generation] | None = None, *, base: Checkpoint | None = None,
                 before: duckdb.DuckDBPyConnection | None = None) -> None:
        """``log``: the committed generations (after ``base``, a checkpoint, when given; read here when
        not given); the new catalog keeps a copy of each. ``before``: a DuckDB from ``open_state(root,
        manifest)``, which the run then owns."""
        self.warehouse = warehouse
        self.run_id = run_id
        self.manifest = manifest
        self.log = list(log) if log is not None else warehouse.log()
        self.base = base if log is not None else None
        self.dir = warehouse.root / RUNS_DIR / run_id
        self.dir.mkdir(parents=True, exist_ok=False)
        self._writers: dict[str, pq.ParquetWriter] = {}
        self._pending = PendingRows()
        self._sealed: set[str] = set()
        self._rows: dict[str, int] = {}
        self._adopted: list[StagedFile] = []
        self.committed = False
        self.published: Generation | None = None  # the generation this run committed
        # One in-process DuckDB for every view build of the run (the state before it, its staged
        # states, the new catalog), so each Parquet footer is read once per run, not once per build.
        self._db: duckdb.DuckDBPyConnection | None = before
        self._before_built = before is not None
        self._attached = 0
        self._before_lock = threading.Lock()

    def _database(self) -> duckdb.DuckDBPyConnection:
        """The run's DuckDB (call with ``_before_lock`` held)."""
        if self._db is None:
            self._db = catalog_file.metadata_cached(duckdb.connect())
        return self._db

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor of the run's DuckDB, without views: what it reads, the commit's build finds cached."""
        with self._before_lock:
            return self._database().cursor()

    def before(self) -> duckdb.DuckDBPyConnection:
        """A cursor over the committed state this run builds on. The writer lock holds that state still,
        so its views are built once per run, not per question (a build binds every view)."""
        with self._before_lock:
            db = self._database()
            if not self._before_built:
                _build_state(db, self.warehouse.root, self.manifest)
                self._before_built = True
            return db.cursor()

    @contextmanager
    def _attached_catalog(self, target: str = ":memory:", options: str = "",
                          ) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor of the run's DuckDB whose own catalog is ``target`` (attached for the block)."""
        with self._before_lock:
            db = self._database()
            self._attached += 1
            name = f"build_{self._attached}"
            db.execute(f"ATTACH '{target.replace(chr(39), chr(39) * 2)}' AS {name}{options}")
            cursor = db.cursor()
        try:
            cursor.execute(f"USE {name}")
            yield cursor
        finally:
            cursor.close()
            with self._before_lock:
                db.execute(f"DETACH {name}")

    def _close_before(self) -> None:
        with self._before_lock:
            if self._db is not None:
                self._db.close()
                self._db = None
                self._before_built = False

    @property
    def rows(self) -> dict[str, int]:
        """Rows staged per table: the run's own files and the adopted parts."""
        rows = dict(self._rows)
        for part in self._adopted:
            rows[part.table] = rows.get(part.table, 0) + part.rows
        return rows

    def append(self, table: str, rows: pa.Table) -> None:
        if rows.num_rows == 0:
            return
        if table in self._sealed:
            raise WarehouseError(f"table {table} is sealed for run {self.run_id}")
        schema = TABLES[table]
        for due, data in self._pending.add(table, rows.cast(schema) if rows.schema != schema else rows):
            self._write(due, data)
        self._rows[table] = self._rows.get(table, 0) + rows.num_rows
        crashpoint("parquet-written")

    def _write(self, table: str, rows: pa.Table) -> None:
        if table not in self._writers:
            self._writers[table] = new_parquet_writer(self.dir / f"{table}.parquet", table)
        self._writers[table].write_table(rows)

    def append_batch(self, table: str, batch: pa.RecordBatch) -> None:
        self.append(table, pa.Table.from_batches([batch]))

    def append_batches(self, table: str, batches: Iterable[pa.RecordBatch]) -> None:
        """A stream of batches (e.g. a reader over many files, a batch per file); ``PendingRows``
        coalesces them into row groups."""
        for batch in batches:
            self.append_batch(table, batch)

    def append_rows(self, table: str, rows: list[dict[str, Any]]) -> None:
        if rows:
            self.append(table, pa.Table.from_pylist(rows, schema=TABLES[table]))

    def seal(self, table: str) -> None:
        """No more rows for ``table`` in this run; its staged file becomes readable (``staged()``)."""
        if table in self._pending.tables():
            self._write(table, self._pending.take(table))
        if table in self._writers and table not in self._sealed:
            self._writers[table].close()
            if table == "run_studies":  # a study met twice in the run: one row, at the version it ended at
                self._rows[table] = one_row_per_study(self.dir / f"{table}.parquet")
        self._sealed.add(table)

    @contextmanager
    def staged(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection whose views cover the committed files plus this run's sealed ones (and the part
        files workers wrote for it, see ``adopt``), for the ``with`` block."""
        with self._attached_catalog() as cursor:
            catalog.build(cursor, self.warehouse.root, self.staged_manifest(), analyses=False, children=False)
            yield cursor

    def staged_manifest(self) -> Manifest:
        """The committed files plus this run's sealed and adopted ones (what ``staged`` reads)."""
        rel = self.dir.relative_to(self.warehouse.root)
        entries = [self._entry(t) for t in self._sealed if t in self._writers]
        entries += [self._file(p.table, str(rel / p.name)) for p in self._adopted]
        return self.manifest.plus(entries)

    def _entry(self, table: str) -> ManifestEntry:
        return self._file(table, str((self.dir / f"{table}.parquet").relative_to(self.warehouse.root)))

    def _file(self, table: str, path: str) -> ManifestEntry:
        """A file of this run: written by ``new_parquet_writer``, so of exactly the table's schema."""
        return ManifestEntry(self.run_id, table, path, schema=catalog.schema_fingerprint(table))

    def append_plan(self, plan: BatchPlan, ctx: RunContext) -> None:
        for table, rows in plan_tables(plan, ctx).items():
            self.append(table, rows)

    def adopt(self, parts: list[StagedFile]) -> None:
        """Finished part files that workers wrote into this run's directory (see ``PartWriter``)."""
        for part in parts:
            if not (self.dir / part.name).is_file() or part.table not in TABLES:
                raise WarehouseError(f"run {self.run_id}: part {part.name} is missing")
        self._adopted.extend(parts)

    def head_index(self) -> HeadIndex:
        """The latest committed version of every study, columnar (see ``warehouse.heads``)."""
        with self.before() as con:
            return HeadIndex(con.sql(HEADS_SQL).to_arrow_table())

    def rewrite_studies(self, con: duckdb.DuckDBPyConnection, moves: pa.Table) -> None:
        """Copy the committed rows of rewritten studies into this run, renumbered.

        ``moves`` (nct_id, old_version, new_version, registry_version, registry_updated) covers every
        stored version of each study; ``study_versions`` rows also take the registry version and date
        given (a stored version found in the registry's history). The caller lists the studies in
        ``study_rewrites`` so the catalog hides their older rows.
        """
        con.register("_moves", moves)
        try:
            for table in version_keyed_tables():
                self.append(table, con.sql(_renumber_sql(table)).to_arrow_table())
        finally:
            con.unregister("_moves")

    def heads(self) -> dict[str, Head]:
        """The latest committed version of every study, as a dict (small warehouses, tests)."""
        return to_dict(self.head_index().table)

    def watermark(self, scope: str) -> Any:
        with self.before() as con:
            row = con.execute(
                f"SELECT max(watermark) FROM raw_sync_runs WHERE scope = ? AND {SYNCED}", [scope]
            ).fetchone()
        return row[0] if row else None

    def news_from(self, started: datetime) -> Any:
        """The day the warehouse's newest successful run began (None before its first), no later than
        this run's ``started`` (a run made while the host's clock was ahead began before this one): in a
        scope's first run, a study first posted since then is news (``warehouse.pairs.baseline_runs``)."""
        with self.before() as con:
            row = con.execute(f"SELECT CAST(timezone('UTC', max(least(started_at, CAST(? AS TIMESTAMPTZ)))) "
                              f"AS DATE) FROM raw_sync_runs WHERE {SYNCED}", [started]).fetchone()
        return row[0] if row else None

    def has_runs(self, scope: str) -> bool:
        with self.before() as con:
            row = con.execute(f"SELECT count(*) FROM raw_sync_runs WHERE scope = ? AND {SYNCED}",
                              [scope]).fetchone()
        return bool(row and row[0])

    def scope_members(self, scope: str) -> set[str]:
        """Studies seen by earlier successful runs of ``scope`` and not recorded as leaving it since
        (``scope_exits``: a full run found them gone from the scope or from the registry). "Since" is by
        commit order, not by ``started_at``: an exit recorded by a run whose clock was ahead is not newer
        than the study's return to the scope in a later run (it was dropped, and never retired)."""
        with self.before() as con, commit_order(con, self.warehouse.root) as position:
            rows = con.execute(SCOPE_MEMBERS_SQL.format(position=position), [scope, scope]).fetchall()
        return {r[0] for r in rows}

    def commit(self, meta: dict[str, str] | None = None, *, replace: frozenset[str] = frozenset(),
               merges: tuple[str, ...] = ()) -> None:
        """Make the run's files durable, then publish the next manifest generation: the commit point.

        Before it, everything the catalog will list is fsynced (the files, ``runs/<id>/``, ``runs/``)
        and the new catalog is complete beside the old one. Publishing is a compare-and-swap on the
        generation (refused when another writer committed meanwhile). After it nothing undoes the run:
        if putting the catalog in place fails, the next command rewrites it from the manifest.

        ``replace`` names tables whose earlier files this run supersedes (``rederive``'s changes);
        ``merges`` runs whose files this run's replace in place (``warehouse.autocompact``).
        """
        for table in [*self._pending.tables(), *self._writers]:
            self.seal(table)
        crashpoint("files-closed")
        root = self.warehouse.root
        rel = self.dir.relative_to(root)
        entries = []
        for table in self._writers:
            catalog_file.fsync_path(self.dir / f"{table}.parquet")
            entries.append(manifests.measure(root, self._entry(table)))
        entries += [manifests.measure(root, self._file(p.table, str(rel / p.name))) for p in self._adopted]
        catalog_file.fsync_path(self.dir)
        catalog_file.fsync_path(self.dir.parent)
        gen = Generation(self.manifest.generation + 1, self.run_id, tuple(entries), tuple(sorted(replace)),
                         {**self.manifest.meta, **(meta or {}), "last_run_id": self.run_id},  # the whole meta
                         datetime.now(UTC).isoformat(), tuple(merges))
        try:
            tmp = catalog_file.prepare_catalog(root, self.manifest.then(gen), [*self.log, gen], tag=self.run_id,
                                               attach=self._attached_catalog, previous=self.manifest)
        finally:
            self._close_before()
        try:
            manifests.publish(root, gen)  # the commit point
        except BaseException:
            # A signal (KeyboardInterrupt) can land after the link, inside publish: then the run is
            # committed, and abort() must not delete what the manifest now lists.
            if manifests.is_published(root, gen):
                self.committed = True
                self.published = gen
                committing.passed(self.run_id)
                self._after_commit_point(gen, tmp)  # its marker and catalog, then the interrupt goes on
            else:
                tmp.unlink(missing_ok=True)
            raise
        self.committed = True
        self.published = gen
        crashpoint("manifest-published")
        self._after_commit_point(gen, tmp)

    def _after_commit_point(self, gen: Generation, tmp: Path) -> None:
        try:
            write_marker(self.dir, gen)  # a copy of the generation that stays with the run's files
        except Exception as exc:  # committed: report, never undo; the catalog is still put in place
            logger.warning("run %s is committed, but writing its %s marker failed (%s); the manifest file and "
                           "the catalog hold its generation", self.run_id, COMMITTED_MARKER, exc)
        try:
            catalog_file.install_catalog(self.warehouse.root, tmp)
        except Exception as exc:  # committed: report, never undo (the next command rewrites the catalog)
            logger.warning("run %s is committed, but putting its catalog in place failed (%s); the next command "
                        "rewrites it from the manifest", self.run_id, exc)

    def abort(self) -> None:
        self._close_before()
        for table, writer in self._writers.items():
            if table not in self._sealed:
                with suppress(Exception):  # best effort: the files are deleted next
                    writer.close()
        shutil.rmtree(self.dir, ignore_errors=True)


# Runs that fetched a scope. A ``rederive`` run (scope "all") fetched nothing: it must not make the
# first whole-registry sync look like a follow-up run (whose new studies would all be study_added).
SYNCED = "status = 'succeeded' AND mode IN ('full', 'incremental', 'bulk')"

# A study looked up by id in the run that found it gone from the scope is seen and exits in the same
# run: the exit wins (strictly later sighting needed to be a member again).
SCOPE_MEMBERS_SQL = f"""
WITH runs AS (SELECT s.run_id, {{position}} AS at FROM raw_sync_runs AS s LEFT JOIN _commit_order AS o USING (run_id)
              WHERE s.scope = ? AND {SYNCED} AND {{position}} IS NOT NULL),
     seen AS (SELECT r.nct_id, max(runs.at) AS at FROM raw_run_studies r JOIN runs USING (run_id)
              GROUP BY r.nct_id),
     exits AS (SELECT e.nct_id, max(runs.at) AS at FROM raw_scope_exits e JOIN runs USING (run_id)
               WHERE e.scope = ? GROUP BY e.nct_id)
SELECT seen.nct_id FROM seen LEFT JOIN exits USING (nct_id) WHERE exits.at IS NULL OR seen.at > exits.at"""


@contextmanager
def commit_order(con: duckdb.DuckDBPyConnection, root: Path) -> Iterator[str]:
    """Registers ``_commit_order`` (run_id, position: the run's first manifest generation) on ``con`` and
    yields the SQL of a ``raw_sync_runs AS s`` row's place in the order (joined ``USING (run_id)`` as
    ``o``): runs are ordered by commit, not by a clock that may have been wrong. With a damaged manifest
    (``check`` names it), by ``started_at``."""
    positions: dict[str, int] = {}
    try:
        for number, run_id in manifests.run_order(root):
            positions.setdefault(run_id, number)
    except manifests.ManifestDamaged:
        positions = {}
    con.register("_commit_order", pa.table({"run_id": pa.array(list(positions), pa.string()),
                                             "position": pa.array(list(positions.values()), pa.int64())}))
    try:
        yield "o.position" if positions else "epoch_us(s.started_at)"
    finally:
        con.unregister("_commit_order")


def open_state(root: Path, manifest: Manifest) -> duckdb.DuckDBPyConnection:
    """A DuckDB (footers cached) with the writer's views over ``manifest``'s files. Binding them reads
    every committed file's Parquet footer (``union_by_name``), so a damaged one raises ``duckdb.Error``
    here, before a run has written anything."""
    db = catalog_file.metadata_cached(duckdb.connect())
    try:
        _build_state(db, root, manifest)
    except BaseException:
        db.close()
        raise
    return db


def _build_state(db: duckdb.DuckDBPyConnection, root: Path, manifest: Manifest) -> None:
    catalog.ensure_schema_files(root)
    catalog.build(db, root, manifest, analyses=False, children=False, every_footer=True)


def _renumber_sql(table: str) -> str:
    columns = []
    for name in TABLES[table].names:
        if name == "version":
            columns.append("m.new_version AS version")
        elif table == "study_versions" and name in ("registry_version", "registry_updated"):
            columns.append(f"coalesce(m.{name}, t.{name}) AS {name}")
        else:
            columns.append(f"t.{name}")
    return (f"SELECT {', '.join(columns)} FROM raw_{table} AS t "
            "JOIN _moves AS m ON m.nct_id = t.nct_id AND m.old_version = t.version ORDER BY t.nct_id, m.new_version")
