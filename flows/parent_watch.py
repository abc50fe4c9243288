"""Child processes that leave when the trialsync process that started them is gone, however it went.

A ``kill -9`` (or the OOM killer) runs no handler and no exit hook in the parent, so nothing it would
do to stop its children happens: a server it started stays for ever under PID 1 (a Prefect
temporary server: ~250 MB and a port each, one more after every such kill). A child started through
this module watches its parent and stops itself once the parent is gone:

    python -m flows.parent_watch PARENT_PID MODULE [ARGS...]   (``command`` builds it)

runs ``MODULE`` as ``python -m MODULE ARGS...`` would, and on its parent's death sends itself (its
whole process group when it leads one, e.g. a server started in its own session) SIGTERM, then
SIGKILL after ``GRACE_SECONDS``. ``guard_prefect_temporary_server`` makes Prefect's temporary
server start this way; ``flows.lifecycle.worker_started`` does the same for pool workers.
"""

from __future__ import annotations

import logging
import os
import runpy
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

from pipeline.errors import TrialsyncError

POLL_SECONDS = 1.0  # how often a child looks whether its parent is still there
GRACE_SECONDS = 5.0  # between SIGTERM and SIGKILL once the parent is gone


def watch_parent(parent: int, on_gone: Callable[[], None]) -> None:
    """Call ``on_gone`` (in a daemon thread) once this process's parent is no longer ``parent``."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(POLL_SECONDS)
        on_gone()

    threading.Thread(target=watch, name="trialsync-parent-watch", daemon=True).start()


def stop_self() -> None:
    """SIGTERM to this process (its group when it leads one: what it started goes too), SIGKILL later."""
    group = os.getpgrp() == os.getpid()
    for signum in (signal.SIGTERM, signal.SIGKILL):
        with suppress(ProcessLookupError):
            os.killpg(os.getpgrp(), signum) if group else os.kill(os.getpid(), signum)
        time.sleep(GRACE_SECONDS)
    os._exit(1)


# Where this ``flows`` package is; the child finds it there and never in its working directory (``-P``:
# ``python -m flows.parent_watch`` put the directory first, and a project's own ``flows/`` package there,
# a common Prefect layout, or another checkout of trialsync, was imported instead: no server started).
_HOME = str(Path(__file__).resolve().parents[1])
_BOOT = f"import sys; sys.path.append(sys.argv.pop(1)); from {__name__} import main; main(sys.argv)"


def command(module: str, *args: str, parent: int | None = None) -> list[str]:
    """The argv that runs ``python -m module args...`` under this watch (of ``parent``, default: us)."""
    return [sys.executable, "-P", "-c", _BOOT, _HOME, str(os.getpid() if parent is None else parent), module, *args]


def guard_prefect_temporary_server() -> None:
    """Make Prefect's temporary server (``SubprocessASGIServer``, started when no Prefect server is
    configured) a watched child: ``python -m uvicorn ...`` becomes ``python -m flows.parent_watch PID
    uvicorn ...``; and one that cannot start is one error, at once (``StartupFailed``). Idempotent; a
    Prefect release that starts it another way is left as it is."""
    from prefect.server.api import server

    cls = getattr(server, "SubprocessASGIServer", None)
    if cls is None or not hasattr(cls, "_run_uvicorn_command") or not hasattr(server, "subprocess"):
        return  # another Prefect release: its server starts as it does (tests/test_lifecycle.py notices)
    if getattr(cls._run_uvicorn_command, "_trialsync_guarded", False):
        return
    original = cls._run_uvicorn_command

    def guarded(self: Any) -> Any:
        real = server.subprocess
        previous = getattr(self, "server_process", None)
        if previous is not None and previous.poll() is not None:  # Prefect starts it again: it could not start
            raise StartupFailed(previous.returncode, getattr(previous, "trialsync_output", None))

        class _Subprocess:
            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

            @staticmethod
            def Popen(args: list[str], *rest: Any, **kwargs: Any) -> Any:
                if list(args[:3]) != [sys.executable, "-m", "uvicorn"]:
                    return real.Popen(args, *rest, **kwargs)
                return _TemporaryServer(command("uvicorn", *args[3:]), *rest, **kwargs)

        server.subprocess = _Subprocess()  # type: ignore[assignment]
        try:
            return original(self)
        finally:
            server.subprocess = real

    guarded._trialsync_guarded = True  # type: ignore[attr-defined]
    cls._run_uvicorn_command = guarded


class _TemporaryServer(subprocess.Popen):
    """Prefect's temporary server, its output kept aside (``--debug``: shown as it comes). Prefect waits
    for it up to PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS (120 s here) and starts it again each
    time it exits with uvicorn's code for a failed startup (3), taken for a port in use: a database it
    cannot open (PREFECT_HOME not writable, a full disk, a damaged file) held a command ~2.5 minutes
    and printed a traceback every 15 s (2,000 lines). Any exit is reported as that code here, so that
    Prefect calls ``_run_uvicorn_command`` again, where the guard raises ``StartupFailed``."""

    def __init__(self, args: list[str], *rest: Any, **kwargs: Any) -> None:
        self.trialsync_output: Any = None
        debug = logging.getLogger("trialsync").isEnabledFor(logging.DEBUG)  # --debug
        if not debug and "stdout" not in kwargs and "stderr" not in kwargs:
            self.trialsync_output = tempfile.TemporaryFile()  # noqa: SIM115 - as long as the server lives
            kwargs = {**kwargs, "stdout": self.trialsync_output, "stderr": subprocess.STDOUT}
        super().__init__(args, *rest, **kwargs)

    def poll(self) -> int | None:
        code = super().poll()
        return None if code is None else 3


class StartupFailed(TrialsyncError):
    """Prefect's temporary server exited before it answered."""

    def __init__(self, code: int | None, output: Any) -> None:
        from prefect.settings import get_current_settings

        cause = last_error(output)
        settings = get_current_settings()
        secret: Any = settings.server.database.connection_url
        url = secret.get_secret_value() if hasattr(secret, "get_secret_value") else secret
        database = str(url or f"sqlite:///{settings.home / 'prefect.db'}")
        path = database.partition("///")[2] if database.startswith("sqlite") else ""  # sqlite:// has none
        where = f"; its database: {path}" if path else ""
        named = "connection_url" in settings.server.database.model_fields_set  # not PREFECT_HOME's prefect.db
        remedy = ("check PREFECT_SERVER_DATABASE_CONNECTION_URL" if named else
                  "make PREFECT_HOME writable with room to spare, move a damaged prefect.db away")
        super().__init__(f"Prefect's temporary server could not start (exit code {code}"
                         f"{f': {cause}' if cause else ''}){where}: {remedy}, or unset TRIALSYNC_ENGINE to run "
                         "without Prefect")


def last_error(output: Any, start: int = 0) -> str:
    """The last ``SomeError: what`` line the server printed (its traceback's last word), from ``start`` on
    (a log that earlier servers wrote to as well: their errors are not this one's)."""
    import re

    if output is None:
        return ""
    try:
        output.seek(0, os.SEEK_END)
        output.seek(max(start, output.tell() - 65536))
        text = output.read().decode("utf-8", "replace")
    except (OSError, ValueError):
        return ""
    found = re.findall(r"^([A-Za-z_][\w.]*(?:Error|Exception)(?:\s*\([^)]*\))?: .+)$", text, re.MULTILINE)
    return " ".join(found[-1].split())[:200] if found else ""


def main(argv: list[str]) -> None:
    if len(argv) < 3 or not argv[1].isdigit():
        raise SystemExit("usage: python -m flows.parent_watch PARENT_PID MODULE [ARGS...]")
    parent, module = int(argv[1]), argv[2]
    if os.getppid() != parent:  # gone before we even started
        raise SystemExit(1)
    watch_parent(parent, stop_self)
    sys.argv = [module, *argv[3:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv)
