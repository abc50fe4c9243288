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


BAD_WATCHLISTS: list[tuple[str, str]] = [
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


@pytest.mark.parametrize(("change", "error"), [
    ({"scopes": [{"ids": ["NCT0"]}]}, "deployment daily-incremental: invalid NCT id 'NCT0'"),
    ({"scopes": [{"ids": []}]}, "deployment daily-incremental: scope 1: ids is empty; leave the key out"),
    ({"scopes": [{"condition": "aml", "colour": "red"}]},
     "deployment daily-incremental: scope 1: unknown key(s) colour"),
    ({"full": "maybe"}, "deployment daily-incremental: Flow run received invalid parameters: - full: "),
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
    assert code == 2 and err.startswith(f"trialsync: error: {error}") and err.count("\n") == 1


def test_serve_refuses_a_file_that_is_not_a_deployments_file(capsys: pytest.CaptureFixture[str]) -> None:
    watchlist = REPO / "deploy" / "watchlist.example.yaml"
    code, err = _run(["serve", "--file", str(watchlist), "--list"], capsys)
    assert (code, err) == (2, f"trialsync: error: {watchlist} is not a deployments file: it has no "
                              "`deployments:` list\n")
