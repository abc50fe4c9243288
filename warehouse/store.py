"""Open a warehouse, read its committed state, and write one run atomically.

One writer at a time (a lock file with a timeout); any number of readers, never blocked: the
writer never opens ``warehouse.duckdb`` for writing, it replaces it (see ``catalog``).
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import UsageError, WarehouseBusy, WarehouseError
from pipeline.versioning import BatchPlan, Head, RunContext
from warehouse import catalog, migrations
from warehouse import manifest as manifests
from warehouse.catalog import CATALOG_NAME
from warehouse.check import read_state, refuse_if_damaged
from warehouse.crashpoints import crashpoint
from warehouse.heads import HEADS_SQL, HeadIndex, to_dict
from warehouse.manifest import Generation, Manifest, ManifestDamaged, ManifestEntry
from warehouse.parts import LARGE_TEXT_COLUMNS, StagedFile
from warehouse.rows import plan_tables
from warehouse.tables import TABLES, version_keyed_tables

LOCK_NAME = ".writer.lock"
MARKER_NAME = ".trialsync-warehouse"  # says "this directory is a warehouse": we may clean up in it
COMMITTED_MARKER = "_COMMITTED"  # in runs/<run_id>/ once the run's catalog is in place
RUNS_DIR = "runs"
SANDBOX_DIRS = (RUNS_DIR, "schema")  # what the views read; all a sandboxed reader may open

logger = logging.getLogger("trialsync.warehouse")


class Warehouse:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()

    @property
    def catalog_path(self) -> Path:
        return self.root / CATALOG_NAME

    def exists(self) -> bool:
        return self.catalog_path.exists() or manifests.head(self.root) > 0

    def log(self) -> list[Generation]:
        """Every committed generation, in commit order (``ManifestDamaged`` if one cannot be trusted)."""
        return manifests.read_log(self.root)

    def manifest(self) -> Manifest:
        """The committed state, from the manifest files; before their migration (or when the manifest
        directory is lost) from the catalog's own copy."""
        if manifests.head(self.root) or not self.catalog_path.exists():
            return manifests.fold(self.log())
        try:
            meta = catalog.catalog_meta(self.catalog_path)
            if "generation" not in meta:
                return catalog.read_legacy_manifest(self.catalog_path)
            return manifests.fold(catalog.read_catalog_log(self.catalog_path).values())
        except duckdb.Error as exc:
            raise WarehouseError(f"cannot read {self.catalog_path}: {str(exc).splitlines()[0]}") from None

    def _best_manifest(self) -> Manifest:
        """For readers of a damaged warehouse: the manifest files, where one is damaged the catalog's copy."""
        try:
            return self.manifest()
        except ManifestDamaged:
            return manifests.fold(read_state(self.root).best())

    def refresh_catalog(self) -> bool:
        """Call with the writer lock held. Migrate a catalog written before the manifest moved beside
        it; rewrite a catalog that is behind the manifest (a crash or an error after a commit point) or
        that holds another directory's paths (the warehouse was copied or moved). A missing or
        corrupt catalog is left for ``repair``. Returns whether the catalog was rewritten."""
        if not self.catalog_path.exists():
            return False
        try:
            meta = catalog.catalog_meta(self.catalog_path)
        except duckdb.Error:
            return False
        if "generation" not in meta:
            return self._migrate() if not manifests.head(self.root) else False
        try:
            log = self.log()
        except ManifestDamaged:
            return False
        if not log or int(meta["generation"]) > log[-1].number:
            return False  # the manifest lost files the catalog knows: repair restores them
        if int(meta["generation"]) == log[-1].number and meta.get("root") == str(self.root):
            return False
        try:
            catalog.write_catalog(self.root, manifests.fold(log), log, tag="refresh")
        except duckdb.Error:  # a damaged file: readers build the views in memory, writers refuse
            return False
        return True

    def _migrate(self) -> bool:
        """One generation file per run of the legacy ``_manifest`` (in its commit order), measured now;
        the directory appears at once (renamed into place), so a crash leaves no half migration."""
        legacy = catalog.read_legacy_manifest(self.catalog_path)
        by_run: dict[str, list[ManifestEntry]] = {}
        for entry in legacy.entries:
            try:
                measured = manifests.measure(self.root, entry)
            except OSError:  # already missing: ``check`` reports it, ``repair`` rolls back past it
                measured = entry
            by_run.setdefault(entry.run_id, []).append(measured)
        runs = list(by_run.items()) or [("migrated", [])]
        log = [Generation(n, run_id, tuple(entries), (), dict(legacy.meta), "migrated")
               for n, (run_id, entries) in enumerate(runs, start=1)]
        staging = self.root / f"{manifests.MANIFEST_DIR}.tmp-migrate"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        for gen in log:
            (staging / manifests.generation_path(self.root, gen.number).name).write_bytes(gen.to_bytes())
            catalog.fsync_path(staging / manifests.generation_path(self.root, gen.number).name)
        catalog.fsync_path(staging)
        os.rename(staging, manifests.directory(self.root))
        catalog.fsync_path(self.root)
        catalog.write_catalog(self.root, manifests.fold(log), log, tag="migrate")
        return True

    def check_location(self, *, damage: bool = True) -> None:
        """Refuse to write into a directory that is not (or not yet) a warehouse: a sync deletes
        files it does not recognise under ``runs/`` and ``spool/``, so it must own the directory.
        ``damage``: also refuse a damaged warehouse (the quick check), before anything starts."""
        root = self.root
        if damage and root.is_dir() and self.exists():
            refuse_if_damaged(root)
        if root.exists() and not root.is_dir():
            raise UsageError(f"warehouse {root} exists and is not a directory")
        # Every sync takes the lock file before it creates anything else, so a directory without
        # catalog, marker or lock file was never a warehouse.
        if not root.is_dir() or any((root / name).exists() for name in (CATALOG_NAME, MARKER_NAME, LOCK_NAME)):
            return
        if any(root.iterdir()):
            raise UsageError(f"{root} is not a trialsync warehouse and is not empty; "
                             "give --warehouse a new or empty directory")

    # -- readers -----------------------------------------------------------------------------
    def connect(self, *, sandbox: bool = False) -> duckdb.DuckDBPyConnection:
        """A read-only connection with every view over the committed files of *this* directory.

        A catalog that is behind the manifest or was copied or moved here is rewritten first when no
        writer holds the lock (then the ``duckdb`` shell reads the right files too); otherwise, and when
        the catalog is missing or corrupt, the views are built in memory from the manifest.

        ``sandbox``: for SQL typed by a user (``trialsync sql``): no file outside the warehouse's
        ``runs/`` and ``schema/`` can be read or written, no network, no extensions, and the
        settings are locked so the query cannot undo this.
        """
        if not self.exists():
            raise WarehouseError(f"no warehouse at {self.root} (run `trialsync sync` first)")
        config: dict[str, str | bool | int | float | list[str]] = (
            {"autoinstall_known_extensions": False, "autoload_known_extensions": False} if sandbox else {})
        con = self._open_current(config)
        if con is None:
            with suppress(WarehouseBusy), _exclusive_lock(self.root / LOCK_NAME, "reader", 0):
                self.refresh_catalog()
            con = self._open_current(config)
        if con is None:  # a writer holds the lock, or the catalog is missing or damaged
            con = duckdb.connect(config=config)
            catalog.build(con, self.root, self._best_manifest(), tolerant=True)
        if sandbox:
            _sandbox(con, self.root)
        return con

    def _open_current(self, config: dict[str, str | bool | int | float | list[str]]
                      ) -> duckdb.DuckDBPyConnection | None:
        """The catalog file, if it is readable, lists this directory's files and is not behind."""
        try:
            con = catalog.open_catalog(self.catalog_path, config)
        except duckdb.Error:
            return None
        try:
            # fetchall, not fetchone: duckdb 2.0 keeps a partly fetched result open and refuses register().
            meta = dict(con.execute("SELECT key, value FROM _meta WHERE key IN ('root', 'generation')").fetchall())
        except duckdb.Error:
            con.close()
            return None
        head = manifests.head(self.root)
        if meta.get("root") == str(self.root) and meta.get("generation") == str(head):  # a legacy catalog has none
            return con
        con.close()
        return None

    def committed(self) -> duckdb.DuckDBPyConnection:
        """An in-memory connection with the views over the committed files (for the writer; without the
        ``aact`` and analysis views, which only readers use)."""
        mem = duckdb.connect()
        catalog.ensure_schema_files(self.root)
        catalog.build(mem, self.root, self.manifest() if self.exists() else Manifest(), analyses=False)
        return mem

    # -- the writer --------------------------------------------------------------------------
    @contextmanager
    def writer(self, run_id: str, *, lock_timeout: float = 30.0) -> Iterator[RunWriter]:
        """Hold the writer lock for one run; commit explicitly, anything else rolls back."""
        self.check_location(damage=False)  # checked below, with the lock held
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / MARKER_NAME).touch()
        with _exclusive_lock(self.root / LOCK_NAME, run_id, lock_timeout):
            crashpoint("lock-acquired")
            self.refresh_catalog()
            refuse_if_damaged(self.root)
            log = self.log()
            manifest = manifests.fold(log)
            self._remove_uncommitted(manifest)
            upgraded = migrations.upgrade(self, run_id, manifest)  # an earlier release's warehouse
            run = RunWriter(self, run_id, upgraded, log if upgraded.generation == manifest.generation else None)
            try:
                yield run
            finally:
                if not run.committed:
                    run.abort()

    @contextmanager
    def lock(self, name: str, holder: str, *, timeout: float = 30.0, what: str = "another run") -> Iterator[None]:
        """A named lock beside the writer's (e.g. one alerts run at a time); ``what`` names its holder."""
        self.root.mkdir(parents=True, exist_ok=True)
        with _exclusive_lock(self.root / f".{name}.lock", holder, timeout, what=what):
            yield

    def _remove_uncommitted(self, manifest: Manifest) -> int:
        """Leftovers of a crashed run (its files were never in a catalog, so nobody sees them) and run
        directories a compaction superseded once their grace period has passed. Returns how many."""
        runs = self.root / RUNS_DIR
        kept = manifest.run_ids | self._retained(manifest)
        leftovers = [c for c in runs.iterdir() if c.name not in kept and c.is_dir()] if runs.is_dir() else []
        if not self.exists() and (committed := [c.name for c in leftovers if (c / COMMITTED_MARKER).exists()]):
            # Someone deleted the catalog: these runs were committed once. Never delete history.
            raise WarehouseError(
                f"{self.catalog_path} is missing but {runs} holds {len(committed)} committed run(s) "
                f"(e.g. {committed[0]}); restore the catalog from a backup or move {RUNS_DIR}/ away first")
        if leftovers:  # read the manifest again: never delete a run that committed meanwhile (locks that
            listed = self._listed_now()  # do not work across hosts, see manifest.publish)
            leftovers = [c for c in leftovers if listed is not None and c.name not in listed]
        for child in leftovers:
            shutil.rmtree(child, ignore_errors=True)
        for leftover in self.root.glob(f"{CATALOG_NAME}.tmp-*"):
            leftover.unlink(missing_ok=True)
        manifests.remove_leftovers(self.root)
        return len(leftovers)

    def _listed_now(self) -> set[str] | None:
        """The runs the manifest lists now (None, so nothing is deleted, if it cannot be read)."""
        try:
            manifest = manifests.fold(self.log())
        except ManifestDamaged:
            return None
        return manifest.run_ids | self._retained(manifest)

    def remove_superseded(self) -> int:
        """Call with the writer lock held, after a commit: what ``_remove_uncommitted`` would remove
        at the next run's start."""
        return self._remove_uncommitted(self.manifest())

    @staticmethod
    def _retained(manifest: Manifest) -> set[str]:
        """Runs a compaction superseded whose grace period has not passed (a reader may hold a
        catalog that still lists their files)."""
        now = datetime.now(UTC)
        return {run_id for run_id, until in manifest.retained_until().items() if until > now}


class RunWriter:
    """Stages one run's Parquet files; ``commit`` publishes them all at once."""

    def __init__(self, warehouse: Warehouse, run_id: str, manifest: Manifest,
                 log: list[Generation] | None = None) -> None:
        self.warehouse = warehouse
        self.run_id = run_id
        self.manifest = manifest
        # Every committed generation (the new catalog keeps a copy of each); read here when not given.
        self.log = list(log) if log is not None else warehouse.log()
        self.dir = warehouse.root / RUNS_DIR / run_id
        self.dir.mkdir(parents=True, exist_ok=False)
        self._writers: dict[str, pq.ParquetWriter] = {}
        self._sealed: set[str] = set()
        self._rows: dict[str, int] = {}
        self._adopted: list[StagedFile] = []
        self.committed = False
        self._before: duckdb.DuckDBPyConnection | None = None
        self._before_lock = threading.Lock()

    def before(self) -> duckdb.DuckDBPyConnection:
        """A cursor over the committed state this run builds on. The writer lock holds that state still,
        so its views are built once per run, not per question (a build binds every view)."""
        with self._before_lock:
            if self._before is None:
                self._before = duckdb.connect()
                catalog.ensure_schema_files(self.warehouse.root)
                catalog.build(self._before, self.warehouse.root, self.manifest, analyses=False)
            return self._before.cursor()

    def _close_before(self) -> None:
        with self._before_lock:
            if self._before is not None:
                self._before.close()
                self._before = None

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
        if table not in self._writers:
            plain = [f.name for f in schema if f.name not in LARGE_TEXT_COLUMNS]
            self._writers[table] = pq.ParquetWriter(self.dir / f"{table}.parquet", schema, compression="zstd",
                                                    use_dictionary=plain, write_statistics=plain)
        self._writers[table].write_table(rows.cast(schema) if rows.schema != schema else rows)
        self._rows[table] = self._rows.get(table, 0) + rows.num_rows
        crashpoint("parquet-written")

    def append_batch(self, table: str, batch: pa.RecordBatch) -> None:
        self.append(table, pa.Table.from_batches([batch]))

    def append_rows(self, table: str, rows: list[dict[str, Any]]) -> None:
        if rows:
            self.append(table, pa.Table.from_pylist(rows, schema=TABLES[table]))

    def seal(self, table: str) -> None:
        """No more rows for ``table`` in this run; its staged file becomes readable (``staged()``)."""
        if table in self._writers and table not in self._sealed:
            self._writers[table].close()
        self._sealed.add(table)

    def staged(self) -> duckdb.DuckDBPyConnection:
        """An in-memory connection whose views cover the committed files plus this run's sealed ones
        (and the part files workers wrote for it, see ``adopt``)."""
        rel = self.dir.relative_to(self.warehouse.root)
        entries = [self._entry(t) for t in self._sealed if t in self._writers]
        entries += [ManifestEntry(self.run_id, p.table, str(rel / p.name)) for p in self._adopted]
        mem = duckdb.connect()
        catalog.build(mem, self.warehouse.root, self.manifest.plus(entries), analyses=False)
        return mem

    def _entry(self, table: str) -> ManifestEntry:
        return ManifestEntry(self.run_id, table, str((self.dir / f"{table}.parquet").relative_to(self.warehouse.root)))

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

    def has_runs(self, scope: str) -> bool:
        with self.before() as con:
            row = con.execute(f"SELECT count(*) FROM raw_sync_runs WHERE scope = ? AND {SYNCED}",
                              [scope]).fetchone()
        return bool(row and row[0])

    def scope_members(self, scope: str) -> set[str]:
        """Studies seen by earlier successful runs of ``scope`` and not recorded as leaving it since
        (``scope_exits``: a full run found them gone from the scope or from the registry)."""
        with self.before() as con:
            rows = con.execute(SCOPE_MEMBERS_SQL, [scope, scope]).fetchall()
        return {r[0] for r in rows}

    def commit(self, meta: dict[str, str] | None = None, *, replace: frozenset[str] = frozenset()) -> None:
        """Make the run's files durable, then publish the next manifest generation: the commit point.

        Before it, everything the catalog will list is fsynced (the files, ``runs/<id>/``, ``runs/``)
        and the new catalog is complete beside the old one. Publishing is a compare-and-swap on the
        generation (refused when another writer committed meanwhile). After it nothing undoes the run:
        if putting the catalog in place fails, the next command rewrites it from the manifest.

        ``replace`` names tables whose earlier files this run supersedes (``rederive``'s changes).
        """
        self._close_before()
        for table in self._writers:
            self.seal(table)
        crashpoint("files-closed")
        root = self.warehouse.root
        rel = self.dir.relative_to(root)
        entries = []
        for table in self._writers:
            catalog.fsync_path(self.dir / f"{table}.parquet")
            entries.append(manifests.measure(root, self._entry(table)))
        entries += [manifests.measure(root, ManifestEntry(self.run_id, p.table, str(rel / p.name)))
                    for p in self._adopted]
        catalog.fsync_path(self.dir)
        catalog.fsync_path(self.dir.parent)
        gen = Generation(self.manifest.generation + 1, self.run_id, tuple(entries), tuple(sorted(replace)),
                         {**self.manifest.meta, **(meta or {}), "last_run_id": self.run_id},  # the whole meta
                         datetime.now(UTC).isoformat())
        tmp = catalog.prepare_catalog(root, self.manifest.then(gen), [*self.log, gen], tag=self.run_id)
        try:
            manifests.publish(root, gen)  # the commit point
        except BaseException:
            # A signal (KeyboardInterrupt) can land after the link, inside publish: then the run is
            # committed, and abort() must not delete what the manifest now lists.
            if manifests.is_published(root, gen):
                self.committed = True
            else:
                tmp.unlink(missing_ok=True)
            raise
        self.committed = True
        crashpoint("manifest-published")
        try:
            catalog.install_catalog(root, tmp)
            (self.dir / COMMITTED_MARKER).touch()
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
WITH runs AS (SELECT run_id, started_at FROM raw_sync_runs WHERE scope = ? AND {SYNCED}),
     seen AS (SELECT r.nct_id, max(runs.started_at) AS at FROM raw_run_studies r JOIN runs USING (run_id)
              GROUP BY r.nct_id),
     exits AS (SELECT e.nct_id, max(runs.started_at) AS at FROM raw_scope_exits e JOIN runs USING (run_id)
               WHERE e.scope = ? GROUP BY e.nct_id)
SELECT seen.nct_id FROM seen LEFT JOIN exits USING (nct_id) WHERE exits.at IS NULL OR seen.at > exits.at"""


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


@contextmanager
def _exclusive_lock(path: Path, holder: str, timeout: float, *, what: str = "a sync") -> Iterator[None]:
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
                        f"the warehouse {path.parent} is busy: {what} is running ({other}); "
                        f"waited {timeout:g}s"
                    ) from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"run {holder}, pid {os.getpid()}".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _sandbox(con: duckdb.DuckDBPyConnection, root: Path) -> None:
    """Only the warehouse's own data files, no other file, URL or extension; then lock the settings."""
    allowed = ", ".join("'" + (str(root / d) + os.sep).replace("'", "''") + "'" for d in SANDBOX_DIRS)
    con.execute(f"SET allowed_directories = [{allowed}]")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
