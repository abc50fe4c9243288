"""What readers (the read-only commands) do on a bad day, besides answering from the intact tables.

Never answer from an older committed state without a word.

The committed state is the manifest files; the catalog (``warehouse.duckdb``) and each run's
``_COMMITTED`` marker keep copies of them. When the newest manifest files are lost, a reader that
looked only at ``manifest/`` (or at a catalog that is behind too, or missing) would answer silently
from an older generation. So a reader also looks, cheaply, for a committed run no generation it
knows lists (a listing of ``runs/`` and the markers of the runs it does not know), answers from the
good copies where there are (the same log ``check`` and ``repair`` use), and warns either way,
pointing at ``check`` and ``repair``. Say what is wrong with a catalog that is not one, and with a
place that holds no warehouse. Nothing here writes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import duckdb

from warehouse import catalog_file, markers
from warehouse import manifest as manifests
from warehouse.catalog import CATALOG_NAME
from warehouse.manifest import Generation, Manifest

logger = logging.getLogger("trialsync.warehouse")


def committed_beyond(root: Path, named: Iterable[str], known: int) -> dict[int, Generation]:
    """The generations after ``known`` that committed runs' markers hold and ``manifest/`` lacks, by
    number. ``named``: the runs the reader's state lists (their markers are not read). A marker of a
    run not named that holds no generation (damaged, or an earlier release's empty one) is warned about:
    that run committed, and what it committed may be missing from the answer (``check`` names it too)."""
    orphans = markers.find_orphans(root, named, {}, after=known)
    for run in orphans.unreadable:
        logger.warning("%s/%s/%s holds no readable manifest generation: a committed run no generation lists, "
                       "whose rows this answer may lack; run `trialsync check`, then `trialsync repair`",
                       markers.RUNS_DIR, run, markers.COMMITTED_MARKER)
    copies = orphans.copies
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
    from warehouse.log_state import read_state

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


def marker_log(root: Path) -> tuple[int, list[int]]:
    """With the catalog and ``manifest/`` both lost: the newest generation the runs' markers name, and
    the generations up to it that no marker or checkpoint holds (``repair`` rebuilds when there are none)."""
    from warehouse.log_state import read_state

    state = read_state(root)
    held = {*state.files, *state.copies}
    return state.last, [n for n in range(1, state.last + 1) if n not in held]


def unmarked_runs(root: Path) -> list[str]:
    """Run directories holding files but no ``_COMMITTED`` marker. With the manifest lost, nothing tells
    whether such a run committed (a writer killed between its commit point and its marker, or one
    killed while staging): a rebuild from the markers would leave it out and the next writer would
    delete its files, so ``repair`` does not guess."""
    runs = root / markers.RUNS_DIR
    if not runs.is_dir():
        return []
    return sorted(run.name for run in runs.iterdir()
                  if run.is_dir() and not run.name.startswith(".") and not (run / markers.COMMITTED_MARKER).exists()
                  and any(path.is_file() for path in run.rglob("*")))


def _spans(numbers: list[int]) -> str:
    spans: list[list[int]] = []
    for n in numbers:
        if spans and spans[-1][1] == n - 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(_span(a, b) for a, b in spans)


def _span(first: int, last: int) -> str:
    return f"{first}" if first == last else f"{first} to {last}"


def warn_if_unreadable(path: Path) -> None:
    """A catalog file that does not open (empty, another program's file): readers build the views in memory."""
    try:
        catalog_file.catalog_meta(path)
    except duckdb.Error as exc:
        logger.warning("%s is not a readable catalog (%s): answering from the manifest; `trialsync repair` "
                       "rebuilds it", path.name, catalog_file.first_line(exc))


def why_missing(root: Path) -> str:
    """Why ``root`` holds no warehouse, in one line: a file, committed runs whose catalog and manifest
    are both gone, another program's directory, or nothing yet."""
    if root.exists() and not root.is_dir():
        return f"{root} is a file, not a warehouse directory"
    runs = root / markers.RUNS_DIR
    if runs.is_dir() and any((run / markers.COMMITTED_MARKER).exists() for run in runs.iterdir()):
        lost = f"{root}: {CATALOG_NAME} and {manifests.MANIFEST_DIR}/ are both missing"
        newest, missing = marker_log(root)
        if newest and not missing and (unmarked := unmarked_runs(root)):
            return (f"{lost}; the runs' {markers.COMMITTED_MARKER} markers hold generation 1 to {newest}, but "
                    f"{markers.RUNS_DIR}/{', '.join(unmarked)} hold files and no marker (committed or not, nothing "
                    "left tells): restore them from a backup, or move those directories out of "
                    f"{markers.RUNS_DIR}/ and `trialsync repair` rebuilds without them")
        if newest and not missing:
            return (f"{lost}, but the runs' {markers.COMMITTED_MARKER} markers hold every generation (1 to "
                    f"{newest}): `trialsync repair` rebuilds them")
        if not newest:
            return (f"{lost} and no run's {markers.COMMITTED_MARKER} marker in {markers.RUNS_DIR}/ holds a readable "
                    "generation (damaged, or written by an earlier release): restore them from a backup")
        return (f"{lost} and neither the runs' {markers.COMMITTED_MARKER} markers nor checkpoints/ hold generation "
                f"{_spans(missing)} of 1 to {newest} (a run's directory is gone: a merged run's is removed a day "
                "after the merge): `trialsync repair` cannot rebuild them; restore them from a backup")
    from warehouse.store import LOCK_NAME, MARKER_NAME  # a first sync that committed nothing leaves these

    if root.is_dir() and not any((root / name).exists() for name in (MARKER_NAME, LOCK_NAME)) and any(root.iterdir()):
        return f"{root} is not a trialsync warehouse (it holds neither {CATALOG_NAME} nor {manifests.MANIFEST_DIR}/)"
    return f"no warehouse at {root} (run `trialsync sync` first)"
