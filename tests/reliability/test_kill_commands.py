"""kill -9 of the warehouse-care commands at any moment (``compact``, ``rederive``, ``backup``,
``repair``): real ``trialsync`` subprocesses, SIGKILLed after a stepped delay (from the imports to
the commit and past it). Afterwards ``check --deep`` passes (or, a catalog still missing before a
repair, says to run ``trialsync repair``), the command runs again, no committed row is lost, no lock
blocks, and no temporary file or directory is left that would pile up with each kill (a killed
backup's directory beside a DEST of another name was never removed)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pipeline import mutate
from pipeline.registry.fake_server import FakeRegistry
from tests.conftest import fast_sync, real_records
from tests.reliability.support import TRIALSYNC, cli, leftovers, pick, query

pytestmark = pytest.mark.reliability
ROWS = "SELECT (SELECT count(*) FROM study_versions), (SELECT count(*) FROM changes), (SELECT count(*) FROM studies)"
DELAYS = [0.8, 1.6, 2.4, 3.2, 4.0, 5.0, 6.5, 8.0]  # seconds after the start: imports, lock, copy, commit, after
CASES = [(command, delay) for command in ("backup", "compact", "rederive", "repair") for delay in DELAYS]
SHORT = [("backup", 3.2)]


@pytest.fixture(scope="module")
def base(prefect_api: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A warehouse of three runs (new studies, then status changes)."""
    warehouse = tmp_path_factory.mktemp("kill-commands") / "wh"
    records = real_records()[:40]
    with FakeRegistry(records).start() as registry:
        fast_sync(registry, warehouse, full=True)
        registry.put(*[mutate.set_status(r, "SUSPENDED") for r in records[::5]])
        fast_sync(registry, warehouse)
    return warehouse


def _args(command: str, warehouse: Path, place: Path) -> list[str]:
    return {"backup": ["backup", str(place / f"backup-{time.monotonic_ns()}")], "compact": ["compact"],
            "rederive": ["rederive"], "repair": ["repair"]}[command] + ["--warehouse", str(warehouse)]


def _temporaries(place: Path) -> list[str]:
    return sorted(p.name for p in place.iterdir() if ".tmp-" in p.name)


@pytest.mark.parametrize(("command", "delay"), pick(CASES, SHORT), ids=lambda v: str(v))
def test_a_care_command_killed_at_any_moment_leaves_a_warehouse_that_checks_and_runs_again(
        command: str, delay: float, base: Path, tmp_path: Path) -> None:
    warehouse, place = tmp_path / "wh", tmp_path / "backups"
    shutil.copytree(base, warehouse)
    place.mkdir()
    rows = query(warehouse, ROWS)
    if command == "repair":
        (warehouse / "warehouse.duckdb").unlink()  # something for the repair to do
    for _ in range(2):  # killed twice in a row: nothing may pile up
        proc = subprocess.Popen([str(TRIALSYNC), *_args(command, warehouse, place)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env={**os.environ}, start_new_session=True)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)

    checked = cli("check", "--deep", "--warehouse", str(warehouse))
    assert checked.returncode == 0 or (command == "repair" and "run `trialsync repair`" in checked.stderr), (
        checked.stdout + checked.stderr)
    again = cli(*_args(command, warehouse, place))
    assert again.returncode == 0, again.stderr
    assert cli("check", "--deep", "--warehouse", str(warehouse)).returncode == 0
    assert query(warehouse, ROWS) == rows  # nothing committed was lost
    assert leftovers(warehouse) == []
    assert _temporaries(place) == []  # what the killed backups left went with the next backup
    for dest in place.iterdir():  # a backup that got as far as its DEST is a whole warehouse
        result = cli("check", "--deep", "--warehouse", str(dest))
        assert result.returncode == 0, result.stdout + result.stderr


def test_a_backup_killed_mid_copy_leaves_nothing_once_a_backup_to_another_place_ran(
        base: Path, tmp_path: Path) -> None:
    """Nightly backups name a new DEST each time: the temporary directory of a killed one was only ever
    removed by a backup to the same DEST, so one more stayed after each kill."""
    for night in ("2026-12-05", "2026-12-06"):
        script = ("import os, signal\n"
                  "from pathlib import Path\n"
                  "from warehouse import backup\n"
                  "copied = backup._verify\n"
                  "def verify(target, entry):\n"
                  "    if len(list(target.parent.iterdir())) > 2:  # a few files in: the power goes\n"
                  "        os.kill(os.getpid(), signal.SIGKILL)\n"
                  "    return copied(target, entry)\n"
                  "backup._verify = verify\n"
                  f"backup.backup(Path({str(base)!r}), Path({str(tmp_path / night)!r}))\n")
        proc = subprocess.run([str(Path(TRIALSYNC).parent / "python"), "-c", script], capture_output=True, text=True,
                              timeout=120, env={**os.environ, "PYTHONPATH": os.pathsep.join(_path())})
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        assert _temporaries(tmp_path) and not (tmp_path / night).exists()
    mine = tmp_path / ".notes.tmp-999999999"  # someone's own directory of that shape: never touched
    mine.mkdir()
    result = cli("backup", str(tmp_path / "2026-12-07"), "--warehouse", str(base))
    assert result.returncode == 0, result.stderr
    assert _temporaries(tmp_path) == [mine.name]
    assert cli("check", "--deep", "--warehouse", str(tmp_path / "2026-12-07")).returncode == 0


def _path() -> list[str]:
    import sys

    return [p for p in sys.path if p]
