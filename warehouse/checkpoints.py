"""Manifest checkpoints: the folded state every ``EVERY`` generations, so a writer reads only what follows.

The manifest grows by one generation file per commit, and a writer used to parse and fold all of them
(and the catalog to copy all of them) at every run: after a year of daily runs that was the part of a
run's cost still growing with the number of runs. A checkpoint ``checkpoints/<generation>.json``
holds what the generations up to it fold to (the files, the meta, the autocompaction weights), the size
of every generation file up to it, and a copy of the bytes of the generations since the previous
checkpoint. A writer starts from the newest valid checkpoint and parses, verifies and copies into the
catalog only the generations after it (of the earlier files it checks only that each is there with its
size); the copies of the earlier ones live in the checkpoints (the catalog keeps the rest), so every
generation file still has a second copy to be restored from.

A checkpoint is derived data, written after a commit point and never needed: one that is damaged,
missing, or not about this history (its generation file's MD5 differs, e.g. after a repair rolled
back) is ignored, and the generation files decide. ``trialsync check`` verifies every checkpoint
against the generations it folds, and that the checkpoints up to the newest hold a copy of every
generation; ``trialsync repair`` takes damaged or missing ones again. Older releases ignore this
directory and read the whole log; but their pre-flight check calls the catalog's missing copies damage
until their own ``repair`` rewrites the catalog (nothing is lost).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from warehouse import manifest as manifests
from warehouse import regular_files
from warehouse.manifest import Generation, Manifest, ManifestEntry

# Beside manifest/, not in it: a checkpoint holds the second copy of the generations before it, which
# must outlive the loss of the manifest directory.
DIRECTORY = "checkpoints"
EVERY = 32  # generations between checkpoints: a writer parses at most this many (plus its own)
FORMAT = 1


class CheckpointDamaged(ValueError):
    """A checkpoint file that cannot be used (unreadable, bad digest, another format)."""


@dataclass(frozen=True)
class Checkpoint:
    """What generations 1..``generation`` fold to, and copies of the generations since ``since``."""

    generation: int
    manifest: Manifest
    weights: Mapping[str, int]  # runs of ``manifest`` holding more than one run's rows (autocompact)
    generation_md5: str  # of generation ``generation``'s bytes: this checkpoint is about that history
    since: int  # the copies are of generations since+1 .. generation
    copies: Mapping[int, bytes] = field(default_factory=dict, repr=False)
    # the size of each generation file 1..generation: a writer, which reads none of them, still sees
    # one that was truncated, emptied or deleted (a stat each); flipped bytes are for ``check``
    sizes: tuple[int, ...] = field(default=(), repr=False)

    def to_bytes(self) -> bytes:
        body = {"format": FORMAT, "generation": self.generation, "generation_md5": self.generation_md5,
                "since": self.since, "meta": dict(self.manifest.meta), "weights": dict(self.weights),
                "files": [list(e) for e in self.manifest.entries], "sizes": list(self.sizes),
                "copies": {str(n): data.decode() for n, data in sorted(self.copies.items())}}
        return orjson.dumps({"body": body, "digest": _digest(body)}, option=orjson.OPT_SORT_KEYS) + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes, number: int) -> Checkpoint:
        try:
            doc = orjson.loads(data)
            body = doc["body"]
            if doc["digest"] != _digest(body):
                raise CheckpointDamaged(f"checkpoint {number}: digest does not match")
            if body["format"] != FORMAT or body["generation"] != number:
                raise CheckpointDamaged(f"checkpoint {number}: format {body['format']!r}, generation "
                                        f"{body['generation']!r}")
            entries = tuple(ManifestEntry(*row) for row in body["files"])
            return cls(number, Manifest(entries, dict(body["meta"]), number), dict(body["weights"]),
                       body["generation_md5"], body["since"],
                       {int(n): text.encode() for n, text in body["copies"].items()}, tuple(body["sizes"]))
        except CheckpointDamaged:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointDamaged(f"checkpoint {number} is damaged ({type(exc).__name__})") from None


def _digest(body: Mapping[str, Any]) -> str:
    return hashlib.blake2b(orjson.dumps(body, option=orjson.OPT_SORT_KEYS), digest_size=16).hexdigest()


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def directory(root: Path) -> Path:
    return root / DIRECTORY


def path(root: Path, number: int) -> Path:
    return directory(root) / f"{number:08d}.json"


def numbers(root: Path) -> list[int]:
    """The checkpoints on disk, ascending (a listing)."""
    return manifests.numbered_files(directory(root))


def read(root: Path, number: int) -> Checkpoint:
    """``CheckpointDamaged`` if unreadable or damaged (not whether it matches the generations)."""
    try:
        data = regular_files.read_file(path(root, number))
    except OSError as exc:
        raise CheckpointDamaged(f"checkpoint {number} is unreadable: {exc}") from None
    return Checkpoint.from_bytes(data, number)


def matches(root: Path, checkpoint: Checkpoint) -> bool:
    """Whether the generation file the checkpoint was taken at is the one there now."""
    try:
        data = regular_files.read_file(manifests.generation_path(root, checkpoint.generation))
        return md5(data) == checkpoint.generation_md5
    except OSError:
        return False


def resized(root: Path, checkpoint: Checkpoint, present: Iterable[int]) -> dict[int, str]:
    """Why each generation file up to ``checkpoint`` (of those ``present``) no longer has the size it
    recorded (a stat each: a writer reads none of them)."""
    found = {}
    listed = set(present)
    for number, size in enumerate(checkpoint.sizes, start=1):
        if number in listed:
            try:
                now = manifests.generation_path(root, number).stat().st_size
            except OSError as exc:
                found[number] = f"manifest file unreadable: {exc}"
                continue
            if now != size:
                found[number] = f"manifest file is {now} bytes, {size} at checkpoint {checkpoint.generation}"
    return found


def newest(root: Path, head: int) -> Checkpoint | None:
    """The newest checkpoint at or before ``head`` that reads and matches this history (None: none)."""
    for number in reversed(numbers(root)):
        if number > head:
            continue
        with suppress(CheckpointDamaged):
            checkpoint = read(root, number)
            if matches(root, checkpoint):
                return checkpoint
    return None


def weights(log: Iterable[Generation], base: Checkpoint | None = None) -> dict[str, int]:
    """How many runs' rows each run's file set holds (a merge holds those of the runs it merged)."""
    found: dict[str, int] = dict(base.weights) if base is not None else {}
    for gen in log:
        found[gen.run_id] = sum(found.get(r, 1) for r in gen.merges) if gen.merges else 1
    return found


def take(manifest: Manifest, chunk: Sequence[Generation], run_weights: Mapping[str, int],
         earlier_sizes: Sequence[int]) -> Checkpoint:
    """The checkpoint at ``manifest``'s generation. ``chunk``: the generations since the previous
    checkpoint, up to this one, in order (their copies go in it); ``run_weights``: ``weights`` of the
    whole log; ``earlier_sizes``: the sizes of the generation files before ``chunk``. Pure."""
    since = manifest.generation - len(chunk)
    if not chunk or [g.number for g in chunk] != list(range(since + 1, manifest.generation + 1)):
        raise ValueError(f"a checkpoint at {manifest.generation} needs the generations {since + 1}.."
                         f"{manifest.generation} in order")
    runs = manifest.run_ids
    kept = {run: w for run, w in run_weights.items() if w != 1 and run in runs}
    if len(earlier_sizes) != since:
        raise ValueError(f"the sizes of generations 1..{since} expected, got {len(earlier_sizes)}")
    return Checkpoint(manifest.generation, manifest, kept, md5(chunk[-1].to_bytes()), since,
                      {g.number: g.to_bytes() for g in chunk},
                      (*earlier_sizes, *(len(g.to_bytes()) for g in chunk)))


def expected(log: Sequence[Generation], manifest: Manifest, since: int) -> Checkpoint:
    """The checkpoint at ``manifest``'s generation (what ``log``, from generation 1, folds to up to it),
    with copies of the generations since ``since`` (``ValueError``: ``since`` out of range). Pure."""
    upto = log[:manifest.generation]
    return take(manifest, upto[since:], weights(upto), [len(g.to_bytes()) for g in upto[:since]])


def as_expected(checkpoint: Checkpoint, log: Sequence[Generation], manifest: Manifest) -> bool:
    """Whether ``checkpoint`` is exactly what ``log`` (whose first generations fold to ``manifest``) implies."""
    try:
        return checkpoint == expected(log, manifest, checkpoint.since)
    except ValueError:
        return False


def following(manifest: Manifest, log: Sequence[Generation], base: Checkpoint | None) -> Checkpoint:
    """The checkpoint at ``manifest``'s generation from ``base`` and ``log``, the generations since it."""
    return take(manifest, log, weights(log, base), base.sizes if base is not None else ())


def due(head: int, base: Checkpoint | None) -> bool:
    return head - (base.generation if base is not None else 0) >= EVERY


def write(root: Path, checkpoint: Checkpoint) -> None:
    """Atomically (a temporary file renamed into place); the directory fsync is best effort: if a power
    cut loses the newest checkpoint, writers start from the one before it (reading, and copying into
    the catalog, more generations); ``check`` names a lost older one, ``repair`` takes it again."""
    final = path(root, checkpoint.generation)
    final.parent.mkdir(exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(checkpoint.to_bytes())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    with suppress(OSError):
        fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_leftovers(root: Path) -> None:
    folder = directory(root)
    if folder.is_dir():
        for leftover in folder.glob(".*.tmp-*"):
            leftover.unlink(missing_ok=True)
