"""Prefect's home on a bad day: a database Prefect's server cannot open (a damaged file, a PREFECT_HOME
that cannot be made, a full disk), for Prefect's temporary server (TRIALSYNC_ENGINE=prefect) and for
``trialsync serve``'s own server (real processes: the CLI, the servers it starts)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import FULL
from tests.test_cli import TRIALSYNC, run_cli
from tests.test_lifecycle import plain_env

pytestmark = pytest.mark.prefect  # what these tests check is the Prefect side

REMEDY = ("make PREFECT_HOME writable with room to spare, move a damaged prefect.db away, or unset "
          "TRIALSYNC_ENGINE to run without Prefect")


def _damaged_home(tmp_path: Path) -> Path:
    home = tmp_path / "prefect-home"
    home.mkdir()
    (home / "prefect.db").write_bytes(b"\x00not a database\xff" * 4096)  # what a torn copy or a bad disk leaves
    return home


def _unmakeable_home(tmp_path: Path) -> Path:
    (tmp_path / "a-file").write_text("")
    return tmp_path / "a-file" / "prefect-home"  # cannot be made, even by root


CASES = [(_damaged_home, "sqlalchemy.exc.DatabaseError: (sqlite3.DatabaseError) file is not a database"),
         (_unmakeable_home, "sqlalchemy.exc.OperationalError: (sqlite3.OperationalError) unable to open database file")]


@pytest.mark.parametrize(("home", "cause"), CASES if FULL else CASES[:1],  # each case starts a server, ~20 s
                         ids=["damaged", "cannot-be-made"][:2 if FULL else 1])
def test_prefects_temporary_server_that_cannot_open_its_database_is_one_line_at_once(
        tmp_path: Path, home: object, cause: str) -> None:
    """Prefect took uvicorn's exit code for a failed startup (3) for a port in use and started its server
    again and again until its 120 s startup timeout (~145 s in all), printing each attempt's traceback
    (2,000 lines), then 'RuntimeError: Timed out while attempting to connect to ephemeral Prefect API
    server'. The warehouse is never touched."""
    where = home(tmp_path)  # type: ignore[operator]
    began = time.monotonic()
    result = run_cli("sync", "--ids", "NCT07011004", "--api-url", "http://127.0.0.1:9/api/v2", "--warehouse",
                     str(tmp_path / "w"), env=plain_env(TRIALSYNC_ENGINE="prefect", PREFECT_HOME=str(where)),
                     timeout=110)
    assert time.monotonic() - began < 80
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"trialsync: error: Prefect's temporary server could not start (exit code 3: {cause}); its database: "
        f"{where / 'prefect.db'}: {REMEDY}"]
    assert not (tmp_path / "w").exists()


def test_serve_names_what_its_servers_database_failed_with(tmp_path: Path) -> None:
    """It said 'the Prefect server exited with code 3; see LOG' (the cause only in the log)."""
    home = _damaged_home(tmp_path)
    result = run_cli("serve", env=plain_env(PREFECT_HOME=str(home), TRIALSYNC_WAREHOUSE=str(tmp_path / "w")),
                     timeout=110)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "trialsync: error: the Prefect server exited with code 3 (sqlalchemy.exc.DatabaseError: "
        f"(sqlite3.DatabaseError) file is not a database); see {home / 'trialsync-server.log'}"]


def test_serve_with_a_prefect_home_that_cannot_be_made_says_so_in_one_line(tmp_path: Path) -> None:
    """It was Prefect's two-line UserWarning and 'NotADirectoryError: [Errno 20] Not a directory: ...
    (rerun with --debug for details)'."""
    home = _unmakeable_home(tmp_path)
    result = run_cli("serve", env=plain_env(PREFECT_HOME=str(home), TRIALSYNC_WAREHOUSE=str(tmp_path / "w")),
                     timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"trialsync: error: PREFECT_HOME={home} cannot be used (Not a directory): serve keeps its Prefect server's "
        "database there; make it writable with room to spare or point PREFECT_HOME elsewhere"]


def test_serve_names_no_cause_an_earlier_server_logged_when_its_own_server_dies_without_one(tmp_path: Path) -> None:
    """The server's log is appended to by every serve: a server killed while starting (the OOM killer, a
    kill -9) printed nothing, and serve named an earlier server's error from the log as its cause."""
    import os
    import signal

    from tests.test_lifecycle import start

    home = tmp_path / "prefect-home"
    home.mkdir()
    (home / "trialsync-server.log").write_text("Traceback (most recent call last):\n"
                                               "OSError: [Errno 28] No space left on device\n")  # last week's
    serve = start(["serve"], plain_env(PREFECT_HOME=str(home), TRIALSYNC_WAREHOUSE=str(tmp_path / "w")))
    try:
        children: list[int] = []
        deadline = time.monotonic() + 60
        while not children and time.monotonic() < deadline and serve.poll() is None:
            time.sleep(0.05)
            children = [pid for pid in _children(serve.pid) if b"server\x00start" in _cmdline(pid)]
        assert children, "serve started no server"
        for pid in children:
            os.kill(pid, signal.SIGKILL)
        _, stderr = serve.communicate(timeout=60)
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait()
    assert serve.returncode == 1, stderr
    assert stderr.strip().splitlines() == [
        f"trialsync: error: the Prefect server exited with code -9; see {home / 'trialsync-server.log'}"]


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as listed:
            return [int(child) for child in listed.read().split()]
    except OSError:
        return []


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read()
    except OSError:
        return b""


def test_prefects_temporary_server_with_a_database_url_it_cannot_read_is_one_line_naming_the_setting(
        tmp_path: Path) -> None:
    """A sqlite URL without '///' (PREFECT_SERVER_DATABASE_CONNECTION_URL=sqlite+aiosqlite:/x) was
    'IndexError: list index out of range (rerun with --debug for details)'."""
    result = run_cli("sync", "--ids", "NCT07011004", "--api-url", "http://127.0.0.1:9/api/v2", "--warehouse",
                     str(tmp_path / "w"), env=plain_env(TRIALSYNC_ENGINE="prefect", PREFECT_HOME=str(tmp_path / "h"),
                                                        PREFECT_SERVER_DATABASE_CONNECTION_URL="sqlite+aiosqlite:/x"),
                     timeout=110)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [
        "trialsync: error: Prefect's temporary server could not start (exit code 1: sqlalchemy.exc.ArgumentError: "
        "Could not parse SQLAlchemy URL from given URL string): check PREFECT_SERVER_DATABASE_CONNECTION_URL, or "
        "unset TRIALSYNC_ENGINE to run without Prefect"]
    assert not (tmp_path / "w").exists()


def test_serve_uses_the_prefect_home_of_the_active_profile(tmp_path: Path) -> None:
    """serve read PREFECT_HOME from the environment only: with it set in the active Prefect profile, its
    lock and its server's log went to ~/.prefect while the server kept its database in the profile's home
    (two serves on two profiles were refused as one; a home it could not use was the server's exit)."""
    home = _unmakeable_home(tmp_path)
    profiles = tmp_path / "profiles.toml"
    profiles.write_text(f'active = "ops"\n[profiles.ops]\nPREFECT_HOME = "{home}"\n')
    env = {k: v for k, v in plain_env().items() if k not in ("PREFECT_HOME", "PREFECT_PROFILE")}
    result = subprocess.run([str(TRIALSYNC), "serve"], capture_output=True, text=True, timeout=60, env={
        **env, "HOME": str(tmp_path / "user"), "PREFECT_PROFILES_PATH": str(profiles),
        "TRIALSYNC_WAREHOUSE": str(tmp_path / "w")})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"trialsync: error: PREFECT_HOME={home} cannot be used (Not a directory): serve keeps its Prefect server's "
        "database there; make it writable with room to spare or point PREFECT_HOME elsewhere"]
    assert not (tmp_path / "user" / ".prefect").exists()
