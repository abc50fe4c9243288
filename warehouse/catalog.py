"""The catalog: ``warehouse.duckdb``, views and macros over the committed Parquet files.

``plan_catalog`` returns the SQL (pure, golden-tested); ``write_catalog`` executes it into a fresh
file and atomically renames it over the old one. Readers holding the old file keep a consistent
snapshot; new readers see the new run. The file is written in DuckDB's v1.0.0 storage format so
the ``duckdb`` shell (1.x) can open it read-only.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from functools import cache
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from warehouse import summary
from warehouse.aact import aact_views
from warehouse.analyses import analysis_views
from warehouse.crashpoints import crashpoint
from warehouse.manifest import RETAINED_KEY, Generation, Manifest, ManifestDamaged, ManifestEntry
from warehouse.tables import CHILD_TABLES, CORE_FIELDS, TABLES, rewritten_tables
from warehouse.validity import versions_with_validity

__all__ = ["CATALOG_NAME", "RETAINED_KEY", "Manifest", "ManifestEntry", "plan_catalog", "write_catalog"]

CATALOG_NAME = "warehouse.duckdb"
SCHEMA_VERSION = "1"
STORAGE_COMPATIBILITY = "v1.0.0"

_CORE = ", ".join(f.name for f in CORE_FIELDS)

# A key the registry's schema does not describe, first met by a run: recorded once, never a version.
SCHEMA_CHANGES_VIEW = """CREATE OR REPLACE VIEW schema_changes AS
SELECT path, arg_min(run_id, started_at) AS first_run_id, min(started_at) AS first_seen,
       max(started_at) AS last_seen, count(*) AS runs
FROM (SELECT run_id, started_at, unnest(unknown_fields) AS path FROM raw_sync_runs)
GROUP BY path"""


def schema_file(table: str) -> str:
    """An empty Parquet file that gives each view its columns before any run wrote rows. Its name
    carries a fingerprint of the table's schema, so a column added in a new release reaches the views
    of an existing warehouse (as NULL in the runs written before it)."""
    fingerprint = hashlib.blake2b(TABLES[table].to_string().encode(), digest_size=5).hexdigest()
    return f"schema/{table}.v{SCHEMA_VERSION}-{fingerprint}.parquet"


def _sql_list(root: Path, paths: Sequence[str]) -> str:
    quoted = ", ".join("'" + str(root / p).replace("'", "''") + "'" for p in paths)
    return f"[{quoted}]"


def plan_catalog(root: Path, manifest: Manifest, *, analyses: bool = True, children: bool = True) -> list[str]:
    """The statements that define every view and macro, for the files in ``manifest``.

    ``analyses=False``: without the ``aact`` schema and the analysis views (fdaaa, registered vs
    current, status spans): the writer's own in-memory connections never read them, and binding
    them is most of the cost of a build (a sync builds several). ``children=False`` (with it): nor
    the ``<table>`` and ``current_<table>`` views of the child tables (the writer reads ``raw_*``)."""
    statements = []
    rewriting = bool(manifest.files("study_rewrites"))
    superseding = set(rewritten_tables()) if rewriting else set()
    for table in TABLES:
        if table not in superseding:
            files = [schema_file(table), *manifest.files(table)]
            statements.append(
                f"CREATE OR REPLACE VIEW raw_{table} AS SELECT * FROM read_parquet("
                f"{_sql_list(root, files)}, union_by_name = true)"
            )
    if rewriting:
        statements += _superseding_views(root, manifest, [t for t in TABLES if t in superseding])
    statements += [
        f"""CREATE OR REPLACE VIEW study_versions AS
SELECT nct_id, version, content_hash, registry_updated, registry_version, observed_at, run_id, source,
       member_key, valid_from,
       lead(valid_from) OVER w AS valid_to,
       lead(version) OVER w IS NULL AS is_current,
       is_removed, {_CORE}, CAST(raw AS JSON) AS raw
FROM ({versions_with_validity()})
WINDOW w AS (PARTITION BY nct_id ORDER BY version)""",
        f"""CREATE OR REPLACE VIEW studies AS
SELECT nct_id, {_CORE}, version, content_hash
FROM study_versions WHERE is_current AND NOT is_removed""",
        """CREATE OR REPLACE VIEW sync_runs AS
SELECT run_id, mode, scope, started_at, finished_at, status, pages, studies_seen, new_studies,
       versions_written, unchanged, changes_written, quarantined, retired, left_scope, total_count, since,
       watermark, api_url, params, coalesce(stale, 0) AS stale, unknown_fields
FROM raw_sync_runs ORDER BY started_at""",
        SCHEMA_CHANGES_VIEW,
        "CREATE OR REPLACE VIEW run_studies AS SELECT run_id, nct_id, version FROM raw_run_studies",
        "CREATE OR REPLACE VIEW scope_exits AS SELECT run_id, scope, nct_id, reason FROM raw_scope_exits",
        "CREATE OR REPLACE VIEW study_rewrites AS SELECT run_id, nct_id, versions FROM raw_study_rewrites",
        """CREATE OR REPLACE VIEW quarantine AS
SELECT nct_id, run_id, observed_at, reason, CAST(raw AS JSON) AS raw FROM raw_quarantine""",
        """CREATE OR REPLACE VIEW changes AS
SELECT change_id, nct_id, from_version, to_version, run_id, detected_at, registry_updated, path, field,
       category, event, old_value, new_value, severity, shift_days, pct_change,
       CASE severity WHEN 'critical' THEN 3 WHEN 'notable' THEN 2 WHEN 'minor' THEN 1 ELSE 0 END
         AS severity_rank
FROM raw_changes""",
        """CREATE OR REPLACE VIEW alert_messages AS
SELECT message_id, run_id, created_at, watch, channel, mode, change_ids, change_keys,
       CAST(payload AS JSON) AS payload
FROM raw_alert_messages""",
        """CREATE OR REPLACE VIEW alert_deliveries AS
SELECT run_id, attempted_at, watch, channel, change_id, nct_id, severity, message_id, status, attempt, error
FROM raw_alert_deliveries""",
        """CREATE OR REPLACE VIEW alert_runs AS
SELECT run_id, started_at, finished_at, watchlist, watches, matched, messages, sent, failed, already_sent,
       retried, resent
FROM raw_alert_runs ORDER BY started_at""",
        """CREATE OR REPLACE VIEW reconciliation AS
SELECT run_id, scope, mode, checked_at, "check", status, expected, observed, flagged, detail, ids,
       CAST(data AS JSON) AS data,
       CASE status WHEN 'fail' THEN 3 WHEN 'warn' THEN 2 WHEN 'ok' THEN 1 ELSE 0 END AS status_rank
FROM raw_reconciliation""",
        """CREATE OR REPLACE MACRO changes_between(a, b) AS TABLE
SELECT * FROM changes
WHERE coalesce(registry_updated, CAST(timezone('UTC', detected_at) AS DATE))
      BETWEEN CAST(a AS DATE) AND CAST(b AS DATE)""",
        """CREATE OR REPLACE MACRO studies_as_of(d) AS TABLE
SELECT * FROM study_versions
WHERE valid_from <= CAST(d AS DATE) AND (valid_to IS NULL OR valid_to > CAST(d AS DATE))
  AND NOT is_removed""",
    ]
    if children:
        statements += child_views()
    if analyses:
        statements += aact_views(summary=summary.is_complete(manifest))
        statements += analysis_views()
    return statements


def child_views() -> list[str]:
    """``<table>`` (rows of every version) and ``current_<table>`` (rows of the versions in ``studies``)."""
    statements = []
    for table, schema in CHILD_TABLES.items():
        columns = ", ".join(f.name for f in schema)
        statements += [
            f"CREATE OR REPLACE VIEW {table} AS SELECT {columns} FROM raw_{table}",
            f"""CREATE OR REPLACE VIEW current_{table} AS
SELECT {columns} FROM raw_{table} AS t
WHERE EXISTS (SELECT 1 FROM studies AS s WHERE s.nct_id = t.nct_id AND s.version = t.version)""",
        ]
    return statements


def _superseding_views(root: Path, manifest: Manifest, tables: Sequence[str]) -> list[str]:
    """``raw_<table>`` without the rows of rewritten studies from files older than their last rewrite.

    A run's place in commit order is its first entry in the manifest; each file knows its run.
    """
    order: dict[str, int] = {}
    for entry in manifest.entries:
        order.setdefault(entry.run_id, len(order) + 1)
    rewriters = sorted({e.run_id for e in manifest.entries if e.table == "study_rewrites"}, key=order.__getitem__)
    files = [(str(root / e.path), order[e.run_id]) for e in manifest.entries if e.table in tables]
    statements = [
        f"CREATE OR REPLACE VIEW _run_seq AS {_values(['run_id', 'seq'], [(r, order[r]) for r in rewriters])}",
        f"CREATE OR REPLACE VIEW _file_seq AS {_values(['path', 'seq'], files)}",
        """CREATE OR REPLACE VIEW _rewrite_marks AS
SELECT w.nct_id, max(s.seq) AS seq FROM raw_study_rewrites AS w JOIN _run_seq AS s USING (run_id) GROUP BY w.nct_id""",
    ]
    for table in tables:
        listed = _sql_list(root, [schema_file(table), *manifest.files(table)])
        statements.append(f"""CREATE OR REPLACE VIEW raw_{table} AS
SELECT t.* EXCLUDE ({_FILE}) FROM read_parquet({listed}, union_by_name = true, filename = '{_FILE}') AS t
LEFT JOIN _file_seq AS f ON f.path = t.{_FILE}
LEFT JOIN _rewrite_marks AS m ON m.nct_id = t.nct_id
WHERE m.seq IS NULL OR coalesce(f.seq, 0) >= m.seq""")
    return statements


# The column read_parquet adds with each row's file: a name no table uses (provided_documents has `filename`).
_FILE = "_trialsync_file"


def version_locations_sql(root: Path, manifest: Manifest) -> str:
    """Where each stored version's row is: ``nct_id, version, run_id, _file, _row`` (the row's file and
    its number in it), the rows ``raw_study_versions`` shows only; reads no ``raw``. For a connection
    built from ``manifest`` (it uses the views of a rewrite's hiding, see ``_superseding_views``)."""
    listed = _sql_list(root, [schema_file("study_versions"), *manifest.files("study_versions")])
    sql = (f"SELECT t.nct_id, t.version, t.run_id, t.{_FILE} AS _file, t.file_row_number AS _row "
           f"FROM read_parquet({listed}, union_by_name = true, filename = '{_FILE}', file_row_number = true) AS t")
    if manifest.files("study_rewrites"):
        sql += (f" LEFT JOIN _file_seq AS f ON f.path = t.{_FILE} LEFT JOIN _rewrite_marks AS m ON m.nct_id = t.nct_id"
                " WHERE m.seq IS NULL OR coalesce(f.seq, 0) >= m.seq")
    return sql


def version_rows_sql(root: Path, files: Sequence[str]) -> str:
    """``study_versions`` rows of ``files`` (absolute paths) with ``_file`` and ``_row`` as above."""
    listed = _sql_list(root, [schema_file("study_versions"), *files])
    return (f"SELECT * EXCLUDE ({_FILE}, file_row_number), {_FILE} AS _file, file_row_number AS _row "
            f"FROM read_parquet({listed}, union_by_name = true, filename = '{_FILE}', file_row_number = true)")


def _values(columns: Sequence[str], rows: Sequence[tuple[str, int]]) -> str:
    """A constant table; typed even when empty."""
    if not rows:
        return f"SELECT NULL::VARCHAR AS {columns[0]}, NULL::INTEGER AS {columns[1]} WHERE false"
    body = ", ".join("('" + text.replace("'", "''") + f"', {number})" for text, number in rows)
    return f"SELECT * FROM (VALUES {body}) AS v({columns[0]}, {columns[1]})"


def ensure_schema_files(root: Path) -> None:
    for table, schema in TABLES.items():
        path = root / schema_file(table)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            pq.write_table(pa.Table.from_batches([], schema=schema), tmp)
            os.replace(tmp, path)


def build(connection: duckdb.DuckDBPyConnection, root: Path, manifest: Manifest, *, tolerant: bool = False,
          analyses: bool = True, children: bool = True) -> None:
    """Define the views in ``connection`` (a new catalog file, or an in-memory reader). ``tolerant``
    (readers of a damaged warehouse): skip a view that cannot be defined (its files are damaged), so
    the views of the other tables keep answering. ``analyses``: see ``plan_catalog``."""
    for statement in plan_catalog(root, manifest, analyses=analyses, children=children):
        try:
            connection.execute(statement)
        except duckdb.Error:
            if not tolerant:
                raise


@cache
def views_digest() -> str:
    """A fingerprint of this release's view and macro definitions, whatever the files: a catalog
    written by another release (a view changed, a column was added) is out of date, not damaged, and
    the next command rewrites it (``Warehouse.refresh_catalog``)."""
    every_table = Manifest(tuple(ManifestEntry("r", t, f"runs/r/{t}.parquet") for t in TABLES), {}, 1)
    summarised = Manifest(every_table.entries, {summary.SUMMARY_KEY: summary.COMPLETE}, 1)
    plans = [*plan_catalog(Path("/"), Manifest((), {}, 0)), *plan_catalog(Path("/"), every_table),
             *plan_catalog(Path("/"), summarised)]
    text = "\n;\n".join(plans)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def plan_digest(root: Path, manifest: Manifest) -> str:
    """A fingerprint of the views ``manifest`` implies at ``root`` (``check`` compares it)."""
    text = "\n;\n".join(plan_catalog(root, manifest))
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


# Attaches a database file to a DuckDB of the caller's for a block: (path, ATTACH options) -> a cursor
# whose own catalog is that file (``RunWriter``: its Parquet footers are cached already).
Attach = Callable[[str, str], AbstractContextManager[duckdb.DuckDBPyConnection]]


def metadata_cached(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """Keep Parquet footers in memory across the views and builds of ``con``'s database: a build binds
    each table's files several times (the raw, child and ``current_`` views), and a run builds several."""
    con.execute("SET GLOBAL parquet_metadata_cache = true")
    return con


def prepare_catalog(root: Path, manifest: Manifest, log: Sequence[Generation], *, tag: str,
                    attach: Attach | None = None) -> Path:
    """Write a complete new catalog beside the old one (fsynced); ``install_catalog`` puts it in place.

    Besides the views it keeps the effective manifest (``_manifest``, in commit order) and a copy of
    every manifest file (``_manifest_log``), so a damaged manifest file can be restored from it."""
    ensure_schema_files(root)
    tmp = root / f"{CATALOG_NAME}.tmp-{tag}"
    for leftover in (tmp, Path(f"{tmp}.wal")):
        leftover.unlink(missing_ok=True)
    try:
        with _new_catalog(tmp, attach) as con:
            _fill_catalog(con, root, manifest, log)
    except BaseException:
        for leftover in (tmp, Path(f"{tmp}.wal")):
            leftover.unlink(missing_ok=True)
        raise
    fsync_path(tmp)
    crashpoint("catalog-tmp-written")
    return tmp


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


def _create_from(con: duckdb.DuckDBPyConnection, table: str, rows: pa.Table) -> None:
    con.register("_rows", rows)
    try:
        con.execute(f"CREATE TABLE {table} AS SELECT * FROM _rows")
    finally:
        con.unregister("_rows")


def _insert_from(con: duckdb.DuckDBPyConnection, table: str, rows: pa.Table) -> None:
    con.register("_rows", rows)
    try:
        con.execute(f"INSERT INTO {table} SELECT * FROM _rows")
    finally:
        con.unregister("_rows")


def _fill_catalog(con: duckdb.DuckDBPyConnection, root: Path, manifest: Manifest, log: Sequence[Generation]) -> None:
    # Inserted as Arrow tables: ``executemany`` costs a statement per row, and the log grows by a
    # generation per commit.
    entries = manifest.entries
    _create_from(con, "_manifest", pa.table({
        "seq": pa.array(range(1, len(entries) + 1), pa.int32()),
        "run_id": pa.array([e.run_id for e in entries], pa.string()),
        "table_name": pa.array([e.table for e in entries], pa.string()),
        "path": pa.array([e.path for e in entries], pa.string()),
        "size": pa.array([e.size for e in entries], pa.int64()),
        "checksum": pa.array([e.checksum for e in entries], pa.string())}))
    _create_from(con, "_manifest_log", pa.table({
        "generation": pa.array([g.number for g in log], pa.int32()),
        "doc": pa.array([g.to_bytes().decode() for g in log], pa.string())}))
    crashpoint("catalog-tmp-created")
    meta = {**manifest.meta, "root": str(root), "schema_version": SCHEMA_VERSION,
            "generation": str(manifest.generation), "plan_digest": plan_digest(root, manifest),
            "views_digest": views_digest()}
    con.execute("CREATE TABLE _meta(key VARCHAR PRIMARY KEY, value VARCHAR)")
    _insert_from(con, "_meta", pa.table({"key": pa.array(sorted(meta), pa.string()),
                                         "value": pa.array([meta[k] for k in sorted(meta)], pa.string())}))
    build(con, root, manifest)
    con.execute("CHECKPOINT")


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


def read_catalog_log(path: Path) -> dict[int, Generation]:
    """The catalog's copy of the manifest files, by generation; the damaged ones left out."""
    con = open_catalog(path)
    try:
        rows = con.execute("SELECT generation, doc FROM _manifest_log ORDER BY generation").fetchall()
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
