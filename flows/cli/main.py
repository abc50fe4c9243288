"""The console script: one-line errors, exit codes, Ctrl-C."""

from __future__ import annotations

import os
import signal
import sys
import traceback
from contextlib import suppress
from typing import Any

import click
import typer

import flows  # noqa: F401 - sets Prefect's offline defaults before Prefect is imported
from flows.cli import common
from flows.cli.common import app
from pipeline.errors import TrialsyncError, UsageError
from pipeline.redact import redact

_INTERRUPTED = False


def _on_interrupt(signum: int, frame: Any) -> None:
    """Ctrl-C. Without a Prefect server of its own the CLI runs on Prefect's temporary server, a child
    process that dies of the same Ctrl-C; Prefect would then retry reporting the crash to it for
    minutes. So leave at once: a run is crash-safe by design (its uncommitted files are removed by the
    next run, the writer lock goes with the process, fetched pages stay in the spool for a re-run).
    With a real server, let Prefect record the crash; a second Ctrl-C leaves at once."""
    global _INTERRUPTED
    if _INTERRUPTED or not _prefect_server_configured():
        _leave_interrupted()
    _INTERRUPTED = True
    signal.default_int_handler(signum, frame)


def _prefect_server_configured() -> bool:
    """PREFECT_API_URL from the environment or the active Prefect profile."""
    try:
        from prefect.settings import get_current_settings

        return bool(get_current_settings().api.url)
    except Exception:
        return bool(os.environ.get("PREFECT_API_URL"))


def _leave_interrupted() -> None:
    """Exit without Prefect's exit hooks, which may wait for a server that is gone."""
    print("trialsync: interrupted (an unfinished run commits nothing; the next run cleans up after it)",
          file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        with suppress(Exception):
            stream.flush()
    os._exit(130)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = common.DEBUG = "--debug" in args or os.environ.get("TRIALSYNC_DEBUG") == "1"
    args = [a for a in args if a != "--debug"]
    signal.signal(signal.SIGINT, _on_interrupt)
    try:
        app(args=args, prog_name="trialsync", standalone_mode=False)
    except (click.exceptions.Exit, typer.Exit) as exc:
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, typer.Abort, KeyboardInterrupt):
        _leave_interrupted()
    except TrialsyncError as exc:
        if _INTERRUPTED:
            _leave_interrupted()
        if debug:
            traceback.print_exc()
        print(f"trialsync: error: {_one_line(exc)}", file=sys.stderr)
        sys.exit(2 if isinstance(exc, UsageError) else 1)
    except Exception as exc:
        if _INTERRUPTED:  # e.g. the temporary Prefect server died of the same Ctrl-C
            _leave_interrupted()
        if _is_click_error(exc):
            _click_error(exc)
        if debug:
            traceback.print_exc()
        print(f"trialsync: error: {type(exc).__name__}: {_one_line(exc)} (rerun with --debug for details)",
              file=sys.stderr)
        sys.exit(1)
    if _INTERRUPTED:  # a command that caught the interrupt itself
        _leave_interrupted()


def _is_click_error(exc: Exception) -> bool:
    """Typer carries its own copy of click (``typer._click``): recognise both by their base class."""
    return any(cls.__name__ == "ClickException" for cls in type(exc).__mro__)


def _click_error(exc: Any) -> None:
    """A bad flag or value: one line, like our own errors (``trialsync`` alone shows the help)."""
    if type(exc).__name__ == "NoArgsIsHelpError":
        exc.show()
        sys.exit(0)
    ctx = getattr(exc, "ctx", None)
    command = ctx.command_path if ctx is not None and ctx.command_path != "trialsync" else None
    hint = f" (see `{command} --help`)" if command else ""
    print(f"trialsync: error: {_one_line(exc, exc.format_message())}{hint}", file=sys.stderr)
    sys.exit(exc.exit_code)


def _one_line(exc: BaseException, message: str | None = None) -> str:
    """The first line of an error (all of a click message, joined), with secrets masked."""
    if message is not None:
        text = " ".join(line.strip() for line in message.splitlines() if line.strip())
    else:
        lines = str(exc).strip().splitlines()
        text = lines[0] if lines else ""
    return redact(text) if text else type(exc).__name__


if __name__ == "__main__":
    main()
