"""``runs/<id>/_COMMITTED``: a committed run's own copy of its manifest generation.

Written just after the commit point, whole or not at all. The manifest file and the catalog each hold
the generation too; when both are lost (``warehouse.duckdb`` deleted and the newest manifest file with
it) the run's marker still says that it committed, which files it wrote and their sizes and checksums,
so ``check`` names the missing generation and ``repair`` restores it instead of taking a committed,
intact run out of the warehouse. An earlier release's marker is empty: such a run, listed nowhere,
is reported and rolled back with its studies listed (nothing says what its generation held).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from warehouse import manifest as manifests
from warehouse import regular_files
from warehouse.manifest import Generation, ManifestDamaged

if TYPE_CHECKING:
    from warehouse.log_state import LogState

COMMITTED_MARKER = "_COMMITTED"
RUNS_DIR = "runs"


def write_marker(run_dir: Path, gen: Generation) -> None:
    """The marker of the run ``gen`` published, holding its generation file's bytes."""
    tmp = run_dir / f".{COMMITTED_MARKER}.tmp"
    with open(tmp, "wb") as handle:
        handle.write(gen.to_bytes())
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, run_dir / COMMITTED_MARKER)


def read_marker(run_dir: Path) -> Generation | None:
    """The generation a run's marker holds; None when it holds none that is this run's (an earlier
    release's empty marker, or a damaged one). ``OSError`` when there is no marker."""
    data = regular_files.read_file(run_dir / COMMITTED_MARKER)
    try:
        number = json.loads(data)["generation"]
        gen = Generation.from_bytes(data, number) if isinstance(number, int) and number > 0 else None
    except (ValueError, KeyError, TypeError, ManifestDamaged):
        return None
    return gen if gen is not None and gen.run_id == run_dir.name else None


@dataclass
class Orphans:
    """Committed runs (a marker) that no manifest generation the caller knows names."""

    copies: dict[int, Generation] = field(default_factory=dict)  # generation -> the copy a marker holds
    unlisted: list[str] = field(default_factory=list)  # run ids whose marker holds no usable generation
    unreadable: list[str] = field(default_factory=list)  # the same, also when ``after`` is set (readers)


def find_orphans(root: Path, named: Iterable[str], known: dict[int, Generation], *, after: int = 0) -> Orphans:
    """The run directories with a marker that are not in ``named`` (the run ids the known generations
    list); their markers' generations that ``known`` lacks become copies (those at or before ``after``,
    a checkpoint the caller did not read past, are not looked at). A marker of a generation ``known``
    holds for another run is listed as ``unlisted``, like an empty one (not when ``after`` is set: a
    writer's check, which reads only the later generations)."""
    found = Orphans()
    runs = root / RUNS_DIR
    if not runs.is_dir():
        return found
    skip = set(named)
    for name in sorted(os.listdir(runs)):
        if name in skip or name.startswith("."):
            continue
        with suppress(OSError):
            gen = read_marker(runs / name)
            if gen is None:
                found.unreadable.append(name)
            if gen is not None and gen.number <= after:
                continue
            if gen is not None and gen.number not in known and gen.number not in found.copies:
                found.copies[gen.number] = gen
            elif not after:
                found.unlisted.append(name)
    return found


def read_into(root: Path, state: LogState, after: int) -> None:
    """The markers of committed runs no generation read here lists: a generation that is missing
    (the manifest file and the catalog's copy both lost) is found in its run's marker."""
    known = {**state.copies, **state.files}
    named = {run for gen in known.values() for run in (gen.run_id, *gen.merges, *(e.run_id for e in gen.entries))}
    if state.base is not None:
        named |= state.base.manifest.run_ids | set(state.base.manifest.retained_until())
    orphans = find_orphans(root, named, known, after=after)
    state.orphan_runs = orphans.unlisted
    read = max([after, *state.files, *state.damaged, state.catalog_generation or 0])
    if any(number > read for number in orphans.copies):  # a writer may have published it since manifest/
        present = set(manifests.generations(root))  # was listed: a generation newer than this check's is
        for number in [n for n in orphans.copies if n > read and n in present]:  # not missing
            del orphans.copies[number]
    if not orphans.copies:
        return
    for number in range(after + 1, max(orphans.copies) + 1):
        if number not in state.files and number not in state.damaged:
            state.damaged[number] = "manifest file missing"
    for number, gen in orphans.copies.items():
        if number in state.damaged and number not in state.copies:
            state.copies[number] = gen
            state.marker_copies[number] = gen.run_id
