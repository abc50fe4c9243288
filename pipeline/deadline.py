"""One call given a deadline in all. HTTP and SMTP libraries' timeouts bound each socket read, so a
peer that answers a byte at a time (headers or body) can hold a caller for ever; this bounds the whole.

Past the deadline the call is left to finish in a daemon thread and its result is handed to
``abandoned`` (e.g. to close a response), never to the caller; the process may exit meanwhile."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar, cast

T = TypeVar("T")


class Late(Exception):
    """The call did not finish within its deadline (it may still finish, unseen, in its thread)."""


def call_within(seconds: float, call: Callable[[], T], *, name: str = "trialsync-deadline",
                abandoned: Callable[[T], None] | None = None) -> T:
    """``call()``'s result or exception if it finishes within ``seconds``; otherwise ``Late``."""
    done: queue.SimpleQueue[tuple[bool, Any]] = queue.SimpleQueue()
    lock = threading.Lock()
    given_up = False

    def run() -> None:
        nonlocal given_up
        try:
            outcome: tuple[bool, Any] = (True, call())
        except BaseException as exc:  # handed to the caller's thread
            outcome = (False, exc)
        with lock:
            late = given_up
            if not late:
                done.put(outcome)
        if late and outcome[0] and abandoned is not None:
            abandoned(outcome[1])

    threading.Thread(target=run, name=name, daemon=True).start()
    try:
        ok, value = done.get(timeout=max(seconds, 0.0))
    except queue.Empty:
        with lock:
            given_up = done.empty()
            if not given_up:  # it finished just now
                ok, value = done.get_nowait()
        if given_up:
            raise Late(f"no answer within {seconds:g}s") from None
    if not ok:
        raise value
    return cast(T, value)
