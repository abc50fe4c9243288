"""What every command module shares: the Typer app, consoles, options, progress and summaries."""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import flows  # noqa: F401 - sets Prefect's offline defaults before Prefect is imported
from flows.output import FORMATS
from pipeline.errors import UsageError
from pipeline.redact import redact

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None,  # option help like "[env X; default Y]" is text, not markup
                  help="Keep a local, versioned, queryable mirror of ClinicalTrials.gov.",
                  epilog="Errors are one line on stderr (exit 2: bad input, 1: failure, "
                         "130/143: interrupted/terminated); "
                         "add --debug anywhere (or TRIALSYNC_DEBUG=1) for the traceback.")
# Piped output is not cut at 80 columns: tables go to files and other programs whole.
console = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True)

DEBUG = False  # set by main() from --debug / TRIALSYNC_DEBUG
WarehouseOpt = Annotated[str | None, typer.Option("--warehouse", help="Warehouse directory "
                                                  "[env TRIALSYNC_WAREHOUSE; default ./trialsync-warehouse]")]
FormatOpt = Annotated[str, typer.Option("--format", help="table | json | csv")]


def check_format(value: str) -> str:
    if value not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {value!r}")
    return value



def refuse_empty_values(args: list[str]) -> None:
    """Before the command runs: an option given an empty value (``--ids ""``, ``--since=``, an unset
    shell variable in a script) or an empty argument (``backup ""`` meant the current directory) is
    refused, never read as "not given" (``sync --ids ""`` would sync the whole registry, ``--since ""``
    widen a window to all time)."""
    import typer.main

    command: Any = typer.main.get_command(app)
    values = iter(args)
    for arg in values:
        if arg == "--":
            return
        if hasattr(command, "commands") and arg in command.commands:
            command = command.commands[arg]  # a group's subcommand (alerts run)
            continue
        if not arg.strip():  # an argument (a path, an NCT id, a query): empty, e.g. an unset variable
            raise UsageError("an argument is empty (an unset shell variable?)")
        name, equals, value = arg.partition("=")
        if not name.startswith("-") or not _takes_value(command, name):
            continue
        given = value if equals else next(values, None)
        if given is not None and not given.strip():
            raise UsageError(f"{name} must not be empty")


ENV_SETTINGS = ("TRIALSYNC_WAREHOUSE", "TRIALSYNC_API_URL", "TRIALSYNC_SHARED_DATA")


def refuse_undecodable(args: list[str]) -> None:
    """Before anything runs: an argument, or a setting of the environment, that is not UTF-8 (a Latin-1
    terminal's ``--condition Sjögren``, a path in another encoding) is refused with one line (exit 2).
    Python hands such bytes over as lone surrogates, which nothing downstream can encode: the command
    failed late with an encoder's error (``sync --warehouse`` after making the directory)."""
    named = [(f"argument {arg_index}", value) for arg_index, value in enumerate(args, start=1)]
    named += [(name, os.environ[name]) for name in ENV_SETTINGS if name in os.environ]
    for what, value in named:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:  # shown as its bytes, a URL's credentials redacted
            raw, shown = os.fsencode(value), os.fsencode(redact(value))
            at = f" (byte {len(os.fsencode(value[:exc.start]))})" if shown == raw else ""
            raise UsageError(f"{what} is not UTF-8 text: {shown!r}{at}; give text and paths in "
                             "UTF-8 (a UTF-8 locale, e.g. LANG=C.UTF-8)") from None


def check_environment() -> None:
    """Settings from the environment that a run reads only late (autocompaction after its commit, the
    crash hook at its checkpoints): checked before anything starts, exit 2 like a bad flag."""
    from warehouse import autocompact, crashpoints

    autocompact.fanout_setting()
    autocompact.keep_setting()
    crashpoints.check_setting()


def _takes_value(command: Any, name: str) -> bool:
    return any(p.param_type_name == "option" and not p.is_flag and name in p.opts
               for p in getattr(command, "params", []))


def split_values(values: list[str] | None) -> list[str]:
    """Each value of a repeatable option, split at commas and white space (ids, statuses, categories and
    events have none: ``--nct "NCT01 NCT02"``, pasted from a list, is two ids, as in ``sync --ids``)."""
    return [part for value in values or [] for part in re.split(r"[,\s]+", value) if part]


def with_progress(run: Callable[[], dict[str, Any]], *, show_progress: bool) -> dict[str, Any]:
    from flows import progress

    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[versions]} new versions"), TimeElapsedColumn(),
                   console=err, disable=not show_progress or not err.is_terminal, transient=True)
    unsubscribe = progress.subscribe(sync_progress_listener(bar))
    quiet_prefect_failures()
    try:
        with bar:
            return run()
    finally:
        unsubscribe()


def sync_progress_listener(bar: Progress) -> Callable[[str, dict[str, Any]], None]:
    """A new task of ``bar`` fed by a sync's or bulk load's events. A bulk load knows its total from
    the start (the zip's directory): the bar shows it before the first shard is done, not ``0/?``."""
    task_id = bar.add_task("syncing", total=None, versions=0)

    def on_event(event: str, data: dict[str, Any]) -> None:
        if event == "start":
            bar.update(task_id, description=f"{data['mode']} sync of {data['scope']}", total=data.get("total") or None)
        elif event == "page":
            bar.update(task_id, completed=data["seen"], total=data["total"] or None, versions=data["versions"])

    return on_event


class _LineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"trialsync: {record.levelname.lower()}: {super().format(record)}"


def configure_logging(debug: bool) -> None:
    """Before anything runs. Our runs' warnings as ``trialsync: warning: ...`` lines on stderr (info too
    with --debug). Prefect's console shows warnings only (its INFO lines, the temporary server's
    banner and docs hint, are noise for a command with a summary of its own); a Prefect server
    still receives every log line of a run. The environment can override each setting."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LineFormatter("%(message)s"))
    ours = logging.getLogger("trialsync")
    ours.handlers[:] = [handler]
    ours.setLevel(logging.DEBUG if debug else logging.WARNING)
    ours.propagate = False
    if not debug:
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_FLOW_RUNS_LEVEL", "WARNING")
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_TASK_RUNS_LEVEL", "WARNING")
        # A local Dask cluster's workers (this process's children) would print a traceback each for a
        # shard that failed or was stopped; the run's one line says what happened.
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "critical")


def quiet_prefect_failures() -> None:
    """Prefect logs a failed run's traceback; the CLI reports one line instead (--debug shows all)."""
    from flows.engine import uses_prefect

    if not uses_prefect():
        return
    from flows.prefect_api import check_settings

    check_settings()
    if not DEBUG:
        import prefect.main  # noqa: F401 - Prefect configures its logging on import: ours must come after

        for name in ("prefect.flow_runs", "prefect.task_runs", "prefect.flow_engine", "prefect.task_engine"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def print_summary(summary: dict[str, Any]) -> None:
    since = f" since {escape(str(summary['since']))}" if summary.get("since") else ""
    units = ("shard task" if summary["mode"] == "bulk" else "page") + ("" if summary["pages"] == 1 else "s")
    console.print(
        f"[bold green]run {summary['run_id']}[/] ({summary['mode']}{since}, scope {escape(summary['scope'])}): "
        f"{summary['pages']} {units}, {summary['studies_seen']} seen, {summary['new_studies']} new studies, "
        f"{summary['versions_written']} new versions, {summary['unchanged']} unchanged, "
        f"{summary['changes_written']} changes, {summary['retired']} retired, "
        f"{left_scope(summary)}"
        f"{unverified(summary)}"
        f"{stale(summary)}"
        f"{summary['quarantined']} quarantined in {summary['duration_seconds']:.1f}s",
        highlight=False,
    )


def stale(summary: dict[str, Any]) -> str:
    n = summary.get("stale") or 0
    return f"{n} stale (older than the stored version: ignored), " if n else ""


def unverified(summary: dict[str, Any]) -> str:
    n = summary.get("unverified") or 0
    return f"{n} unlisted but not looked up (kept, not retired: see the missing_ids warning), " if n else ""


def left_scope(summary: dict[str, Any]) -> str:
    n = summary.get("left_scope") or 0
    return f"{n} left the scope (still in the registry), " if n else ""

