"""The warehouse's lock files: one holder at a time (flock; released by the kernel on kill -9), with a
timeout, and a refusal that names who holds it (the holder writes its name into the file)."""

from __future__ import annotations

import errno
import math
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.errors import UsageError, WarehouseBusy, WarehouseError
from pipeline.flock import wait_for_flock

READER = "reader"  # the lock holder's name while a reader rewrites the catalog (for a moment)


class LockNotAFile(WarehouseError):
    """Something other than a file (a directory, a link to nowhere) where a lock file goes."""


@contextmanager
def exclusive_lock(path: Path, holder: str, timeout: float, *, what: str = "a sync") -> Iterator[None]:
    if not math.isfinite(timeout) or timeout < 0:  # NaN: the deadline would never come
        raise UsageError(f"a lock timeout must be a number of seconds >= 0, not {timeout}")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK, 0o644)  # a pipe: at once, not waiting
    except OSError as exc:
        # no permission, a read-only mount: the caller's disk refusals say so
        if exc.errno not in _NOT_A_FILE and not (exc.errno == errno.ENOENT and path.is_symlink()):
            raise
        raise _not_a_file(path) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # a named pipe, a link to /dev/null: 'OSError: [Errno 22]'
        os.close(fd)
        raise _not_a_file(path)
    try:
        if not wait_for_flock(fd, timeout, poll=0.1):
            other = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            if other.startswith(f"run {READER}, "):  # a reader rewriting a moved or stale catalog
                what, other = "a reader rewriting the catalog", other.removeprefix(f"run {READER}, ")
            raise WarehouseBusy(f"the warehouse {path.parent} is busy: {what} is running ({other}); "
                                f"waited {timeout:g}s")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"run {holder}, pid {os.getpid()}".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock


_NOT_A_FILE = (errno.EISDIR, errno.ELOOP, errno.ENOTDIR, errno.ENXIO, errno.ENODEV)


def _not_a_file(path: Path) -> LockNotAFile:
    return LockNotAFile(f"the lock file {path} is not a file but {_what_is_there(path)}: remove it (it holds "
                        "nothing; trialsync makes it again) and run the command again")


def _what_is_there(path: Path) -> str:
    if path.is_symlink() and not path.exists():
        return f"a symbolic link to {os.readlink(path)!r} that leads to no file"
    if path.is_symlink():
        return f"a symbolic link to {os.readlink(path)!r}, which is not a regular file"
    if path.is_dir():
        return "a directory"
    if path.is_fifo():
        return "a named pipe"
    return "not a regular file"
