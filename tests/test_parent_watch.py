"""A child started under ``flows.parent_watch`` (Prefect's temporary server, serve's Prefect server)
runs its module as ``python -m`` would, wherever the command was started from."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from flows import parent_watch


def _env_without_our_path() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def test_a_watched_child_starts_from_a_directory_that_holds_another_flows_package(tmp_path: Path) -> None:
    """``python -m flows.parent_watch`` put the working directory first on the child's path: a project's
    own ``flows/`` package (a common Prefect layout) was imported instead, and no server started."""
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "__init__.py").write_text("raise SystemExit('the project next door')\n")
    done = subprocess.run(parent_watch.command("platform"), cwd=tmp_path, env=_env_without_our_path(),
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.strip() == subprocess.run([sys.executable, "-m", "platform"], capture_output=True,
                                                 text=True, timeout=60).stdout.strip()


def test_a_watched_child_exits_with_its_modules_exit_code(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.py")
    plain = subprocess.run([sys.executable, "-m", "py_compile", missing], capture_output=True, timeout=60)
    watched = subprocess.run(parent_watch.command("py_compile", missing), cwd=tmp_path,
                             env=_env_without_our_path(), capture_output=True, timeout=60)
    assert plain.returncode != 0
    assert watched.returncode == plain.returncode
