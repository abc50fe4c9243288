"""The CLI process's life cycle: SIGINT and SIGTERM, a deadline, and no child process left behind.

Both signals, sent to the process or to its whole process group, become ``KeyboardInterrupt`` in the
main thread, so every ``with`` block unwinds the way it does on Ctrl-C: the writer deletes the run's
staged files and releases its lock (a run commits all or nothing), worker pools and servers stop.
A watchdog bounds that: GRACE_SECONDS after the first signal (or at once on a second one) the
process kills what it started and leaves. Whatever way it leaves, every descendant still alive (a
Prefect server, pool workers, a Dask cluster, a flow-run process of ``serve``) is terminated, then
killed: a command never leaves a child behind.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext, suppress
from typing import Any

GRACE_SECONDS = 7.0  # the whole stop, children included, stays under 10 s
REAP_SECONDS = 2.0  # how long children get between SIGTERM and SIGKILL
REDELIVER_SECONDS = 0.05  # an interrupt swallowed by a finalizer is raised again after this

_signalled: int | None = None
_lock = threading.Lock()
_installed = False  # this process's SIGINT/SIGTERM are ours (the CLI), not Prefect's
_redeliver = False  # the interrupt was swallowed (raised inside a finalizer): raise it again
_starting = False  # the console script is importing the commands: nothing to stop yet, leave at once


def install() -> None:
    """Route SIGINT and SIGTERM to ``on_signal`` (from the main thread, before Prefect is imported)."""
    global _installed
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    if _installed:  # once from the console script's first line, again from ``main`` (tests call it)
        return
    _installed = True
    sys.unraisablehook = _make_unraisable_hook(sys.unraisablehook)
    # Exit hooks run last-registered first: registered before Prefect is imported, this one runs after
    # Prefect's own (which drain logs to its temporary server, then stop it), and stops what is left.
    atexit.register(reap)


def _make_unraisable_hook(previous: Any) -> Any:
    """A signal that lands while Python runs a finalizer (``weakref.finalize``, ``__del__``, a GC
    callback) raises our ``KeyboardInterrupt`` there, where Python cannot propagate it: it prints
    "Exception ignored in ..." with a traceback and goes on, and the stop waited for the deadline.
    Such an interrupt is raised again in the main thread (not counted as a second signal)."""

    def hook(unraisable: Any) -> None:
        global _redeliver
        if unraisable.exc_type is KeyboardInterrupt and _signalled is not None:
            _redeliver = True
            # From another thread, a moment later: a signal raised here would run the handler inside
            # this hook (swallowed again); if it lands in a finalizer again, this repeats.
            timer = threading.Timer(REDELIVER_SECONDS, _interrupt_main)
            timer.daemon = True  # never holds up the interpreter's exit
            timer.start()
            return
        previous(unraisable)

    return hook


def _interrupt_main() -> None:
    """The signal again, to the main thread itself: it also wakes a sleep or a wait there
    (``_thread.interrupt_main`` would only run the handler once the wait had ended)."""
    with suppress(OSError, ValueError):
        signal.pthread_kill(threading.main_thread().ident or 0, _signalled or signal.SIGINT)


def guard_prefect_children() -> None:
    """For a flow run under Prefect in this process: SIGTERM stays ours (``keep_sigterm_from_prefect``)
    and a temporary Prefect server it starts leaves when this process does, also after kill -9
    (``flows.parent_watch``)."""
    if not _installed:
        return
    keep_sigterm_from_prefect()
    from flows.parent_watch import guard_prefect_temporary_server

    guard_prefect_temporary_server()


def keep_sigterm_from_prefect() -> None:
    """Stop Prefect's flow engine from taking SIGTERM over for the length of a flow run in this process.

    Its handler raises ``TerminationSignal`` instead of calling ours, so the deadline never started:
    a SIGTERM to the whole group also stops Prefect's temporary server, and the engine's crash report
    then retried that dead server for ~70 s before the run ended. Our handler makes it a
    ``KeyboardInterrupt``, which the engine reports as a crash too, within the deadline. (Flow runs
    that a Prefect runner starts, under ``serve``, are other processes and keep Prefect's handler.)"""
    if not _installed:
        return
    import prefect.flow_engine

    prefect.flow_engine.capture_sigterm = nullcontext  # type: ignore[assignment]


def signalled() -> int | None:
    """The first stop signal received, if any."""
    return _signalled


def exit_code() -> int:
    """The shell's convention: 128 + the signal's number (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + (_signalled or signal.SIGINT)


def on_signal(signum: int, frame: Any) -> None:
    """The handler: the first signal raises ``KeyboardInterrupt`` and starts the deadline; a second leaves.
    After a commit point, until its writer ends, it raises nothing: the committed run is not undone
    nor called failed, the command finishes up (within the deadline) and exits 0. Once the writer has
    ended (e.g. an alerts run delivering after its outbox committed), a signal interrupts as before."""
    global _signalled, _redeliver
    if _starting:  # see ``starting``: no interrupt raised into an importing C extension
        _signalled = _signalled or signum
        leave()
    if _redeliver:  # the first signal's interrupt, swallowed by a finalizer: once more
        _redeliver = False
        _interrupt_unless_finishing()
        return
    with _lock:
        first = _signalled is None
        if first:
            _signalled = signum
    if not first:  # a second signal: leave now
        leave()
    threading.Thread(target=_deadline, name="trialsync-stop-deadline", daemon=True).start()
    _interrupt_unless_finishing()


@contextmanager
def starting() -> Iterator[None]:
    """While the console script imports the commands, a signal leaves at once (one line, 130 or 143):
    nothing has started. A ``KeyboardInterrupt`` raised there could land inside a C extension's
    initialisation (DuckDB's runs Python code while it loads: 'ImportError: Encountered an error while
    initializing the extension' with a traceback, exit 1, or an abort, -6)."""
    global _starting
    _starting = True
    try:
        yield
    finally:
        _starting = False


def _interrupt_unless_finishing() -> None:
    """Raise the stop, unless a commit point passed and its writer has not ended (also when the stop is an
    interrupt raised again after a finalizer swallowed it: the run may have committed in between)."""
    if (state := _commits()) is not None and state.finishing:
        state.stop_pending = True  # no further write begins
        return
    raise KeyboardInterrupt


def _commits() -> Any:
    """``warehouse.committing`` if a command imported it (never imported here: the handler is installed
    before anything heavy is imported, and a command that wrote nothing has committed nothing)."""
    return sys.modules.get("warehouse.committing")


def committed() -> list[str]:
    """What committed in this process (run ids, a backup's DEST)."""
    state = _commits()
    return list(state.committed) if state is not None else []


def finished_after_commit() -> bool:
    """Whether the signal arrived while a commit was finishing (it interrupted nothing; no write began
    since): the command, if it returned normally, finished."""
    state = _commits()
    return _signalled is not None and state is not None and bool(state.stop_pending)


def _deadline() -> None:
    threading.Event().wait(GRACE_SECONDS)
    leave()


def message(finished: bool = False) -> str:
    what = "terminated" if _signalled == signal.SIGTERM else "interrupted"
    done = committed()
    if not done:
        return f"trialsync: {what} (an unfinished run commits nothing; the next run cleans up after it)"
    last = f"{done[-1]} committed" + (f" ({len(done)} commits in all)" if len(done) > 1 else "")
    if finished:
        return f"trialsync: {what} after {last}: the command finished first"
    return (f"trialsync: {what} after {last} (it is in the warehouse); what was still running stopped "
            "(an unfinished run commits nothing; the next run cleans up after it)")


def leave(code: int | None = None, *, finished: bool = False) -> None:
    """Exit now, without Python's exit hooks (Prefect's may wait for a server that is gone), after
    stopping every descendant. ``finished``: the command finished after a signal that came once its
    run had committed (exit 0 unless ``code`` says otherwise)."""
    print(message(finished), file=sys.stderr)
    if finished and code is None:
        code = 0
    reap()
    for stream in (sys.stdout, sys.stderr):
        with suppress(Exception):
            stream.flush()
    os._exit(exit_code() if code is None else code)


def reap(timeout: float = REAP_SECONDS) -> list[int]:
    """Terminate every descendant of this process, then kill those still alive after ``timeout``.
    Returns the pids that had to be stopped (the resource tracker, which leaves by itself once its
    pipe closes, is not counted)."""
    import psutil  # a declared dependency: without it no child would be reaped, so no silent fallback

    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return []
    tracker = _resource_tracker_pid()
    others = [c for c in children if c.pid != tracker]
    _stop(others, timeout)
    # Only now: every worker holds the tracker's pipe too, so it sees the end only once they are gone.
    _close_resource_tracker()
    _stop([c for c in children if c.pid == tracker], timeout, terminate=False)
    return [c.pid for c in others]


def _stop(processes: list[Any], timeout: float, terminate: bool = True) -> None:
    """SIGTERM (unless ``terminate`` is false: just wait), then SIGKILL for those alive after ``timeout``."""
    import psutil

    if terminate:
        for process in processes:
            with suppress(psutil.Error):
                process.terminate()
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    for process in alive:
        with suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=timeout)


def _resource_tracker_pid() -> int | None:
    tracker = sys.modules.get("multiprocessing.resource_tracker")
    pid = getattr(getattr(tracker, "_resource_tracker", None), "_pid", None)
    return pid if isinstance(pid, int) else None


def _close_resource_tracker() -> None:
    """multiprocessing's resource tracker (started with a spawn pool) ignores SIGTERM by design: it
    leaves when its pipe closes, after unlinking anything the workers leaked. Its pipe is closed here
    (not through its ``_stop``, which waits without a timeout and takes a lock a signalled thread may
    hold); ``reap`` then waits for it like any child, and kills it after the timeout if it stays."""
    tracker = getattr(sys.modules.get("multiprocessing.resource_tracker"), "_resource_tracker", None)
    fd = getattr(tracker, "_fd", None)
    if isinstance(fd, int):
        with suppress(OSError):
            os.close(fd)
        with suppress(Exception):  # a private attribute: at worst the tracker is killed after the timeout
            tracker._fd = None  # type: ignore[union-attr]


def worker_started() -> None:
    """For worker processes (a pool's initializer): the parent handles Ctrl-C (it cancels their work),
    so a Ctrl-C sent to the whole group neither kills them mid-file nor prints a traceback from each.
    And they leave when the parent is gone however it went (kill -9, the OOM killer): nothing else
    would end them, each holding a batch in memory."""
    from flows.parent_watch import watch_parent

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    spawner = multiprocessing.parent_process()  # who started us: the parent may be gone already
    parent = spawner.pid if spawner is not None and spawner.pid is not None else os.getppid()
    watch_parent(parent, lambda: os._exit(1))
