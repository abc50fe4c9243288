"""Helpers of the reliability suite: what a warehouse shows, what it leaves on disk, CLI subprocesses.

``TRIALSYNC_FULL=1`` (``make test-reliability``) runs every case; without it (``make test``) each
parametrised family runs a representative few.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from warehouse import Warehouse

FULL = os.environ.get("TRIALSYNC_FULL") == "1"
BIN = Path(sys.executable).parent
TRIALSYNC = BIN / "trialsync"
DUCKDB_CLI = BIN / "duckdb"


def pick(cases: list[Any], short: list[Any]) -> list[Any]:
    """Every case in the full suite, the short list otherwise."""
    return cases if FULL else short


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(TRIALSYNC), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def sync_args(api_url: str, warehouse: Path, *extra: str) -> list[str]:
    return ["sync", "--api-url", api_url, "--warehouse", str(warehouse), "--request-interval", "0",
            "--backoff", "0.01", "--quiet", *extra]


def popen_sync(api_url: str, warehouse: Path, *extra: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([str(TRIALSYNC), *sync_args(api_url, warehouse, *extra)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **env})


def query(warehouse: Path, sql: str) -> list[tuple[Any, ...]]:
    with Warehouse(warehouse).connect() as con:
        return con.execute(sql).fetchall()


def state(warehouse: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Everything a user can see, without what differs between two equivalent runs (ids, clocks)."""
    with Warehouse(warehouse).connect() as con:
        return {name: con.execute(sql).fetchall() for name, sql in {
            "versions": """SELECT nct_id, version, content_hash, registry_updated, valid_from, valid_to, is_current,
                           is_removed, overall_status, enrollment_count, completion_date_raw, md5(raw::VARCHAR)
                           FROM study_versions ORDER BY nct_id, version""",
            "runs": """SELECT mode, scope, status, pages, studies_seen, new_studies, versions_written, unchanged,
                       quarantined, retired, changes_written, total_count, since, watermark
                       FROM sync_runs ORDER BY started_at""",
            "changes": """SELECT nct_id, from_version, to_version, path, field, category, event, old_value, new_value,
                          severity FROM changes ORDER BY ALL""",
            "run_studies": """SELECT dense_rank() OVER (ORDER BY s.started_at) AS run_no, r.nct_id, r.version
                              FROM run_studies r JOIN sync_runs s USING (run_id) ORDER BY ALL""",
            "quarantine": "SELECT nct_id, reason, md5(raw::VARCHAR) FROM quarantine ORDER BY ALL",
        }.items()}


def orphan_rows(warehouse: Path) -> dict[str, int]:
    """Rows visible to SQL whose run has no sync_runs row (a half-committed run would show here)."""
    with Warehouse(warehouse).connect() as con:
        return {table: con.execute(f"SELECT count(*) FROM raw_{table} WHERE run_id NOT IN "
                                   "(SELECT run_id FROM raw_sync_runs)").fetchall()[0][0]
                for table in ("study_versions", "run_studies", "quarantine", "changes")}


def committed_runs(warehouse: Path) -> set[str]:
    return {r[0] for r in query(warehouse, "SELECT run_id FROM sync_runs")}


def leftovers(warehouse: Path) -> list[str]:
    """Files a finished sync must not leave: uncommitted run directories, half-written catalogs,
    WAL files, temporary files and page spools."""
    committed = committed_runs(warehouse) if (warehouse / "warehouse.duckdb").exists() else set()
    if committed:  # an automatic merge's run has no sync_runs row (see warehouse.autocompact)
        manifest = Warehouse(warehouse).manifest()
        committed |= manifest.run_ids | set(manifest.retained_until())
    found = [f"runs/{d.name}" for d in (warehouse / "runs").glob("*") if d.name not in committed]
    found += [p.name for p in warehouse.glob("warehouse.duckdb.*")]
    found += [str(p.relative_to(warehouse)) for p in warehouse.rglob("*") if p.suffix in {".tmp", ".wal"}]
    if (warehouse / "spool").exists():
        found.append("spool/")
    return sorted(found)


def shell_counts(warehouse: Path) -> str:
    """Counts through the ``duckdb`` shell (1.5), opened read-only like an analyst would."""
    result = subprocess.run([str(DUCKDB_CLI), "-readonly", "-csv", "-noheader", str(warehouse / "warehouse.duckdb"),
                             "-c", "SELECT (SELECT count(*) FROM sync_runs), (SELECT count(*) FROM study_versions), "
                                   "(SELECT count(*) FROM quarantine)"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()
