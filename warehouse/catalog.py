"""The catalog: ``warehouse.duckdb``, views and macros over the committed Parquet files.

``plan_catalog`` returns the SQL (pure, golden-tested) and ``build`` executes it; writing, installing
and opening the file is ``catalog_file``'s. The file is written in DuckDB's v1.0.0 storage format so
the ``duckdb`` shell (1.x) can open it read-only.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from warehouse import summary
from warehouse.aact import aact_views
from warehouse.analyses import analysis_views
from warehouse.manifest import RETAINED_KEY, Manifest, ManifestEntry
from warehouse.tables import CHILD_TABLES, CORE_FIELDS, TABLES, rewritten_tables
from warehouse.validity import CHANGES_WITH_DAY, versions_with_validity

__all__ = ["CATALOG_NAME", "RETAINED_KEY", "Manifest", "ManifestEntry", "plan_catalog"]

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


@cache
def schema_fingerprint(table: str) -> str:
    """Names the table's Arrow schema in this release (every file it writes has exactly that schema)."""
    return hashlib.blake2b(TABLES[table].to_string().encode(), digest_size=5).hexdigest()


def schema_file(table: str) -> str:
    """An empty Parquet file that gives each view its columns before any run wrote rows. Its name
    carries a fingerprint of the table's schema, so a column added in a new release reaches the views
    of an existing warehouse (as NULL in the runs written before it)."""
    return f"schema/{table}.v{SCHEMA_VERSION}-{schema_fingerprint(table)}.parquet"


def _union_by_name(table: str, entries: Sequence[ManifestEntry], every_footer: bool) -> bool:
    """Read a table's files unifying their columns by name only when they may differ (a file of an
    earlier release): that reads every file's footer at each bind, and a catalog binds each table
    many times, so it would make every command's cost grow with the number of files. ``every_footer``:
    always (the writer's first build, which is how it reads every committed footer once)."""
    current = schema_fingerprint(table)
    return every_footer or any(e.schema != current for e in entries)


def _files(table: str, entries: Sequence[ManifestEntry], union: bool) -> list[str]:
    """The schema file first when unifying by name (it gives the columns their order), else last:
    without ``union_by_name`` DuckDB plans with the first file's statistics, and the empty schema file's
    (0 rows) made it choose plans that exhaust memory (a lateral ``json_tree`` over one large ``raw``)."""
    paths = [e.path for e in entries]
    return [schema_file(table), *paths] if union else [*paths, schema_file(table)]


def _sql_list(root: Path, paths: Sequence[str]) -> str:
    quoted = ", ".join("'" + str(root / p).replace("'", "''") + "'" for p in paths)
    return f"[{quoted}]"


def plan_catalog(root: Path, manifest: Manifest, *, analyses: bool = True, children: bool = True,
                 every_footer: bool = False) -> list[str]:
    """The statements that define every view and macro, for the files in ``manifest``.

    ``analyses=False``: without the ``aact`` schema and the analysis views (fdaaa, registered vs
    current, status spans): the writer's own in-memory connections never read them, and binding
    them is most of the cost of a build (a sync builds several). ``children=False`` (with it): nor
    the ``<table>`` and ``current_<table>`` views of the child tables (the writer reads ``raw_*``).
    ``every_footer``: see ``_union_by_name``."""
    statements = []
    rewriting = bool(manifest.files("study_rewrites"))
    superseding = set(rewritten_tables()) if rewriting else set()
    for table in TABLES:
        if table not in superseding:
            entries = [e for e in manifest.entries if e.table == table]
            union = _union_by_name(table, entries, every_footer)
            statements.append(
                f"CREATE OR REPLACE VIEW raw_{table} AS SELECT * FROM read_parquet("
                f"{_sql_list(root, _files(table, entries, union))}, union_by_name = {str(union).lower()})"
            )
    if rewriting:
        statements += _superseding_views(root, manifest, [t for t in TABLES if t in superseding], every_footer)
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
SELECT run_id, attempted_at, watch, channel, change_id, nct_id, severity, message_id, status, attempt, error,
       retry_at
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
        f"""CREATE OR REPLACE MACRO changes_between(a, b) AS TABLE
SELECT * FROM {CHANGES_WITH_DAY}
WHERE changed_on BETWEEN CAST(a AS DATE) AND CAST(b AS DATE)""",
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


_DEFINED = re.compile(r"CREATE OR REPLACE (?:VIEW|MACRO) ([\w.]+)")

# Views that read files (or list them) and nothing else of the catalog: redefining one leaves every
# view over it as it was, when its columns stay the same.
_FILE_VIEWS = re.compile(r"raw_\w+|_file_seq|_run_seq")


def view_name(statement: str) -> str:
    """The view or macro a ``plan_catalog`` statement defines (another statement: itself)."""
    match = _DEFINED.match(statement)
    return statement if match is None else match.group(1)


def changed_statements(root: Path, previous: Manifest, manifest: Manifest) -> list[str] | None:
    """The statements that turn the catalog of ``previous`` into that of ``manifest`` (in plan order),
    or None when more than the file views differ (a view appears, goes, or is defined otherwise)."""
    old, new = plan_catalog(root, previous), plan_catalog(root, manifest)
    if [view_name(s) for s in old] != [view_name(s) for s in new]:
        return None
    changed = [n for o, n in zip(old, new, strict=True) if o != n]
    if not all(_FILE_VIEWS.fullmatch(view_name(s)) for s in changed):
        return None
    return changed


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


def _superseding_views(root: Path, manifest: Manifest, tables: Sequence[str], every_footer: bool) -> list[str]:
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
        entries = [e for e in manifest.entries if e.table == table]
        union = _union_by_name(table, entries, every_footer)
        listed = _sql_list(root, _files(table, entries, union))
        unify = str(union).lower()
        statements.append(f"""CREATE OR REPLACE VIEW raw_{table} AS
SELECT t.* EXCLUDE ({_FILE}) FROM read_parquet({listed}, union_by_name = {unify}, filename = '{_FILE}') AS t
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
          analyses: bool = True, children: bool = True, every_footer: bool = False) -> None:
    """Define the views in ``connection`` (a new catalog file, or an in-memory reader). ``tolerant``
    (readers of a damaged warehouse): skip a view that cannot be defined (its files are damaged), so
    the views of the other tables keep answering. ``analyses``, ``every_footer``: see ``plan_catalog``."""
    for statement in plan_catalog(root, manifest, analyses=analyses, children=children, every_footer=every_footer):
        try:
            connection.execute(statement)
        except duckdb.Error:
            if not tolerant:
                raise


# What the catalog holds besides the views, in ``views_digest`` so that another release rewrites a catalog
# of this one before checking it (it would otherwise call the missing manifest copies damage).
CATALOG_LAYOUT = "manifest copies: the generations after the newest checkpoint"


@cache
def views_digest() -> str:
    """A fingerprint of this release's view and macro definitions, whatever the files: a catalog
    written by another release (a view changed, a column was added) is out of date, not damaged, and
    the next command rewrites it (``Warehouse.refresh_catalog``)."""
    every_table = Manifest(tuple(ManifestEntry("r", t, f"runs/r/{t}.parquet") for t in TABLES), {}, 1)
    summarised = Manifest(every_table.entries, {summary.SUMMARY_KEY: summary.COMPLETE}, 1)
    current = Manifest(tuple(ManifestEntry("r", t, f"runs/r/{t}.parquet", schema=schema_fingerprint(t))
                             for t in TABLES), {}, 1)
    plans = [*plan_catalog(Path("/"), Manifest((), {}, 0)), *plan_catalog(Path("/"), every_table),
             *plan_catalog(Path("/"), summarised), *plan_catalog(Path("/"), current)]
    text = "\n;\n".join([CATALOG_LAYOUT, *plans])
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def plan_digest(root: Path, manifest: Manifest) -> str:
    """A fingerprint of the views ``manifest`` implies at ``root`` (``check`` compares it)."""
    text = "\n;\n".join(plan_catalog(root, manifest))
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()

