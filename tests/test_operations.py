"""Issue 6: the deployments of deploy/prefect.yaml load, their schedules parse and fire when intended,
their flows run against the fake registry, Prefect's scheduler makes runs of them, and serve serves them."""

from __future__ import annotations

import asyncio
import inspect
import os
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from flows.deployments import DEPLOY_FILE, ROOT, Deployment, load
from pipeline.errors import UsageError
from pipeline.operations import scope_kwargs, stale_reason
from pipeline.registry.fake_server import FakeRegistry
from tests.test_cli import TRIALSYNC, run_cli
from warehouse import Warehouse

pytestmark = pytest.mark.prefect  # what these tests check is the Prefect side

NEW_YORK = ZoneInfo("America/New_York")
SYNC_DEPLOYMENTS = ("daily-incremental", "weekly-full-reconciliation")
SCHEDULED_SYNC = "flows/scheduled.py:scheduled_sync"


@pytest.fixture(scope="module")
def deployments() -> dict[str, Deployment]:
    return {d.name: d for d in load(DEPLOY_FILE)}


def fire_times(d: Deployment, n: int, start: datetime) -> list[datetime]:
    """The next ``n`` runs Prefect's server would schedule (its own schedule model computes them)."""
    from prefect.server.schemas.schedules import CronSchedule

    client_schedule = d.schedules[0].schedule
    schedule = CronSchedule(cron=client_schedule.cron, timezone=client_schedule.timezone)
    return [t.astimezone(NEW_YORK) for t in asyncio.run(schedule.get_dates(n=n, start=start))]


def test_the_deployments_file_parses_with_prefects_own_models(deployments: dict[str, Deployment]) -> None:
    assert list(deployments) == [*SYNC_DEPLOYMENTS, "alerts-after-sync"]
    for name in SYNC_DEPLOYMENTS:
        d = deployments[name]
        assert d.entrypoint == SCHEDULED_SYNC and d.available()
        assert d.load_flow().name == "scheduled_sync"
        assert (d.concurrency_limit.limit, d.concurrency_limit.collision_strategy.value) == (1, "CANCEL_NEW")
        scope_kwargs(d.parameters["scopes"])  # every configured scope is a valid scope
    assert deployments["daily-incremental"].parameters["full"] is False
    assert deployments["weekly-full-reconciliation"].parameters["full"] is True
    alerts = deployments["alerts-after-sync"]
    assert (alerts.entrypoint, alerts.schedules) == ("flows/scheduled.py:send_alerts", [])
    assert alerts.load_flow().name == "send_alerts"  # a real Prefect flow, as Prefect's loader requires
    from prefect.flows import load_flow_from_entrypoint

    for d in deployments.values():  # what a worker or serve's flow-run process loads
        assert load_flow_from_entrypoint(str(ROOT / d.entrypoint)).name == d.load_flow().name
    trigger = alerts.triggers[0]
    assert trigger.expect == {"prefect.flow-run.Completed"}
    assert trigger.match_related.get("prefect.resource.name") == ["scheduled_sync"]


def test_the_alerts_entrypoint_takes_its_parameters_and_its_shipped_watchlist(
        deployments: dict[str, Deployment]) -> None:
    from flows.alerts import check_config

    alerts = deployments["alerts-after-sync"]
    flow = alerts.load_flow()
    inspect.signature(flow.fn).bind_partial(**alerts.parameters, warehouse="w")
    watchlist = check_config(Path(__file__).resolve().parents[1] / alerts.parameters["config"])
    assert [w.name for w in watchlist.watches] == ["seed-trial", "aml-notable"]


def test_the_daily_sync_fires_on_weekdays_after_the_refresh_and_the_full_run_on_saturdays(
        deployments: dict[str, Deployment]) -> None:
    monday = datetime(2026, 5, 4, tzinfo=UTC)
    daily = fire_times(deployments["daily-incremental"], 10, monday)
    assert [t.strftime("%a %H:%M") for t in daily] == [f"{day} 10:00" for day in
                                                       ["Mon", "Tue", "Wed", "Thu", "Fri"] * 2]
    weekly = fire_times(deployments["weekly-full-reconciliation"], 3, monday)
    assert [t.strftime("%Y-%m-%d %a %H:%M") for t in weekly] == [
        "2026-05-09 Sat 06:00", "2026-05-16 Sat 06:00", "2026-05-23 Sat 06:00"]


@pytest.mark.usefixtures("prefect_api")
def test_the_scheduled_flows_run_once_against_the_fake_registry(
        deployments: dict[str, Deployment], records: list[dict[str, Any]], tmp_path: Path) -> None:
    from flows.demo import seed_record

    warehouse_dir = tmp_path / "w"
    with FakeRegistry([*records, seed_record()]).start() as registry:
        results = {}
        for name in SYNC_DEPLOYMENTS:
            d = deployments[name]
            params = {**d.parameters, **d.schedules[0].parameters, "api_url": registry.url,
                      "warehouse": str(warehouse_dir), "request_interval": 0.0}
            results[name] = d.load_flow()(**params)
    daily, weekly = results["daily-incremental"], results["weekly-full-reconciliation"]
    assert daily["skipped"] is None and weekly["skipped"] is None
    summary = [(r["scope"], r["mode"], r["studies_seen"], r["versions_written"], r["reconciliation"]["status"])
               for r in daily["runs"] + weekly["runs"]]
    assert summary == [
        ("query.cond=acute myeloid leukemia", "full", 1, 1, "ok"),  # a scope's first run is full
        ("filter.ids=NCT07011004", "full", 1, 0, "ok"),
        ("query.cond=acute myeloid leukemia", "full", 1, 0, "ok"),
        ("filter.ids=NCT07011004", "full", 1, 0, "ok"),
    ]
    with Warehouse(warehouse_dir).connect() as con:
        checks = con.execute("""SELECT "check", status FROM reconciliation WHERE run_id = ?
                                ORDER BY "check" """, [weekly["runs"][0]["run_id"]]).fetchall()
    assert checks == [("listing_omitted", "ok"), ("missing_ids", "ok"), ("status_counts", "ok"), ("total_count", "ok"),
                      ("unexpected_ids", "ok"), ("zero_update_weekdays", "skipped")]

    # The seed trial's completion date is refined; the next daily run picks it up and the alerts
    # deployment (its shipped watchlist, copied beside the warehouse) puts it in the feed.
    from flows.demo import seed_record
    from pipeline import mutate

    refined = mutate.posted_on(mutate.set_date(seed_record(), "completionDate", "2028-05-30"), datetime(
        2026, 12, 1).date())
    with FakeRegistry([*records, refined]).start() as registry:
        d = deployments["daily-incremental"]
        d.load_flow()(**{**d.parameters, **d.schedules[0].parameters, "api_url": registry.url,
                         "warehouse": str(warehouse_dir), "request_interval": 0.0})
    config = tmp_path / "watchlists.yaml"
    config.write_text((Path(__file__).resolve().parents[1] / "deploy" / "watchlists.yaml").read_text())
    alerts = deployments["alerts-after-sync"].load_flow()(config=str(config), warehouse=str(warehouse_dir))
    assert (alerts["messages_sent"], alerts["messages_failed"]) == (1, 0)
    feed = (tmp_path / "alerts.atom").read_text()
    assert "NCT07011004" in feed and "2028-05-31" in feed and "2028-05-30" in feed


def test_a_run_that_starts_too_late_stands_down_for_the_watermark_to_catch_up() -> None:
    due = datetime(2026, 5, 4, 14, 0, tzinfo=UTC)
    assert stale_reason(due, due + timedelta(hours=5), timedelta(hours=20)) is None
    assert stale_reason(None, due, timedelta(hours=20)) is None
    reason = stale_reason(due, due + timedelta(days=3), timedelta(hours=20))
    assert reason == ("due at 2026-05-04 14:00 UTC, started 72.0 h late (limit 20.0 h): skipped; "
                      "the next run catches up from the watermark")


def test_scheduled_scopes_are_checked_before_anything_runs() -> None:
    assert scope_kwargs(None) == [{"query": None, "condition": None, "sponsor": None, "ids": None, "status": None}]
    assert scope_kwargs([{"ids": "nct07011004", "status": ["recruiting"]}]) == [
        {"query": None, "condition": None, "sponsor": None, "ids": ["NCT07011004"], "status": ["RECRUITING"]}]
    with pytest.raises(UsageError, match=r"scopes\[2\].conditon: unknown key"):
        scope_kwargs([{"condition": "aml"}, {"conditon": "aml"}])
    with pytest.raises(UsageError, match="invalid NCT id"):
        scope_kwargs([{"ids": ["NCT00000000"]}])


@pytest.mark.parametrize(("scopes", "error"), [
    ([{}], "scopes[1]: is empty, which would sync the whole registry; give one or more of query, condition, "
           "sponsor, ids, status (leave `scopes` out for the whole registry)"),
    ([], "scopes: is empty, which would sync the whole registry; leave `scopes` out for that"),
    ([{"condition": "aml"}, {}], "scopes[2]: is empty, which would sync the whole registry"),
    ([{"ids": None}], "scopes[1].ids: is empty; leave the key out for no such filter"),
    ([{"condition": "  "}], "scopes[1].condition: is empty; leave the key out for no such filter"),
    ([{"ids": 1234567}], "scopes[1].ids: must be a text or a list of texts, got int"),
    ([{"ids": [["NCT01234567"]]}], "scopes[1].ids: must be a text or a list of texts, got list"),
    ([{"status": True}], "scopes[1].status: must be a text or a list of texts, got bool"),
    ([{"condition": ["aml", "cll"]}], "scopes[1].condition: must be one text, got list"),
    ([{"sponsor": 5}], "scopes[1].sponsor: must be one text, got int"),
    ({"condition": "aml"}, "scopes: must be a list of scopes (each a mapping of query, condition, sponsor, ids, "
                           "status), got dict"),
    ("aml", "scopes: must be a list of scopes"),
    (["aml"], "scopes[1]: must be a mapping of query, condition, sponsor, ids, status, got str"),
    ([{"condition": "aml"}, {"condition": "aml"}], "scopes[2]: is the same scope as scopes[1] (query.cond=aml)"),
    ([{"condition": "aml"}, {"condition": "AML "}], "scopes[2]: is the same scope as scopes[1]"),
    ([{"ids": ["NCT01234567", "NCT07011004"]}, {"ids": "nct7011004, NCT01234567"}],
     "scopes[2]: is the same scope as scopes[1] (filter.ids=NCT01234567,NCT07011004)"),
])
def test_a_scope_that_would_widen_to_the_whole_registry_or_is_mistyped_is_refused(scopes: Any, error: str) -> None:
    """Only a missing `scopes` is the whole registry; `[{}]`, `[]` or `ids: []` by accident are not."""
    with pytest.raises(UsageError) as info:
        scope_kwargs(scopes)
    assert str(info.value).startswith(error)
    assert "\n" not in str(info.value)


def test_an_ids_scope_written_as_one_text_is_ids_not_characters() -> None:
    assert scope_kwargs([{"ids": "NCT01234567"}])[0]["ids"] == ["NCT01234567"]
    assert scope_kwargs([{"ids": "NCT01234567, nct7011004"}])[0]["ids"] == ["NCT01234567", "NCT07011004"]
    assert scope_kwargs([{"status": "recruiting"}])[0]["status"] == ["RECRUITING"]  # status alone: a choice


@pytest.mark.usefixtures("prefect_api")
def test_prefects_scheduler_makes_runs_of_the_daily_deployment(deployments: dict[str, Deployment]) -> None:
    """With the pinned SQLAlchemy (<2.1) the scheduler's queries work; with 2.1 they failed silently."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.server.services.scheduler import schedule_deployments

    from flows.deployments import runner_deployments

    deployment_id = runner_deployments([deployments["daily-incremental"]])[0].apply()
    asyncio.run(schedule_deployments())
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))
    starts = sorted(r.expected_start_time.astimezone(NEW_YORK) for r in runs if r.state_name == "Scheduled")
    assert len(starts) >= 3
    assert all(t.weekday() < 5 and (t.hour, t.minute) == (10, 0) for t in starts)
    assert all(r.parameters["full"] is False for r in runs)


def test_serve_lists_the_deployments_it_would_serve() -> None:
    result = run_cli("serve", "--list")
    assert result.returncode == 0, result.stderr
    assert "daily-incremental: flows/scheduled.py:scheduled_sync, cron '0 10 * * 1-5' America/New_York" in result.stdout
    assert "weekly-full-reconciliation: flows/scheduled.py:scheduled_sync, cron '0 6 * * 6' America/New_York" \
        in result.stdout
    assert "alerts-after-sync: flows/scheduled.py:send_alerts, on an event" in result.stdout


def test_serve_registers_the_deployments_with_their_schedules(prefect_api: str, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client

    env = {"PREFECT_API_URL": prefect_api, "TRIALSYNC_WAREHOUSE": str(tmp_path / "w")}
    server = subprocess.Popen([str(TRIALSYNC), "serve"], env={**os.environ, **env}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        found: dict[str, Any] = {}
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and len(found) < 2:
            with get_client(sync_client=True) as client:
                found = {d.name: d for d in client.read_deployments() if d.name in SYNC_DEPLOYMENTS}
            time.sleep(1)
        assert set(found) == set(SYNC_DEPLOYMENTS), "serve did not register the deployments in 90 s"
        daily = found["daily-incremental"]
        assert [s.schedule.cron for s in daily.schedules] == ["0 10 * * 1-5"]
        assert daily.parameters["full"] is False and daily.global_concurrency_limit.limit == 1
        assert daily.concurrency_options.collision_strategy.value == "CANCEL_NEW"
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_deploy_file_and_docstrings_state_the_watermark_overlap_the_code_uses() -> None:
    import re

    from pipeline import operations
    from pipeline.scope import WATERMARK_OVERLAP

    texts = [DEPLOY_FILE.read_text(), inspect.getsource(operations)]
    claims = [c for text in texts for c in re.findall(r"watermark\s+(?:\(?minus\s+)(.{1,40})", " ".join(text.split()))]
    assert len(claims) >= 3 and all(f"{WATERMARK_OVERLAP.days} days" in c for c in claims), claims
