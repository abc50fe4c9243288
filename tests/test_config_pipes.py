"""Config files given as pipes (``--config <(cat w.yaml)``, ``--rules <(...)``, ``/dev/stdin``) through
the commands that read them: each command reads its config more than once (its own check before
Prefect starts, then the flow; ``sync --alerts`` after the sync), and a pipe can be read only once.
A piped watchlist has no directory of its own: its relative feed and CA paths are the current
directory's."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from flows.cli import main
from pipeline.registry.fake_server import FakeRegistry
from tests.conftest import fast_sync, real_records, snapshot_pairs

SLIPPED = "NCT05766735"  # its real later version slips both completion dates by 46 days (notable)
WATCHLIST = f"""channels:
  feed:
    type: feed
    path: piped-feed.json
watches:
  - name: slipped
    studies: {{ids: [{SLIPPED}]}}
    channels: [feed]
"""
RULES = "severity:\n  events: {date_slipped: critical}\n"


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """The exit code and stderr (stdout stays in ``capsys``)."""
    with pytest.raises(SystemExit) as info:
        main(args)
        raise SystemExit(0)
    out, err = capsys.readouterr()
    print(out, end="")
    return int(info.value.code or 0), err


@contextmanager
def _pipe(text: str) -> Iterator[str]:
    """What ``<(cat FILE)`` gives a command: /dev/fd/N, a pipe holding the text, its writer gone."""
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "w") as writer:
        writer.write(text)  # a few hundred bytes: within the pipe's buffer
    try:
        yield f"/dev/fd/{read_end}"
    finally:
        os.close(read_end)


@pytest.fixture(scope="module")
def registry() -> Iterator[FakeRegistry]:
    older, newer = snapshot_pairs()[SLIPPED]
    others = [r for r in real_records()[:4] if r["protocolSection"]["identificationModule"]["nctId"] != SLIPPED]
    with FakeRegistry([*others, older]).start() as fake:
        fake.newer = newer  # type: ignore[attr-defined]
        yield fake


@pytest.fixture(scope="module")
def before_slip(registry: FakeRegistry, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pipes") / "warehouse"
    fast_sync(registry, directory)
    return directory


@pytest.fixture(scope="module")
def slipped(registry: FakeRegistry, before_slip: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pipes") / "slipped"
    shutil.copytree(before_slip, directory, symlinks=True)
    registry.put(registry.newer)  # type: ignore[attr-defined]
    fast_sync(registry, directory, full=True)
    return directory


def _feed_changes(path: Path) -> list[str]:
    items = json.loads(path.read_text())["items"]
    lines = [line for item in items for line in item["content_text"].splitlines()]
    return sorted(line for line in lines if line.endswith("(date_slipped)"))


def test_alerts_run_reads_a_piped_watchlist_and_writes_its_feed_in_the_current_directory(
        slipped: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """It failed "must be a mapping with 'channels:' and 'watches:'": the check had read the pipe."""
    warehouse = shutil.copytree(slipped, tmp_path / "warehouse", symlinks=True)
    monkeypatch.chdir(tmp_path)
    with _pipe(WATCHLIST) as config:
        code, err = _run(["alerts", "run", "--config", config, "--warehouse", str(warehouse)], capsys)
    assert (code, err) == (0, "")
    assert len(_feed_changes(tmp_path / "piped-feed.json")) == 2  # both completion dates slipped


def _slip_severities(warehouse: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    code, _ = _run(["changes", "--event", "date_slipped", "--format", "json", "--warehouse", str(warehouse)], capsys)
    assert code == 0
    return sorted(row["severity"] for row in json.loads(capsys.readouterr().out))


@pytest.mark.parametrize("command", ["rederive", "sync"])
def test_a_piped_rules_file_is_applied(command: str, before_slip: Path, slipped: Path, registry: FakeRegistry,
                                       tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """It failed "is empty; expected a `severity:` mapping" after the command's own check had read it."""
    source = slipped if command == "rederive" else before_slip
    warehouse = shutil.copytree(source, tmp_path / "warehouse", symlinks=True)
    args = ["rederive"] if command == "rederive" else [
        "sync", "--ids", SLIPPED, "--full", "--api-url", registry.url, "--request-interval", "0", "--quiet"]
    with _pipe(RULES) as rules:
        code, err = _run([*args, "--rules", rules, "--warehouse", str(warehouse)], capsys)
    assert (code, err) == (0, "")
    capsys.readouterr()  # the command's summary
    assert _slip_severities(warehouse, capsys) == ["critical", "critical"]


def test_sync_with_piped_rules_and_alerts_stores_and_delivers(
        before_slip: Path, slipped: Path, registry: FakeRegistry, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """``sync --rules <(...) --alerts <(...)``: the sync failed before fetching (the flow read both pipes
    again, empty)."""
    warehouse = shutil.copytree(before_slip, tmp_path / "warehouse", symlinks=True)
    monkeypatch.chdir(tmp_path)
    with _pipe(RULES) as rules, _pipe(WATCHLIST) as config:
        code, err = _run(["sync", "--ids", SLIPPED, "--full", "--api-url", registry.url, "--request-interval", "0",
                          "--quiet", "--rules", rules, "--alerts", config, "--warehouse", str(warehouse)], capsys)
    assert (code, err) == (0, "")
    feed = _feed_changes(tmp_path / "piped-feed.json")
    assert len(feed) == 2 and all(line.strip().startswith("[critical]") for line in feed), feed
