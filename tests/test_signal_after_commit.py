"""A SIGINT or SIGTERM that lands once a run (or a backup) has passed its commit point: the command is
not reported as failed, nothing committed is undone, and the warehouse says the same (real processes,
real signals: the command signals itself right after the real commit point)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.registry.fake_server import FakeRegistry
from tests.care_support import _shell
from tests.conftest import FULL, real_records
from tests.test_cli import run_cli
from warehouse import manifest as manifests
from warehouse.check import check

SIGNALS = {"INT": signal.SIGINT, "TERM": signal.SIGTERM}

# The console script, with one hook: right after ``target`` (the commit point) the process signals itself.
SCRIPT = """
import os, signal, sys
from flows import lifecycle
lifecycle.install()
import {module} as where
real = where.{name}
def then_signal(*args, **kwargs):
    result = real(*args, **kwargs)
    {condition}os.kill(os.getpid(), signal.SIG{signal})
    return result
where.{name} = then_signal
from flows.cli.main import main
main(sys.argv[1:])
"""


def _signalled_after(module: str, name: str, signame: str, *args: str, condition: str = "") -> (
        subprocess.CompletedProcess[str]):
    script = SCRIPT.format(module=module, name=name, signal=signame, condition=condition)
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=180,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})


@pytest.mark.reliability
@pytest.mark.parametrize("name", list(SIGNALS) if FULL else ["INT"])
def test_a_signal_just_after_the_commit_point_lets_the_sync_finish_and_exit_0(tmp_path: Path, name: str) -> None:
    """``make test``: SIGINT (the backup's test below sends SIGTERM); both under ``TRIALSYNC_FULL=1``."""
    warehouse = tmp_path / "w"
    with FakeRegistry(real_records()[:20]).start() as registry:
        done = _signalled_after("warehouse.manifest", "publish", name, "sync", "-q", "--request-interval", "0",
                                "--api-url", registry.url, "--warehouse", str(warehouse))
    assert done.returncode == 0, done.stderr
    [run] = [g.run_id for g in manifests.read_log(warehouse)]
    what = "interrupted" if name == "INT" else "terminated"
    assert done.stderr.strip().splitlines()[-1] == (
        f"trialsync: {what} after {run} committed: the command finished first")
    assert "an unfinished run commits nothing" not in done.stderr
    listed = run_cli("runs", "--warehouse", str(warehouse), "--format", "csv")
    assert run in listed.stdout
    assert check(warehouse, deep=True).ok


@pytest.mark.reliability
@pytest.mark.parametrize("name", list(SIGNALS) if FULL else ["TERM"])
def test_a_signal_once_the_backup_is_renamed_to_dest_lets_it_finish_with_a_catalog_of_dest(
        tmp_path: Path, name: str) -> None:
    """``make test``: SIGTERM (the sync's test above sends SIGINT); both under ``TRIALSYNC_FULL=1``."""
    warehouse, dest = tmp_path / "w", tmp_path / "copy"
    with FakeRegistry(real_records()[:20]).start() as registry:
        synced = run_cli("sync", "-q", "--request-interval", "0", "--api-url", registry.url,
                         "--warehouse", str(warehouse))
    assert synced.returncode == 0, synced.stderr
    done = _signalled_after("os", "rename", name, "backup", str(dest), "--warehouse", str(warehouse),
                            condition=f"if str(args[1]) == {str(dest)!r}: ")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"backup at {dest}:"), done.stdout
    assert "committed: the command finished first" in done.stderr
    assert _shell(dest, "SELECT count(*) FROM studies") == "20"  # the plain DuckDB CLI reads DEST's own files
    assert check(dest, deep=True).ok
