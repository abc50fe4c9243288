"""Atomic writes of the feed and the HTML report: a writer killed with kill -9 mid-write leaves its
``.<name>.tmp-<pid>``; the next write of the same file removes it (one more stayed after each kill)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from flows.alerts import send_test
from pipeline.leftovers import replace_atomically


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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feed.json", "watch.yaml"]
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
