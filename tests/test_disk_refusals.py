"""The file system says no: a full disk (here a file size limit, ``ulimit -f``, which fails a write the
way a full disk does, without root) at each stage of a sync, and a warehouse this user may not write.

Each is one line naming the file and what to do (exit 1), never ``OSError: [Errno 28]`` without a path
or DuckDB's "IO Error: ... has been invalidated"; nothing is committed half; what the failed write had
put on the disk is gone (a page spool's temporary kept a full disk full); the next run works.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.registry.fake_server import FakeRegistry
from tests.conftest import real_records
from tests.reliability.support import TRIALSYNC, state, sync_args


@pytest.fixture(scope="module")
def registry() -> Iterator[FakeRegistry]:
    with FakeRegistry(real_records()).start() as fake:
        yield fake


def _limited(kbytes: int) -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (kbytes * 1024, resource.RLIM_INFINITY))


def _sync(registry: FakeRegistry, root: Path, *, limit_kb: int | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(TRIALSYNC), *sync_args(registry.url, root, "--full")], capture_output=True,
                          text=True, timeout=180, preexec_fn=(lambda: _limited(limit_kb)) if limit_kb else None)


# 300 KB: the page spool's first page (about 1.3 MB) fails; 1500 KB: the run's Parquet files fit and the
# new catalog (about 2.3 MB) fails as it is checkpointed.
@pytest.mark.parametrize(("limit_kb", "failing"), [(300, "spool/"), (1500, "warehouse.duckdb.tmp-")])
def test_a_write_the_disk_refuses_is_one_line_naming_the_file_and_the_next_run_works(
        registry: FakeRegistry, tmp_path: Path, limit_kb: int, failing: str) -> None:
    reference = tmp_path / "reference"
    assert _sync(registry, reference).returncode == 0

    root = tmp_path / "wh"
    failed = _sync(registry, root, limit_kb=limit_kb)
    assert failed.returncode == 1, failed.stderr
    line = failed.stderr.strip()
    assert len(line.splitlines()) == 1, line
    assert line.startswith(f"trialsync: error: {root.resolve()}/"), line
    assert failing in line and ": a file grew past the size limit (raise the file size limit" in line, line
    assert "rerun with --debug" not in line and "Errno" not in line
    assert not list(root.rglob("*.tmp")) and not list(root.glob("*.tmp-*"))  # nothing of it stays on the disk
    assert not (root / "runs").exists() or not list((root / "runs").iterdir())  # nothing committed, nothing staged

    assert _sync(registry, root).returncode == 0
    check = subprocess.run([str(TRIALSYNC), "check", "--deep", "--warehouse", str(root)], capture_output=True,
                           text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    assert state(root) == state(reference)


@pytest.fixture
def unwritable(tmp_path: Path, registry: FakeRegistry) -> Iterator[Path]:
    """A warehouse (one run) this process may not write: read-only for a user, immutable for root."""
    root = tmp_path / "wh"
    assert _sync(registry, root).returncode == 0
    if os.geteuid() == 0:
        if shutil.which("chattr") is None or subprocess.run(["chattr", "-R", "+i", str(root)]).returncode:
            pytest.skip("root ignores permissions and chattr +i is not available here")
        undo = ["chattr", "-R", "-i", str(root)]
    else:
        subprocess.run(["chmod", "-R", "a-w", str(root)], check=True)
        undo = ["chmod", "-R", "u+w", str(root)]
    try:
        yield root
    finally:
        subprocess.run(undo, check=True)


def test_a_writing_command_on_a_warehouse_it_may_not_write_says_so_in_one_line(
        unwritable: Path, registry: FakeRegistry) -> None:
    before = {p: p.stat().st_mtime_ns for p in unwritable.rglob("*")}
    for args in (sync_args(registry.url, unwritable), ["compact", "--warehouse", str(unwritable)],
                 ["repair", "--warehouse", str(unwritable)]):
        done = subprocess.run([str(TRIALSYNC), *args], capture_output=True, text=True, timeout=120)
        line = done.stderr.strip()
        assert done.returncode == 1 and len(line.splitlines()) == 1, (args, line)
        assert line.startswith(f"trialsync: error: {unwritable.resolve()}/"), line
        assert "this user may not use it: the writing commands need the warehouse writable" in line, line
        assert "Errno" not in line and "rerun with --debug" not in line
    runs = subprocess.run([str(TRIALSYNC), "runs", "--warehouse", str(unwritable)], capture_output=True,
                          text=True, timeout=120)
    assert runs.returncode == 0 and "1 row" in runs.stdout, runs.stderr
    assert {p: p.stat().st_mtime_ns for p in unwritable.rglob("*")} == before


def test_a_full_disk_where_the_output_goes_is_not_blamed_on_the_warehouse(
        registry: FakeRegistry, tmp_path: Path) -> None:
    """``trialsync sql ... > FILE`` on a full disk: Python's write names no file, and the warehouse (on
    another disk, with room) was named as the full one ('a file under WAREHOUSE: no space left')."""
    root = tmp_path / "wh"
    assert _sync(registry, root).returncode == 0
    with open("/dev/full", "w") as full:
        done = subprocess.run([str(TRIALSYNC), "sql", "SELECT * FROM study_versions", "--format", "csv",
                               "--warehouse", str(root)], stdout=full, stderr=subprocess.PIPE, text=True,
                              timeout=120)
    line = done.stderr.strip()
    assert done.returncode == 1 and len(line.splitlines()) == 1, line
    assert line.startswith("trialsync: error: no space left on the device (writing a file this command "), line
    assert str(root.resolve()) not in line and "Errno" not in line


_SPILL = """
import os, resource, sys
import duckdb
from flows.cli.disk_errors import describe
os.chdir(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, resource.RLIM_INFINITY))
con = duckdb.connect(config={"memory_limit": "20MB", "threads": 1})
try:
    con.execute("SELECT md5(range::VARCHAR) || repeat('x', 100) AS s FROM range(2000000) ORDER BY s").fetchall()
except duckdb.Error as exc:
    print(describe(exc, "/the/warehouse"))
"""


def test_a_duckdb_spill_file_that_cannot_grow_is_named_where_it_is_not_the_warehouse(tmp_path: Path) -> None:
    """DuckDB names its spill file relative to the working directory ('".tmp/duckdb_temp_..."'): the line
    named the warehouse instead, whose disk was not the full one."""
    import sys

    done = subprocess.run([sys.executable, "-c", _SPILL, str(tmp_path)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    line = done.stdout.strip()
    assert line.startswith(f"{tmp_path.resolve()}/.tmp/duckdb_temp"), (line, done.stderr)
    assert ": a file grew past the size limit (raise the file size limit" in line and "/the/warehouse" not in line


@pytest.mark.parametrize("code", [13, 1, 30])  # EACCES, EPERM, EROFS
def test_a_refusal_of_a_file_outside_the_warehouse_gives_no_warehouse_advice(tmp_path: Path, code: int) -> None:
    """A file that is not the warehouse's (Prefect's home, or a bug writing where it should not) was
    answered 'the writing commands need the warehouse writable': advice about the wrong place, and
    nothing to find the cause with."""
    from flows.cli.disk_errors import ALLOWED, WRITABLE, describe

    warehouse = tmp_path / "wh"
    (warehouse / "runs").mkdir(parents=True)
    (tmp_path / "link").symlink_to(warehouse)
    outside = describe(OSError(code, os.strerror(code), "/root/.prefect/prefect.db"), str(warehouse))
    assert outside is not None and outside.startswith("/root/.prefect/prefect.db: "), outside
    assert outside.endswith("(not a file of the warehouse: rerun with --debug to see what used it)"), outside
    for inside in (warehouse / "runs" / "x", tmp_path / "link" / "runs" / "x"):  # also through a symbolic link
        line = describe(OSError(code, os.strerror(code), str(inside)), str(warehouse))
        assert line == f"{inside}: {os.strerror(code).lower()} ({WRITABLE if code == 30 else ALLOWED})", line


def test_a_database_error_whose_data_holds_a_disk_errors_words_is_not_taken_for_one() -> None:
    """DuckDB's errors were taken for a file system's by their words alone: a conversion of a text that
    says 'No space left on device' (a bug, with a traceback under --debug) was shown as a full disk."""
    import duckdb

    from flows.cli.disk_errors import describe

    for sql in ("SELECT 'No space left on device'::INT", "SELECT 'File too large'::DATE",
                "SELECT * FROM (SELECT 1) WHERE 'Read-only file system' > 1"):
        with pytest.raises(duckdb.Error) as caught:
            duckdb.connect().execute(sql)
        assert describe(caught.value, "/the/warehouse") is None, caught.value
