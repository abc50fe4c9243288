"""Readers never answer from an older committed state without a word.

The committed state is the manifest files; the catalog (``warehouse.duckdb``) and each run's
``_COMMITTED`` marker keep copies of them. When the newest manifest files are lost, a reader that
looked only at ``manifest/`` (or at a catalog that is behind too, or missing) would answer silently
from an older generation. So a reader also looks, cheaply, for a committed run no generation it
knows lists (a listing of ``runs/`` and the markers of the runs it does not know), answers from the
good copies where there are (the same log ``check`` and ``repair`` use), and warns either way,
pointing at ``check`` and ``repair``. Nothing here writes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from warehouse import manifest as manifests
from warehouse import markers
from warehouse.manifest import Generation, Manifest

logger = logging.getLogger("trialsync.warehouse")


def committed_beyond(root: Path, named: Iterable[str], known: int) -> dict[int, Generation]:
    """The generations after ``known`` that committed runs' markers hold and ``manifest/`` lacks, by
    number. ``named``: the runs the reader's state lists (their markers are not read)."""
    copies = markers.find_orphans(root, named, {}, after=known).copies
    if copies:  # a writer may have published one since the reader listed manifest/: then it is not lost
        present = set(manifests.generations(root))
        copies = {number: gen for number, gen in copies.items() if number not in present}
    return copies


def known_runs(manifest: Manifest) -> set[str]:
    """The runs whose markers a reader of ``manifest`` need not read: its runs and the superseded ones
    it keeps for a while."""
    return manifest.run_ids | set(manifest.retained_until())


def best(root: Path, manifest: Manifest | None) -> Manifest:
    """The newest committed state that can be read: ``manifest`` (the manifest files, None when one
    is damaged) or, where newer generations are committed (the catalog or a run's marker says so),
    the log from the files and the good copies. Warns when it is not the newest committed state or
    answers from a copy."""
    from warehouse.check import read_state

    state = read_state(root)
    log = state.best()
    newest = max([state.last, *(g.number for g in log)], default=0)
    answer = manifests.fold(log)
    if manifest is not None and manifest.generation >= answer.generation:
        answer = manifest
    copied = sorted(number for number in state.damaged if number <= answer.generation)
    if answer.generation < newest:
        lost = _span(answer.generation + 1, newest)
        logger.warning("manifest generation %s committed but cannot be read and no good copy is kept: answering "
                       "from generation %s, an older state; run `trialsync check`, then `trialsync repair`",
                       lost, answer.generation)
    elif copied:
        where = ("its run's _COMMITTED marker keeps" if all(n in state.marker_copies for n in copied)
                 else "the catalog keeps" if not any(n in state.marker_copies for n in copied)
                 else "the catalog and the runs' _COMMITTED markers keep")
        warn_missing(_span(copied[0], copied[-1]) if copied == list(range(copied[0], copied[-1] + 1))
                     else ", ".join(map(str, copied)), where)
    return answer


def warn_missing(generations: str, where: str = "the catalog keeps") -> None:
    logger.warning("manifest generation %s is missing or damaged in manifest/ (%s a good copy): answering from "
                   "that copy; "
                   "run `trialsync check`, then `trialsync repair` to restore the file", generations, where)


def _span(first: int, last: int) -> str:
    return f"{first}" if first == last else f"{first} to {last}"
