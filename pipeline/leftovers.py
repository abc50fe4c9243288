"""Temporary files a killed process left: ``.<name>.tmp-<pid>`` beside what it was writing.

A file written atomically goes to a temporary name first and is renamed into place. The temporary
name carries the writer's process id so that two writers never share one; a writer killed with
``kill -9`` (no ``finally`` runs) leaves its temporary behind, and since the next writer has another
pid nothing ever removed it: one more after every such kill (a feed, an HTML report, a backup's
whole directory). The next writer of the same target removes those whose process is gone.
"""

from __future__ import annotations

import glob
import os
import shutil
from contextlib import suppress
from pathlib import Path

import psutil


def temporary(target: Path) -> Path:
    """This process's temporary name for ``target``."""
    return target.with_name(f".{target.name}.tmp-{os.getpid()}")


def writer_gone(path: Path) -> bool:
    """Whether ``path`` is a ``...tmp-<pid>`` name whose process no longer runs."""
    pid = path.name.rpartition(".tmp-")[2]
    return pid.isascii() and pid.isdigit() and int(pid) != os.getpid() and not psutil.pid_exists(int(pid))


def remove_abandoned(target: Path, *, directories: bool = False) -> list[Path]:
    """Remove the temporaries of ``target`` whose writer is gone; returns them. Files (a symlink: the
    link itself), and with ``directories`` (a backup's temporary is one) directories too; a directory
    where a file's temporary would be is not ours and stays. ``target``'s name is matched literally
    (``[``, ``*`` and ``?`` in it are no pattern)."""
    removed = []
    for leftover in target.parent.glob(f".{glob.escape(target.name)}.tmp-*"):
        if not writer_gone(leftover):
            continue
        if leftover.is_dir() and not leftover.is_symlink():
            if not directories:
                continue
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            with suppress(OSError):
                leftover.unlink()
        removed.append(leftover)
    return removed


def replace_atomically(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` whole or not at all (also across a kill or a power cut: fsynced
    before the rename), after removing what killed writers of ``target`` left."""
    remove_abandoned(target)
    tmp = temporary(target)
    with suppress(FileNotFoundError):  # this pid's own, from an earlier process of the same id
        tmp.unlink()
    try:
        # created here, never through a link someone put at this (guessable) name
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666),
                  "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
