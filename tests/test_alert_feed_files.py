"""A feed channel adds to its own feed file and never overwrites a file that is not one (damaged by
hand, or another file the path names by mistake): the message stays in the outbox, the error says what
to do, and once the file is moved away the next delivery starts a new feed."""

from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from pipeline.alerts.channels import Resolved
from pipeline.alerts.feeds import ATOM, FeedSender
from pipeline.alerts.plan import sample_message
from pipeline.alerts.watchlist import parse_watchlist
from pipeline.errors import DeliveryFailed

NOT_FEEDS = {
    "json": [b"", b"{\"items\": 5", b"{}", b"[]", b"{\"items\": []}", b"\xff\xfe", b"<feed/>",
             b"{\"version\": \"https://jsonfeed.org/version/1.1\", \"items\": [1, 2]}"],
    "atom": [b"", b"garbage<<<", b"<feed/>", b"<html><body>notes</body></html>", b"{\"items\": []}"],
}


def _sender(tmp_path: Path, fmt: str) -> FeedSender:
    spec = {"channels": {"out": {"type": "feed", "path": f"feed.{fmt}", "format": fmt}},
            "watches": [{"name": "w", "studies": {"ids": ["NCT07011004"]}, "channels": ["out"]}]}
    channel = parse_watchlist(yaml.safe_dump(spec), "w.yaml").channels["out"]
    return FeedSender(Resolved(channel, feed_path=tmp_path / f"feed.{fmt}"))


def _message(n: int) -> object:
    return sample_message("out", f"run-{n}", datetime.now(UTC))


def _item_ids(path: Path, fmt: str) -> list[str]:
    if fmt == "json":
        return [i["id"] for i in json.loads(path.read_bytes())["items"]]
    return [e.findtext(f"{{{ATOM}}}id") or "" for e in ET.parse(path).getroot().findall(f"{{{ATOM}}}entry")]


@pytest.mark.parametrize("kind", ["a named pipe", "a character device"])
@pytest.mark.parametrize("fmt", ["json", "atom"])
def test_a_feed_path_that_is_a_pipe_or_a_device_fails_at_once_and_is_left_alone(
        tmp_path: Path, fmt: str, kind: str) -> None:
    """A named pipe nobody writes to at the feed's path blocked the delivery for ever (the alerts run and
    its lock held; 'alerts test' never returned); a link to /dev/zero was read until memory ran out."""
    import os
    import threading

    sender = _sender(tmp_path, fmt)
    if kind == "a named pipe":
        os.mkfifo(sender.path)
    else:
        os.symlink("/dev/zero", sender.path)
    failed: list[DeliveryFailed] = []

    def send() -> None:
        try:
            sender.send(_message(1))  # type: ignore[arg-type]
        except DeliveryFailed as exc:
            failed.append(exc)

    worker = threading.Thread(target=send, daemon=True)
    worker.start()
    worker.join(10)
    if worker.is_alive():  # let the blocked open go (the old code waited for a writer)
        with open(os.open(sender.path, os.O_WRONLY | os.O_NONBLOCK), "wb"):
            pass
        pytest.fail("the delivery did not return within 10 s")
    [error] = failed
    feed = "a JSON Feed" if fmt == "json" else "an Atom feed"
    assert str(error).startswith(f"the feed {sender.path} is not {feed} (it is {kind}, not a file): fix it or "
                                 "move it away"), error
    assert not error.permanent  # stays in the outbox
    assert sender.path.is_fifo() if kind == "a named pipe" else sender.path.is_symlink()  # never replaced


@pytest.mark.parametrize("fmt", ["json", "atom"])
def test_a_feed_file_that_is_not_a_feed_is_never_overwritten_and_the_error_says_what_to_do(
        tmp_path: Path, fmt: str) -> None:
    sender = _sender(tmp_path, fmt)
    for content in NOT_FEEDS[fmt]:
        sender.path.write_bytes(content)
        with pytest.raises(DeliveryFailed) as info:
            sender.send(_message(1))  # type: ignore[arg-type]
        assert str(info.value).startswith(f"the feed {sender.path} is not a")
        assert "fix it or move it away" in str(info.value)
        assert sender.path.read_bytes() == content  # untouched
        assert not info.value.permanent  # stays in the outbox for the next run
    sender.path.unlink()  # moved away: a new feed starts
    first, second = _message(1), _message(2)
    sender.send(first)  # type: ignore[arg-type]
    sender.send(second)  # type: ignore[arg-type]
    assert _item_ids(sender.path, fmt) == [f"urn:trialsync:{m.message_id}" for m in (second, first)]  # type: ignore[attr-defined]


# One process adding ``n`` messages to a feed, after the test says go (so the writers overlap).
_WRITER = """
import sys, time, yaml
from datetime import UTC, datetime
from pathlib import Path
from pipeline.alerts.channels import Resolved
from pipeline.alerts.feeds import FeedSender
from pipeline.alerts.plan import sample_message
from pipeline.alerts.watchlist import parse_watchlist
path, fmt, who, n, go = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), Path(sys.argv[5])
spec = {"channels": {"out": {"type": "feed", "path": path.name, "format": fmt, "max_items": 1000}},
        "watches": [{"name": "w", "studies": {"ids": ["NCT07011004"]}, "channels": ["out"]}]}
sender = FeedSender(Resolved(parse_watchlist(yaml.safe_dump(spec), "w.yaml").channels["out"], feed_path=path))
while not go.exists():
    time.sleep(0.01)
for i in range(n):
    sender.send(sample_message("out", f"{who}-{i}", datetime.now(UTC)))
"""


@pytest.mark.parametrize("fmt", ["json", "atom"])
def test_processes_adding_to_one_feed_at_once_lose_no_item_and_leave_a_whole_feed(tmp_path: Path, fmt: str) -> None:
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    path, go = tmp_path / f"feed.{fmt}", tmp_path / "go"
    writers, each = ("a", "b", "c"), 20
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), fmt, who, str(each), str(go)], env=env,
                              stderr=subprocess.PIPE) for who in writers]
    time.sleep(1.5)  # imported and waiting
    go.touch()
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    expected = {f"urn:trialsync:{sample_message('out', f'{w}-{i}', datetime.now(UTC)).message_id}"
                for w in writers for i in range(each)}
    assert sorted(_item_ids(path, fmt)) == sorted(expected)  # every item, once; and the file parses
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_a_feed_writer_waits_for_another_and_gives_up_transiently_after_the_channels_timeout(tmp_path: Path) -> None:
    import fcntl
    import os

    from pipeline.alerts.feeds import lock_path

    sender = _sender(tmp_path, "json")
    sender.send(_message(1))  # type: ignore[arg-type]
    before = sender.path.read_bytes()
    object.__setattr__(sender.c, "timeout", 0.5)
    fd = os.open(lock_path(sender.path), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another writer in the middle of its write
        started = time.monotonic()
        with pytest.raises(DeliveryFailed) as info:
            sender.send(_message(2))  # type: ignore[arg-type]
        assert 0.5 <= time.monotonic() - started < 5
        assert info.value.retryable and not info.value.permanent  # stays in the outbox
        assert "another process has been writing the feed" in str(info.value)
        assert sender.path.read_bytes() == before
    finally:
        os.close(fd)
    sender.send(_message(2))  # type: ignore[arg-type]
    assert len(_item_ids(sender.path, "json")) == 2
