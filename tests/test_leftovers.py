"""Atomic writes of the feed and the HTML report: a writer killed with kill -9 mid-write leaves its
``.<name>.tmp-<pid>``; the next write of the same file removes it (one more stayed after each kill)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flows.alerts import send_test
from pipeline.leftovers import replace_atomically, temporary


def _killed_mid_write(target: Path) -> Path:
    """A real process writes half of ``target``'s new content to its temporary, then is killed (SIGKILL)."""
    script = ("import os, signal, sys\n"
              "from pathlib import Path\n"
              "from pipeline.leftovers import temporary\n"
              "tmp = temporary(Path(sys.argv[1]))\n"
              "tmp.write_bytes(b'{\"version\": \"https://jsonfeed.org/version/1.1\", \"ite')\n"
              "print(tmp, flush=True)\n"
              "os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", script, str(target)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    left = Path(proc.stdout.strip())
    assert left.exists() and left.parent == target.parent
    return left


def test_a_feed_writer_killed_mid_write_leaves_nothing_once_the_next_message_goes_in(tmp_path: Path) -> None:
    config = tmp_path / "watch.yaml"
    config.write_text(yaml.safe_dump({"channels": {"feed": {"type": "feed", "path": "feed.json"}},
                                      "watches": [{"name": "w", "studies": {"ids": ["NCT07011004"]},
                                                   "channels": ["feed"]}]}))
    assert send_test(str(config)) == [("feed", None)]
    first = json.loads((tmp_path / "feed.json").read_text())["items"]
    left = [_killed_mid_write(tmp_path / "feed.json") for _ in range(2)]  # two kills: two leftovers
    assert all(p.exists() for p in left)
    assert json.loads((tmp_path / "feed.json").read_text())["items"] == first  # the feed itself is whole

    assert send_test(str(config)) == [("feed", None)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".feed.json.lock", "feed.json", "watch.yaml"]
    assert json.loads((tmp_path / "feed.json").read_text())["items"]  # whole, and the sample in it


def test_only_the_temporaries_of_gone_writers_of_the_same_file_are_removed(tmp_path: Path) -> None:
    report = tmp_path / "report.html"
    killed = _killed_mid_write(report)
    running = tmp_path / f".report.html.tmp-{os.getppid()}"  # a writer still at work (its process runs)
    other = _killed_mid_write(tmp_path / "other.html")  # another file's: left to that file's next writer
    not_ours = tmp_path / ".report.html.tmp-draft"  # not a process id
    for path in (running, not_ours):
        path.write_text("x")
    replace_atomically(report, b"<html></html>")
    assert report.read_bytes() == b"<html></html>"
    assert not killed.exists() and running.exists() and other.exists() and not_ours.exists()


@pytest.mark.parametrize("name", ["report[1].html", "feed*.json", "digest?.html", "[x].json"])
def test_a_killed_writers_temporary_is_removed_whatever_characters_the_file_name_holds(
        tmp_path: Path, name: str) -> None:
    """The name was a glob pattern: ``report[1].html``'s leftovers never matched it and piled up again."""
    target = tmp_path / name
    killed = _killed_mid_write(target)
    replace_atomically(target, b"whole")
    assert target.read_bytes() == b"whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
    assert not killed.exists()


def test_a_file_writer_leaves_a_directory_with_its_temporary_name_alone(tmp_path: Path) -> None:
    """A feed or a report is a file: a directory where its temporary would be is someone else's."""
    target = tmp_path / "report.html"
    gone = _killed_mid_write(target)  # a process id that no longer runs
    gone.unlink()
    gone.mkdir()
    (gone / "keep.txt").write_text("not trialsync's")
    replace_atomically(target, b"<html></html>")
    assert target.read_bytes() == b"<html></html>"
    assert (gone / "keep.txt").read_text() == "not trialsync's"


def test_a_link_at_this_writers_temporary_name_is_not_written_through(tmp_path: Path) -> None:
    """The temporary's name is guessable (the pid): a link put there must not send the bytes elsewhere."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    target = tmp_path / "feed.json"
    temporary(target).symlink_to(victim)
    replace_atomically(target, b"{}")
    assert victim.read_text() == "precious"
    assert target.read_bytes() == b"{}" and not target.is_symlink()
