"""The committed state as the manifest files, the catalog, the checkpoints and the runs' markers say it.

``read_state`` reads each source of the manifest log once, generation by generation (``LogState``):
the good manifest files, the damaged or missing ones and why, the catalog's copies of those, every
checkpoint, and the ``_COMMITTED`` markers of runs no generation lists. ``check`` judges it,
``repair`` restores from it, and readers answer from its longest log (``warehouse.readers``).
Nothing is ever changed here.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from warehouse import catalog_file, checkpoints, markers, regular_files
from warehouse import manifest as manifests
from warehouse.catalog import CATALOG_NAME
from warehouse.checkpoints import Checkpoint, CheckpointDamaged
from warehouse.manifest import Generation, Manifest, ManifestDamaged

__all__ = ["LogState", "read_state"]


@dataclass
class LogState:
    """What the manifest files and the catalog's copy of them say, generation by generation."""

    files: dict[int, Generation]  # good manifest files
    copies: dict[int, Generation]  # the catalog's good copies of the generations in ``damaged``
    damaged: dict[int, str]  # generation -> why its file cannot be used
    catalog_generation: int | None  # None: no readable catalog with a generation
    legacy: Manifest | None = None  # a catalog from before the manifest moved beside it
    catalog_meta: dict[str, str] | None = None  # the catalog's _meta as read (None: missing or unreadable)
    catalog_error: str | None = None  # why the catalog could not be read
    # MD5 of each of the catalog's copies: comparing them with the files' needs no copy parsed
    copy_digests: dict[int, str] = field(default_factory=dict)
    base: Checkpoint | None = None  # only the generations after it were read
    for_writer: bool = False  # a copy the catalog lacks is no damage: the writer's new catalog copies it
    # Read only without ``base``: every checkpoint (good ones, damaged ones with why), and the MD5 of
    # each generation copy they hold (the second copy of the generations the catalog no longer copies)
    checkpoints: dict[int, Checkpoint] = field(default_factory=dict)
    bad_checkpoints: dict[int, str] = field(default_factory=dict)
    chunk_digests: dict[int, str] = field(default_factory=dict)
    # Committed runs (their ``_COMMITTED`` marker) no generation lists: where a marker holds the
    # generation, it is a copy (in ``copies``, its source in ``marker_copies``); else listed here
    orphan_runs: list[str] = field(default_factory=list)
    marker_copies: dict[int, str] = field(default_factory=dict)  # generation -> the run whose marker has it

    @property
    def last(self) -> int:
        return max([*self.files, *self.damaged, self.catalog_generation or 0], default=0)

    @property
    def after(self) -> int:
        return self.base.generation if self.base is not None else 0

    def best(self) -> list[Generation]:
        """The longest log both sources give without a hole (after ``base``): a file, else a copy."""
        log = []
        for number in range(self.after + 1, self.last + 1):
            gen = self.files.get(number) or self.copies.get(number)
            if gen is None:
                break
            log.append(gen)
        return log


def read_state(root: Path, base: Checkpoint | None = None, *, for_writer: bool = False) -> LogState:
    """``base``: read only the generations after that checkpoint (a missing earlier file, or one of
    another size, still counts). ``for_writer``: a writer's quick check, which passes over checkpoints
    (it found ``base``, the newest good one, if any). Otherwise everything, every checkpoint included."""
    after = base.generation if base is not None else 0
    listed = manifests.generations(root)
    files: dict[int, Generation] = {}
    damaged: dict[int, str] = {}
    _read_files(root, [n for n in listed if n > after], files, damaged)
    held = catalog_file.CatalogState()  # what the catalog says
    path = root / CATALOG_NAME
    if path.exists():
        held = catalog_file.read_catalog_state(path, legacy=not listed, after=after)
    generation = held.generation
    if generation is not None and generation > max(listed, default=0):
        # A writer published a generation after manifest/ was listed (its file is written before the
        # catalog moves on): list again rather than call the newer file missing.
        newer = [n for n in manifests.generations(root) if n > max([after, *listed])]
        _read_files(root, newer, files, damaged)
        listed += newer
    present = set(listed)
    for number in range(1, max([*listed, generation or 0], default=0) + 1):
        if number not in present:
            damaged[number] = "manifest file missing"
    if base is not None:
        damaged.update(checkpoints.resized(root, base, present))
    state = LogState(files, {}, damaged, generation, held.legacy, held.meta, held.error, held.digests, base)
    state.for_writer = for_writer
    if base is None and not for_writer:
        _read_checkpoints(root, state)
    if damaged:  # only then is a copy read: a good file is the log
        if generation is not None:
            with suppress(duckdb.Error):
                state.copies = catalog_file.read_catalog_log(path, numbers=sorted(damaged))
        for checkpoint in state.checkpoints.values():
            for number, data in checkpoint.copies.items():
                if number in damaged and number not in state.copies:
                    with suppress(ManifestDamaged):
                        state.copies[number] = Generation.from_bytes(data, number)
    if held.legacy is None:
        markers.read_into(root, state, after)
    return state


def _read_files(root: Path, numbers: Sequence[int], files: dict[int, Generation], damaged: dict[int, str]) -> None:
    for number in numbers:
        try:
            data = regular_files.read_file(manifests.generation_path(root, number))
            files[number] = Generation.from_bytes(data, number)
        except (ManifestDamaged, OSError) as exc:
            damaged[number] = str(exc)


def _read_checkpoints(root: Path, state: LogState) -> None:
    for number in checkpoints.numbers(root):
        try:
            checkpoint = checkpoints.read(root, number)
        except CheckpointDamaged as exc:
            state.bad_checkpoints[number] = str(exc)
            continue
        state.checkpoints[number] = checkpoint
        for copied, data in checkpoint.copies.items():
            state.chunk_digests.setdefault(copied, checkpoints.md5(data))
