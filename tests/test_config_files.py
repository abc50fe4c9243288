"""Issue 13.6: config files (severity rules, watchlists, deploy/) are validated whole before anything
runs. Through the CLI: a bad file exits 2 with one line ``FILE: key: what is wrong`` (and the valid
values where they form a set), and nothing is stored: the warehouse's files are as they were."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows.cli import main
from pipeline.alerts.watchlist import WATCH_EVENTS
from pipeline.changes import EVENTS, SEVERITIES
from pipeline.enums import STATUSES
from pipeline.registry.fake_server import FakeRegistry
from tests.conftest import REPO, fast_sync, real_records

STATUS_LIST = ", ".join(STATUSES)
EVENT_LIST = ", ".join(EVENTS)
WATCH_EVENT_LIST = ", ".join(WATCH_EVENTS)  # a watch may also name fdaaa_overdue
SEVERITY_LIST = ", ".join(SEVERITIES)

BAD_RULES: list[tuple[str, str]] = [
    ("severity:\n  critical_statuses: [TERMINATD]\n",
     f"severity.critical_statuses: unknown status 'TERMINATD'; valid: {STATUS_LIST}"),
    ("severity:\n  events: {status_chnged: critical}\n",
     f"severity.events: unknown event 'status_chnged'; valid: {EVENT_LIST}"),
    ("severity:\n  events: {status_changed: urgent}\n",
     f"severity.events.status_changed: unknown value 'urgent'; valid: {SEVERITY_LIST}"),
    ("severity:\n  enrollment_pct_notable: ten\n", "severity.enrollment_pct_notable: must be a number >= 0, got 'ten'"),
    ("severity:\n  enrollment_pct_notable: .nan\n", "severity.enrollment_pct_notable: must be a number >= 0, got nan"),
    ("severity:\n  enrollment_pct_notable: 1" + "0" * 400 + "\n",
     "severity.enrollment_pct_notable: must be a number >= 0 and <= 1e+09, got " + "1" + "0" * 27 + "..." + "0" * 29),
    ("severity:\n  date_shift_days_notable: 99999999999\n",
     "severity.date_shift_days_notable: must be a whole number >= 0 and <= 1e+09, got 99999999999"),
    ("severity:\n  date_shift_days_notable: 2.5\n",
     "severity.date_shift_days_notable: must be a whole number >= 0, got 2.5"),
    ("severity:\n  critical_status: [TERMINATED]\n",
     "severity.critical_status: unknown key; valid: critical_statuses, enrollment_pct_notable, "
     "date_shift_days_notable, events"),
    ("sevrity:\n  critical_statuses: [TERMINATED]\n", "sevrity: unknown key; valid: severity"),
    ("severity: [TERMINATED\n", "is not valid YAML (line 2): expected ',' or ']', but got '<stream end>'"),
]

_WATCH = {"name": "w", "studies": {"ids": ["NCT07011004"]}, "channels": ["feed"]}
_FEED = {"feed": {"type": "feed", "path": "feed.json"}}


def _watchlist(watch: dict[str, object] | None = None, **top: object) -> str:
    return yaml.safe_dump({"channels": _FEED, "watches": [{**_WATCH, **(watch or {})}], **top}, sort_keys=False)


def _alias_bomb(levels: int = 9) -> str:
    """A list whose YAML aliases expand to 9**9 leaves: cheap to load (shared), fatal to print whole."""
    lists = ["&a0 [x, x, x, x, x, x, x, x, x]"] + [f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "[" + ", ".join(lists) + "]"


_QUOTE_IT = " (YAML reads an unquoted yes/no/on/off/true/false as true/false: quote the text, e.g. 'NO')"
BAD_WATCHLISTS: list[tuple[str, str]] = [
    (_watchlist({"studies": {"conditions": ["leukemia", "NO"]}}).replace("'NO'", "NO"),
     "watches[w].studies.conditions: must be a text or a list of texts, got ['leukemia', False]" + _QUOTE_IT),
    (_watchlist({"mode": "on"}).replace("'on'", "on"),
     "watches[w].mode: unknown value True; valid: immediate, digest" + _QUOTE_IT),
    (_watchlist({"since": "2026-13-45"}).replace("'2026-13-45'", "2026-13-45"),
     "watches[w].since: not a real date: '2026-13-45' (month must be in 1..12); expected YYYY-MM-DD"),
    (_watchlist({"since": "2026-02-30"}).replace("'2026-02-30'", "2026-02-30"),
     "watches[w].since: not a real date: '2026-02-30' (day is out of range for month); expected YYYY-MM-DD"),
    (_watchlist({"min_severity": "high"}), f"watches[w].min_severity: unknown value 'high'; valid: {SEVERITY_LIST}"),
    (_watchlist({"events": ["status_chnged"]}),
     f"watches[w].events: unknown event 'status_chnged'; valid: {WATCH_EVENT_LIST}"),
    (_watchlist({"studies": {"status": ["TERMINATD"]}}),
     f"watches[w].studies.status: unknown status 'TERMINATD'; valid: {STATUS_LIST}"),
    (_watchlist({"lookback_days": "ten"}),
     "watches[w].lookback_days: must be a whole number >= 0 and <= 36525, got 'ten'"),
    (_watchlist({"min_sevrity": "notable"}),
     "watches[w].min_sevrity: unknown key; valid: name, studies, categories, events, min_severity, mode, channels, "
     "since, lookback_days, fdaaa"),
    (_watchlist(defaults={"mode": "daily"}), "defaults.mode: unknown value 'daily'; valid: immediate, digest"),
    (_watchlist().replace("path: feed.json", "path: feed.json\n    max_items: many"),
     "channels.feed.max_items: must be a whole number >= 1 and <= 100000, got 'many'"),
    (_watchlist({"lookback_days": 800000}),
     "watches[w].lookback_days: must be a whole number >= 0 and <= 36525, got 800000"),
    (_watchlist().replace("path: feed.json", "path: feed.json\n    timeout: .nan"),
     "channels.feed.timeout: must be a number > 0 and <= 3600, got nan"),
    (_watchlist().replace("path: feed.json", "path: feed.json\n    timeout: .inf"),
     "channels.feed.timeout: must be a number > 0 and <= 3600, got inf"),
    (_watchlist({"studies": {"conditions": "BOMB"}}).replace("BOMB", _alias_bomb()),
     "watches[w].studies.conditions: must be a text or a list of texts, got [['x', 'x', 'x', 'x', ...], "
     "[['x', 'x', 'x', 'x', ...], ['x…"),
    (_watchlist({"channels": ["mail"]}), "watches[w].channels: unknown channel 'mail'; valid: feed"),
]


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main(args)
        raise SystemExit(0)
    _, err = capsys.readouterr()
    return int(info.value.code or 0), err


def _files(directory: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def synced(prefect_api: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("config") / "warehouse"
    with FakeRegistry(real_records()[:5]).start() as registry:
        fast_sync(registry, directory)
    yield directory


def _expect_refused(args: list[str], path: Path, message: str, warehouse: Path,
                    capsys: pytest.CaptureFixture[str]) -> None:
    before = _files(warehouse)
    code, err = _run(args, capsys)
    assert code == 2, err
    assert err == f"trialsync: error: {path}: {message}\n"
    assert _files(warehouse) == before  # nothing stored, nothing run


@pytest.mark.parametrize("command", ["rederive", "sync"])
@pytest.mark.parametrize(("text", "message"), BAD_RULES, ids=[m.split(":")[0] + str(i) for i, (_, m) in
                                                              enumerate(BAD_RULES)])
def test_a_bad_rules_file_exits_2_naming_file_and_key_and_stores_nothing(
        command: str, text: str, message: str, synced: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIALSYNC_API_URL", "http://127.0.0.1:9/api/v2")  # never reached
    rules = tmp_path / "r.yaml"
    rules.write_text(text)
    _expect_refused([command, "--rules", str(rules), "--warehouse", str(synced)], rules, message, synced, capsys)


@pytest.mark.parametrize("command", [["alerts", "run", "--config"], ["alerts", "list", "--config"],
                                     ["sync", "--alerts"]], ids=lambda c: " ".join(c[:2]))
@pytest.mark.parametrize(("text", "message"), BAD_WATCHLISTS, ids=[m.split(":")[0] + str(i) for i, (_, m) in
                                                                    enumerate(BAD_WATCHLISTS)])
def test_a_bad_watchlist_exits_2_naming_file_and_key_and_runs_nothing(
        command: list[str], text: str, message: str, synced: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIALSYNC_API_URL", "http://127.0.0.1:9/api/v2")
    config = tmp_path / "w.yaml"
    config.write_text(text)
    _expect_refused([*command, str(config), "--warehouse", str(synced)], config, message, synced, capsys)


@pytest.mark.parametrize("command", [["rederive", "--rules"], ["alerts", "list", "--config"], ["sync", "--alerts"]],
                         ids=lambda c: " ".join(c[:2]))
def test_a_config_file_that_is_not_utf8_exits_2_naming_the_file_and_the_byte(
        command: list[str], synced: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIALSYNC_API_URL", "http://127.0.0.1:9/api/v2")
    config = tmp_path / "c.yaml"
    config.write_bytes("severity: {}\n# caf\u00e9\n".encode("utf-16"))  # what some editors save
    _expect_refused([*command, str(config), "--warehouse", str(synced)], config,
                    "is not UTF-8 text (byte 0: b'\\xff'); save it as UTF-8", synced, capsys)


def test_rederive_with_valid_rules_stores_them_and_a_typo_never_replaces_them(
        synced: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from warehouse import Warehouse

    target = tmp_path / "warehouse"
    shutil.copytree(synced, target)
    good = tmp_path / "good.yaml"
    good.write_text("severity:\n  critical_statuses: [TERMINATED]\n  events: {phase_changed: notable}\n")
    assert _run(["rederive", "--rules", str(good), "--warehouse", str(target)], capsys)[0] == 0
    stored = Warehouse(target).manifest().meta["rules"]
    assert '"critical_statuses":["TERMINATED"]' in stored and '"phase_changed":"notable"' in stored
    bad = tmp_path / "bad.yaml"
    bad.write_text("severity:\n  critical_statuses: [TERMINATD]\n")
    assert _run(["rederive", "--rules", str(bad), "--warehouse", str(target)], capsys)[0] == 2
    assert Warehouse(target).manifest().meta["rules"] == stored


def test_critical_statuses_are_taken_in_any_case_like_a_watchs_status() -> None:
    from pipeline.config import parse_rules
    from pipeline.errors import UsageError

    rules = parse_rules("severity:\n  critical_statuses: [terminated, Withdrawn]\n", "r.yaml")
    assert rules.critical_statuses == ("TERMINATED", "WITHDRAWN")
    with pytest.raises(UsageError, match=r"severity\.critical_statuses: unknown status 'TERMINATD'"):
        parse_rules("severity:\n  critical_statuses: [terminatd]\n", "r.yaml")


def test_serve_checks_the_config_files_its_deployments_name_before_serving(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "w.yaml"
    config.write_text(BAD_WATCHLISTS[0][0])
    deploy = yaml.safe_load((REPO / "deploy" / "prefect.yaml").read_text())
    alerts = next(d for d in deploy["deployments"] if d["name"] == "alerts-after-sync")
    alerts["parameters"]["config"] = str(config)
    file = tmp_path / "prefect.yaml"
    file.write_text(yaml.safe_dump(deploy, sort_keys=False))
    code, err = _run(["serve", "--file", str(file), "--list"], capsys)
    assert (code, err) == (2, f"trialsync: error: {config}: {BAD_WATCHLISTS[0][1]}\n")
    assert _run(["serve", "--list"], capsys)[0] == 0  # the shipped files are valid


def test_serve_list_does_not_need_the_watchlists_secret_variables_serving_does(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """`serve --list` failed when a watchlist's *_env variable was not set where it was run."""
    from flows.deployments import check_config_files, load
    from pipeline.errors import UsageError

    monkeypatch.delenv("TRIALSYNC_TEST_HOOK_URL", raising=False)
    config = tmp_path / "w.yaml"
    config.write_text("channels:\n  out: {type: webhook, url_env: TRIALSYNC_TEST_HOOK_URL}\n"
                      "watches: [{name: w, studies: {ids: [NCT07011004]}, channels: [out]}]\n")
    deploy = yaml.safe_load((REPO / "deploy" / "prefect.yaml").read_text())
    next(d for d in deploy["deployments"] if d["name"] == "alerts-after-sync")["parameters"]["config"] = str(config)
    file = tmp_path / "prefect.yaml"
    file.write_text(yaml.safe_dump(deploy, sort_keys=False))
    assert _run(["serve", "--file", str(file), "--list"], capsys) == (0, "")
    with pytest.raises(UsageError) as unset:  # what `serve` itself checks before serving
        check_config_files(load(file), file)
    assert str(unset.value) == (f"{config}: channels.out: environment variable TRIALSYNC_TEST_HOOK_URL "
                                "is not set")


_DAILY = "deployments[daily-incremental]"


@pytest.mark.parametrize(("change", "error"), [
    ({"scopes": [{"ids": ["NCT0"]}]}, f"{_DAILY}.parameters.scopes[1]: invalid NCT id 'NCT0'"),
    ({"scopes": [{"ids": []}]}, f"{_DAILY}.parameters.scopes[1].ids: is empty; leave the key out"),
    ({"scopes": [{"condition": "aml", "colour": "red"}]},
     f"{_DAILY}.parameters.scopes[1].colour: unknown key; valid: query, condition, sponsor, ids, status"),
    ({"full": "maybe"}, f"{_DAILY}.parameters: Flow run received invalid parameters: - full: "),
    # an empty scope is the whole registry: never by accident
    ({"scopes": [{}]}, f"{_DAILY}.parameters.scopes[1]: is empty, which would sync the whole registry"),
    ({"scopes": []}, f"{_DAILY}.parameters.scopes: is empty, which would sync the whole registry"),
    ({"scopes": None}, f"{_DAILY}.parameters.scopes: is empty; leave `scopes` out to sync the whole registry"),
    ({"scopes": [{"ids": 1234567}]}, f"{_DAILY}.parameters.scopes[1].ids: must be a text or a list of texts"),
    ({"scopes": [{"condition": ["aml", "cll"]}]}, f"{_DAILY}.parameters.scopes[1].condition: must be one text"),
    ({"scopes": [{"condition": "aml"}, {"condition": "AML"}]},
     f"{_DAILY}.parameters.scopes[2]: is the same scope as {_DAILY}.parameters.scopes[1]"),
    # values Prefect's types let through but no run can use
    ({"max_lateness_hours": -1}, f"{_DAILY}.parameters.max_lateness_hours: must be a number > 0 and <= 8784, got -1"),
    ({"max_lateness_hours": float("nan")}, f"{_DAILY}.parameters.max_lateness_hours: must be a number > 0"),
    ({"page_size": 0}, f"{_DAILY}.parameters.page_size: must be a whole number >= 1 and <= 1000, got 0"),
    ({"request_interval": float("inf")}, f"{_DAILY}.parameters.request_interval: must be a number >= 0"),
    ({"api_url": "ftp://example.org/api"}, f"{_DAILY}.parameters.api_url: must be an http(s) URL"),
    ({"api_url": "http://"}, f"{_DAILY}.parameters.api_url: has no host"),
    ({"api_url": "https://user:s3cretPassw0rd@example.org/api"},
     f"{_DAILY}.parameters.api_url: must not contain credentials"),
    ({"warehouse": ""}, f"{_DAILY}.parameters.warehouse: is empty; leave it out for the default"),
    # a path DuckDB reads as a file pattern: every run of it was refused, at 10:00, not by serve
    ({"warehouse": "/srv/wh[1]"}, f"{_DAILY}.parameters.warehouse: the warehouse path /srv/wh[1] holds '['"),
])
def test_serve_checks_each_deployments_parameters_before_serving(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], change: dict[str, Any], error: str) -> None:
    """A scheduled run's bad scope or parameter fails `serve` at once, not the run at 10:00."""
    deploy = yaml.safe_load((REPO / "deploy" / "prefect.yaml").read_text())
    daily = next(d for d in deploy["deployments"] if d["name"] == "daily-incremental")
    daily["parameters"].update(change)
    file = tmp_path / "prefect.yaml"
    file.write_text(yaml.safe_dump(deploy, sort_keys=False))
    code, err = _run(["serve", "--file", str(file), "--list"], capsys)
    assert code == 2 and err.startswith(f"trialsync: error: {file}: {error}") and err.count("\n") == 1, err
    assert "s3cret" not in err and "Parameters:" not in err  # Prefect's own log line printed every value


@pytest.mark.parametrize(("name", "value", "error"), [
    ("retry_budget", float("nan"), "must be a number >= 0 and <= 86400, got nan"),
    ("retry_budget", float("inf"), "must be a number >= 0 and <= 86400, got inf"),
    ("retry_budget", 10.0**12, "must be a number >= 0 and <= 86400, got 1000000000000.0"),
    ("lock_timeout", float("nan"), "must be a number >= 0 and <= 86400, got nan"),
    ("lock_timeout", -1, "must be a number >= 0 and <= 86400, got -1"),
])
def test_serve_refuses_an_alert_retry_budget_or_lock_timeout_no_run_can_use(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, value: float, error: str) -> None:
    """A NaN retry_budget passed `serve --list`, and the run then slept a receiver's 86400 s Retry-After."""
    deploy = yaml.safe_load((REPO / "deploy" / "prefect.yaml").read_text())
    next(d for d in deploy["deployments"] if d["name"] == "alerts-after-sync")["parameters"][name] = value
    file = tmp_path / "prefect.yaml"
    file.write_text(yaml.safe_dump(deploy, sort_keys=False))
    assert _run(["serve", "--file", str(file), "--list"], capsys) == (
        2, f"trialsync: error: {file}: deployments[alerts-after-sync].parameters.{name}: {error}\n")


@pytest.mark.parametrize(("change", "error"), [
    (lambda d: d.update(paramters=d.pop("parameters")),
     "deployments[daily-incremental].paramters: unknown key; valid: name, version, "),
    (lambda d: d.update(tags="trialsync"), "deployments[daily-incremental].tags: must be a list of texts"),
    (lambda d: d.update(schedule=d.pop("schedules")[0]),
     "deployments[daily-incremental].schedule: write it as a list: `schedules: [{cron: ...}]`"),
    (lambda d: d["schedules"][0].update(cron="0 0 30 2 *"),
     "deployments[daily-incremental].schedules[1].cron: '0 0 30 2 *' never fires (no date matches it)"),
    (lambda d: d["schedules"][0].update(cron="0 0 10 * * 1-5"),
     "deployments[daily-incremental].schedules[1].cron: '0 0 10 * * 1-5' must have 5 fields"),
    (lambda d: d["schedules"][0].update(timezone=""), "deployments[daily-incremental].schedules[1].timezone: is empty"),
    (lambda d: d["schedules"][0].update(timezone="Mars/Olympus"), "Invalid timezone: \"Mars/Olympus\""),
    (lambda d: d["schedules"][0].update(cron="61 25 * * *"), "Invalid cron string: \"61 25 * * *\""),
    (lambda d: d["concurrency_limit"].update(limit=-1),
     "deployments[daily-incremental].concurrency_limit: must be a whole number >= 1 and <= 1000, got -1"),
    (lambda d: d.update(entrypoint="../../etc/x.py:f"),
     "deployments[daily-incremental].entrypoint: '../../etc/x.py:f' is not path/to/file.py:flow inside the project"),
    (lambda d: d.update(entrypoint="flows/scheduled.py:nope"),
     "deployments[daily-incremental].entrypoint: module 'flows.scheduled' has no attribute 'nope'"),
])
def test_serve_refuses_what_prefect_would_ignore_or_take_as_never(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], change: Any, error: str) -> None:
    deploy = yaml.safe_load((REPO / "deploy" / "prefect.yaml").read_text())
    change(next(d for d in deploy["deployments"] if d["name"] == "daily-incremental"))
    file = tmp_path / "prefect.yaml"
    file.write_text(yaml.safe_dump(deploy, sort_keys=False))
    code, err = _run(["serve", "--file", str(file), "--list"], capsys)
    assert code == 2 and err.startswith("trialsync: error: ") and error in err and err.count("\n") == 1, err


@pytest.mark.parametrize("macro", ["@daily", "@hourly", "@weekly", "@monthly", "@yearly", "@annually", "@midnight"])
def test_serve_takes_a_cron_macro_as_croniter_and_prefect_do(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], macro: str) -> None:
    """They were refused as "must have 5 fields"."""
    deploy = yaml.safe_load((REPO / "deploy" / "prefect.yaml").read_text())
    next(d for d in deploy["deployments"] if d["name"] == "daily-incremental")["schedules"][0]["cron"] = macro
    file = tmp_path / "prefect.yaml"
    file.write_text(yaml.safe_dump(deploy, sort_keys=False))
    assert _run(["serve", "--file", str(file), "--list"], capsys) == (0, "")
    from flows.deployments import load
    daily = next(d for d in load(file) if d.name == "daily-incremental")
    assert daily.schedules[0].schedule.cron == macro


@pytest.mark.parametrize(("text", "error"), [
    (b"\xff\xfe\x00garbage", "is not UTF-8 text (byte 0: b'\\xff'); save it as UTF-8"),
    ("[" * 5000 + "]" * 5000, "is not a config file: nested too deeply"),
    ("deployments: []\nname: a\nname: b\n", "name: given twice (line 3)"),
])
def test_serve_reads_its_file_as_strictly_as_every_config_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str | bytes, error: str) -> None:
    file = tmp_path / "prefect.yaml"
    file.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert _run(["serve", "--file", str(file), "--list"], capsys) == (2, f"trialsync: error: {file}: {error}\n")


def test_serve_takes_prefects_own_reuse_patterns_definitions_and_merge_keys(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Prefect's docs put anchors under a top-level `definitions:` and reuse them with `<<: *pool`; the
    strict loader refused both ("unknown key", "could not determine a constructor for the tag ...merge")."""
    text = (REPO / "deploy" / "prefect.yaml").read_text()
    pool = "    work_pool:\n      name: trialsync\n      work_queue_name: default\n"
    assert text.count(pool) >= 2
    text = ("definitions:\n  work_pools:\n    pool: &pool\n      name: trialsync\n      work_queue_name: other\n"
            + text.replace(pool, "    work_pool:\n      <<: *pool\n      work_queue_name: default\n"))
    file = tmp_path / "prefect.yaml"
    file.write_text(text)
    code, err = _run(["serve", "--file", str(file), "--list"], capsys)
    assert (code, err) == (0, "")
    merged = yaml.safe_load(text)["deployments"][0]["work_pool"]
    assert merged == {"name": "trialsync", "work_queue_name": "default"}  # the mapping's own key wins
    from pipeline.config import load_yaml
    assert load_yaml(text, "f")["deployments"][0]["work_pool"] == merged
    twice = text.replace("      <<: *pool\n", "      <<: *pool\n      name: a\n      name: b\n", 1)
    file.write_text(twice)
    code, err = _run(["serve", "--file", str(file), "--list"], capsys)
    assert code == 2 and err.endswith(": name: given twice (line 49)\n"), err


def test_serve_refuses_a_deployments_file_with_two_deployments_of_one_name(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    deploy = yaml.safe_load((REPO / "deploy" / "prefect.yaml").read_text())
    deploy["deployments"].append(deploy["deployments"][0])
    file = tmp_path / "prefect.yaml"
    file.write_text(yaml.safe_dump(deploy, sort_keys=False))
    assert _run(["serve", "--file", str(file), "--list"], capsys) == (
        2, f"trialsync: error: {file}: deployments[daily-incremental].name: two deployments have this name\n")


def test_serve_refuses_a_file_that_is_not_a_deployments_file(capsys: pytest.CaptureFixture[str]) -> None:
    watchlist = REPO / "deploy" / "watchlist.example.yaml"
    code, err = _run(["serve", "--file", str(watchlist), "--list"], capsys)
    assert (code, err) == (2, f"trialsync: error: {watchlist}: is not a deployments file: it has no "
                              "`deployments:` list\n")


@pytest.mark.parametrize(("text", "error"), [
    ("", "is empty; expected a `severity:` mapping"),
    ("# rules to come\n", "is empty; expected a `severity:` mapping"),
    ("severity:\n", "severity: is empty; give one or more of: critical_statuses, enrollment_pct_notable, "
                    "date_shift_days_notable, events"),
    ("? [a, b]\n: 1\n", "a key must be a plain name, not a list or mapping (line 1)"),
    ("[" * 5000 + "]" * 5000, "is not a config file: nested too deeply"),
])
def test_an_empty_or_malformed_rules_file_is_refused_not_taken_as_the_defaults(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, error: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A rules file saved empty (or cut short) would otherwise replace the stored rules by the defaults."""
    monkeypatch.setenv("TRIALSYNC_API_URL", "http://127.0.0.1:9/api/v2")
    rules = tmp_path / "r.yaml"
    rules.write_text(text)
    warehouse = tmp_path / "nowhere"
    assert _run(["rederive", "--rules", str(rules), "--warehouse", str(warehouse)], capsys) == (
        2, f"trialsync: error: {rules}: {error}\n")
    assert not warehouse.exists()


@pytest.mark.parametrize("kind", ["fifo nobody writes to", "directory", "too big", "/dev/zero"])
def test_a_config_path_that_is_not_a_small_file_or_pipe_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A named pipe would block the command for ever; /dev/zero or a huge file would fill memory."""
    import os

    from flows import settings

    monkeypatch.setattr(settings, "CONFIG_READ_SECONDS", 0.2)
    path = tmp_path / "c.yaml"
    if kind == "fifo nobody writes to":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "/dev/zero":
        path = Path("/dev/zero")
    else:
        path.write_text("# " + "x" * (1024 * 1024) + "\n")
    expected = {"fifo nobody writes to": f"cannot read watchlist {path}: it did not end within 0.2s (a pipe nobody "
                                         "writes to?)",
                "directory": f"cannot read watchlist {path}: it is a directory",
                "/dev/zero": f"{path}: is more than 1048576 bytes; a watchlist is at most 1048576 bytes",
                "too big": f"{path}: is {1024 * 1024 + 3} bytes; a watchlist is at most 1048576 bytes"}[kind]
    assert _run(["alerts", "list", "--config", str(path)], capsys) == (2, f"trialsync: error: {expected}\n")


@pytest.mark.parametrize("kind", ["process substitution", "named pipe"])
def test_a_config_from_a_pipe_is_read(tmp_path: Path, kind: str) -> None:
    """`--config <(cat w.yaml)` and /dev/stdin were refused as "not a regular file"."""
    import os
    import threading

    from flows.settings import read_config

    text = "channels: {}\n" * 5000  # more than a pipe's buffer: written while it is read
    if kind == "process substitution":
        read_end, write_end = os.pipe()
        path = f"/dev/fd/{read_end}"
    else:
        path = str(tmp_path / "w.yaml")
        os.mkfifo(path)

    def write() -> None:
        fd = write_end if kind == "process substitution" else os.open(path, os.O_WRONLY)
        with os.fdopen(fd, "w") as pipe:
            pipe.write(text)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        assert read_config(path, "watchlist") == text
    finally:
        writer.join()
        if kind == "process substitution":
            os.close(read_end)


@pytest.mark.parametrize("value", ["   ", "wh\x01"])
def test_a_blank_or_control_character_warehouse_setting_is_refused_not_made_a_directory(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRIALSYNC_WAREHOUSE", value)
    monkeypatch.setenv("TRIALSYNC_API_URL", "http://127.0.0.1:9/api/v2")  # never reached
    code, err = _run(["sync", "--ids", "NCT07011004", "--max-attempts", "1"], capsys)
    assert (code, err) == (2, f"trialsync: error: TRIALSYNC_WAREHOUSE must be a directory path, not {value!r}; "
                              "unset it for the default (./trialsync-warehouse)\n")
    assert list(tmp_path.iterdir()) == []
