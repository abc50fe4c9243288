"""An exclusive ``flock`` with a timeout, polled so that a signal stops the wait at once (a blocking
``flock`` would hold a Ctrl-C until the other holder let go). Used by the warehouse's writer lock and
the feed channel's lock; the kernel releases it when the holder's descriptor closes, also on kill -9."""

from __future__ import annotations

import fcntl
import time


def wait_for_flock(fd: int, timeout: float, poll: float) -> bool:
    """Take the exclusive lock on ``fd``, waiting at most ``timeout`` seconds; False if it stayed held."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll)
