"""A named pipe where a warehouse file should be (a manifest generation, the catalog): no command may
wait for a writer that never comes. Each read command answers (from the other copy), ``check`` names the
damage and ``repair`` mends it. Before, every command hung until it was killed (``ATTACH`` of a pipe,
``read_bytes`` of a generation file)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.care_support import built, copy  # noqa: F401 - fixtures
from tests.reliability.support import TRIALSYNC


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run([str(TRIALSYNC), *args], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"trialsync {args[0]} did not return within 60 s")


@pytest.mark.parametrize("target", ["manifest/00000002.json", "warehouse.duckdb"])
def test_a_named_pipe_in_place_of_a_warehouse_file_never_blocks_a_command_and_repair_mends_it(
        target: str, copy: Path) -> None:  # noqa: F811
    root = copy.resolve()
    (root / target).unlink()
    os.mkfifo(root / target)
    runs = _run("runs", "--warehouse", str(root))
    assert runs.returncode == 0, runs.stderr
    assert "3 rows" in runs.stdout
    checked = _run("check", "--warehouse", str(root))
    assert checked.returncode == 1 and "run `trialsync repair`" in checked.stderr, checked.stdout + checked.stderr
    assert _run("repair", "--warehouse", str(root)).returncode == 0
    assert _run("check", "--deep", "--warehouse", str(root)).returncode == 0
    assert (root / target).is_file()


@pytest.mark.parametrize("kind", ["schema file", "part file"])
def test_check_names_a_named_pipe_in_place_of_a_parquet_file_and_repair_mends_it(kind: str, copy: Path) -> None:  # noqa: F811
    """A pipe where a schema file should be made ``check`` and ``repair`` (which checks first) wait for
    ever (the footer was read from it); in a part file's place it was named as '0 bytes, N at commit'."""
    root = copy.resolve()
    pattern = "schema/*.parquet" if kind == "schema file" else "runs/*/*.parquet"
    target = sorted(root.glob(pattern))[0]
    target.unlink()
    os.mkfifo(target)
    relative = str(target.relative_to(root))
    synced = _run("sync", "--api-url", "http://127.0.0.1:9", "--max-attempts", "1", "--warehouse", str(root))
    assert synced.returncode == 1 and f"is damaged ({relative}: " in synced.stderr, synced.stdout + synced.stderr
    checked = _run("check", "--warehouse", str(root))
    assert checked.returncode == 1, checked.stdout + checked.stderr
    named = [line for line in checked.stdout.splitlines() if line.startswith(f"{relative}: ")]
    expected = "unreadable schema file" if kind == "schema file" else "not a regular file"
    assert len(named) == 1 and named[0].startswith(f"{relative}: {expected}"), checked.stdout
    repaired = _run("repair", "--warehouse", str(root))
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert _run("check", "--deep", "--warehouse", str(root)).returncode == 0
    assert not target.is_fifo()
