"""A watch's ``where:`` that binds (the file's check passes: it is checked against the columns, on no
rows) but fails on the stored studies: a cast of a text that is not a number, an overflow, text read
as JSON. The user saw DuckDB's ``ConversionException: ... (rerun with --debug)``, exit 1,
naming neither the file nor the watch; now one line ``FILE: watches[NAME].studies.where: ...``, exit 2,
and nothing is recorded."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.test_config_pipes import _run, before_slip, registry, slipped  # noqa: F401 - shared fixtures

FAILING = [
    ("CAST(brief_title AS INTEGER) > 1", "Conversion Error: Could not convert string"),
    ("enrollment_count * 2147483647 * 2147483647 * 4 > 0", "Out of Range Error:"),
    ("json_extract(brief_title, '$.a') IS NOT NULL", "Invalid Input Error: Malformed JSON"),
]


def _watchlist(tmp_path: Path, where: str) -> Path:
    path = tmp_path / "w.yaml"
    path.write_text(f"""channels:
  feed: {{type: feed, path: feed.json}}
watches:
  - name: plain
    studies: {{conditions: [diabetes]}}
    channels: [feed]
  - name: cast
    studies: {{where: "{where}"}}
    channels: [feed]
""")
    return path


@pytest.mark.parametrize(("where", "error"), FAILING, ids=["cast", "overflow", "json"])
@pytest.mark.parametrize("command", ["run", "list"])
def test_a_where_that_fails_on_the_stored_studies_is_named_with_its_file_and_watch(
        command: str, where: str, error: str, slipped: Path, tmp_path: Path,  # noqa: F811 - a fixture
        capsys: pytest.CaptureFixture[str]) -> None:
    warehouse = shutil.copytree(slipped, tmp_path / "warehouse", symlinks=True)
    config = _watchlist(tmp_path, where)
    code, err = _run(["alerts", command, "--config", str(config), "--warehouse", str(warehouse)], capsys)
    assert code == 2, err
    assert err.startswith(f"trialsync: error: {config}: watches[cast].studies.where: fails on the stored studies: "
                          f"{error}"), err
    assert err.count("\n") == 1
    assert not (tmp_path / "feed.json").exists()  # nothing delivered, and no run recorded:
    code, _ = _run(["sql", "SELECT count(*) AS n FROM alert_runs", "--format", "csv", "--warehouse",
                    str(warehouse)], capsys)
    assert code == 0 and capsys.readouterr().out.split() == ["n", "0"]
