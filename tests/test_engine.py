"""Issue 17: ad hoc commands run in process when no Prefect server is configured (no temporary server,
no Prefect import), as Prefect flow runs when one is, and the work is the same either way."""

from __future__ import annotations

import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from pipeline.registry.fake_server import FakeRegistry
from tests.reliability.support import state
from tests.test_cli import run_cli
from tests.test_lifecycle import plain_env

pytestmark = pytest.mark.prefect  # what these tests check is the Prefect side

PREFECT_BANNER = ("temporary server", "docs.prefect.io")


def imported_prefect(stderr: str) -> list[str]:
    """Modules named in ``-X importtime`` lines (PYTHONPROFILEIMPORTTIME) that belong to Prefect."""
    names = [line.rsplit("|", 1)[-1].strip() for line in stderr.splitlines() if line.startswith("import time:")]
    return [name for name in names if name.split(".")[0] == "prefect"]


def test_without_a_prefect_server_commands_run_in_process_without_prefect_and_store_the_same(
        prefect_api: str, registry: FakeRegistry, tmp_path: Path) -> None:
    from tests.conftest import fast_sync

    plain = tmp_path / "plain"
    env = plain_env(PYTHONPROFILEIMPORTTIME="1")
    for args in (["sync", "-q", "--request-interval", "0", "--api-url", registry.url, "--full"],
                 ["rederive"], ["compact", "--keep-hours", "0"]):
        result = run_cli(*args, "--warehouse", str(plain), env=env)
        assert result.returncode == 0, result.stderr[-2000:]
        assert imported_prefect(result.stderr) == [], args  # so no temporary Prefect server either
        assert not any(text in result.stderr for text in PREFECT_BANNER)
    flow_run = tmp_path / "flow-run"
    fast_sync(registry, flow_run, full=True)  # the same flow as a Prefect flow run (the test server)
    from flows.compact import compact_warehouse
    from flows.derive import rederive_changes

    rederive_changes(warehouse=str(flow_run))
    compact_warehouse(warehouse=str(flow_run), keep_hours=0)
    assert state(plain) == state(flow_run)


def test_with_a_prefect_server_configured_a_command_is_a_flow_run_on_it(prefect_api: str, registry: FakeRegistry,
                                                                        tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    warehouse = tmp_path / "w"
    env = plain_env(PREFECT_API_URL=prefect_api)
    result = run_cli("sync", "-q", "--request-interval", "0", "--api-url", registry.url, "--warehouse",
                     str(warehouse), env=env)
    assert result.returncode == 0, result.stderr
    assert not any(text in result.stderr for text in PREFECT_BANNER)
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["sync_registry"])))
    mine = [r for r in runs if r.parameters.get("warehouse") == str(warehouse)]  # this command's run, by its warehouse
    assert [r.state_name for r in mine] == ["Completed"]


def test_prefects_temporary_server_prints_no_banner(records: list[dict[str, Any]], tmp_path: Path) -> None:
    """With TRIALSYNC_ENGINE=prefect and no server, Prefect starts its temporary one: silently. (30
    studies: what is checked is the server's start and the run on it; every record would add ~10 s.)"""
    with FakeRegistry(records[:30]).start() as registry:
        result = run_cli("sync", "-q", "--request-interval", "0", "--api-url", registry.url, "--warehouse",
                         str(tmp_path / "w"), env=plain_env(TRIALSYNC_ENGINE="prefect"), timeout=300)
    assert result.returncode == 0, result.stderr
    assert not any(text in result.stderr for text in PREFECT_BANNER), result.stderr
    assert "30 seen" in result.stdout


def _uses_prefect(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    code = "from flows.engine import uses_prefect; print(uses_prefect())"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)


@pytest.mark.parametrize(("profile", "extra", "expected"), [
    (None, {}, "False"),
    ('active = "local"\n[profiles.local]\nPREFECT_API_URL = "http://127.0.0.1:4200/api"\n', {}, "True"),
    ('active = "local"\n[profiles.local]\nPREFECT_API_URL = "http://127.0.0.1:4200/api"\n[profiles.other]\n',
     {"PREFECT_PROFILE": "other"}, "False"),
    (None, {"PREFECT_API_URL": "http://127.0.0.1:4200/api"}, "True"),
    (None, {"TRIALSYNC_ENGINE": "prefect"}, "True"),
    (None, {"PREFECT_API_URL": "http://127.0.0.1:4200/api", "TRIALSYNC_ENGINE": "plain"}, "False"),
])
def test_a_prefect_server_is_configured_by_the_environment_or_the_active_profile(
        tmp_path: Path, profile: str | None, extra: dict[str, str], expected: str) -> None:
    if profile is not None:
        (tmp_path / "profiles.toml").write_text(profile)
    env = {**plain_env(PREFECT_HOME=str(tmp_path)), **extra}
    env.pop("PREFECT_PROFILES_PATH", None)
    result = _uses_prefect(env)
    assert result.stdout.strip() == expected, result.stderr


def test_a_bad_engine_setting_is_refused_in_one_line(tmp_path: Path) -> None:
    result = run_cli("rederive", "--warehouse", str(tmp_path / "w"), env=plain_env(TRIALSYNC_ENGINE="fast"))
    assert result.returncode == 2
    assert result.stderr.strip() == "trialsync: error: TRIALSYNC_ENGINE must be one of auto, prefect, plain, not 'fast'"


def test_a_flow_casts_its_arguments_to_their_types_in_process_as_a_prefect_flow_run_does(
        prefect_api: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.engine import flow, uses_prefect

    @flow(name="cast-arguments")
    def received(since: date, pages: int = 1) -> tuple[bool, object, object]:
        return uses_prefect(), since, pages

    monkeypatch.setenv("TRIALSYNC_ENGINE", "plain")
    assert received(since=date(2026, 1, 1), pages=2) == (False, date(2026, 1, 1), 2)
    assert received._validated is None  # arguments of their types already: no validator built
    outcomes = {}
    for engine in ("plain", "prefect"):
        monkeypatch.setenv("TRIALSYNC_ENGINE", engine)
        outcomes[engine] = received(since="2026-01-01", pages="3")
        with pytest.raises(Exception, match="since") as refused:
            received(since="not a date")
        assert type(refused.value).__name__ in ("ValidationError", "ParameterTypeError")
    assert outcomes == {"plain": (False, date(2026, 1, 1), 3), "prefect": (True, date(2026, 1, 1), 3)}
