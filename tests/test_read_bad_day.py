"""The read-only commands on a bad day: damaged or missing warehouse files, a catalog that is not one, a
directory that is not a warehouse, a read-only copy. Each answers when the damage is elsewhere, and
otherwise says what is wrong in one line (never a traceback), and none of them changes a file.

One small warehouse (two runs of real records: a first sync, then a day on which six studies change
status and two appear) is built once; each case damages a copy and runs the real command.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from pipeline.registry.fake_server import FakeRegistry
from tests.care_support import _days, damage
from tests.conftest import fast_sync, nct
from tests.reliability.support import TRIALSYNC
from warehouse import Warehouse
from warehouse import manifest as manifests

DAMAGE = ("delete", "truncate", "footer")
DAMAGED_LINE = "trialsync: error: query failed: the warehouse is damaged ("
POINTER = "see `trialsync check`, then `trialsync repair`"


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("bad-day") / "wh"
    days = _days()[:2]
    for day in days:
        with FakeRegistry(day).start() as registry:
            fast_sync(registry, root, full=True, page_size=50)
    watchlist = root.parent / "watch.yaml"
    watchlist.write_text("channels:\n  feed:\n    type: feed\n    path: feed.xml\n"
                         "watches:\n  - name: all\n    channels: [feed]\n    studies:\n      sponsors: [a]\n")
    return {"root": root.resolve(), "changed": nct(days[1][0]), "watchlist": str(watchlist)}


@pytest.fixture(scope="module")
def _pointed_copy(two_runs: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A copy of the two runs whose first reader pointed its catalog at the copy's place, and a byte
    copy of that state to put back there before each test."""
    base = tmp_path_factory.mktemp("bad-day-copy")
    target = base / "wh"
    shutil.copytree(two_runs["root"], target)
    Warehouse(target).connect().close()  # a copy: the first reader points its catalog here
    return target.resolve(), shutil.copytree(target, base / "as-pointed", symlinks=True)


@pytest.fixture
def copy(_pointed_copy: tuple[Path, Path]) -> Path:
    """A fresh copy of the two runs for each test: the same bytes put back at the same place (its
    catalog names that place), so the catalog is not rewritten once per case."""
    target, as_pointed = _pointed_copy
    shutil.rmtree(target)
    shutil.copytree(as_pointed, target, symlinks=True)
    return target


class Result(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


Trialsync = Callable[..., Result]


@pytest.fixture
def trialsync(cli: Callable[..., tuple[int, str, str]]) -> Trialsync:
    """``trialsync ARGS --warehouse ROOT`` in this process: its exit code, stdout and stderr."""
    return lambda args, root: Result(*cli(*args, "--warehouse", str(root)))


def commands(two_runs: dict[str, Any], out: Path) -> dict[str, list[str]]:
    """Every read-only command, and what each reads (the table whose damaged file it must name)."""
    return {
        "sql": ["sql", "SELECT count(*) AS n FROM changes", "--format", "csv"],
        "sql-aact": ["sql", "SELECT count(*) AS n FROM aact.studies", "--format", "csv"],
        "changes": ["changes", "--format", "csv"],
        "history": ["history", two_runs["changed"], "--format", "json"],
        "runs": ["runs", "--format", "csv"],
        "report": ["report", "-o", str(out)],
        "compliance": ["compliance", "--as-of", "2025-12-01", "--format", "csv"],
        "alerts list": ["alerts", "list", "--config", two_runs["watchlist"], "--format", "csv"],
    }


READS = {"sql": "changes", "sql-aact": "study_versions", "changes": "changes", "history": "changes",
         "runs": "sync_runs", "report": "changes", "compliance": "fdaaa_inputs", "alerts list": "study_versions"}
NOT_READ = "see_also_links"  # a table none of them reads (only the aact view of the same name does)


def second_run_file(root: Path, table: str) -> Path:
    [path] = [e.path for e in manifests.read_log(root)[1].entries if e.table == table]
    return root / path


def harm(path: Path, kind: str) -> None:
    if kind == "footer":  # bytes of the Parquet footer (just before its length and the closing magic)
        data = bytearray(path.read_bytes())
        for i in range(len(data) - 40, len(data) - 24):
            data[i] ^= 0xFF
        path.write_bytes(bytes(data))
    else:
        damage(path, kind)


def files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("kind", DAMAGE)
@pytest.mark.parametrize("command", list(READS))
def test_a_read_command_names_a_damaged_file_it_reads_and_points_at_repair(
        command: str, kind: str, two_runs: dict[str, Any], copy: Path, tmp_path: Path, trialsync: Trialsync) -> None:
    """changes, history, runs, report, compliance and alerts list used to end in DuckDB's own error
    (``IOException: IO Error: No files found ...``, ``Error: don't know what type``) where sql said
    which file is damaged and what to do."""
    target = second_run_file(copy, READS[command])
    harm(target, kind)
    before = files(copy)
    out = trialsync(commands(two_runs, tmp_path / "r.html")[command], copy)
    assert out.returncode == 1, (out.stdout, out.stderr)
    [line] = out.stderr.splitlines()
    assert line.startswith(f"{DAMAGED_LINE}{target.relative_to(copy)}: "), line
    assert f"table {READS[command]}; run " in line and line.endswith(POINTER), line
    assert files(copy) == before  # a reader changes nothing
    assert not (tmp_path / "r.html").exists()


@pytest.mark.parametrize("command", list(READS))
def test_a_read_command_answers_as_before_when_the_damaged_file_is_of_a_table_it_does_not_read(
        command: str, two_runs: dict[str, Any], copy: Path, tmp_path: Path, trialsync: Trialsync) -> None:
    """alerts list used to refuse any damage anywhere (it read through the writer's strict view)."""
    args = commands(two_runs, tmp_path / "r.html")[command]
    intact = trialsync(args, copy)
    assert intact.returncode == 0 and intact.stderr == "", intact.stderr
    second_run_file(copy, NOT_READ).unlink()
    before = files(copy)
    out = trialsync(args, copy)
    assert out.returncode == 0, out.stderr
    assert out.stdout == intact.stdout and out.stderr == ""
    assert files(copy) == before


def _sql(trialsync: Trialsync, root: Path, query: str) -> Result:
    return trialsync(["sql", query, "--format", "csv"], root)


@pytest.mark.parametrize("catalog", ["behind", "missing"])
def test_readers_answer_from_the_newest_generation_when_its_manifest_file_and_the_catalog_both_lost_it(
        catalog: str, copy: Path, trialsync: Trialsync) -> None:
    """The newest manifest file lost and the catalog behind it (or gone): readers used to answer silently
    from the older generation although the run's _COMMITTED marker says it committed (check names it)."""
    from warehouse import catalog_file

    log = manifests.read_log(copy)
    if catalog == "behind":
        catalog_file.write_catalog(copy, manifests.fold(log[:1]), log[:1], tag="test")
    else:
        (copy / "warehouse.duckdb").unlink()
    (copy / "manifest/00000002.json").unlink()
    before = files(copy)
    out = _sql(trialsync, copy, "SELECT count(*) AS n FROM sync_runs")
    assert out.returncode == 0 and out.stdout.split() == ["n", "2"], out
    [warning] = out.stderr.splitlines()
    assert warning.startswith("trialsync: warning: manifest generation 2 is missing"), warning
    assert "_COMMITTED marker keeps a good copy" in warning and "trialsync repair" in warning
    assert files(copy) == before


def test_a_reader_says_when_it_can_only_answer_from_an_older_generation(copy: Path, trialsync: Trialsync) -> None:
    """A manifest file lost with no copy anywhere (catalog gone, the run's marker gone): the reader used
    to answer from what the copies held, here nothing at all, without a word."""
    log = manifests.read_log(copy)
    (copy / "warehouse.duckdb").unlink()
    (copy / "manifest/00000001.json").unlink()
    (copy / "runs" / log[0].run_id / "_COMMITTED").unlink()
    out = _sql(trialsync, copy, "SELECT count(*) AS n FROM sync_runs")
    assert out.returncode == 0 and out.stdout.split() == ["n", "0"], out
    [warning] = out.stderr.splitlines()
    assert warning == ("trialsync: warning: manifest generation 1 to 2 committed but cannot be read and no good copy "
                       "is kept: answering from generation 0, an older state; run `trialsync check`, then "
                       "`trialsync repair`")


@pytest.mark.parametrize("kind", ["zero bytes", "a SQLite file", "text"])
def test_a_catalog_that_is_not_one_leaves_readers_answering_and_untouched(
        kind: str, copy: Path, trialsync: Trialsync) -> None:
    """They answered, but took the writer's lock to try a rewrite that could not happen, writing the
    lock file on every read; now they leave the warehouse as it is and say what is wrong."""
    import sqlite3

    intact = _sql(trialsync, copy, "SELECT count(*) AS n FROM changes")
    path = copy / "warehouse.duckdb"
    path.unlink()
    if kind == "zero bytes":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("not a database\n" * 100)
    else:
        with sqlite3.connect(path) as other:
            other.execute("CREATE TABLE notes (text TEXT)")
    before = files(copy)
    out = _sql(trialsync, copy, "SELECT count(*) AS n FROM changes")
    assert out.returncode == 0 and out.stdout == intact.stdout
    [warning] = out.stderr.splitlines()
    assert warning.startswith("trialsync: warning: warehouse.duckdb is not a readable catalog (")
    assert warning.endswith("answering from the manifest; `trialsync repair` rebuilds it")
    assert files(copy) == before


def test_a_garbage_manifest_file_without_a_catalog_is_answered_from_its_runs_marker(
        copy: Path, trialsync: Trialsync) -> None:
    intact = _sql(trialsync, copy, "SELECT count(*) AS n FROM study_versions")
    (copy / "warehouse.duckdb").unlink()
    (copy / "manifest/00000002.json").write_text('{"generation": 2, "files": [')
    before = files(copy)
    out = _sql(trialsync, copy, "SELECT count(*) AS n FROM study_versions")
    assert out.returncode == 0 and out.stdout == intact.stdout
    assert "manifest generation 2 is missing or damaged" in out.stderr and "trialsync repair" in out.stderr
    assert files(copy) == before


@pytest.mark.parametrize("place", ["file", "other directory"])
def test_a_warehouse_option_that_names_no_warehouse_says_what_it_names(
        place: str, tmp_path: Path, two_runs: dict[str, Any], trialsync: Trialsync) -> None:
    """It used to say "no warehouse at X (run `trialsync sync` first)", which a sync then refused too."""
    target = tmp_path / "target"
    if place == "file":
        target.write_text("hello\n")
        said = f"trialsync: error: {target} is a file, not a warehouse directory"
    else:
        target.mkdir()
        (target / "notes.txt").write_text("hello\n")
        said = (f"trialsync: error: {target} is not a trialsync warehouse "
                "(it holds neither warehouse.duckdb nor manifest/)")
    before = files(tmp_path)
    for name, args in commands(two_runs, tmp_path / "r.html").items():
        if name == "alerts list" and place != "file":
            continue  # lists the watches without a warehouse, as before the first sync
        out = trialsync(args, target)
        assert (out.returncode, out.stderr.splitlines()) == (2, [said]), (args, out)
    assert files(tmp_path) == before


def test_read_commands_work_on_a_read_only_copy(tmp_path: Path, two_runs: dict[str, Any]) -> None:
    """A read-only copy (or mount) of a warehouse moved here: nothing can be rewritten, the views are
    built in memory; a damaged file is still named. Run as a user the permissions bind (root without
    the capability to override them)."""
    target = tmp_path / "ro"
    shutil.copytree(two_runs["root"], target)  # its catalog still names the place it was built at
    second_run_file(target, "changes").unlink()
    prefix: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("root, and no setpriv to give up the override of file permissions")
        prefix = ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
                  "--bounding-set=-dac_override,-dac_read_search"]
    subprocess.run(["chmod", "-R", "a-w", str(target)], check=True)
    try:
        before = files(target)
        base = [*prefix, str(TRIALSYNC)]
        ok = subprocess.run([*base, "sql", "SELECT count(*) AS n FROM studies", "--format", "csv", "--warehouse",
                             str(target)], capture_output=True, text=True, timeout=180)
        assert ok.returncode == 0 and ok.stdout.split() == ["n", "32"] and ok.stderr == "", ok
        bad = subprocess.run([*base, "changes", "--warehouse", str(target)], capture_output=True, text=True,
                             timeout=180)
        assert bad.returncode == 1 and bad.stderr.startswith(DAMAGED_LINE) and bad.stderr.count("\n") == 1, bad
        assert files(target) == before
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(target)], check=True)


def test_a_missing_schema_file_is_damage_that_check_names_and_repair_writes_again(
        copy: Path, two_runs: dict[str, Any], trialsync: Trialsync, tmp_path: Path) -> None:
    """A view of this release's catalog reads its table's schema file: without it a read failed with
    DuckDB's "No files found" (sql: exit 2, as if the query were wrong) while check said ok and repair
    had nothing to do."""
    from warehouse import catalog
    from warehouse.check import check
    from warehouse.repair import repair

    args = commands(two_runs, tmp_path / "r.html")
    intact = trialsync(args["runs"], copy)
    schema = catalog.schema_file("changes")
    (copy / schema).unlink()
    for name in ("sql", "changes", "history"):
        out = trialsync(args[name], copy)
        assert out.returncode == 1 and out.stderr.splitlines() == [
            f"{DAMAGED_LINE}{schema}: schema file missing; table changes): {POINTER}"], (name, out)
    assert trialsync(args["runs"], copy) == intact  # sync_runs' views read no file of changes
    assert [(p.kind, p.path) for p in check(copy).problems] == [("schema", schema)]
    assert repair(copy).changed
    assert (copy / schema).exists() and check(copy, deep=True).ok


@pytest.mark.parametrize("query", ["SELECT error('my own failure')", "SELECT 'x'::INTEGER + count(*) FROM changes",
                                   "SELECT * FROM read_parquet('/nonexistent/x.parquet')"])
def test_a_query_failing_on_its_own_is_not_blamed_on_damage_to_a_table_it_does_not_read(
        query: str, copy: Path, trialsync: Trialsync) -> None:
    """Any invalid-input or I/O error of a user's query ran ``check`` and, finding some damaged file of a
    table the query never read, said "the warehouse is damaged" (exit 1) instead of the query's error (2)."""
    intact = _sql(trialsync, copy, query)
    second_run_file(copy, NOT_READ).unlink()
    out = _sql(trialsync, copy, query)
    assert (out.returncode, out.stderr) == (intact.returncode, intact.stderr)
    assert out.returncode == 2 and "damaged" not in out.stderr, out.stderr



@pytest.mark.parametrize("command", ["changes", "history", "runs"])
def test_a_view_left_out_for_a_damaged_file_is_named_even_where_the_cli_has_a_function_of_its_name(
        command: str, two_runs: dict[str, Any], copy: Path, tmp_path: Path, trialsync: Trialsync) -> None:
    """Views built in memory (here: a catalog that is not one) leave out a damaged file's table; DuckDB's
    replacement scan then found the CLI's Python function ``changes`` in the calling frame and failed
    with 'Python Object "changes" of type "function" found on line ".../querying.py"' (exit 2)."""
    (copy / "warehouse.duckdb").write_bytes(b"")
    target = second_run_file(copy, READS[command])
    target.unlink()
    out = trialsync(commands(two_runs, tmp_path / "r.html")[command], copy)
    *_, line = out.stderr.splitlines()
    assert out.returncode == 1, out
    assert line.startswith(f"{DAMAGED_LINE}{target.relative_to(copy)}: ") and line.endswith(POINTER), line
    assert "Python Object" not in out.stderr
