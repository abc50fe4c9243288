"""The console script: one-line errors, exit codes, signals (see ``flows.lifecycle``)."""

from __future__ import annotations

import os
import sys
import traceback
from contextlib import suppress
from pathlib import Path
from typing import Any

import click
import typer

import flows  # noqa: F401 - sets Prefect's offline defaults before Prefect is imported
from flows import lifecycle
from flows.cli import common, disk_errors
from flows.cli.common import app
from pipeline.errors import TrialsyncError, UsageError
from pipeline.redact import redact


def _leave_interrupted() -> None:
    """Leave after a signal (or Ctrl-C) with 130 / 143, stopping every child first."""
    lifecycle.leave()


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = common.DEBUG = "--debug" in args or os.environ.get("TRIALSYNC_DEBUG") == "1"
    args = [a for a in args if a != "--debug"]
    common.configure_logging(debug)
    lifecycle.install()
    leaves = argv is None  # the console script: this process is the command's; called in process, it is not
    try:
        _run(args, debug)
    except SystemExit as exc:
        _settle_prefect(exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1), leaves)
        raise
    _settle_prefect(0, leaves)


def _settle_prefect(code: int, leave: bool) -> None:
    """Give Prefect's queued events and logs a bounded time to reach its server; when they cannot (the
    server went away during the run), the console script leaves without Prefect's exit hook, which would
    retry each of them for seconds (minutes to hours in all) before the process may end. Called in
    process (a test, a program of the user's), it returns: ending its caller's process is not its call."""
    from flows import prefect_api

    left = 0
    try:
        left = prefect_api.settle()
    except KeyboardInterrupt:  # Ctrl-C while waiting for them (the command seemed done): a stop like any other
        lifecycle.leave()
    if left:
        url = prefect_api.api_url()
        server = f"the Prefect server at {url} (PREFECT_API_URL)" if url else "Prefect's temporary server"
        print(f"trialsync: warning: {server} did not take this run's last events and logs within "
              f"{prefect_api.SETTLE_SECONDS:.0f}s; leaving without them", file=sys.stderr)
        if not leave:
            return
        lifecycle.reap()
        for stream in (sys.stdout, sys.stderr):
            with suppress(Exception):
                stream.flush()
        os._exit(code)


def _run(args: list[str], debug: bool) -> None:
    from flows import settings

    settings.forget_streams()  # a pipe read by an earlier command of this process is not this one's
    try:
        common.refuse_undecodable(args)
        if args and "--help" not in args:
            common.refuse_empty_values(args)
            common.check_environment()
        # Not standalone, typer returns an interrupted command's 130 (it makes a KeyboardInterrupt an Exit)
        code = app(args=args, prog_name="trialsync", standalone_mode=False)
    except (click.exceptions.Exit, typer.Exit) as exc:
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, typer.Abort, KeyboardInterrupt):
        _leave_interrupted()
    except TrialsyncError as exc:
        if lifecycle.signalled():
            _leave_interrupted()
        if debug:
            traceback.print_exc()
        print(f"trialsync: error: {_one_line(exc)}", file=sys.stderr)
        sys.exit(2 if isinstance(exc, UsageError) else 1)
    except Exception as exc:
        if lifecycle.signalled():  # e.g. a server died of the same Ctrl-C
            _leave_interrupted()
        if _is_click_error(exc):
            _click_error(exc)
        if debug:
            traceback.print_exc()
        if str(exc).startswith(_PREFECT_UNREACHABLE):  # Prefect's own words name no setting
            url = str(exc).removeprefix(_PREFECT_UNREACHABLE).strip()
            print(f"trialsync: error: the Prefect server at {url} (PREFECT_API_URL) does not answer: start it, "
                  "or unset PREFECT_API_URL to run without one", file=sys.stderr)
            sys.exit(1)
        if refused := disk_errors.describe(exc, _warehouse(args)):  # full, read-only, not ours to write
            print(f"trialsync: error: {redact(refused)}", file=sys.stderr)
            sys.exit(1)
        print(f"trialsync: error: {type(exc).__name__}: {_one_line(exc)} (rerun with --debug for details)",
              file=sys.stderr)
        sys.exit(1)
    if lifecycle.signalled():  # a command that caught the interrupt itself, or finished after its commit
        lifecycle.leave(finished=code in (None, 0) and lifecycle.finished_after_commit())


_PREFECT_UNREACHABLE = "Failed to reach API at"


def _warehouse(args: list[str]) -> str | None:
    """The warehouse directory the command line names (or the environment's, or the default's)."""
    from flows import settings

    def option(name: str) -> str | None:
        value = next((a.split("=", 1)[1] for a in args if a.startswith(f"{name}=")), None)
        return args[args.index(name) + 1] if value is None and name in args[:-1] else value

    try:
        if args and args[0] == "demo":  # its warehouse is its workdir's, whatever the settings say
            return str((Path(option("--workdir") or "demo-output") / "warehouse").absolute())
        return str(settings.warehouse_dir(option("--warehouse")).absolute())
    except Exception:  # only a better message is at stake
        return None


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
