"""Command-line input on a bad day.

Arguments and environment settings that are not UTF-8 (a Latin-1 terminal's text, a path in another
encoding): Python hands their bytes over as lone surrogates, which DuckDB, requests and the file system's
UTF-8 paths cannot encode. ``sync --query`` failed with DuckDB's "Python Conversion Failure" after making
the warehouse's directories, ``sync --warehouse`` after making the directory, ``sql`` with a TypeError
(exit 1 each). Now one line, exit 2, before anything runs.

Lists of ids (statuses, categories, events) pasted with spaces are several values in every command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows.cli import main
from tests.conftest import REPO
from tests.test_config_pipes import before_slip, registry  # noqa: F401 - shared fixtures


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main(args)
        raise SystemExit(0)
    return int(info.value.code or 0), capsys.readouterr().err


HINT = "give text and paths in UTF-8 (a UTF-8 locale, e.g. LANG=C.UTF-8)"


@pytest.mark.parametrize("command", [
    ["sync", "--query", "Sj\udcf6gren", "--ids", "NCT05766735"],
    ["sql", "SELECT 'Sj\udcf6gren'"],
    ["changes", "--nct", "NCT05766735", "--category", "Sj\udcf6gren"],
    ["report", "-o", "Sj\udcf6gren.html"],
])
def test_an_argument_that_is_not_utf8_is_refused_before_anything_runs(
        command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRIALSYNC_API_URL", "http://127.0.0.1:9/api/v2")  # never reached
    warehouse = tmp_path / "warehouse"
    position = command.index(next(a for a in command if "\udcf6" in a)) + 1
    code, err = _run([*command, "--warehouse", str(warehouse)], capsys)
    bad = os.fsencode(command[position - 1])
    byte = bad.index(0xF6)
    assert (code, err) == (2, f"trialsync: error: argument {position} is not UTF-8 text: {bad!r} "
                              f"(byte {byte}); {HINT}\n")
    assert list(tmp_path.iterdir()) == []


def test_a_warehouse_path_that_is_not_utf8_makes_no_directory(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIALSYNC_API_URL", "http://127.0.0.1:9/api/v2")
    path = str(tmp_path) + "/w\udcff"
    code, err = _run(["sync", "--ids", "NCT05766735", "--warehouse", path], capsys)
    assert code == 2 and err.startswith("trialsync: error: argument 5 is not UTF-8 text: "), err
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setenv("TRIALSYNC_WAREHOUSE", path)
    code, err = _run(["sync", "--ids", "NCT05766735"], capsys)
    assert code == 2 and err.startswith("trialsync: error: TRIALSYNC_WAREHOUSE is not UTF-8 text: "), err
    assert list(tmp_path.iterdir()) == []


def test_the_console_script_refuses_latin1_bytes_in_its_arguments(tmp_path: Path) -> None:
    """As a user's shell passes them: bytes, decoded by Python under a UTF-8 locale."""
    script = "import sys; from flows.entry import main; sys.argv[0] = 'trialsync'; main()"
    env = {**os.environ, "LANG": "C.UTF-8", "PYTHONPATH": str(REPO), "TRIALSYNC_API_URL": "http://127.0.0.1:9/api/v2"}
    done = subprocess.run([sys.executable, "-c", script, "sync", "--condition", b"Sj\xf6gren", "--warehouse",
                           str(tmp_path / "w")], env=env, capture_output=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr == ("trialsync: error: argument 3 is not UTF-8 text: b'Sj\\xf6gren' (byte 2); "
                           f"{HINT}\n").encode()
    assert list(tmp_path.iterdir()) == []


def test_ids_pasted_with_spaces_are_several_ids_in_every_command(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """``changes --nct "NCT05766735 NCT01967030"`` (a list pasted from a spreadsheet) was refused as one
    invalid id, though ``sync --ids`` and ``backfill`` (its help: "space or comma separated") take it."""
    from flows.cli.common import split_values

    assert split_values(["NCT05766735 NCT01967030", "nct1\tNCT2,\n NCT3", " , "]) == [
        "NCT05766735", "NCT01967030", "nct1", "NCT2", "NCT3"]
    assert split_values(["RECRUITING COMPLETED", "status,sites"]) == ["RECRUITING", "COMPLETED", "status", "sites"]


def test_a_backup_under_a_file_says_the_file_is_no_directory(
        before_slip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811 - a fixture
    """``backup FILE/copy`` said "FILE does not exist" of a file that is there."""
    afile = tmp_path / "notes.txt"
    afile.write_text("x")
    code, err = _run(["backup", str(afile / "copy"), "--warehouse", str(before_slip)], capsys)
    assert (code, err) == (2, f"trialsync: error: {afile} is a file, not a directory\n")


def test_a_url_that_is_not_utf8_is_refused_without_its_credentials(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole value was printed: an API URL through a proxy with ``user:password@`` or ``?token=``
    showed its secret on stderr (every other error redacts a URL)."""
    monkeypatch.setenv("TRIALSYNC_API_URL", "https://alice:s3cr\udce9t@proxy.example.org/api/v2?token=abc\udce9")
    code, err = _run(["sync", "--ids", "NCT05766735", "--warehouse", str(tmp_path / "w")], capsys)
    assert (code, err) == (2, "trialsync: error: TRIALSYNC_API_URL is not UTF-8 text: "
                              "b'https://***@proxy.example.org/api/v2?token=***'; " f"{HINT}\n")
    code, err = _run(["sync", "--ids", "NCT05766735", "--api-url", "https://x.example.org/api?q=\udce9",
                      "--warehouse", str(tmp_path / "w")], capsys)
    assert (code, err) == (2, "trialsync: error: argument 5 is not UTF-8 text: "
                              f"b'https://x.example.org/api?q=\\xe9' (byte 28); {HINT}\n")
    assert list(tmp_path.iterdir()) == []


def test_the_byte_named_is_the_bad_bytes_offset_after_other_non_ascii_text(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """It was the character's index: ``Jörg\\xf6`` said byte 4 of bytes where the bad one is the 6th."""
    code, err = _run(["sync", "--condition", "Jörg\udcf6", "--warehouse", str(tmp_path / "w")], capsys)
    assert (code, err) == (2, "trialsync: error: argument 3 is not UTF-8 text: "
                              f"b'J\\xc3\\xb6rg\\xf6' (byte 5); {HINT}\n")
