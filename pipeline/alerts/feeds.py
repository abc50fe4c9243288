"""The feed channel: each message becomes an item of a JSON Feed 1.1 or Atom file, newest first.

The file is rewritten whole (a temporary file, fsynced, renamed over it; what a killed writer left is
removed by the next write). Adding an item reads the file, adds to it and writes it back: two
processes doing that at once (``alerts test`` beside ``alerts run``, two watchlists naming one feed)
each wrote back what they had read, and the item of the first was lost. So every writer of a feed holds
``.<name>.lock`` beside it (``flock``, released by the kernel when a process dies, also by ``kill -9``)
from the read to the rename; a writer that cannot take it within the channel's ``timeout`` fails
transiently (the message stays in the outbox). An existing file this channel cannot
add to (damaged by hand, or another file the path names by mistake) is never overwritten: the message
stays in the outbox and the error says to fix or move the file.
"""

from __future__ import annotations

import json
import os
import stat
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.alerts.message import Message
from pipeline.alerts.watchlist import Channel
from pipeline.errors import DeliveryFailed
from pipeline.flock import wait_for_flock
from pipeline.leftovers import replace_atomically

if TYPE_CHECKING:
    from pipeline.alerts.channels import Resolved

ATOM = "http://www.w3.org/2005/Atom"


class FeedSender:
    """Adds the message as an item of a JSON Feed 1.1 or Atom file (newest first, ``max_items`` kept)."""

    def __init__(self, resolved: Resolved) -> None:
        assert resolved.feed_path
        self.path, self.c = resolved.feed_path, resolved.channel

    def send(self, message: Message) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with feed_lock(self.path, self.c.timeout):
                data = _json_feed(self.path, self.c, message) if self.c.format == "json" else _atom_feed(
                    self.path, self.c, message)
                replace_atomically(self.path, data)
        except NotOurFeed as exc:
            raise DeliveryFailed(f"the feed {self.path} is not {exc}: fix it or move it away (the next run "
                                 "starts a new feed with the messages not yet in it)") from None
        except (OSError, ValueError) as exc:
            raise DeliveryFailed(f"cannot write the feed {self.path}: {type(exc).__name__}: {exc}") from None


def lock_path(path: Path) -> Path:
    """The lock file every writer of the feed ``path`` holds while it adds an item."""
    return path.with_name(f".{path.name}.lock")


@contextmanager
def feed_lock(path: Path, timeout: float) -> Iterator[None]:
    """Hold the feed's lock (exclusive) for the block; waiting at most ``timeout`` seconds for another
    writer (polled, so that a signal stops the wait at once), then a transient ``DeliveryFailed``."""
    fd = os.open(lock_path(path), os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
    try:
        if not wait_for_flock(fd, timeout, poll=0.05):
            raise DeliveryFailed(f"another process has been writing the feed {path} for over "
                                 f"{timeout:g}s (its lock {lock_path(path).name} is held)", retryable=True)
        yield
    finally:
        os.close(fd)  # releases the lock


class NotOurFeed(Exception):
    """An existing feed file this channel cannot add to (damaged, or another file): never overwritten."""


def _item(message: Message) -> dict[str, Any]:
    first = message.studies[0]
    return {"id": f"urn:trialsync:{message.message_id}", "title": message.subject,
            "content_text": message.text(), "url": first.url, "external_url": first.history_url,
            "date_published": message.created_at.isoformat(),
            "tags": [message.watch, message.severity, message.mode], "_trialsync": message.payload()}


def _json_feed(path: Path, c: Channel, message: Message) -> bytes:
    items = _json_items(path) if path.exists() else []
    item = _item(message)
    items = [item, *[i for i in items if i.get("id") != item["id"]]][: c.max_items]
    feed = {"version": "https://jsonfeed.org/version/1.1", "title": c.title,
            "home_page_url": "https://clinicaltrials.gov/", "items": items}
    return json.dumps(feed, ensure_ascii=False, indent=2).encode()


def _json_items(path: Path) -> list[dict[str, Any]]:
    what = "a JSON Feed"
    try:
        feed = json.loads(_read(path, what))
    except ValueError as exc:  # also not UTF-8
        raise NotOurFeed(f"{what} (not JSON: {exc})") from None
    items = feed.get("items") if isinstance(feed, dict) else None
    if not (isinstance(feed, dict) and str(feed.get("version", "")).startswith("https://jsonfeed.org/version/")
            and isinstance(items, list) and all(isinstance(i, dict) for i in items)):
        raise NotOurFeed(f"{what} (no \"version\" of jsonfeed.org and \"items\" list)")
    return items


_KINDS = {stat.S_IFIFO: "a named pipe", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
          stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a directory"}


def _read(path: Path, what: str) -> bytes:
    """The feed file's bytes; only a regular file is read (a named pipe nobody writes to blocked the
    delivery for ever, holding the alerts run; ``/dev/zero`` was read until memory ran out)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a pipe opens at once instead of waiting for a writer
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotOurFeed(f"{what} (it is {_KINDS.get(stat.S_IFMT(mode), 'no regular file')}, not a file)")
        with open(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


def _atom_feed(path: Path, c: Channel, message: Message) -> bytes:
    ET.register_namespace("", ATOM)
    entries = _atom_entries(path) if path.exists() else []
    item = _item(message)
    entries = [e for e in entries if e.findtext(f"{{{ATOM}}}id") != item["id"]]
    feed = ET.Element(f"{{{ATOM}}}feed")
    for tag, text in (("id", f"urn:trialsync:feed:{c.name}"), ("title", c.title),
                      ("updated", item["date_published"])):
        ET.SubElement(feed, f"{{{ATOM}}}{tag}").text = text
    ET.SubElement(feed, f"{{{ATOM}}}author").append(_text_element("name", "trialsync"))
    feed.append(_atom_entry(item))
    feed.extend(entries[: c.max_items - 1])
    return ET.tostring(feed, encoding="utf-8", xml_declaration=True)


def _atom_entries(path: Path) -> list[ET.Element]:
    try:
        root = ET.fromstring(_read(path, "an Atom feed"))
    except ET.ParseError as exc:
        raise NotOurFeed(f"an Atom feed (not XML: {exc})") from None
    if root.tag != f"{{{ATOM}}}feed":
        raise NotOurFeed(f"an Atom feed (its root is <{root.tag}>, not an Atom <feed>)")
    return root.findall(f"{{{ATOM}}}entry")


def _atom_entry(item: dict[str, Any]) -> ET.Element:
    entry = ET.Element(f"{{{ATOM}}}entry")
    for tag in ("id", "title"):
        entry.append(_text_element(tag, item[tag]))
    entry.append(_text_element("updated", item["date_published"]))
    ET.SubElement(entry, f"{{{ATOM}}}link", href=item["url"], rel="alternate")
    ET.SubElement(entry, f"{{{ATOM}}}link", href=item["external_url"], rel="related", title="history")
    for tag in item["tags"]:
        ET.SubElement(entry, f"{{{ATOM}}}category", term=tag)
    content = _text_element("content", item["content_text"])
    content.set("type", "text")
    entry.append(content)
    return entry


def _text_element(tag: str, text: str) -> ET.Element:
    element = ET.Element(f"{{{ATOM}}}{tag}")
    element.text = text
    return element

