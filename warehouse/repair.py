"""``repair``: bring a damaged warehouse back to its last intact committed state, deleting nothing.

- A manifest file that is missing or damaged is written again from its copy (the catalog's, the
  checkpoint's that holds it, or the ``_COMMITTED`` marker of its run: see ``warehouse.markers``). A
  committed run whose generation is lost everywhere (an earlier release's empty marker) is rolled back
  like a damaged one, its studies listed.
- A missing, corrupt or mismatched catalog is rebuilt from the manifest and the Parquet files.
- A manifest checkpoint that is damaged or differs from the generations it folds is moved aside and
  taken again; one about generations that are no longer there is moved aside.
- When committed files are missing or damaged, the warehouse rolls back to the last generation before
  the first damaged one whose files are all intact; the runs after it (their manifest files and run
  directories, intact or not) move to ``damaged/<time>/``, and the studies whose newer versions were
  lost are listed (``--resync`` fetches them again).
Everything moved keeps its path under ``damaged/<time>/``; ``repair.json`` there says what and why.
Call with the writer lock held.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from pipeline.errors import WarehouseError
from warehouse import catalog, catalog_file, checkpoints
from warehouse import manifest as manifests
from warehouse.affected import rollback_target
from warehouse.catalog import CATALOG_NAME
from warehouse.check import check, check_file
from warehouse.log_state import LogState, read_state
from warehouse.manifest import Generation, ManifestEntry
from warehouse.markers import COMMITTED_MARKER
from warehouse.tables import TABLES

DAMAGED_DIR = "damaged"
RECORD_NAME = "repair.json"  # in damaged/<time>/: what the repair found, rolled back and moved
_RUN_ID = re.compile(r"runs/([0-9]{8}T[0-9]{6}Z-[0-9a-f]+)/")  # a run's files' paths in a manifest file


@dataclass
class RepairResult:
    changed: bool = False
    generation: int = 0  # the generation the warehouse is at afterwards
    rolled_back: list[str] = field(default_factory=list)  # run ids no longer committed
    lost_studies: list[str] = field(default_factory=list)
    moved: list[str] = field(default_factory=list)  # paths relative to the warehouse root
    restored_manifest: list[int] = field(default_factory=list)
    checkpoints_taken: list[int] = field(default_factory=list)  # taken again after their file moved aside
    rebuilt_catalog: bool = False
    damaged_dir: str | None = None

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def repair(root: Path, *, now: datetime | None = None) -> RepairResult:
    result = RepairResult()
    state = read_state(root)
    if state.legacy is not None:
        raise WarehouseError("this warehouse was written by an earlier release; open it once "
                             "(e.g. `trialsync runs`) to migrate it, then repair")
    log = state.best()
    verdicts: dict[str, bool] = {}

    def intact(entry: ManifestEntry) -> bool:
        if entry.path not in verdicts:
            verdicts[entry.path] = check_file(root, entry, deep=True) is None
        return verdicts[entry.path]

    target = _target(log, intact)
    # Generations after a hole in the log (a damaged file the catalog has no copy of) cannot be
    # applied: they are rolled back like the damaged ones, their files moved aside.
    beyond = [state.files[n] for n in sorted(state.files) if n > len(log)]
    kept, rolled = log[:target], log[target:] + beyond
    result.generation = target
    stamp = f"{(now or datetime.now(UTC)):%Y%m%dT%H%M%S%fZ}"
    bin_dir = root / DAMAGED_DIR / stamp

    def move(rel: str) -> None:
        source = root / rel
        if not source.exists() and not source.is_symlink():
            return
        destination = bin_dir / rel
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.rename(source, destination)
        result.moved.append(rel)

    before = check(root, deep=True, studies=False, rows=False)  # rows: committed so, nothing to repair
    catalog_bad = any(p.kind == "catalog" for p in before.problems) or bool(rolled)
    manifest_bad = sorted(state.damaged)
    misfits = _misfit_checkpoints(state, kept)
    interrupted = _unfinished_records(root)
    if not (rolled or catalog_bad or manifest_bad or misfits or interrupted or state.orphan_runs
            or any(p.kind in ("schema", "checkpoint") for p in before.problems)):
        return result  # nothing to do
    result.changed = True
    result.damaged_dir = str(bin_dir.relative_to(root))
    target_manifest = manifests.fold(kept)
    keep_runs = target_manifest.run_ids | set(target_manifest.retained_until())
    ever_kept = keep_runs | {run for g in kept for run in (g.run_id, *(e.run_id for e in g.entries))}
    unlisted = _committed_unlisted_runs(root, state, ever_kept, {g.run_id for g in rolled})
    lost = lost_studies(root, target_manifest, rolled, [root / "runs" / run for run in unlisted])
    # What an interrupted repair had already rolled back (its files are in its damaged/ folder) still counts.
    earlier = list(interrupted.values())
    # In commit order: the generations after the target, the runs of the hole, the generations beyond it.
    rolled_now = [g.run_id for g in log[target:]] + unlisted + [g.run_id for g in beyond]
    result.rolled_back = _merged_in_order([rolled_now, *(_id_list(r, "rolled_back") for r in earlier)])
    result.lost_studies = sorted(set(lost).union(*(_ids(r, "lost_studies") for r in earlier)))
    record = {"problems": [p.line() for p in before.problems], "completes": sorted(map(str, interrupted))}
    _write_record(bin_dir, {**result.as_dict(), **record, "finished": False})  # before anything moves
    # Order matters for a repair that is itself interrupted: first the catalog (whose copy of the log
    # could bring rolled-back generations back), then the manifest from the newest generation down.
    if (root / CATALOG_NAME).exists() and catalog_bad:
        move(CATALOG_NAME)
    for number in sorted({*manifest_bad, *(g.number for g in rolled)} | {n for n in state.files if n > target},
                         reverse=True):
        move(str(manifests.generation_path(root, number).relative_to(root)))
    for gen in kept:
        if gen.number in state.damaged:
            manifests.restore(root, gen)
            result.restored_manifest.append(gen.number)
    # Every run directory the remaining state does not list: rolled-back runs, runs of manifest files
    # that could not be restored, leftovers of a crash. The next writer would delete them; we keep them.
    runs = root / "runs"
    for directory in sorted(runs.iterdir()) if runs.is_dir() else []:
        if directory.is_dir() and directory.name not in keep_runs:
            move(f"runs/{directory.name}")
    for entry in (e for g in rolled for e in g.entries):
        if not verdicts.get(entry.path, True):
            move(entry.path)
    for table in TABLES:
        schema = catalog.schema_file(table)
        if (root / schema).exists() and any(p.path == schema for p in before.problems):
            move(schema)
    for number in misfits:
        move(str(checkpoints.path(root, number).relative_to(root)))
    result.checkpoints_taken = _retake_checkpoints(root, state, kept, misfits)
    catalog_file.write_catalog(root, target_manifest, kept, tag="repair")  # copies of every generation
    result.rebuilt_catalog = True
    _write_record(bin_dir, {**result.as_dict(), **record, "finished": True})
    for folder, unfinished in interrupted.items():
        _write_record(root / folder, {**unfinished, "finished": True, "completed_by": result.damaged_dir})
    return result


def _write_record(folder: Path, record: dict[str, object]) -> None:
    """``repair.json``, whole or not at all (a repair can itself be killed)."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (RECORD_NAME + ".tmp")
    tmp.write_text(json.dumps(record, indent=1, default=str) + "\n")
    os.replace(tmp, folder / RECORD_NAME)


def _id_list(record: dict[str, Any], key: str) -> list[str]:
    value = record.get(key)
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _ids(record: dict[str, Any], key: str) -> set[str]:
    return set(_id_list(record, key))


def _merged_in_order(sequences: Sequence[Sequence[str]]) -> list[str]:
    """One list of the ids of ``sequences``, each in commit order, keeping that order: an id the list
    has not seen goes right after the one before it in its own sequence (or first)."""
    merged: list[str] = []
    for sequence in sequences:
        at = 0
        for item in sequence:
            if item in merged:
                at = merged.index(item) + 1
            else:
                merged.insert(at, item)
                at += 1
    return merged


def _unfinished_records(root: Path) -> dict[str, dict[str, Any]]:
    """The records of repairs that were interrupted (``finished`` false), by folder: what they rolled
    back and found lost is not known from anywhere else once their moves began."""
    found = {}
    for path in sorted((root / DAMAGED_DIR).glob(f"*/{RECORD_NAME}")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("finished") is False:
            found[str(path.parent.relative_to(root))] = record
    return found


def _misfit_checkpoints(state: LogState, kept: list[Generation]) -> list[int]:
    """Checkpoints that are damaged, about generations no longer kept, or not what they fold."""
    misfits = set(state.bad_checkpoints)
    manifest, done = manifests.Manifest(), 0
    for number, checkpoint in sorted(state.checkpoints.items()):
        if number > len(kept):
            misfits.add(number)
            continue
        for gen in kept[done:number]:
            manifest = manifest.then(gen)
        done = number
        if not checkpoints.as_expected(checkpoint, kept, manifest):
            misfits.add(number)
    return sorted(misfits)


def _retake_checkpoints(root: Path, state: LogState, kept: list[Generation], misfits: list[int]) -> list[int]:
    """Take again the moved checkpoints within ``kept``; then, if the checkpoints up to the newest
    do not hold a copy of every generation before it (one was deleted, or a repair was interrupted),
    the newest again with copies of them all: writers copy only the later generations into the catalog."""
    numbers = sorted(n for n in {*state.checkpoints, *state.bad_checkpoints} if n <= len(kept))
    taken: list[int] = []
    covered: set[int] = set()
    for i, number in enumerate(numbers):
        checkpoint = state.checkpoints.get(number)
        if number in misfits or checkpoint is None:
            since = numbers[i - 1] if i else 0
            checkpoint = checkpoints.expected(kept, manifests.fold(kept[:number]), since)
            checkpoints.write(root, checkpoint)
            taken.append(number)
        covered.update(checkpoint.copies)
    if numbers and not covered.issuperset(range(1, numbers[-1] + 1)):
        top = numbers[-1]
        checkpoints.write(root, checkpoints.expected(kept, manifests.fold(kept[:top]), 0))
        taken = sorted({*taken, top})
    return taken


def _target(log: list[Generation], intact: Callable[[ManifestEntry], bool]) -> int:
    """How many generations stay (``rollback_target``). None is (the first run's files are damaged): an
    error, since rolling back to nothing would take the whole history out of the warehouse for the sake
    of one file."""
    target, first_bad = rollback_target(log, intact)
    if target is not None:
        return target
    why = ("it is the first run" if first_bad == 1
           else "a compaction removed the files it superseded")
    raise WarehouseError(
        f"generation {first_bad} has damaged files and no earlier committed state is intact ({why}): rolling "
        "back would empty the warehouse; restore from a backup (`trialsync backup`); nothing was changed")


def _committed_unlisted_runs(root: Path, state: LogState, ever_kept: set[str], rolled: set[str]) -> list[str]:
    """Run directories that committed (their ``_COMMITTED`` marker, or their id in a damaged manifest
    file) but that no readable manifest file or copy lists: the runs of damaged manifest files with no
    copy left (a run's own marker holds one since this release), in the order they committed. They are
    rolled back with the rest; leftovers of runs that never committed are not, nor runs a kept
    generation named (a compaction's superseded runs wait for their removal). Run ids do not order
    runs: two that start in the same second sort by chance."""
    holes = [n for n in state.damaged if n not in state.copies]
    if not holes and not state.orphan_runs:  # orphans: committed runs whose generation is lost everywhere
        return []
    named: set[str] = set()
    for number in holes:
        with suppress(OSError):
            named.update(_RUN_ID.findall(manifests.generation_path(root, number).read_text(errors="replace")))
    runs = root / "runs"
    found = [d for d in (runs.iterdir() if runs.is_dir() else ())
             if d.is_dir() and d.name not in ever_kept | rolled
             and (d.name in named or (d / COMMITTED_MARKER).exists())]
    return [d.name for d in sorted(found, key=lambda d: (_committed_at(d), d.name))]


def _committed_at(directory: Path) -> int:
    """When a run committed: its marker's time (copies keep it), else its directory's."""
    for path in (directory / COMMITTED_MARKER, directory):
        with suppress(OSError):
            return path.stat().st_mtime_ns
    return 0


def lost_studies(root: Path, target: manifests.Manifest, rolled: list[Generation],
                 unlisted: Sequence[Path] = ()) -> list[str]:
    """Studies with a version in the rolled-back runs that the remaining state does not hold. Where a
    rolled-back ``study_versions`` file cannot be read, its run's ``run_studies`` says which versions it
    saw: a study is lost if that version is newer than the one the remaining state holds. ``unlisted``:
    directories of rolled-back runs whose manifest is gone (their files are found by name)."""
    kept: set[tuple[str, str]] = set()
    latest: dict[str, int] = {}
    for entry in target.entries:
        if entry.table == "study_versions":
            table = pq.read_table(root / entry.path, columns=["nct_id", "version", "content_hash"])
            for n, v, h in zip(*(table.column(c).to_pylist() for c in ("nct_id", "version", "content_hash")),
                               strict=True):
                kept.add((n, h))
                latest[n] = max(latest.get(n, 0), v)
    runs = [[(e.table, root / e.path) for e in gen.entries] for gen in rolled]
    runs += [[(table, path) for table in ("study_versions", "run_studies")
              for path in sorted(directory.glob(f"{table}*.parquet"))] for directory in unlisted]
    lost: set[str] = set()
    for files in runs:
        unreadable = False
        for table, path in files:
            if table == "study_versions":
                try:
                    lost |= {n for n, h in _read_pairs(path) if (n, h) not in kept}
                except Exception:
                    unreadable = True
        if unreadable:
            for table, path in files:
                if table == "run_studies":
                    lost |= {n for n, v in _seen(path) if v > latest.get(n, 0)}
    return sorted(lost)


def _read_pairs(path: Path) -> set[tuple[str, str]]:
    table = pq.read_table(path, columns=["nct_id", "content_hash"])
    return set(zip(table.column("nct_id").to_pylist(), table.column("content_hash").to_pylist(), strict=True))


def _seen(path: Path) -> set[tuple[str, int]]:
    try:
        table = pq.read_table(path, columns=["nct_id", "version"])
    except Exception:
        return set()
    return set(zip(table.column("nct_id").to_pylist(), table.column("version").to_pylist(), strict=True))
