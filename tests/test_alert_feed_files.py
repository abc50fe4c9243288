"""A feed channel adds to its own feed file and never overwrites a file that is not one (damaged by
hand, or another file the path names by mistake): the message stays in the outbox, the error says what
to do, and once the file is moved away the next delivery starts a new feed."""

from __future__ import annotations

import json
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
