"""Issue 16 / 9: a backfill's history is not news. Versions a backfill imports never alert, and neither
does a change that only the backfill made visible (the registry's history before the first version a
sync observed); a change a sync observes after the backfill does. Real backfill against the fake
registry's real history payload, real alerts run, a real webhook receiver on 127.0.0.1."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import pytest

from flows.alerts import send_alerts
from flows.webhook_receiver import WebhookReceiver
from pipeline import mutate
from pipeline.markup import api_form
from pipeline.registry.fake_server import FakeRegistry
from tests.conftest import fast_sync
from tests.test_alerts import hook, watchlist  # noqa: F401 - fixtures
from tests.test_backfill import HISTORY, NCT, backfill, rows

pytestmark = pytest.mark.usefixtures("prefect_api")


def _alerted(receiver: WebhookReceiver, start: int = 0) -> list[dict[str, Any]]:
    return [c for r in receiver.received[start:] for s in r.body["studies"] for c in s["changes"]]


def test_a_backfill_alerts_no_history_and_a_change_synced_after_it_alerts_once(
        tmp_path: Path, hook: WebhookReceiver) -> None:  # noqa: F811
    directory = tmp_path / "warehouse"
    config = watchlist(tmp_path / "watch.yaml", {"hook": {"type": "webhook", "url": f"{hook.url}/hook"}},
                       [{"name": "w", "studies": {"ids": [NCT]}, "min_severity": "info", "channels": ["hook"]}])
    with FakeRegistry().start() as registry:
        registry.put(api_form(HISTORY.records[7]))  # a sync first sees the study at registry version 7 (2019)
        fast_sync(registry, directory)
        registry.put_history(HISTORY)
        backfill(registry, directory, NCT)  # versions 0-6 before it, 8-9 after it
        sources = rows(directory, f"SELECT version, source FROM study_versions WHERE nct_id = '{NCT}' ORDER BY 1")
        assert sources == [(v, "api" if v == 8 else "history") for v in range(1, 11)]
        # The registry's 2019 status change into our observed version: old news, made visible by the backfill.
        assert rows(directory, f"""SELECT from_version, to_version, old_value, new_value FROM changes
                                   WHERE nct_id = '{NCT}' AND event = 'status_changed' AND to_version = 8""") == [
            (7, 8, "RECRUITING", "ACTIVE_NOT_RECRUITING")]

        quiet = send_alerts(config=str(config), warehouse=str(directory))
        assert (quiet["matched"], quiet["messages"], hook.received) == (0, 0, [])

        terminated = mutate.posted_on(mutate.set_status(HISTORY.records[9], "TERMINATED", "Sponsor decision"),
                                      date(2020, 6, 1))
        registry.put(terminated)
        assert fast_sync(registry, directory)["versions_written"] == 1
    news = send_alerts(config=str(config), warehouse=str(directory))
    assert (news["messages"], news["messages_sent"]) == (1, 1)
    changes = _alerted(hook)
    assert {(c["from_version"], c["to_version"]) for c in changes} == {(10, 11)}
    assert ("status_changed", "COMPLETED", "TERMINATED") in {(c["event"], c["old_value"], c["new_value"])
                                                            for c in changes}
    assert send_alerts(config=str(config), warehouse=str(directory))["messages"] == 0
