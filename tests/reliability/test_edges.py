"""Closed to misuse: bad input gets one line, ``trialsync sql`` cannot write or read outside the
warehouse, URLs and paths from flags and the environment are checked, secrets are never shown.

The CLI runs in-process here (``flows.cli.main``, the console script's entry point) so that many
cases stay cheap; ``tests/test_cli.py`` covers the same door through real subprocesses.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from flows.cli import main
from pipeline.errors import UsageError, WarehouseError
from pipeline.redact import redact
from pipeline.registry.fake_server import FakeRegistry
from tests.conftest import fast_sync, real_records
from tests.reliability.support import pick
from warehouse import Warehouse
from warehouse.locks import exclusive_lock

pytestmark = pytest.mark.reliability
SECRET = "s3cret"


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(args)
        raise SystemExit(0)
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def one_line_error(code: int, out: str, err: str, message: str) -> None:
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith(f"trialsync: error: {message}"), err
    assert "Traceback" not in err and SECRET not in out + err


BAD_INPUT: list[tuple[list[str], str]] = [
    (["sync", "--ids", "NCT0576673X"], "invalid NCT id 'NCT0576673X' (expected NCT followed by up to 8 digits"),
    (["sync", "--ids", "NCT00000000"], "invalid NCT id 'NCT00000000' (expected NCT followed by up to 8 digits, "
                                         "not all zeros)"),
    (["sync", "--query", "NCT05766735 NCT07011004"], "--query holds only NCT ids"),
    (["sync", "--retry-budget", "-1"], "--retry-budget must be a number of seconds >= 0, not -1.0"),
    (["sync", "--ids", "NCT05766735;DROP TABLE"], "invalid NCT id 'NCT05766735;DROP'"),
    (["sync", "--since", "2026-02-30"], "--since expects a date as YYYY-MM-DD, got '2026-02-30'"),
    (["sync", "--since", "20260101"], "--since expects a date as YYYY-MM-DD, got '20260101'"),
    (["sync", "--since", "2999-01-01"], "--since 2999-01-01 is in the future"),
    (["sync", "--full", "--since", "2026-01-01"], "--full and --since exclude each other"),
    (["sync", "--status", "RECRUITING,PAUSED"], "unknown status 'PAUSED'"),
    (["sync", "--page-size", "0"], "--page-size must be between 1 and 1000"),
    (["sync", "--page-size", "ten"], "Invalid value for '--page-size'"),
    (["sync", "--bogus"], "No such option: --bogus (see `trialsync sync --help`)"),
    (["sync", "--lock-timeout", "-1"], "--lock-timeout must be a number of seconds >= 0, not -1.0"),
    (["sync", "--request-interval", "nan"], "--request-interval must be a number of seconds >= 0, not nan"),
    (["sync", "--backoff", "inf"], "--backoff must be a number of seconds >= 0, not inf"),
    (["sync", "--max-attempts", "0"], "--max-attempts must be >= 1"),
    # backfill checks the same flags the same way (it once let a negative --lock-timeout through)
    (["backfill", "NCT05766735", "--lock-timeout", "-1"], "--lock-timeout must be a number of seconds >= 0, not -1.0"),
    (["backfill", "NCT05766735", "--backoff", "nan"], "--backoff must be a number of seconds >= 0, not nan"),
    (["backfill", "NCT05766735", "--retry-budget", "-2"], "--retry-budget must be a number of seconds >= 0, not -2.0"),
    (["backfill", "NCT05766735", "--max-attempts", "0"], "--max-attempts must be >= 1"),
    (["sync", "--condition", "leukemia\n--full"], "--condition must not contain control characters"),
    (["sync", "--query", "x" * 1001], "--query is longer than 1000 characters"),
    (["sync", "--api-url", f"http://alice:{SECRET}@127.0.0.1:9/api/v2"], "--api-url must not contain credentials"),
    (["sync", "--api-url", f"https://clinicaltrials.gov/api/v2?api_key={SECRET}"],
     "--api-url must be a base URL without ?query or #fragment, got 'https://clinicaltrials.gov/api/v2?api_key=***'"),
    (["sync", "--api-url", "file:///etc/passwd"], "--api-url must be an http(s) URL, got 'file:///etc/passwd'"),
    (["sync", "--api-url", "https:///api/v2"], "--api-url has no host"),
    (["sync", "--api-url", "https://clinicaltrials.gov:99999/api/v2"], "--api-url has an invalid port"),
    (["sync", "--api-url", "https://clinicaltrials.gov/api/v2 --full"], "--api-url must not contain spaces"),
    (["sql", "SELECT 1", "--format", "xml"], "--format must be one of table, json, csv, not 'xml'"),
    (["sql"], "Missing argument 'statement'."),
    (["runs", "--limit", "many"], "Invalid value for '--limit'"),
    (["load-bulk", "ctg-studies.json.zip", "--workers", "0"], "--workers must be from 1 to 256, got 0"),
    (["changes", "--warehouse", "/nonexistent/w"], "no warehouse at /nonexistent/w (run `trialsync sync` first)"),
    (["rederive", "--warehouse", "/dev/null/w"], "warehouse /dev/null/w cannot be made: /dev/null is a file"),
    (["load-bulk", "ctg-studies.json.zip", "--workers", "100000"], "--workers must be from 1 to 256, got 100000"),
    (["bogus-command"], "No such command 'bogus-command'."),
    # lock timeouts: every command that takes the lock (NaN made alerts run and load-bulk wait for ever)
    (["alerts", "run", "--config", "w.yaml", "--lock-timeout", "nan"],
     "--lock-timeout must be a number of seconds >= 0, not nan"),
    (["alerts", "run", "--config", "w.yaml", "--lock-timeout", "-5"],
     "--lock-timeout must be a number of seconds >= 0, not -5.0"),
    (["load-bulk", "ctg-studies.json.zip", "--lock-timeout", "inf"],
     "--lock-timeout must be a number of seconds >= 0, not inf"),
    (["sync", "--lock-timeout", "1e10"],
     "--lock-timeout must be a number of seconds >= 0 and <= 86400, not 10000000000.0"),
    # an empty value is refused, never read as "not given" (sync --ids "" synced the whole registry)
    (["sync", "--ids", ""], "--ids must not be empty"),
    (["backup", ""], "an argument is empty"),
    (["history", " "], "an argument is empty"),
    (["sync", "--query="], "--query must not be empty"),
    (["sync", "--since", " "], "--since must not be empty"),
    (["compliance", "--newly-overdue", "--since", ""], "--since must not be empty"),
    (["changes", "--nct", ""], "--nct must not be empty"),
    (["report", "-o", "r.html", "--nct", ""], "--nct must not be empty"),
    (["sql", "SELECT 1", "--as-of", ""], "--as-of must not be empty"),
    (["alerts", "run", "--config", "w.yaml", "--warehouse", ""], "--warehouse must not be empty"),
    (["backfill", "--all", "--api-url", ""], "--api-url must not be empty"),
    # dates the stored history cannot speak for (days late that have not passed)
    (["compliance", "--as-of", "2999-01-01"], "--as-of 2999-01-01 is in the future"),
    (["sql", "SELECT 1", "--as-of", "2999-01-01"], "--as-of 2999-01-01 is in the future"),
    # numbers past what a timer, a date or a BIGINT holds
    (["changes", "--limit", "9223372036854775808"], "Invalid value for '--limit': Input should be less than or "
                                                    "equal to 1000000000"),
    (["compliance", "--limit", "99999999999999999999"], "Invalid value for '--limit'"),
    (["sync", "--request-interval", "1e10"], "--request-interval must be a number of seconds >= 0 and <= 86400"),
    (["backfill", "--all", "--request-interval", "1e10"], "--request-interval must be a number of seconds >= 0 and"),
    (["sync", "--max-attempts", "1000000"], "--max-attempts must be >= 1 and <= 100"),
    (["compact", "--keep-hours", "nan"], "--keep-hours must be a number of hours from 0 to 8760, not nan"),
    (["compact", "--keep-hours", "1e308"], "--keep-hours must be a number of hours from 0 to 8760, not 1e+308"),
    (["fake-registry", "--port", "99999"], "Invalid value for '--port': Input should be less than or equal to 65535"),
    (["repair", "--request-interval", "nan"], "--request-interval must be a number of seconds >= 0, not nan"),
    (["repair", "--api-url", "garbage"], "--api-url must be an http(s) URL, got 'garbage'"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUT, ids=lambda v: str(v)[:40] if isinstance(v, str) else None)
def test_bad_input_gets_one_line_and_exit_2(args: list[str], message: str, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    monkeypatch.setenv("TRIALSYNC_API_URL", "http://127.0.0.1:9/api/v2")  # never the real registry
    warehouse = [] if args[0] not in {"sync", "sql", "runs", "backfill"} or len(args) == 1 else [
        "--warehouse", str(tmp_path)]
    one_line_error(*run_main(args + warehouse, capsys), message)


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("TRIALSYNC_API_URL", "ftp://mirror.example.org/api/v2", "--api-url must be an http(s) URL"),
    ("TRIALSYNC_API_URL", f"https://bob:{SECRET}@mirror.example.org/api/v2", "--api-url must not contain credentials"),
    ("TRIALSYNC_WAREHOUSE", "FILE", "warehouse {path} exists and is not a directory"),
    ("TRIALSYNC_WAREHOUSE", "FOREIGN", "{path} is not a trialsync warehouse and is not empty"),
    ("TRIALSYNC_API_URL", "http://[::1", "--api-url is not a URL (Invalid IPv6 URL): 'http://[::1'"),
    # read only after the run's commit: checked before it starts
    ("TRIALSYNC_AUTOCOMPACT", "garbage", "TRIALSYNC_AUTOCOMPACT must be 'off' or a whole number of 2 or more"),
    ("TRIALSYNC_AUTOCOMPACT_KEEP_HOURS", "nan", "TRIALSYNC_AUTOCOMPACT_KEEP_HOURS must be a number of hours"),
    ("TRIALSYNC_CRASH_AT", "garbage", "TRIALSYNC_CRASH_AT='garbage': unknown checkpoint"),
])
def test_urls_and_paths_from_the_environment_are_checked_before_anything_runs(
        variable: str, value: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIALSYNC_API_URL", "http://127.0.0.1:9/api/v2")
    if value in {"FILE", "FOREIGN"}:
        path = tmp_path / "place"
        if value == "FILE":
            path.write_text("a file")
        else:
            (path / "runs").mkdir(parents=True)  # someone's own runs/ folder: a sync would clean it up
            (path / "runs" / "notes.txt").write_text("mine")
        value, message = str(path), message.format(path=path)
    monkeypatch.setenv(variable, value)
    one_line_error(*run_main(["sync"], capsys), message)
    if variable == "TRIALSYNC_WAREHOUSE":  # untouched
        place = tmp_path / "place"
        kept = place.read_text() if place.is_file() else (place / "runs" / "notes.txt").read_text()
        assert kept in {"a file", "mine"}


@pytest.mark.parametrize("timeout", [float("nan"), float("-inf"), -5.0])
def test_the_lock_refuses_a_timeout_that_is_not_a_number_of_seconds(timeout: float, tmp_path: Path) -> None:
    # NaN compares false with every clock reading: a run waiting for a held lock would wait for ever
    with pytest.raises(UsageError, match="a lock timeout must be a number of seconds >= 0"), \
            exclusive_lock(tmp_path / "writer.lock", "test", timeout):
        pass


def test_a_writer_refuses_a_bad_autocompact_setting_before_its_run_starts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIALSYNC_AUTOCOMPACT_KEEP_HOURS", "soon")  # a deployment's flow meets it here
    with pytest.raises(UsageError, match="TRIALSYNC_AUTOCOMPACT_KEEP_HOURS must be a number of hours"), \
            Warehouse(tmp_path / "wh").writer("run-1"):
        pass
    assert not (tmp_path / "wh").exists()


@pytest.fixture(scope="module")
def synced(prefect_api: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    with FakeRegistry(real_records()[:40]).start() as registry:
        warehouse = tmp_path_factory.mktemp("sql") / "wh"
        fast_sync(registry, warehouse)
        yield warehouse


READ_ONLY = ["EXPLAIN ANALYZE COPY (SELECT 1) TO '{wh}/runs/out.csv'", "COPY studies TO '{wh}/runs/out.csv'",
             "EXPORT DATABASE '{wh}/runs/export'", "PRAGMA enable_profiling", "LOAD httpfs", "INSTALL httpfs",
             "DETACH warehouse", "USE memory", "CHECKPOINT", "VACUUM", "CREATE MACRO m() AS 1",
             "SELECT 1; ATTACH '{wh}/other.duckdb'", "UPDATE raw_sync_runs SET status = 'x'"]
OUTSIDE = ["SELECT * FROM read_text('/etc/passwd')", "SELECT * FROM read_csv('{outside}/secret.csv')",
           "SELECT * FROM read_text('{wh}/runs/../../outside/secret.csv')", "SELECT * FROM glob('/*')",
           "SELECT * FROM read_blob('/proc/self/environ')", "SELECT * FROM read_parquet('https://example.org/x.parquet')",
           "SELECT * FROM duckdb_secrets()"]


@pytest.mark.parametrize("statement", pick(READ_ONLY, READ_ONLY[:3]))
def test_trialsync_sql_refuses_anything_but_a_query(statement: str, synced: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(["sql", statement.format(wh=synced), "--warehouse", str(synced)], capsys)
    one_line_error(code, out, err, "trialsync sql is read-only")
    assert not (synced / "runs" / "out.csv").exists() and not (synced / "runs" / "export").exists()


@pytest.mark.parametrize("statement", pick(OUTSIDE, OUTSIDE[:3]))
def test_trialsync_sql_cannot_read_files_or_urls_outside_the_warehouse(
        statement: str, synced: Path, capsys: pytest.CaptureFixture[str]) -> None:
    outside = synced.parent / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "secret.csv").write_text(f"password\n{SECRET}\n")
    code, out, err = run_main(["sql", statement.format(wh=synced, outside=outside), "--warehouse", str(synced)], capsys)
    one_line_error(code, out, err, "trialsync sql reads only the warehouse: Permission Error")


@pytest.mark.parametrize("statement", [
    "SELECT count(*) FROM studies", "SELECT count(*) FROM studies_as_of('2030-01-01')",
    "EXPLAIN SELECT * FROM study_versions", "SUMMARIZE SELECT enrollment_count FROM studies",
    "SELECT current_setting('enable_external_access')"])
def test_trialsync_sql_still_answers_queries_also_in_a_moved_warehouse(
        statement: str, synced: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    moved = tmp_path / "moved"
    shutil.copytree(synced, moved)
    for warehouse in (synced, moved):
        code, out, err = run_main(["sql", statement, "--format", "csv", "--warehouse", str(warehouse)], capsys)
        assert code == 0 and err == "", err
        assert len(out.splitlines()) >= 2
    if "count(*) FROM studies" in statement:
        assert out.splitlines()[1] == "40"


def test_a_sync_refuses_a_directory_that_is_not_a_warehouse_and_touches_nothing(
        prefect_api: str, tmp_path: Path) -> None:
    foreign = tmp_path / "home"
    (foreign / "runs").mkdir(parents=True)
    (foreign / "runs" / "2024-marathon.gpx").write_text("mine")
    with FakeRegistry(real_records()[:5]).start() as registry, \
            pytest.raises(UsageError, match="is not a trialsync warehouse and is not empty"):
        fast_sync(registry, foreign)
    assert sorted(p.name for p in foreign.rglob("*")) == ["2024-marathon.gpx", "runs"]


@pytest.mark.parametrize("lost", [("warehouse.duckdb",), ("warehouse.duckdb", "manifest")])
def test_a_deleted_catalog_never_makes_a_sync_delete_committed_history(
        lost: tuple[str, ...], prefect_api: str, warehouse_dir: Path) -> None:
    with FakeRegistry(real_records()[:5]).start() as registry:
        fast_sync(registry, warehouse_dir)
        runs = sorted(p.name for p in (warehouse_dir / "runs").iterdir())
        for name in lost:
            shutil.rmtree(warehouse_dir / name) if name == "manifest" else (warehouse_dir / name).unlink()
        message = r"warehouse.duckdb is missing but .* holds 1 committed run" if "manifest" in lost else \
            r"damaged \(warehouse.duckdb: catalog missing .*trialsync repair"
        with pytest.raises(WarehouseError, match=message):
            fast_sync(registry, warehouse_dir)
    assert sorted(p.name for p in (warehouse_dir / "runs").iterdir()) == runs
    assert (warehouse_dir / "runs" / runs[0] / "study_versions.parquet").exists()


def test_a_failing_sync_through_a_proxy_with_credentials_never_shows_them(
        prefect_api: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(name, f"http://alice:{SECRET}@127.0.0.1:9")
    for name in ("NO_PROXY", "no_proxy"):  # Prefect's own API on loopback goes direct
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    code, out, err = run_main(["--debug", "sync", "--api-url", "http://registry.invalid/api/v2", "--warehouse",
                               str(tmp_path / "wh"), "--max-attempts", "1", "--backoff", "0.01",
                               "--request-interval", "0", "--quiet"], capsys)
    assert code == 1
    assert "trialsync: error: connection failed:" in err and "ProxyError" in err
    assert SECRET not in out + err


def test_redact_masks_credentials_and_secret_parameters() -> None:
    assert redact(f"GET https://u:{SECRET}@h.org/x?pageToken=abc&api_key={SECRET}&token={SECRET} failed") == \
        "GET https://***@h.org/x?pageToken=abc&api_key=***&token=*** failed"
