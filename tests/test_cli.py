"""The human door: one-line errors, read-only SQL, runs, and the demo (real subprocesses where it matters)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from pipeline.registry.fake_server import FakeRegistry
from tests.conftest import DATA, REPO, fast_sync

TRIALSYNC = Path(sys.executable).parent / "trialsync"


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(TRIALSYNC), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.fixture
def synced(prefect_api: str, registry: FakeRegistry, warehouse_dir: Path) -> Path:
    fast_sync(registry, warehouse_dir)
    return warehouse_dir


@pytest.mark.parametrize(("args", "message"), [
    (["sync", "--ids", "NCT00000000"], "invalid NCT id 'NCT00000000'"),
    (["sync", "--query", "NCT05766735"], "--query holds only NCT ids"),
    (["sync", "--since", "yesterday"], "--since expects a date as YYYY-MM-DD, got 'yesterday'"),
    (["sync", "--status", "RUNNING"], "unknown status 'RUNNING'"),
    (["sync", "--page-size", "5000"], "--page-size must be between 1 and 1000"),
    (["sync", "--api-url", "ftp://example.org"], "--api-url must be an http(s) URL"),
    (["sync", "--full", "--since", "2026-01-01"], "--full and --since exclude each other"),
    (["changes", "--since", "2026-05-20", "--until", "2026-05-01"], "--since 2026-05-20 is after --until 2026-05-01"),
    (["sql", "SELECT 1; SELECT 2"], "one statement at a time, please (got 2)"),
    (["compact", "--keep-hours", "-1"], "--keep-hours must be a number of hours from 0 to 8760, not -1.0"),
])
def test_bad_input_gets_a_one_line_error_and_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    result = run_cli(*args, "--warehouse", str(tmp_path / "w"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"trialsync: error: {message}" + result.stderr.strip().split(
        message, 1)[1]] and message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_limit_below_one_is_refused_with_exit_2(tmp_path: Path) -> None:
    for command in ("changes", "runs"):
        result = run_cli(command, "--limit", "-1", "--warehouse", str(tmp_path))
        assert result.returncode == 2 and "--limit" in result.stderr and "Traceback" not in result.stderr


def test_the_machine_readable_change_feed_carries_every_column_with_the_change_id(
        synced: Path, registry: FakeRegistry, records: list[dict[str, Any]]) -> None:
    from datetime import date

    from pipeline import mutate

    registry.put(mutate.posted_on(mutate.set_status(records[0], "WITHDRAWN", "No funding"), date(2030, 1, 2)))
    fast_sync(registry, synced)
    feed = json.loads(run_cli("changes", "--format", "json", "--warehouse", str(synced)).stdout)
    assert feed and list(feed[0])[:5] == ["change_id", "nct_id", "from_version", "to_version", "run_id"]
    assert {"path", "detected_at", "severity", "shift_days"} <= set(feed[0])


def test_rederive_on_a_missing_warehouse_creates_none(tmp_path: Path) -> None:
    result = run_cli("rederive", "--warehouse", str(tmp_path / "typo"))
    assert (result.returncode, result.stderr.strip()) == (
        2, f"trialsync: error: no warehouse at {tmp_path / 'typo'} (nothing to rederive)")
    assert not (tmp_path / "typo").exists()


def test_sql_on_a_missing_warehouse_says_what_to_do(tmp_path: Path) -> None:
    result = run_cli("sql", "SELECT 1", "--warehouse", str(tmp_path / "nothing"))
    assert result.returncode == 2  # bad input, as for `check` and every command
    assert result.stderr.strip() == f"trialsync: error: no warehouse at {tmp_path / 'nothing'} " \
        "(run `trialsync sync` first)"


@pytest.mark.parametrize("statement", [
    "DROP VIEW studies", "CREATE TABLE x AS SELECT 1", "INSERT INTO x VALUES (1)",
    "ATTACH '/tmp/other.duckdb'", "COPY (SELECT 1) TO '/tmp/out.csv'", "INSTALL httpfs",
    "SET threads = 1", "SELECT 1; DELETE FROM x",
])
def test_sql_is_read_only(loaded_warehouse: Path, statement: str) -> None:
    """On the session's shared warehouse (one sync for all the read-only tests): a statement that got
    through would fail here first."""
    result = run_cli("sql", statement, "--warehouse", str(loaded_warehouse))
    assert result.returncode == 2
    assert "trialsync sql is read-only" in result.stderr
    assert not Path("/tmp/out.csv").exists() or "COPY" not in statement


def test_sql_answers_in_json_and_csv(loaded_warehouse: Path) -> None:
    query = "SELECT nct_id, overall_status, phases FROM studies WHERE nct_id = 'NCT05766735'"
    as_json = run_cli("sql", query, "--format", "json", "--warehouse", str(loaded_warehouse))
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == [{"nct_id": "NCT05766735", "overall_status": "RECRUITING",
                                           "phases": ["NA"]}]
    as_csv = run_cli("sql", query, "--format", "csv", "--warehouse", str(loaded_warehouse))
    assert as_csv.stdout.splitlines() == ["nct_id,overall_status,phases", 'NCT05766735,RECRUITING,"[""NA""]"']


def test_runs_lists_each_run_with_its_counts(loaded_warehouse: Path) -> None:
    result = run_cli("runs", "--format", "json", "--warehouse", str(loaded_warehouse))
    runs = json.loads(result.stdout)
    assert [(r["mode"], r["scope"], r["status"], r["seen"], r["versions"]) for r in runs] == [
        ("full", "all", "succeeded", 326, 326)]


def test_cli_sync_shows_a_summary_and_honours_the_environment(prefect_api: str, registry: FakeRegistry,
                                                             tmp_path: Path) -> None:
    env = {"PREFECT_API_URL": prefect_api, "TRIALSYNC_API_URL": registry.url,
           "TRIALSYNC_WAREHOUSE": str(tmp_path / "env-wh")}
    result = run_cli("sync", "--condition", "type 2 diabetes", "--request-interval", "0", env=env)
    assert result.returncode == 0, result.stderr
    expected = len({r["nct_id"] for r in [{"nct_id": s} for s in _diabetes(registry)]})
    assert f"{expected} seen, {expected} new studies, {expected} new versions, 0 unchanged" in result.stdout
    assert "(full, scope query.cond=type 2 diabetes)" in result.stdout
    assert (tmp_path / "env-wh" / "warehouse.duckdb").exists()


def _diabetes(registry: FakeRegistry) -> list[str]:
    import requests

    body = requests.get(registry.url + "/studies", params={"query.cond": "type 2 diabetes", "pageSize": 1000},
                        timeout=10).json()
    return [s["protocolSection"]["identificationModule"]["nctId"] for s in body["studies"]]


def test_the_demo_replays_two_days_and_shows_the_changes(prefect_api: str, tmp_path: Path) -> None:
    from flows.demo import run_demo
    from warehouse import Warehouse

    console = Console(record=True, width=200)
    workdir = tmp_path / "demo out"  # a space: the printed commands still run as shown
    run_demo(workdir, DATA, console)
    text = console.export_text()
    hint = next(line for line in text.splitlines() if line.startswith("The seed trial's history: "))
    assert shlex.split(hint.split(": ", 1)[1]) == ["trialsync", "history", "NCT07011004", "--warehouse",
                                                   str(workdir / "warehouse")]
    assert "Day 2" in text and "NCT07011004" in text
    with Warehouse(workdir / "warehouse").connect() as con:
        runs = con.execute("SELECT mode, versions_written FROM sync_runs ORDER BY started_at").fetchall()
        seed = con.execute("SELECT completion_date_raw, version FROM studies WHERE nct_id = 'NCT07011004'").fetchall()
        slip = con.execute("SELECT completion_date_raw FROM studies WHERE nct_id = 'NCT05766735'").fetchall()
    assert runs == [("full", 327), ("incremental", 7)]
    assert seed == [("2028-05-31", 2)]
    assert slip == [("2027-05-31",)]
    assert "2028-05 " in text and "2028-05-31" in text
    # the seed trial is on the demo's watchlist: its alert reaches the local webhook and the feed
    assert "[trialsync] seed-trial: NCT07011004 completion date: 2028-05 → 2028-05-31" in text
    feed = json.loads((workdir / "alerts-feed.json").read_text())
    assert {item["_trialsync"]["watch"] for item in feed["items"]} == {"seed-trial", "notable-anywhere"}
    report = (workdir / "report.html").read_text()  # the demo ends with a report
    assert str(workdir / "report.html") in text.replace("\n", "")
    assert 'data-nct="NCT07011004"' in report and 'data-chart="changes-by-category"' in report


def test_the_demo_refuses_a_workdir_it_did_not_make_and_leaves_it_alone(tmp_path: Path) -> None:
    project = tmp_path / "my project"
    (project / "warehouse").mkdir(parents=True)
    (project / "warehouse" / "warehouse.duckdb").write_bytes(b"someone's data")
    (project / "watchlist.yaml").write_text("watches: []\n")
    result = run_cli("demo", "--workdir", str(project))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"trialsync: error: --workdir {project} holds files the demo did not make; name a new or empty "
        "directory (or delete this one if an older demo made it)"]
    assert (project / "warehouse" / "warehouse.duckdb").read_bytes() == b"someone's data"
    assert (project / "watchlist.yaml").read_text() == "watches: []\n"


def test_the_demo_refuses_a_file_as_its_workdir(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine\n")
    for workdir in (tmp_path / "notes.txt", tmp_path / "notes.txt" / "demo"):
        result = run_cli("demo", "--workdir", str(workdir))
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and str(workdir) in result.stderr
        assert "Traceback" not in result.stderr
    assert (tmp_path / "notes.txt").read_text() == "mine\n"


def test_the_demo_takes_a_new_or_empty_workdir_and_its_own_again(tmp_path: Path) -> None:
    from flows.demo import claim_workdir
    from pipeline.errors import UsageError

    (tmp_path / "empty").mkdir()
    for workdir in (tmp_path / "new" / "demo", tmp_path / "empty"):
        claim_workdir(workdir)
        (workdir / "warehouse").mkdir()
        (workdir / "report.html").write_text("<html></html>")
        claim_workdir(workdir)  # a second demo run in the same place: the marker says it is the demo's
    (tmp_path / "empty" / "warehouse").rmdir()
    (tmp_path / "empty" / "warehouse").symlink_to(tmp_path / "new")  # a link would lead the demo elsewhere
    with pytest.raises(UsageError, match="warehouse is not the demo's"):
        claim_workdir(tmp_path / "empty")


def test_the_demos_command_hints_quote_a_workdir_with_spaces(tmp_path: Path) -> None:
    from flows.demo import history_hint, ledger_hint, query_hint

    warehouse = tmp_path / "demo out [1]" / "warehouse"
    assert shlex.split(history_hint(warehouse)) == ["trialsync", "history", "NCT07011004", "--warehouse",
                                                    str(warehouse)]
    assert shlex.split(query_hint(warehouse)) == [".venv/bin/duckdb", "-readonly", str(warehouse / "warehouse.duckdb")]
    assert shlex.split(ledger_hint(warehouse))[-2:] == ["--warehouse", str(warehouse)]


def test_reconstructed_seed_record_matches_the_seed_page_facts() -> None:
    from flows.demo import seed_record
    from pipeline.parse import parse_study

    core = parse_study(seed_record())
    facts: dict[str, Any] = {
        "nct_id": "NCT07011004", "overall_status": "RECRUITING", "phases": ["PHASE1"], "enrollment_count": 18,
        "study_type": "INTERVENTIONAL", "start_date_raw": "2025-05-30", "completion_date_raw": "2028-05-31",
        "lead_sponsor": "Memorial Sloan Kettering Cancer Center",
        "brief_title": "A Study of Natural Killer Cells in Combination With Atezolizumab in People With "
                       "Acute Myelogenous Leukemia",
    }
    assert {k: getattr(core, k) for k in facts} == facts
    sites = seed_record()["protocolSection"]["contactsLocationsModule"]["locations"]
    page = (DATA / "seed" / "NCT07011004_record.txt").read_text()
    assert len(sites) == 7 and all(site["facility"] in page for site in sites)


def test_a_failed_sync_exits_1_with_one_line_and_no_traceback(prefect_api: str, registry: FakeRegistry,
                                                              tmp_path: Path) -> None:
    registry.faults.add("status", status=500, times=-1, body="Internal Server Error")
    result = run_cli("sync", "--api-url", registry.url, "--warehouse", str(tmp_path / "w"), "--request-interval",
                     "0", "--max-attempts", "2", "--backoff", "0.01", env={"PREFECT_API_URL": prefect_api})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("trialsync: error:")]
    assert errors == ["trialsync: error: HTTP 500: Internal Server Error (2 tries)"]
    assert not (tmp_path / "w" / "warehouse.duckdb").exists()


def test_an_unreachable_registry_fails_after_max_attempts_tries_with_one_line(prefect_api: str,
                                                                             tmp_path: Path) -> None:
    result = run_cli("sync", "--api-url", "http://127.0.0.1:1/api/v2", "--warehouse", str(tmp_path / "w"),
                     "--max-attempts", "3", "--backoff", "0.01", "--quiet", env={"PREFECT_API_URL": prefect_api})
    assert result.returncode == 1
    [line] = result.stderr.splitlines()  # one line: no retry warnings, no Prefect noise
    assert line.startswith("trialsync: error: connection failed: ConnectionError: ")
    assert line.endswith("[Errno 111] Connection refused (3 tries)")
    assert not (tmp_path / "w" / "warehouse.duckdb").exists()


def test_a_bad_data_flag_is_refused_even_when_the_environment_names_good_data(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.settings import shared_data_dir
    from pipeline.errors import UsageError

    monkeypatch.setenv("TRIALSYNC_SHARED_DATA", str(DATA))
    assert shared_data_dir(None) == DATA
    with pytest.raises(UsageError, match="does not hold the real registry data"):
        shared_data_dir(str(tmp_path))


def _readme_flags() -> dict[str, str]:
    """Per command, the README text that names its flags: its row of the command table and its entry
    in "Extra flags"."""
    readme = (REPO / "README.md").read_text()
    named: dict[str, str] = {}
    for command, flags in re.findall(r"^\| `trialsync ([a-z-]+)(.*?)` \|", readme, re.M):
        named[command] = named.get(command, "") + flags
    extra = " ".join(readme.split("- Extra flags: ", 1)[1].split("\n- ", 1)[0].split())
    for command, flags in re.findall(r"`([a-z -]+)` `([^`]+)`", extra):
        named[command] = named.get(command, "") + " " + flags
    return named


def test_the_readme_names_every_flag_of_every_command() -> None:
    import typer.main

    from flows.cli import app

    named, missing = _readme_flags(), []

    def walk(command: Any, path: str) -> None:
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                walk(sub, f"{path} {name}".strip())
            return
        text = named.get(path, "") + (named.get(path.split()[0], "") if " " in path else "")
        missing.extend(f"{path} {p.opts[0]}" for p in command.params
                       if p.param_type_name == "option" and not re.search(rf"{re.escape(p.opts[0])}\b", text))

    walk(typer.main.get_command(app), "")
    assert missing == [], missing


def test_the_progress_bar_of_a_bulk_load_shows_its_total_before_the_first_shard_is_done() -> None:
    from rich.progress import Progress

    from flows.cli.common import sync_progress_listener

    bar = Progress(disable=True)
    on_event = sync_progress_listener(bar)
    on_event("start", {"run_id": "r", "mode": "bulk", "since": None, "scope": "all", "total": 50_000})
    assert (bar.tasks[0].description, bar.tasks[0].total, bar.tasks[0].completed) == ("bulk sync of all", 50_000, 0)
    on_event("page", {"number": 1, "studies": 2_000, "total": 50_000, "seen": 2_000, "versions": 1_990})
    assert (bar.tasks[0].completed, bar.tasks[0].fields["versions"]) == (2_000, 1_990)
    # A sync learns its total from the first page (totalCount): none at the start.
    other = Progress(disable=True)
    sync_progress_listener(other)("start", {"run_id": "r", "mode": "full", "since": None, "scope": "all"})
    assert other.tasks[0].total is None


def test_fake_registry_command_serves_the_seed_trial_beside_the_real_records() -> None:
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([str(TRIALSYNC), "fake-registry", "--port", str(port)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        assert server.stdout is not None
        banner = server.stdout.readline()
        assert "328 studies (the seed trial NCT07011004 among them)" in banner, banner
        base = f"http://127.0.0.1:{port}/api/v2"
        with urllib.request.urlopen(f"{base}/studies/NCT07011004", timeout=10) as answer:
            record = json.loads(answer.read())
        assert record["protocolSection"]["identificationModule"]["nctId"] == "NCT07011004"
        assert record["protocolSection"]["statusModule"]["completionDateStruct"]["date"] == "2028-05-31"
        with urllib.request.urlopen(f"{base}/studies?filter.ids=NCT07011004", timeout=10) as answer:
            listed = json.loads(answer.read())["studies"]
        assert [s["protocolSection"]["identificationModule"]["nctId"] for s in listed] == ["NCT07011004"]
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_an_unreachable_prefect_server_is_named_with_its_setting_in_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api"
    result = run_cli("sync", "--ids", "NCT07011004", "--warehouse", str(tmp_path / "w"),
                     "--api-url", "http://127.0.0.1:9/api/v2", env={"PREFECT_API_URL": url, "TRIALSYNC_ENGINE": "auto"})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"trialsync: error: the Prefect server at {url}/ (PREFECT_API_URL) does not answer: start it, "
        "or unset PREFECT_API_URL to run without one")
