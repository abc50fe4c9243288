"""Reading a warehouse file only when it is a regular file: a named pipe in its place would make the
reader wait for a writer that never comes (every command hung until killed), a device (a link to
``/dev/zero``) would be read without end. The file is opened first (without blocking) and then
looked at (``fstat`` of the open file): a writer's atomic replace between the two cannot turn a good
file into "not a file", as a look before the open could."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


@contextmanager
def open_regular(path: Path) -> Iterator[BinaryIO]:
    """``path`` open for reading; ``OSError`` (EINVAL, 'not a regular file') unless it is one."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a pipe opens at once instead of waiting for a writer
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        with open(fd, "rb", closefd=False) as f:
            yield f
    finally:
        os.close(fd)


def read_file(path: Path) -> bytes:
    """A regular file's bytes (``OSError`` unless it is one)."""
    with open_regular(path) as f:
        return f.read()
