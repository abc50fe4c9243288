"""The console script's first lines: SIGINT and SIGTERM are ours from the very start.

Importing the commands (typer, pyarrow, DuckDB, ...) takes ~0.5 s; a Ctrl-C in that time used to
end the process with a traceback and the signal's default exit. Here the handlers go in first, so
it ends like any other interrupt: one line, 130 or 143.
"""

from __future__ import annotations

from flows import lifecycle


def main() -> None:
    lifecycle.install()
    with lifecycle.starting():
        from flows.cli.main import main as run
    run()
