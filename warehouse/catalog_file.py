"""The catalog file's life: written complete beside the old one, renamed into place, opened read-only.

``prepare_catalog`` writes a new ``warehouse.duckdb`` (the views ``catalog.plan_catalog`` plans, the
effective manifest and a copy of every manifest file) under a temporary name and fsyncs it;
``install_catalog`` renames it over the old one. Readers holding the old file keep a consistent
snapshot; new readers see the new run. ``open_catalog`` always opens the file that is there now.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa

from pipeline.errors import UsageError
from warehouse.catalog import (
    CATALOG_NAME,
    SCHEMA_VERSION,
    STORAGE_COMPATIBILITY,
    build,
    changed_statements,
    ensure_schema_files,
    plan_digest,
    view_name,
    views_digest,
)
from warehouse.crashpoints import crashpoint
from warehouse.manifest import Generation, Manifest, ManifestDamaged, ManifestEntry

# Attaches a database file to a DuckDB of the caller's for a block: (path, ATTACH options) -> a cursor
# whose own catalog is that file (``RunWriter``: its Parquet footers are cached already).
Attach = Callable[[str, str], AbstractContextManager[duckdb.DuckDBPyConnection]]


# DuckDB takes a file path as a glob pattern where it holds '*', '?' or '[' (a view listing
# runs/<id>/x.parquet of a warehouse at 'w*' also read the files of a backup 'w-bk' beside it: every
# row twice; at 'w[1]' it read only those of 'w1'), and its ATTACH reads '\\' as '/' and cuts the
# path at '?' (such a warehouse never committed a run). No escape exists for either.
PATTERN_CHARACTERS = "*?[\\"


def refuse_pattern_path(path: Path) -> Path:
    """``path`` (resolved), or a ``UsageError`` when DuckDB would not read it as that one place."""
    if found := sorted({ch for ch in str(path) if ch in PATTERN_CHARACTERS}):
        shown = " ".join(f"'{ch}'" for ch in found)
        raise UsageError(f"the warehouse path {path} holds {shown}, which DuckDB does not take literally "
                         "(its views would read other directories' files): use a directory whose path has "
                         "no '*', '?', '[' or '\\'")
    return path


def metadata_cached(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """Keep Parquet footers in memory across the views and builds of ``con``'s database: a build binds
    each table's files several times (the raw, child and ``current_`` views), and a run builds several."""
    con.execute("SET GLOBAL parquet_metadata_cache = true")
    return con


def prepare_catalog(root: Path, manifest: Manifest, log: Sequence[Generation], *, tag: str,
                    attach: Attach | None = None, previous: Manifest | None = None) -> Path:
    """Write a complete new catalog beside the old one (fsynced); ``install_catalog`` puts it in place.

    Besides the views it keeps the effective manifest (``_manifest``, in commit order) and a copy of
    the manifest files in ``log`` (``_manifest_log``), so a damaged manifest file can be restored from
    it: all of them, or those after a checkpoint, which holds copies of the earlier ones.

    ``previous`` (a writer's commit: the manifest the catalog in place was written for): start from a
    copy of that catalog and redefine only the views whose files changed, when that gives the same
    catalog (``_update_copy``); binding every view again is most of a small commit's cost."""
    ensure_schema_files(root)
    tmp = root / f"{CATALOG_NAME}.tmp-{tag}"
    try:
        _remove(tmp)
        if previous is None or not _update_copy(root, tmp, previous, manifest, log, attach):
            _remove(tmp)
            with _new_catalog(tmp, attach) as con:
                _fill_catalog(con, root, manifest, log)
    except BaseException:
        _remove(tmp)
        raise
    fsync_path(tmp)
    crashpoint("catalog-tmp-written")
    return tmp


def _remove(tmp: Path) -> None:
    for leftover in (tmp, Path(f"{tmp}.wal")):
        leftover.unlink(missing_ok=True)


def _update_copy(root: Path, tmp: Path, previous: Manifest, manifest: Manifest, log: Sequence[Generation],
                 attach: Attach | None) -> bool:
    """Write ``tmp`` as a copy of the catalog in place, updated from ``previous`` to ``manifest``; False
    (``tmp`` unfinished) unless that yields exactly the catalog a full build would: the one in place is
    this release's, for ``previous`` at ``root``, and only tables' file lists changed, their columns not."""
    changed = changed_statements(root, previous, manifest)
    current = root / CATALOG_NAME
    if changed is None or not current.is_file() or Path(f"{current}.wal").exists():
        return False
    try:
        shutil.copyfile(current, tmp)
        with _new_catalog(tmp, attach or _attach_privately) as con:
            meta = dict(con.execute("SELECT key, value FROM _meta").fetchall())
            expected = {"root": str(root), "schema_version": SCHEMA_VERSION, "generation": str(previous.generation),
                        "plan_digest": plan_digest(root, previous), "views_digest": views_digest()}
            if any(meta.get(key) != value for key, value in expected.items()):
                return False
            con.execute("DROP TABLE _manifest; DROP TABLE _manifest_log; DROP TABLE _meta")
            _write_manifest_tables(con, root, manifest, log)
            names = [view_name(statement) for statement in changed]
            before = _columns(con, names)
            for statement in changed:
                con.execute(statement)
            if _columns(con, names) != before:
                return False
            con.execute("CHECKPOINT")
    except duckdb.Error:  # a damaged or unexpected catalog in place: the full build decides
        return False
    return True


def _columns(con: duckdb.DuckDBPyConnection, names: Sequence[str]) -> list[tuple[str, str, str]]:
    return con.execute("SELECT view_name, column_name, data_type FROM duckdb_columns() JOIN duckdb_views() "
                       "USING (database_name, schema_name) WHERE table_name = view_name "
                       "AND database_name = current_database() AND list_contains(?, view_name) "
                       "ORDER BY view_name, column_index", [list(names)]).fetchall()


@contextmanager
def _attach_privately(path: str, options: str) -> Iterator[duckdb.DuckDBPyConnection]:
    """``path`` attached to an in-memory DuckDB of its own. ATTACH refuses a file in a newer storage
    format than ``options`` asks for (``connect`` would open it and keep that format, one the ``duckdb``
    shell 1.x cannot read); the copy then gives way to a full build."""
    con = metadata_cached(duckdb.connect())
    try:
        con.execute(f"ATTACH '{_quote(path)}' AS copied{options}")
        con.execute("USE copied")
        yield con
    finally:
        con.close()


@contextmanager
def _new_catalog(path: Path, attach: Attach | None) -> Iterator[duckdb.DuckDBPyConnection]:
    if attach is not None:
        with attach(str(path), f" (STORAGE_VERSION '{STORAGE_COMPATIBILITY}')") as cursor:
            yield cursor
        return
    con = metadata_cached(duckdb.connect(str(path), config={"storage_compatibility_version": STORAGE_COMPATIBILITY}))
    try:
        yield con
    finally:
        con.close()


def _from_rows(con: duckdb.DuckDBPyConnection, statement: str, rows: pa.Table) -> None:
    """Execute ``statement``, which reads the Arrow table ``rows`` as ``_rows``."""
    con.register("_rows", rows)
    try:
        con.execute(statement)
    finally:
        con.unregister("_rows")


def _fill_catalog(con: duckdb.DuckDBPyConnection, root: Path, manifest: Manifest, log: Sequence[Generation]) -> None:
    _write_manifest_tables(con, root, manifest, log)
    build(con, root, manifest)
    con.execute("CHECKPOINT")


def _write_manifest_tables(con: duckdb.DuckDBPyConnection, root: Path, manifest: Manifest,
                           log: Sequence[Generation]) -> None:
    # Inserted as Arrow tables: ``executemany`` costs a statement per row, and the log grows by a
    # generation per commit.
    entries = manifest.entries
    _from_rows(con, "CREATE TABLE _manifest AS SELECT * FROM _rows", pa.table({
        "seq": pa.array(range(1, len(entries) + 1), pa.int32()),
        "run_id": pa.array([e.run_id for e in entries], pa.string()),
        "table_name": pa.array([e.table for e in entries], pa.string()),
        "path": pa.array([e.path for e in entries], pa.string()),
        "size": pa.array([e.size for e in entries], pa.int64()),
        "checksum": pa.array([e.checksum for e in entries], pa.string()),
        "schema": pa.array([e.schema for e in entries], pa.string())}))
    _from_rows(con, "CREATE TABLE _manifest_log AS SELECT * FROM _rows", pa.table({
        "generation": pa.array([g.number for g in log], pa.int32()),
        "doc": pa.array([g.to_bytes().decode() for g in log], pa.string())}))
    crashpoint("catalog-tmp-created")
    meta = {**manifest.meta, "root": str(root), "schema_version": SCHEMA_VERSION,
            "generation": str(manifest.generation), "plan_digest": plan_digest(root, manifest),
            "views_digest": views_digest()}
    con.execute("CREATE TABLE _meta(key VARCHAR PRIMARY KEY, value VARCHAR)")
    keys = sorted(meta)
    _from_rows(con, "INSERT INTO _meta SELECT * FROM _rows", pa.table({
        "key": pa.array(keys, pa.string()), "value": pa.array([meta[k] for k in keys], pa.string())}))


def install_catalog(root: Path, tmp: Path) -> None:
    """Rename a prepared catalog into place and make the rename durable."""
    os.replace(tmp, root / CATALOG_NAME)
    crashpoint("catalog-replaced")
    fsync_path(root)


def write_catalog(root: Path, manifest: Manifest, log: Sequence[Generation], *, tag: str) -> None:
    """A new catalog for ``manifest`` in place (a rebuild: the manifest is committed already)."""
    install_catalog(root, prepare_catalog(root, manifest, log, tag=tag))


def open_catalog(path: Path, config: dict[str, str | bool | int | float | list[str]] | None = None,
                 ) -> duckdb.DuckDBPyConnection:
    """A read-only view of the catalog file *as it is now*.

    ``duckdb.connect(path)`` would hand out the process's cached database instance while any other
    connection to that path is open, i.e. the catalog as it was when that connection opened, even
    after a commit renamed a new file into place. A long-lived process (or a writer that reads the
    manifest while a reader is open) would then see a stale catalog. ATTACH in a private in-memory
    instance always opens the file that is there now.
    """
    with suppress(OSError):  # none: DuckDB says so as before
        if not stat.S_ISREG(path.stat().st_mode):  # a named pipe: ATTACH waited for a writer for ever
            raise duckdb.IOException(f"the catalog {path} is not a regular file")
    con = duckdb.connect(config=config or {})
    try:
        con.execute(f"ATTACH '{_quote(str(path))}' AS warehouse (READ_ONLY)")
        con.execute("USE warehouse")
    except Exception:
        con.close()
        raise
    return con


def _quote(text: str) -> str:
    return text.replace("'", "''")


def catalog_meta(path: Path) -> dict[str, str]:
    """The catalog's ``_meta`` (raises ``duckdb.Error`` if the file is not a readable catalog)."""
    con = open_catalog(path)
    try:
        return dict(con.execute("SELECT key, value FROM _meta").fetchall())
    finally:
        con.close()


def read_legacy_manifest(path: Path) -> Manifest:
    """The manifest of a catalog written before the manifest moved beside it (``_manifest`` only),
    in commit order: the order the rows were inserted (``rowid``), never DuckDB's scan order."""
    con = open_catalog(path)
    try:
        rows = con.execute("SELECT run_id, table_name, path FROM _manifest ORDER BY rowid").fetchall()
        meta = dict(con.execute("SELECT key, value FROM _meta").fetchall())
    finally:
        con.close()
    catalog_keys = ("root", "schema_version", "generation", "plan_digest", "views_digest")
    meta = {k: v for k, v in meta.items() if k not in catalog_keys}
    return Manifest(tuple(ManifestEntry(*row) for row in rows), meta)


@dataclass
class CatalogState:
    """What ``check`` reads of a catalog in one opening of it."""

    meta: dict[str, str] | None = None  # None: missing or unreadable
    digests: dict[int, str] = field(default_factory=dict)  # MD5 of each manifest copy's bytes
    legacy: Manifest | None = None  # a catalog from before the manifest moved beside it
    error: str | None = None  # why it could not be read

    @property
    def generation(self) -> int | None:
        """The generation in ``_meta`` (None: none, or not a number)."""
        try:
            return int(self.meta["generation"]) if self.meta is not None else None
        except (KeyError, ValueError):
            return None


def read_catalog_state(path: Path, *, legacy: bool, after: int = 0) -> CatalogState:
    """The catalog's ``_meta`` and a digest of each of its manifest copies after generation ``after``
    (``legacy``: when it has no generation, its legacy manifest). Never raises for a damaged catalog:
    says so in ``error``."""
    state = CatalogState()
    try:
        con = open_catalog(path)
    except duckdb.Error as exc:
        state.error = first_line(exc)
        return state
    try:
        state.meta = dict(con.execute("SELECT key, value FROM _meta").fetchall())
        if state.generation is not None:
            state.digests = dict(con.execute("SELECT generation, md5(doc) FROM _manifest_log WHERE generation > ?",
                                             [after]).fetchall())
    except duckdb.Error as exc:
        if state.meta is None:
            state.error = first_line(exc)
    finally:
        con.close()
    if state.meta is not None and "generation" not in state.meta and legacy:
        with suppress(duckdb.Error, ValueError):
            state.legacy = read_legacy_manifest(path)
    return state


def first_line(exc: BaseException) -> str:
    """An exception in one line (DuckDB's and pyarrow's run over several)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_catalog_log(path: Path, numbers: Sequence[int] | None = None) -> dict[int, Generation]:
    """The catalog's copy of the manifest files (``numbers``: of those only), by generation; the
    damaged ones left out."""
    con = open_catalog(path)
    try:
        if numbers is None:
            rows = con.execute("SELECT generation, doc FROM _manifest_log ORDER BY generation").fetchall()
        else:
            rows = con.execute("SELECT generation, doc FROM _manifest_log WHERE list_contains(?, generation) "
                               "ORDER BY generation", [list(numbers)]).fetchall()
    finally:
        con.close()
    log = {}
    for number, doc in rows:
        try:
            log[number] = Generation.from_bytes(doc.encode(), number)
        except ManifestDamaged:
            continue
    return log


def fsync_path(path: Path) -> None:
    """Make a file (or a directory's entries) durable before the commit that depends on it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
