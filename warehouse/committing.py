"""Commit points passed in this process, for the CLI's signal handling (``flows.lifecycle``).

A SIGINT or SIGTERM that lands after a run's commit point must neither undo the run nor report it as
failed: the CLI lets the command finish (within its stop deadline) instead of interrupting it. A
writer says when it begins (``began``) and when its commit point has passed (``passed``); a stop
asked for after a commit point keeps the next write from beginning (``stop_pending``). The writer
says when its committing work is over (``ended``: its context exits, a backup's DEST is complete):
from there a signal interrupts what follows (an alerts run's delivery) as it would before a commit.
"""

from __future__ import annotations

committed: list[str] = []  # what committed in this process, in order (run ids, a backup's DEST)
finishing = False  # a commit point passed and its writer has not ended: what is left is finishing up
stop_pending = False  # set by the CLI: a signal arrived while finishing; no further write may begin


def began() -> None:
    """A write begins (the writer lock is held, a backup starts): a signal now stops it, commits nothing."""
    global finishing
    if stop_pending:
        raise KeyboardInterrupt  # the command was asked to stop once its committed run was finished
    finishing = False


def passed(what: str) -> None:
    """``what`` (a run id, a backup's DEST) is committed: nothing may undo it or call it failed."""
    global finishing
    if not committed or committed[-1] != what:
        committed.append(what)
    finishing = True


def ended() -> None:
    """The committing writer is done (its context exited, a backup's DEST is complete): a signal from
    now on interrupts what follows. A stop asked for while it was finishing stays pending."""
    global finishing
    finishing = False
