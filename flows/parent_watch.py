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

import os
import runpy
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

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
    uvicorn ...``. Idempotent; a Prefect release that starts it another way is left as it is."""
    from prefect.server.api import server

    cls = getattr(server, "SubprocessASGIServer", None)
    if cls is None or not hasattr(cls, "_run_uvicorn_command") or not hasattr(server, "subprocess"):
        return  # another Prefect release: its server starts as it does (tests/test_lifecycle.py notices)
    if getattr(cls._run_uvicorn_command, "_trialsync_guarded", False):
        return
    original = cls._run_uvicorn_command

    def guarded(self: Any) -> Any:
        real = server.subprocess

        class _Subprocess:
            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

            @staticmethod
            def Popen(args: list[str], *rest: Any, **kwargs: Any) -> Any:
                if list(args[:3]) == [sys.executable, "-m", "uvicorn"]:
                    args = command("uvicorn", *args[3:])
                return real.Popen(args, *rest, **kwargs)

        server.subprocess = _Subprocess()  # type: ignore[assignment]
        try:
            return original(self)
        finally:
            server.subprocess = real

    guarded._trialsync_guarded = True  # type: ignore[attr-defined]
    cls._run_uvicorn_command = guarded


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
