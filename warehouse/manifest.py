"""The manifest: which runs committed, in which order, which files each wrote, their sizes and checksums.

It lives beside the catalog as one small file per commit, ``manifest/<generation>.json`` (00000001,
00000002, ...), so a lost or corrupt ``warehouse.duckdb`` can always be rebuilt from the manifest and
the Parquet files (every manifest file has a second copy, in the catalog or in a checkpoint, so each
can restore the other; see ``warehouse.checkpoints``).

Publishing generation N+1 is the commit point: the complete file is written under a temporary name,
fsynced, then hard-linked to its final name. ``link`` fails if the name exists, so two writers that
both started from generation N cannot both commit: the second is refused (a compare-and-swap on the
generation that does not depend on ``flock`` working, e.g. on NFS or across hosts).

Each file's checksum is XXH3-128 (fast enough to take at every commit). A generation file's
``digest`` (BLAKE2b of the rest of it) tells a damaged file from a good one.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson
import xxhash

from pipeline.errors import WarehouseError
from warehouse import committing
from warehouse.regular_files import read_file

if TYPE_CHECKING:
    from warehouse.checkpoints import Checkpoint

MANIFEST_DIR = "manifest"
RETAINED_KEY = "retained_runs"  # meta: {run_id: ISO time until which a superseded run's directory stays}
CHECKSUM = "xxh3-128"
# The newest generation format this release reads and writes. 1: every commit; 2: a generation with
# ``merges`` (automatic compaction), which a release knowing only 1 would read as extra files (every merged
# row twice). Other generations stay format 1, byte for byte what earlier releases read.
FORMAT = 2
_NAME = re.compile(r"^(\d{8})\.json$")
_CHUNK = 1 << 20


class ManifestDamaged(WarehouseError):
    """A manifest file that cannot be trusted (unreadable, bad digest, a gap in the generations)."""

    def __init__(self, message: str, generation: int) -> None:
        super().__init__(message)
        self.generation = generation


class ManifestTooNew(WarehouseError):
    """A generation written by a newer release, in a format this one cannot read faithfully: refuse
    (never read it as damage, which ``repair`` would roll back)."""


class GenerationTaken(WarehouseError):
    """Another writer committed the generation this run meant to commit (the compare-and-swap failed)."""



@lru_cache(maxsize=4096)
def _parse_generation(data: bytes, number: int) -> Generation:
    """Parsed once per process: a command reads the log from the files and from the catalog's copy,
    and the log grows by one generation per commit. Generations are immutable; errors are not cached."""
    return Generation._parse(data, number)

class ManifestEntry(NamedTuple):
    """One committed file. A named tuple, not a dataclass: a command builds one per file of every
    generation it reads (~15,000 after a year of daily runs), and a frozen dataclass costs ~5 µs each."""

    run_id: str
    table: str
    path: str  # relative to the warehouse root
    size: int | None = None  # bytes at commit (None: migrated file not measured yet)
    checksum: str | None = None  # CHECKSUM of the file's bytes at commit
    # The fingerprint of the Arrow schema the file was written with (``catalog.schema_fingerprint``);
    # None in files of earlier releases. When every file of a table has the current one, its view
    # need not unify the files' columns by name (which reads every footer at each bind).
    schema: str | None = None


@dataclass(frozen=True)
class Generation:
    """One commit: the run, the files it added, the tables whose earlier files it supersedes, meta."""

    number: int
    run_id: str
    entries: tuple[ManifestEntry, ...]
    replace: tuple[str, ...] = ()
    meta: Mapping[str, str] = field(default_factory=dict)
    committed_at: str = ""
    # Runs whose files this generation's files replace, in their place in commit order (an automatic
    # compaction, see ``warehouse.autocompact``); empty for every other commit.
    merges: tuple[str, ...] = ()
    # The bytes it was read from (not part of its identity): ``to_bytes`` need not serialise it again.
    raw: bytes | None = field(default=None, compare=False, repr=False)

    def body(self) -> dict[str, object]:
        body: dict[str, object] = {
            "format": FORMAT if self.merges else 1, "generation": self.number, "run_id": self.run_id,
            "committed_at": self.committed_at, "replace": sorted(self.replace), "meta": dict(self.meta),
            "files": [_file_doc(e) for e in self.entries]}
        if self.merges:  # absent otherwise: every earlier generation file keeps its exact bytes
            body["merges"] = list(self.merges)
        return body

    def to_bytes(self) -> bytes:
        if self.raw is not None:
            return self.raw
        body = self.body()
        text = json.dumps(body, sort_keys=True, separators=(",", ":"))
        return (json.dumps({**body, "digest": _digest(text)}, sort_keys=True, indent=1) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes, number: int) -> Generation:
        """Parse a generation file; ``ManifestDamaged`` if it is not exactly what was written."""
        return _parse_generation(data, number)

    @classmethod
    def _parse(cls, data: bytes, number: int) -> Generation:
        try:
            doc = _verified(data)
            if doc["generation"] != number:
                raise ValueError("generation does not match")
            if not isinstance(doc.get("format", 1), int) or doc.get("format", 1) > FORMAT:
                raise ManifestTooNew(
                    f"manifest generation {number} was written by a newer trialsync release (format "
                    f"{doc.get('format')!r}; this release reads up to {FORMAT}): "
                    "upgrade trialsync to use this warehouse")
            return cls(number, doc["run_id"],
                       tuple(ManifestEntry(doc["run_id"], f["table"], f["path"], f["size"], f["checksum"],
                                           f.get("schema")) for f in doc["files"]),
                       tuple(doc["replace"]), dict(doc["meta"]), doc["committed_at"],
                       tuple(doc.get("merges", ())), data)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ManifestDamaged(f"manifest generation {number} is damaged ({type(exc).__name__})", number) from None


def _file_doc(entry: ManifestEntry) -> dict[str, object]:
    doc: dict[str, object] = {"table": entry.table, "path": entry.path, "size": entry.size,
                              "checksum": entry.checksum}
    if entry.schema is not None:  # absent otherwise (an earlier release reads the key as unknown)
        doc["schema"] = entry.schema
    return doc


@dataclass(frozen=True)
class Manifest:
    """The committed state: the files each view reads, in commit order, and the last generation's meta."""

    entries: tuple[ManifestEntry, ...] = ()
    meta: Mapping[str, str] = field(default_factory=dict)
    generation: int = 0

    def files(self, table: str) -> list[str]:
        return [e.path for e in self.entries if e.table == table]

    @property
    def run_ids(self) -> set[str]:
        return {e.run_id for e in self.entries}

    def plus(self, entries: Sequence[ManifestEntry]) -> Manifest:
        return Manifest(self.entries + tuple(entries), self.meta, self.generation)

    def then(self, gen: Generation) -> Manifest:
        """The state after ``gen`` committed on top of this one."""
        kept = tuple(e for e in self.entries if e.table not in gen.replace)
        if gen.merges:  # the merged runs' files give way to gen's, at the place of the first of them
            merged = set(gen.merges)
            at = next((i for i, e in enumerate(kept) if e.run_id in merged), len(kept))
            rest = tuple(e for e in kept if e.run_id not in merged)
            at = sum(1 for e in kept[:at] if e.run_id not in merged)
            return Manifest(rest[:at] + gen.entries + rest[at:], dict(gen.meta), gen.number)
        return Manifest(kept + gen.entries, dict(gen.meta), gen.number)  # each generation holds the whole meta

    def retained_until(self) -> dict[str, datetime]:
        """Run directories a compaction superseded, and until when they are kept."""
        raw = self.meta.get(RETAINED_KEY)
        if not raw:
            return {}
        return {run_id: datetime.fromisoformat(until) for run_id, until in json.loads(raw).items()}


_last_fold: tuple[object, tuple[Generation, ...], Manifest] | None = None


def fold(log: Iterable[Generation], base: Checkpoint | None = None) -> Manifest:
    """The state a log of generations leaves, applied in generation order (never file-system order),
    on top of ``base`` (a checkpoint: then ``log`` holds the generations after it).

    A command folds the same log several times, and the next one a generation longer: the last fold
    is continued when the log starts with the very same (parsed once, see ``_parse_generation``)
    generations, so folding does not cost a pass over the whole history each time."""
    global _last_fold
    gens = tuple(sorted(log, key=lambda g: g.number))
    start, manifest = 0, (base.manifest if base is not None else Manifest())
    if _last_fold is not None:
        origin, done, state = _last_fold
        if (origin is base and len(done) <= len(gens)
                and all(a is b for a, b in zip(done, gens[:len(done)], strict=True))):
            start, manifest = len(done), state
    for gen in gens[start:]:
        manifest = manifest.then(gen)
    _last_fold = (base, gens, manifest)
    return manifest


def directory(root: Path) -> Path:
    return root / MANIFEST_DIR


def generation_path(root: Path, number: int) -> Path:
    return directory(root) / f"{number:08d}.json"


def generations(root: Path) -> list[int]:
    """The generation numbers on disk, ascending (a listing: nothing is read)."""
    return numbered_files(directory(root))


def numbered_files(folder: Path) -> list[int]:
    """The numbers of the ``<8 digits>.json`` files in ``folder``, ascending (none: no folder)."""
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for name in os.listdir(folder) if (m := _NAME.match(name)))


def head(root: Path) -> int:
    numbers = generations(root)
    return numbers[-1] if numbers else 0


def read_log(root: Path, after: int = 0) -> list[Generation]:
    """Every generation (``after``: every one after that), in order; ``ManifestDamaged`` names the
    first that is missing or damaged."""
    log = []
    for expected, number in enumerate((n for n in generations(root) if n > after), start=after + 1):
        if number != expected:
            raise ManifestDamaged(f"manifest generation {expected} is missing ({generation_path(root, expected)})",
                                  expected)
        try:
            data = read_file(generation_path(root, number))
        except OSError as exc:
            raise ManifestDamaged(f"manifest generation {number} is unreadable: {exc}", number) from None
        log.append(Generation.from_bytes(data, number))
    return log


def run_order(root: Path) -> list[tuple[int, str]]:
    """Each generation's number and run id, in commit order; ``ManifestDamaged`` as ``read_log``. What an
    alerts run and the report need of the whole log, without parsing and verifying every generation
    (``read_log``'s ~0.1 ms each grew with every commit: ~1 s after 10,000) nor filling the memo of parsed
    generations a writer relies on."""
    order = []
    for expected, number in enumerate(generations(root), start=1):
        if number != expected:
            raise ManifestDamaged(f"manifest generation {expected} is missing ({generation_path(root, expected)})",
                                  expected)
        try:
            run_id = orjson.loads(read_file(generation_path(root, number)))["run_id"]
        except (OSError, ValueError, KeyError, TypeError):
            run_id = None
        if not isinstance(run_id, str):
            raise ManifestDamaged(f"manifest generation {number} is damaged (no run id)", number)
        order.append((number, run_id))
    return order


def publish(root: Path, gen: Generation) -> None:
    """Write ``gen`` as the next generation file: THE COMMIT POINT (the instant the link succeeds).

    Raises ``GenerationTaken`` (nothing committed) when that generation exists already. After the
    link nothing raises: the directory fsync that makes the name durable is best effort (the catalog's
    copy of the log restores the file if a power cut loses it)."""
    folder = directory(root)
    folder.mkdir(exist_ok=True)
    final = generation_path(root, gen.number)
    tmp = folder / f".{final.name}.tmp-{gen.run_id}"
    data = gen.to_bytes()
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    try:
        try:
            os.link(tmp, final)
        except FileExistsError:
            raise GenerationTaken(
                f"another writer committed generation {gen.number} while run {gen.run_id} was running "
                "(the file system's locks did not keep writers apart); nothing of this run was committed: "
                "run it again") from None
        except OSError as exc:  # no hard links here (some FUSE/SMB mounts): an exclusive create instead
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
            _create_exclusive(final, data, gen)
        committing.passed(gen.run_id)  # from here a signal must not make the run look failed
    finally:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
    with suppress(OSError):  # after the commit point: best effort, never undoes the commit
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def is_published(root: Path, gen: Generation) -> bool:
    """Whether ``gen`` is the generation file in place: an interrupt (Ctrl-C, SIGTERM) can land after
    the commit point but before ``publish`` returns, and the caller must then know it committed."""
    try:
        return read_file(generation_path(root, gen.number)) == gen.to_bytes()
    except OSError:
        return False


def _create_exclusive(final: Path, data: bytes, gen: Generation) -> None:
    try:
        fd = os.open(final, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise GenerationTaken(f"another writer committed generation {gen.number} while run {gen.run_id} "
                              "was running; nothing of this run was committed: run it again") from None
    try:
        view = memoryview(data)
        while view:  # os.write may write less than asked
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def restore(root: Path, gen: Generation) -> None:
    """Write a generation file again (from the catalog's copy), atomically."""
    final = generation_path(root, gen.number)
    final.parent.mkdir(exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-restore")
    tmp.write_bytes(gen.to_bytes())
    os.replace(tmp, final)


def remove_leftovers(root: Path) -> None:
    folder = directory(root)
    if folder.is_dir():
        for leftover in folder.glob(".*.tmp-*"):
            leftover.unlink(missing_ok=True)


def file_checksum(path: Path) -> str:
    """XXH3-128 of a file's bytes: ~2 GB/s on this (busy, shared) machine, where BLAKE2b managed 64 MB/s."""
    digest = xxhash.xxh3_128()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def measure(root: Path, entry: ManifestEntry) -> ManifestEntry:
    """``entry`` with the size and checksum its file has now (at commit, or when migrating)."""
    path = root / entry.path
    return entry._replace(size=path.stat().st_size, checksum=file_checksum(path))


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _verified(data: bytes) -> dict[str, Any]:
    """A generation file's document, without its digest, once the digest is that of the document as
    ``to_bytes`` wrote it (``json.dumps``, sorted keys, no spaces, ASCII); raises ``ValueError`` else.
    orjson reads and writes the same for an all-ASCII document 3x faster, so it is tried first (a
    command reads every generation); anything else (a non-ASCII meta value it does not escape, an
    integer it reads as a float) is decided by ``json`` itself."""
    with suppress(ValueError, TypeError, KeyError, AttributeError):
        doc = orjson.loads(data)
        digest = doc.pop("digest")
        if hashlib.blake2b(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS), digest_size=16).hexdigest() == digest:
            return dict(doc)
    doc = json.loads(data)
    digest = doc.pop("digest")
    if digest != _digest(json.dumps(doc, sort_keys=True, separators=(",", ":"))):
        raise ValueError("digest does not match")
    return dict(doc)
