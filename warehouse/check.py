"""``check``: is every committed file there and intact, and does the catalog match the manifest?

Quick (no data read): the manifest files and their digests, every committed file present with the
size recorded at commit, every Parquet footer readable, the catalog at the manifest's generation with
the views the manifest implies and a true copy of every manifest file (in the catalog or a checkpoint),
every checkpoint what the generations up to it fold to. Deep: also every file's
checksum and every row group decoded. Nothing is ever changed here.

A writer checks without the footers (``footers=False``) and then reads them all once in the DuckDB its
run uses anyway (``warehouse.store``): reading each footer twice per run made a run's cost grow with the
number of committed files. It also checks only the manifest files after the newest checkpoint
(``since_checkpoint``), the ones it reads. What the manifest files, the catalog, the checkpoints and
the runs' markers say (``read_state``, ``LogState``) is read in ``warehouse.log_state``.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISREG

import duckdb
import pyarrow.parquet as pq

from pipeline.errors import WarehouseError
from warehouse import catalog, catalog_file, checkpoints, markers
from warehouse import manifest as manifests
from warehouse.affected import studies_affected, unrepairable
from warehouse.catalog import CATALOG_NAME
from warehouse.check_rows import row_problems
from warehouse.checkpoints import Checkpoint
from warehouse.log_state import LogState, read_state
from warehouse.manifest import Generation, Manifest, ManifestEntry
from warehouse.problems import ROW_KINDS, Problem
from warehouse.regular_files import open_regular
from warehouse.tables import TABLES

__all__ = ["Problem", "Report", "WarehouseDamaged", "check", "check_file", "first_damaged", "refuse_if_damaged"]

# Files checked at once: stat + footer are mostly waiting on the file system (pyarrow releases the GIL),
# so a few threads hide the latency of a cold page cache; at 600k studies a load writes ~3,400 files.
CHECK_THREADS = 8


class WarehouseDamaged(WarehouseError):
    """A writing command found the warehouse damaged and changed nothing."""


@dataclass
class Report:
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    files: int = 0
    size: int = 0
    generation: int = 0
    runs: int = 0
    deep: bool = False
    log: list[Generation] | None = None  # the generations checked (None: a catalog of an earlier release)
    base: Checkpoint | None = None  # the checkpoint ``log`` follows (None: ``log`` is the whole log)
    unrepairable: int | None = None  # damaged files repair cannot roll back past: their first generation

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        how = "deep" if self.deep else "quick"
        if self.ok:
            note = f" ({'; '.join(self.notes)})" if self.notes else ""
            runs = f"{self.runs} run{'' if self.runs == 1 else 's'}"
            return (f"ok ({how} check): generation {self.generation}, {runs}, {self.files} files, "
                    f"{self.size / 1e6:.1f} MB{note}")
        if all(p.kind in ROW_KINDS for p in self.problems):
            return (f"inconsistent ({how} check): {len(self.problems)} problem(s) in committed rows, which "
                    "`trialsync repair` does not change (see README, If something breaks)")
        if self.unrepairable is not None:  # what repair would say: it changes nothing then
            return (f"damaged ({how} check): {len(self.problems)} problem(s); generation {self.unrepairable} has "
                    "damaged files and no earlier committed state is intact, so `trialsync repair` cannot roll "
                    "back past them: restore from a backup")
        return f"damaged ({how} check): {len(self.problems)} problem(s); run `trialsync repair` to fix"


def check(root: Path, *, deep: bool = False, studies: bool = True, footers: bool = True,
          since_checkpoint: bool = False, rows: bool = True) -> Report:
    """``footers=False``: not the Parquet footers (nor the schema files), for a caller that reads them next.
    ``since_checkpoint``: the manifest files after the newest checkpoint only (a writer: what it reads);
    ``trialsync check`` reads them all and verifies the checkpoints. ``rows`` (with ``deep``): also the
    rows' keys (``warehouse.check_rows``), when every file is intact."""
    report = Report(deep=deep)
    base = checkpoints.newest(root, manifests.head(root)) if since_checkpoint else None
    state = read_state(root, base, for_writer=since_checkpoint)
    for number, why in sorted(state.damaged.items()):
        rel = str(manifests.generation_path(root, number).relative_to(root))
        restorable = " (a good copy is kept)" if number in state.copies else ""
        if number in state.marker_copies:  # nothing else holds it: name the run
            restorable = f" (a good copy is kept in its run's {markers.COMMITTED_MARKER} marker)"
        report.problems.append(Problem("manifest", rel, f"{why}{restorable}", run_id=state.marker_copies.get(number),
                                       generation=number))
    for run in state.orphan_runs:
        report.problems.append(Problem(
            "manifest", f"{markers.RUNS_DIR}/{run}/{markers.COMMITTED_MARKER}", "this run committed but no manifest "
            "generation lists it (its manifest file and the catalog's copy are lost; its marker holds none: "
            "damaged, or of an earlier release): `trialsync repair` rolls it back and lists its studies", run_id=run))
    if state.legacy is not None:
        manifest = state.legacy
        report.notes.append("written by an earlier release: the next command moves its manifest beside the catalog")
    else:
        report.log, report.base = state.best(), base
        manifest = manifests.fold(report.log, base)
        if not since_checkpoint:
            report.problems += _checkpoint_problems(root, state, report.log, report.notes)
    report.generation = manifest.generation
    report.runs = len(manifest.run_ids)  # without footers; with them, the rows of sync_runs (below)
    owner = _owners(state)
    if footers:
        with ThreadPoolExecutor(2 if deep else CHECK_THREADS) as pool:  # deep: whole row groups in memory
            verdicts = list(pool.map(lambda entry: check_file(root, entry, deep=deep), manifest.entries))
    else:  # a stat each: threads would cost more than they hide
        verdicts = [check_file(root, entry, deep=False, footer=False) for entry in manifest.entries]
    if any(verdicts) and report.log is not None and report.base is None:  # what repair will do about it
        report.unrepairable = unrepairable(report.log, {e.path: v is None for e, v in zip(
            manifest.entries, verdicts, strict=True)}, lambda e: check_file(root, e, deep=deep) is None)
    if footers:
        report.runs = recorded_runs(root, manifest)
    before_files = len(report.problems)  # the manifest's and checkpoints' problems: the rows still read
    for entry, problem in zip(manifest.entries, verdicts, strict=True):
        report.files += 1
        if problem is None:
            report.size += entry.size or 0
            continue
        gen = owner.get((entry.run_id, entry.path))
        affected, at_least = studies_affected(root, manifest, entry) if studies else (None, False)
        report.problems.append(Problem(problem[0], entry.path, problem[1], entry.table, entry.run_id, gen,
                                       affected, at_least))
    # The views of a catalog of this release read every schema file (another release's: the next command
    # rewrites the catalog and writes the files its views read)
    this_release = (state.catalog_meta or {}).get("views_digest") == catalog.views_digest()
    for table in TABLES:
        schema = root / catalog.schema_file(table)
        if not footers:  # a writer reads them next, in DuckDB: a named pipe there would hold it (and its lock)
            if schema.exists() and not schema.is_file():
                report.problems.append(Problem("schema", catalog.schema_file(table), "not a regular file", table))
        elif schema.exists() and not _footer_ok(schema):
            report.problems.append(Problem("schema", catalog.schema_file(table), "unreadable schema file", table))
        elif this_release and not schema.exists():
            report.problems.append(Problem("schema", catalog.schema_file(table), "schema file missing", table))
    files_intact = len(report.problems) == before_files
    if state.legacy is None:
        report.problems += _catalog_problems(root, state, manifest, report.notes)
    if deep and rows:
        if files_intact:
            try:
                report.problems += row_problems(root, manifest)
            except duckdb.Error as exc:
                report.notes.append(f"rows not compared ({catalog_file.first_line(exc)})")
        else:
            report.notes.append("rows not compared: files are damaged")
    return report


def recorded_runs(root: Path, manifest: Manifest) -> int:
    """The runs ``sync_runs`` (and ``trialsync runs``) lists: the rows of its files, from their footers.
    Not the runs with files in the manifest: a merge (``compact``, the automatic ones) replaces the files
    of every run it merged with its own, and a warehouse of 4 runs said "1 runs"."""
    total = 0
    for entry in manifest.entries:
        if entry.table == "sync_runs":
            with suppress(Exception):  # a damaged one is a problem of its own; the summary says damaged then
                total += pq.read_metadata(root / entry.path).num_rows
    return total


def check_file(root: Path, entry: ManifestEntry, *, deep: bool, footer: bool = True) -> tuple[str, str] | None:
    """(kind, what is wrong) for one committed file, None when it is intact (``footer=False``: its
    presence and size only, and its footer when no size was recorded)."""
    path = root / entry.path
    try:
        st = path.stat()
    except FileNotFoundError:
        return "missing", "file missing"
    except OSError as exc:
        return "missing", f"cannot stat: {exc}"
    if not S_ISREG(st.st_mode):  # a named pipe: reading it waited for ever (committed files are never replaced)
        return "missing", "not a regular file"
    if entry.size is not None and st.st_size != entry.size:
        return "size", f"{st.st_size} bytes, {entry.size} at commit"
    if not footer and entry.size is not None:  # no size recorded (an earlier release's): read the footer
        return None
    try:
        footer = _read_footer(path)  # the footer only (a ParquetFile also builds its schema's paths)
    except Exception as exc:  # pyarrow raises several types for a bad footer
        return "footer", f"Parquet footer unreadable ({catalog_file.first_line(exc)})"
    if not deep:
        return None
    parquet = pq.ParquetFile(path, metadata=footer)
    if entry.checksum is not None and manifests.file_checksum(path) != entry.checksum:
        return "checksum", "checksum differs from the one recorded at commit"
    try:
        for group in range(parquet.num_row_groups):
            parquet.read_row_group(group)
    except Exception as exc:
        return "decode", f"row group {group} does not decode ({catalog_file.first_line(exc)})"
    return None


def first_damaged(root: Path, entries: Sequence[ManifestEntry]) -> str | None:
    """The first of ``entries`` whose file's size, footer or checksum differs from its commit, said in one
    line; None when all match. For a rewrite (a merge, ``compact``), which must not copy damage into a new
    file whose checksum would then vouch for it. Reads every byte once (XXH3), not the rows."""
    for entry in entries:
        problem = check_file(root, entry, deep=False)
        if (problem is None and entry.checksum is not None
                and manifests.file_checksum(root / entry.path) != entry.checksum):
            problem = ("checksum", "checksum differs from the one recorded at commit")
        if problem is not None:
            return f"{entry.path} ({entry.table}, run {entry.run_id}): {problem[1]}"
    return None


def refuse_if_damaged(root: Path, *, footers: bool = True, since_checkpoint: bool = False) -> Report | None:
    """What every writing command runs first: the quick check; one line pointing at ``repair``.
    Returns the report, whose ``log`` (and ``base``) the writer goes on from (None: a new warehouse)."""
    if not (root / CATALOG_NAME).exists() and not manifests.generations(root):
        return None  # a new warehouse
    report = check(root, studies=False, footers=footers, since_checkpoint=since_checkpoint)
    if report.problems:
        first = report.problems[0]
        more = f" and {len(report.problems) - 1} more problem(s)" if len(report.problems) > 1 else ""
        raise WarehouseDamaged(f"the warehouse {root} is damaged ({first.line()}{more}); nothing was changed: "
                               "see `trialsync check`, then run `trialsync repair`")
    return report


def _catalog_problems(root: Path, state: LogState, manifest: Manifest, notes: list[str]) -> list[Problem]:
    path = root / CATALOG_NAME
    if not path.exists():
        return [Problem("catalog", CATALOG_NAME, "catalog missing (repair rebuilds it from the manifest)")]
    meta = state.catalog_meta  # read once, by read_state
    if meta is None:
        return [Problem("catalog", CATALOG_NAME, f"catalog unreadable ({state.catalog_error})")]
    if "generation" not in meta:
        return [Problem("catalog", CATALOG_NAME, "catalog lacks its generation")]
    generation = int(meta["generation"])
    if generation < manifest.generation:
        notes.append(f"the catalog is at generation {generation}: the next command brings it up to date")
        return []
    if meta.get("root") != str(root):  # moved or copied here: its views are of the old place, its copies good
        notes.append(f"the catalog reads {meta.get('root')}: the next command rewrites it for this directory")
        return _copy_problems(state) if generation == manifest.generation else []
    problems = []
    if generation > manifest.generation:
        problems.append(Problem("catalog", CATALOG_NAME, f"catalog at generation {generation}, manifest only "
                                f"at {manifest.generation}"))
    elif meta.get("views_digest") != catalog.views_digest():  # not damage: an upgrade
        notes.append("the catalog's views were written by another release of trialsync: "
                     "the next command rewrites them")
    elif meta.get("plan_digest") != catalog.plan_digest(root, manifest):
        problems.append(Problem("catalog", CATALOG_NAME, "the catalog's views differ from what the manifest implies"))
    return problems + _copy_problems(state)


def _copy_problems(state: LogState) -> list[Problem]:
    """Every manifest file has a second copy to be restored from, which must be equal: in the catalog,
    or for generations up to a checkpoint, in that checkpoint. For a writer a copy the catalog lacks is
    not damage (e.g. the newest checkpoint is damaged, or ``checkpoints/`` was deleted): the
    catalog it writes copies every generation it read."""
    problems = []
    for number, gen in state.files.items():
        digest = checkpoints.md5(gen.to_bytes())  # of the bytes it was read from
        copy = state.copy_digests.get(number, state.chunk_digests.get(number))
        if copy != digest and (copy is not None or not state.for_writer):
            problems.append(Problem("catalog", CATALOG_NAME, f"the catalog's copy of manifest generation {number} "
                                    "is missing or differs", generation=number))
            break
    return problems


def _checkpoint_problems(root: Path, state: LogState, log: Sequence[Generation], notes: list[str]) -> list[Problem]:
    """Each checkpoint must be what the generations up to it fold to, with true copies of them. One
    taken at a generation file that is no longer there (a repair rolled it back) is ignored by every
    reader: a note."""
    problems = [Problem("checkpoint", _rel(root, n), why) for n, why in sorted(state.bad_checkpoints.items())]
    wanted = sorted(n for n in state.checkpoints if n <= len(log))
    stale = sorted(set(state.checkpoints) - set(wanted))
    manifest, done = Manifest(), 0
    for number in wanted:
        checkpoint = state.checkpoints[number]
        for gen in log[done:number]:
            manifest = manifest.then(gen)
        done = number
        if checkpoint.generation_md5 != checkpoints.md5(log[number - 1].to_bytes()):
            stale.append(number)
        elif not checkpoints.as_expected(checkpoint, log, manifest):
            problems.append(Problem("checkpoint", _rel(root, number), "differs from the generations it folds",
                                    generation=number))
    kept = [n for n in wanted if n not in stale]
    covered = {copied for n in kept for copied in state.checkpoints[n].copies}
    if kept and (lacking := sorted(set(range(1, kept[-1] + 1)) - covered)):
        problems.append(Problem("checkpoint", _rel(root, kept[-1]), f"the checkpoints up to this one lack copies "
                                f"of {len(lacking)} generation(s) (e.g. {lacking[0]}): one is missing"))
    if stale:
        notes.append(f"{len(stale)} checkpoint(s) not about this history are ignored (e.g. "
                     f"{_rel(root, stale[0])}): `trialsync repair` moves them aside")
    return problems


def _rel(root: Path, number: int) -> str:
    return str(checkpoints.path(root, number).relative_to(root))


def _owners(state: LogState) -> dict[tuple[str, str], int]:
    return {(e.run_id, e.path): gen.number for gen in state.best() for e in gen.entries}


def _read_footer(path: Path) -> pq.FileMetaData:
    """A Parquet file's footer; ``OSError`` unless it is a regular file (a named pipe in a schema file's
    place made ``check`` and ``repair`` wait for ever)."""
    with open_regular(path) as f:
        return pq.read_metadata(f)


def _footer_ok(path: Path) -> bool:
    try:
        _read_footer(path)
        return True
    except Exception:
        return False
