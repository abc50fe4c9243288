"""Open a warehouse, read its committed state, and write one run atomically.

One writer at a time (a lock file with a timeout); any number of readers, never blocked: the
writer never opens ``warehouse.duckdb`` for writing, it replaces it (see ``catalog``).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from pipeline.errors import UsageError, WarehouseBusy, WarehouseError, WarehouseMissing
from warehouse import catalog, catalog_file, checkpoints, committing, migrations, readers, run_writer
from warehouse import manifest as manifests
from warehouse.catalog import CATALOG_NAME
from warehouse.catalog_file import refuse_pattern_path
from warehouse.check import check_file, refuse_if_damaged
from warehouse.checkpoints import Checkpoint
from warehouse.crashpoints import crashpoint
from warehouse.locks import READER, LockNotAFile, exclusive_lock
from warehouse.log_state import read_state
from warehouse.manifest import Generation, Manifest, ManifestDamaged, ManifestEntry
from warehouse.run_writer import COMMITTED_MARKER, RUNS_DIR, RunWriter

LOCK_NAME = ".writer.lock"
MARKER_NAME = ".trialsync-warehouse"  # says "this directory is a warehouse": we may clean up in it
SANDBOX_DIRS = (RUNS_DIR, "schema")  # what the views read; all a sandboxed reader may open

logger = logging.getLogger("trialsync.warehouse")


class Warehouse:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = refuse_pattern_path(Path(root).expanduser().resolve())

    @property
    def catalog_path(self) -> Path:
        return self.root / CATALOG_NAME

    def exists(self) -> bool:
        return self.catalog_path.exists() or manifests.head(self.root) > 0

    def missing(self) -> str:
        """Why there is no warehouse here, in one line (``readers.why_missing``)."""
        return readers.why_missing(self.root)

    def log(self) -> list[Generation]:
        """Every committed generation, in commit order (``ManifestDamaged`` if one cannot be trusted)."""
        return manifests.read_log(self.root)

    def run_order(self) -> list[tuple[int, str]]:
        """(generation, run id) of every commit, in commit order, read cheaply (``ManifestDamaged``)."""
        return manifests.run_order(self.root)

    def manifest(self) -> Manifest:
        """The committed state, from the manifest files (those after the newest checkpoint, on top of
        it); before their migration (or when the manifest directory is lost) from the copies (the
        catalog's, and the checkpoints' of the generations before the newest)."""
        if (head := manifests.head(self.root)) or not self.catalog_path.exists():
            base = checkpoints.newest(self.root, head)
            return manifests.fold(manifests.read_log(self.root, base.generation if base else 0), base)
        try:
            meta = catalog_file.catalog_meta(self.catalog_path)
            if "generation" not in meta:
                return catalog_file.read_legacy_manifest(self.catalog_path)
            # the catalog's copies, and the checkpoints' of the generations before them
            return manifests.fold(read_state(self.root).best())
        except duckdb.Error as exc:
            raise WarehouseError(f"cannot read {self.catalog_path}: {str(exc).splitlines()[0]}") from None

    def _best_manifest(self) -> Manifest:
        """For readers: the manifest files; where one is damaged, or a newer generation is committed (the
        catalog or a run's marker says so), the longest log of the files and the good copies (the
        catalog's, the checkpoints', the runs' markers), with a warning (``warehouse.readers``)."""
        try:
            manifest = self.manifest()
        except ManifestDamaged:
            return readers.best(self.root, None)
        ahead = False
        with suppress(duckdb.Error, KeyError, ValueError):
            ahead = int(catalog_file.catalog_meta(self.catalog_path)["generation"]) > manifest.generation
        if ahead or readers.committed_beyond(self.root, readers.known_runs(manifest), manifest.generation):
            return readers.best(self.root, manifest)
        return manifest

    def refresh_catalog(self) -> bool:
        """Call with the writer lock held. Migrate a catalog written before the manifest moved beside
        it; rewrite a catalog that is behind the manifest (a crash or an error after a commit point) or
        that holds another directory's paths (the warehouse was copied or moved). A missing or
        corrupt catalog is left for ``repair``. Returns whether the catalog was rewritten."""
        if not self.catalog_path.exists():
            return False
        try:
            meta = catalog_file.catalog_meta(self.catalog_path)
        except duckdb.Error:
            return False
        head = manifests.head(self.root)  # a listing: an up-to-date catalog reads no generation file
        if "generation" not in meta:
            return self._migrate() if not head else False
        if not head or int(meta["generation"]) > head:
            return False  # the manifest lost files the catalog knows: repair restores them
        if (int(meta["generation"]) == head and meta.get("root") == str(self.root)
                and meta.get("views_digest") == catalog.views_digest()):
            return False  # up to date; otherwise behind, moved, or written by another release
        try:
            log = self.log()
        except ManifestDamaged:
            return False
        try:
            catalog_file.write_catalog(self.root, manifests.fold(log), log, tag="refresh")
        except duckdb.Error:  # a damaged file: readers build the views in memory, writers refuse
            return False
        return True

    def _migrate(self) -> bool:
        """One generation file per run of the legacy ``_manifest`` (in its commit order), measured now;
        the directory appears at once (renamed into place), so a crash leaves no half migration.

        Only a file that is intact now (its footer reads, every row group decodes) gets its size and
        checksum recorded: a damaged one stays unmeasured, so ``check`` keeps naming it and ``repair``
        rolls back past it, instead of its damage becoming the truth. If a damaged file keeps the
        catalog from being written, readers build the views in memory (the other tables answer)."""
        legacy = catalog_file.read_legacy_manifest(self.catalog_path)
        by_run: dict[str, list[ManifestEntry]] = {}
        for entry in legacy.entries:
            measured = entry  # missing or damaged: ``check`` reports it, ``repair`` rolls back past it
            if check_file(self.root, entry, deep=True) is None:
                with suppress(OSError):
                    measured = manifests.measure(self.root, entry)
            by_run.setdefault(entry.run_id, []).append(measured)
        runs = list(by_run.items()) or [("migrated", [])]
        log = [Generation(n, run_id, tuple(entries), (), dict(legacy.meta), "migrated")
               for n, (run_id, entries) in enumerate(runs, start=1)]
        staging = self.root / f"{manifests.MANIFEST_DIR}.tmp-migrate"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        for gen in log:
            (staging / manifests.generation_path(self.root, gen.number).name).write_bytes(gen.to_bytes())
            catalog_file.fsync_path(staging / manifests.generation_path(self.root, gen.number).name)
        catalog_file.fsync_path(staging)
        os.rename(staging, manifests.directory(self.root))
        catalog_file.fsync_path(self.root)
        try:
            catalog_file.write_catalog(self.root, manifests.fold(log), log, tag="migrate")
        except duckdb.Error:  # a damaged file: readers build the views in memory, writers refuse
            return False
        return True

    def check_location(self, *, damage: bool = True) -> None:
        """Refuse to write into a directory that is not (or not yet) a warehouse: a sync deletes
        files it does not recognise under ``runs/`` and ``spool/``, so it must own the directory.
        ``damage``: also refuse a damaged warehouse (the quick check, without the footers: the writer
        reads those), before anything starts."""
        root = self.root
        if damage and root.is_dir() and self.exists():
            # What the writer reads, and each file's size: the footers are read (and a damaged one
            # named) by the writer itself, under its lock, before it writes anything. Reading them here
            # too cost ~1.5 s a command at 600,000 studies.
            refuse_if_damaged(root, footers=False, since_checkpoint=True)
        if root.exists() and not root.is_dir():
            raise UsageError(f"warehouse {root} exists and is not a directory")
        if blocker := next((p for p in root.parents if p.exists() and not p.is_dir()), None):
            raise UsageError(f"warehouse {root} cannot be made: {blocker} is a file, not a directory")
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
            raise WarehouseMissing(self.missing())
        # A name no view has is no table, never a Python object of the caller's frame (DuckDB's replacement
        # scan: a view left out for a damaged file met the CLI's function of the same name)
        config: dict[str, str | bool | int | float | list[str]] = {"python_enable_replacements": False}
        if sandbox:
            config |= {"autoinstall_known_extensions": False, "autoload_known_extensions": False}
        con, stale = self._open_current(config)
        if con is None and stale:
            # a busy writer, or no right to write here (a read-only copy or mount): the views go in memory
            with suppress(WarehouseBusy, LockNotAFile, OSError), exclusive_lock(self.root / LOCK_NAME, READER, 0):
                self.refresh_catalog()
            con, stale = self._open_current(config)
        if con is None:  # a writer holds the lock, or the catalog is missing or damaged, or is not the newest
            if self.catalog_path.exists():
                readers.warn_if_unreadable(self.catalog_path)
            con = duckdb.connect(config=config)
            catalog.build(con, self.root, self._best_manifest(), tolerant=True)
        if sandbox:
            _sandbox(con, self.root)
        return con

    def _open_current(self, config: dict[str, str | bool | int | float | list[str]]
                      ) -> tuple[duckdb.DuckDBPyConnection | None, bool]:
        """The catalog file, if it is readable, lists this directory's files and is not behind; else None
        and whether ``refresh_catalog`` would rewrite it (behind, moved here, another release's views).
        None too when a run's marker says a newer generation committed than the catalog and the
        manifest files know (both lost it): the reader builds the newest state it can, with a warning."""
        try:
            con = catalog_file.open_catalog(self.catalog_path, config)
        except duckdb.Error:
            return None, False
        try:
            # fetchall, not fetchone: duckdb 2.0 keeps a partly fetched result open and refuses register().
            meta = dict(con.execute("SELECT key, value FROM _meta WHERE key IN ('root', 'generation', "
                                    f"'views_digest', '{manifests.RETAINED_KEY}')").fetchall())
            head = manifests.head(self.root)
            if meta.get("root") == str(self.root) and meta.get("views_digest") == catalog.views_digest():
                generation = _number(meta.get("generation"))
                if generation >= head and generation >= 0:  # a legacy catalog has none: rewrite
                    named = {run for (run,) in con.execute("SELECT DISTINCT run_id FROM _manifest").fetchall()}
                    named |= set(Manifest(meta=meta).retained_until())
                    if readers.committed_beyond(self.root, named, generation):
                        con.close()
                        return None, False
                    if generation > head:  # never fall back to an older state without a word
                        readers.warn_missing(f"{head + 1}" if generation == head + 1 else f"{head + 1} to {generation}")
                    return con, False
        except duckdb.Error:
            con.close()
            return None, False
        con.close()
        return None, True

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
        from warehouse import autocompact

        autocompact.fanout_setting()  # read after the commit: a bad setting must fail before the run
        autocompact.keep_setting()
        self.check_location(damage=False)  # checked below, with the lock held
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / MARKER_NAME).touch()
        with exclusive_lock(self.root / LOCK_NAME, run_id, lock_timeout):
            committing.began()
            crashpoint("lock-acquired")
            self.refresh_catalog()
            # the footers: in ``_state_before``; the manifest files after the newest checkpoint
            checked = refuse_if_damaged(self.root, footers=False, since_checkpoint=True)
            base = checked.base if checked is not None and checked.log is not None else None
            log = checked.log if checked is not None and checked.log is not None else self.log()
            manifest = manifests.fold(log, base)
            before: duckdb.DuckDBPyConnection | None = self._state_before(manifest)  # refuses damage first
            try:
                self._remove_uncommitted(manifest)
                upgraded = migrations.upgrade(self, run_id, manifest)  # an earlier release's warehouse
                if upgraded.generation != manifest.generation:  # a migration committed: other files
                    assert before is not None
                    before.close()
                    before = None
                run = (RunWriter(self, run_id, upgraded, log, base=base, before=before) if before is not None
                       else RunWriter(self, run_id, upgraded))
            except BaseException:
                if before is not None:
                    before.close()
                raise
            try:
                try:
                    yield run
                finally:
                    if not run.committed:
                        run.abort()
                if run.published is not None:
                    self._compact_after(run)
                    self._checkpoint_after(run.base)
            finally:
                committing.ended()  # from here a signal interrupts what the command does next

    def _state_before(self, manifest: Manifest) -> duckdb.DuckDBPyConnection:
        """The run's DuckDB with its views over the committed files: binding them reads every Parquet
        footer once (the writer's quick check left them out). A footer that does not read is damage:
        the full quick check names the file and refuses."""
        try:
            return run_writer.open_state(self.root, manifest)
        except duckdb.Error:
            refuse_if_damaged(self.root)
            raise

    def _compact_after(self, run: RunWriter) -> None:
        """Merge small file sets now that ``run`` committed (see ``warehouse.autocompact``); a failure
        there is reported, never raised: the run is committed."""
        from warehouse import autocompact

        assert run.published is not None
        try:
            autocompact.after_commit(self, run.manifest.then(run.published), [*run.log, run.published], run.run_id,
                                     base=run.base)
        except Exception as exc:
            logger.warning("run %s is committed; merging small file sets after it failed (%s)", run.run_id, exc)

    def _checkpoint_after(self, base: Checkpoint | None) -> None:
        """Take a checkpoint of the manifest when ``EVERY`` generations followed ``base`` (see
        ``warehouse.checkpoints``); a failure is reported, never raised: the run is committed."""
        try:
            head = manifests.head(self.root)
            if not checkpoints.due(head, base):
                return
            after = base.generation if base is not None else 0
            log = manifests.read_log(self.root, after)  # parsed already: the memo has them
            checkpoints.write(self.root, checkpoints.following(manifests.fold(log, base), log, base))
        except Exception as exc:
            logger.warning("the run is committed; taking a manifest checkpoint after it failed (%s)", exc)

    @contextmanager
    def lock(self, name: str, holder: str, *, timeout: float = 30.0, what: str = "another run") -> Iterator[None]:
        """A named lock beside the writer's (e.g. one alerts run at a time); ``what`` names its holder."""
        self.root.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(self.root / f".{name}.lock", holder, timeout, what=what):
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
        checkpoints.remove_leftovers(self.root)
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


def _number(text: str | None) -> int:
    return int(text) if text is not None and text.isascii() and text.isdigit() else -1


def _sandbox(con: duckdb.DuckDBPyConnection, root: Path) -> None:
    """Only the warehouse's own data files, no other file, URL or extension; then lock the settings."""
    allowed = ", ".join("'" + (str(root / d) + os.sep).replace("'", "''") + "'" for d in SANDBOX_DIRS)
    con.execute(f"SET allowed_directories = [{allowed}]")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
