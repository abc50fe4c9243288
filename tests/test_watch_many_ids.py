"""A watch following many studies by id (a portfolio: tens of thousands of ids, well within the 1 MB a
watchlist may have). Its selector was one ``nct_id = ?`` per id, OR-ed: 50,000 ids took an alerts run
95 s here (5,000: 12 s), growing faster than the ids. Now one list parameter, whatever the count."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline.alerts.watchlist import StudySelector
from tests.test_config_pipes import (  # noqa: F401 - fixtures
    SLIPPED,
    _feed_changes,
    _run,
    before_slip,
    registry,
    slipped,
)
from warehouse.alerts import selector_sql

MANY = tuple(f"NCT{n:08d}" for n in range(10_000_000, 10_050_000))


def test_the_selector_of_an_ids_watch_does_not_grow_with_its_ids() -> None:
    one, params_one = selector_sql(StudySelector(ids=MANY[:1]))
    many, params_many = selector_sql(StudySelector(ids=MANY))
    assert one == many
    assert params_one == [list(MANY[:1])] and params_many == [list(MANY)]


def test_a_watch_of_50000_ids_follows_and_alerts_the_ones_stored(
        slipped: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811 - a fixture
    warehouse = shutil.copytree(slipped, tmp_path / "warehouse", symlinks=True)
    config = tmp_path / "w.yaml"
    config.write_text("channels:\n  feed: {type: feed, path: feed.json}\nwatches:\n  - name: portfolio\n"
                      f"    studies: {{ids: [{', '.join((*MANY, SLIPPED))}]}}\n    channels: [feed]\n")
    code, err = _run(["alerts", "list", "--config", str(config), "--format", "csv", "--warehouse", str(warehouse)],
                     capsys)
    assert (code, err) == (0, "")
    header, row = capsys.readouterr().out.splitlines()
    assert dict(zip(header.split(","), row.split(","), strict=True))["studies"] == "1"
    code, err = _run(["alerts", "run", "--config", str(config), "--warehouse", str(warehouse)], capsys)
    assert (code, err) == (0, "")
    assert len(_feed_changes(tmp_path / "feed.json")) == 2
