"""A file system that says no (full, read-only, not ours to write) in one line naming the path.

Python's ``OSError`` names the path and the errno; pyarrow's names only the errno ("Error writing
bytes to file. Detail: [errno 28] ..."); DuckDB's ``IOException`` names the path in quotes and the
reason in words. Each was shown as the bare exception (``OSError: [Errno 30] Read-only file system:
'...'``) with "rerun with --debug": not something a user can act on.
"""

from __future__ import annotations

import errno
import os
import re

WRITABLE = ("this command writes there: make it writable by this user; the read-only commands (sql, changes, "
            "history, runs, report, check) work without")
ALLOWED = ("this user may not use it: the writing commands need the warehouse writable, the read-only ones "
           "readable (files a writer made under umask 077 are its own)")
OUTSIDE = "not a file of the warehouse: rerun with --debug to see what used it"
# errno -> (what happened, what to do)
_KNOWN = {
    errno.ENOSPC: ("no space left on the device", "free space there and run the command again; a run that "
                   "failed before its commit committed nothing"),
    errno.EDQUOT: ("the disk quota is used up", "free space there and run the command again; a run that "
                   "failed before its commit committed nothing"),
    errno.EFBIG: ("a file grew past the size limit", "raise the file size limit (ulimit -f) and run again"),
    errno.EROFS: ("read-only file system", WRITABLE),
    errno.EACCES: ("permission denied", ALLOWED),
    errno.EPERM: ("operation not permitted", ALLOWED),
}
# Errnos that sockets and processes raise too: taken for the file system's only when a path is named.
_ANYWHERE = {errno.EACCES, errno.EPERM}
# DuckDB's words for them, and pyarrow's "[errno N]".
_WORDS = {"No space left on device": errno.ENOSPC, "Disk quota exceeded": errno.EDQUOT,
          "File too large": errno.EFBIG, "Read-only file system": errno.EROFS,
          "Permission denied": errno.EACCES, "Operation not permitted": errno.EPERM}
_ERRNO = re.compile(r"\[errno (\d+)\]", re.IGNORECASE)
# The file DuckDB names is the one quoted just before the reason ('Could not write file "PATH": File too
# large'); a spill file is named relative to the working directory ('".tmp/duckdb_temp_..."').
_FAILED_ON = re.compile(r'"([^"]+)": (' + "|".join(map(re.escape, _WORDS)) + ")")
# pyarrow's words: it names no file, and it writes only the warehouse's (a run's Parquet files)
_PYARROW = "Error writing bytes to file"


def describe(exc: BaseException, warehouse: str | None = None) -> str | None:
    """One line for a file system refusal, or None for any other error. ``warehouse``: named when the
    error names no path (pyarrow's, writing a run's Parquet file there)."""
    code, path = _errno_and_path(exc)
    if code not in _KNOWN or (code in _ANYWHERE and path is None):
        return None
    what, hint = _KNOWN[code]
    if path is None and warehouse and _PYARROW in str(exc):
        path = f"a file under {warehouse}"
    if path is None:  # a write() names no file: the warehouse's, a backup's, the output's (> file) alike
        return f"{what} (writing a file this command writes: the warehouse, a backup, or where its output " \
               f"was sent; {hint})"
    if hint in (WRITABLE, ALLOWED) and warehouse and path != f"a file under {warehouse}" \
            and not _under(path, warehouse):  # a file of something else (Prefect's home, a bug): no advice
        hint = OUTSIDE
    return f"{path}: {what} ({hint})"


def _under(path: str, directory: str) -> bool:
    return os.path.commonpath([os.path.realpath(path), os.path.realpath(directory)]) == os.path.realpath(directory)


def _errno_and_path(exc: BaseException) -> tuple[int | None, str | None]:
    text = str(exc)
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno, _text(exc.filename2 or exc.filename)  # a rename's or link's target is written
    if type(exc).__module__.startswith(("duckdb", "_duckdb")):
        # Only a file named with the reason: the words alone may be data ('Could not convert string
        # 'No space left on device' to INT32' is a bug to show, not a full disk).
        if quoted := _FAILED_ON.search(text.replace('\\"', '"')):  # a JSON-quoted message's \"PATH\"
            return _WORDS[quoted.group(2)], os.path.abspath(quoted.group(1))
        return None, None
    if isinstance(exc, OSError):
        code = next((c for words, c in _WORDS.items() if words in text), None)
        if code is None and (found := _ERRNO.search(text)):
            code = int(found.group(1))
        return code, None
    return None, None


def _text(filename: object) -> str | None:
    if filename is None:
        return None
    if isinstance(filename, bytes):
        return filename.decode(errors="backslashreplace")
    return str(filename)
