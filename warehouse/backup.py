"""``backup``: a consistent copy of the committed warehouse, also while a sync is committing.

It reads the manifest once (a generation is immutable once published, and so are the files it
lists), hard-links (or copies) exactly those files into a new directory beside DEST, writes the
manifest files and a catalog there, renames the directory to DEST and writes the catalog again for
the new place: DEST is a whole warehouse or absent, also after a kill (the temporary directory a
killed backup leaves carries a marker until it is renamed to DEST: the next backup beside it, to any
DEST, removes it once its process is gone). The rename is the backup's
commit point: a SIGINT or SIGTERM after it lets the catalog be written for DEST and the backup return
(the CLI exits 0); only a kill between the two leaves DEST's catalog naming the temporary place, which
the first command at DEST rewrites (DuckDB binds a view to files that exist, so it cannot be written
for DEST before DEST is there). A run that commits
meanwhile is simply not in the copy. If a compaction deletes superseded files during the copy, the
copy starts again from the newer manifest.

Proven and durable when it returns: every file in the copy has the size and the checksum the manifest
recorded at its commit (a hard link shares the source's bytes, so this proves the source too), and
every file the backup wrote and every directory of the copy (and DEST's entry in its parent) is fsynced
before DEST appears, and again after the catalog is written in place.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from pipeline import leftovers
from pipeline.errors import UsageError, WarehouseError
from warehouse import catalog_file, committing
from warehouse import manifest as manifests
from warehouse.manifest import ManifestDamaged
from warehouse.markers import RUNS_DIR, write_marker

ATTEMPTS = 5
BACKUP_TMP_MARKER = ".trialsync-backup-in-progress"  # in a backup's temporary directory until it is whole
_NO_LINK = (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK)


@dataclass(frozen=True)
class BackupResult:
    dest: str
    generation: int
    files: int
    linked: int
    copied: int
    size: int


def backup(root: Path, dest: Path, *, hard_links: bool = True, marker: str = ".trialsync-warehouse") -> BackupResult:
    dest = catalog_file.refuse_pattern_path(dest.expanduser().resolve())
    if dest.exists() or dest.is_symlink():
        raise UsageError(f"{dest} exists; backup writes a new directory")
    if dest == root or root in dest.parents:
        raise UsageError(f"{dest} is inside the warehouse {root}; give a place outside it")
    if not dest.parent.is_dir():
        raise UsageError(f"{dest.parent} is a file, not a directory" if dest.parent.exists()
                         else f"{dest.parent} does not exist")
    _remove_abandoned(dest)
    committing.began()
    for _ in range(ATTEMPTS):
        tmp = leftovers.temporary(dest)
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir()
            (tmp / BACKUP_TMP_MARKER).touch()  # says "a backup's temporary directory": the next backup removes it
            try:
                result = _copy(root, tmp, dest, hard_links)
            except _SourceGone as gone:
                shutil.rmtree(tmp, ignore_errors=True)
                if _generation(root) == gone.generation:  # no commit since: the file is lost, not superseded
                    raise WarehouseError(f"{gone.path} is missing: the warehouse is damaged; nothing was backed "
                                         "up: run `trialsync check`") from None
                continue  # a compaction removed superseded files: start again from the newer manifest
            (tmp / marker).touch()
            # A whole warehouse before it is renamed to DEST, catalog included (its paths, of the temporary
            # place, are rewritten at DEST next; killed in between, the first command at DEST rewrites them).
            log = manifests.read_log(tmp)
            catalog_file.write_catalog(tmp, manifests.fold(log), log, tag="backup")
            _fsync_tree(tmp)
            os.rename(tmp, dest)  # the commit point
        except BaseException as exc:  # nothing of a failed backup stays (a kill leaves it to the next backup)
            if not (isinstance(exc, KeyboardInterrupt) and dest.is_dir() and not tmp.exists()):
                shutil.rmtree(tmp, ignore_errors=True)
                if isinstance(exc, OSError) and not _of_source(exc, root):  # full disk, no permission, ...
                    raise WarehouseError(f"cannot write the backup at {dest}: {exc.strerror or exc}") from None
                raise
            # A signal just after the rename: DEST is whole, and its catalog is rewritten for it below;
            # nothing else begins after it (the command finishes this backup and stops).
            committing.stop_pending = True
        committing.passed(str(dest))  # from here a signal lets the backup finish: DEST is whole
        (dest / BACKUP_TMP_MARKER).unlink(missing_ok=True)  # DEST is no temporary (it never has a .tmp- name)
        catalog_file.fsync_path(dest.parent)
        catalog_file.write_catalog(dest, manifests.fold(log), log, tag="backup")
        _fsync_tree(dest)  # the schema files and directories the catalog write created
        committing.ended()  # DEST is complete: a signal from here interrupts what follows
        return result
    raise WarehouseError(f"the warehouse {root} kept changing under the backup ({ATTEMPTS} attempts); try again")


class _SourceGone(Exception):
    """A file the manifest (of ``generation``) lists is not there: superseded by a commit, or lost."""

    def __init__(self, path: str, generation: int) -> None:
        super().__init__(path)
        self.path, self.generation = path, generation


def _generation(root: Path) -> int:
    """The newest generation on disk now (a listing)."""
    return manifests.head(root)


def _of_source(exc: OSError, root: Path) -> bool:
    """Whether the failed path is the warehouse's (read) rather than the backup's (written)."""
    return exc.filename is not None and Path(os.fsdecode(exc.filename)).is_relative_to(root)


def _remove_abandoned(dest: Path) -> None:
    """The temporary directories of killed backups: to DEST, and to any other place beside it (a dated
    backup each night names a new DEST: a killed one's directory was never removed, one more after
    each kill). Another place's only when it carries the backup's marker and its process is gone."""
    leftovers.remove_abandoned(dest, directories=True)
    for leftover in dest.parent.glob(".*.tmp-*"):
        if (leftover / BACKUP_TMP_MARKER).is_file() and not leftover.is_symlink() and leftovers.writer_gone(leftover):
            shutil.rmtree(leftover, ignore_errors=True)


def _copy(root: Path, tmp: Path, dest: Path, hard_links: bool) -> BackupResult:
    try:
        log = manifests.read_log(root)
    except ManifestDamaged as exc:
        raise WarehouseError(f"{exc}: run `trialsync repair` before a backup") from None
    if not log:
        runs = root / RUNS_DIR
        if runs.is_dir() and any(runs.iterdir()):  # runs, but no manifest file: manifest/ is lost or unreadable
            raise WarehouseError(f"{manifests.directory(root)} has no manifest file: the warehouse is damaged; "
                                 "run `trialsync repair` (it writes them again from their copies) before a backup")
        raise WarehouseError(f"{root} has no committed run to back up (or its manifest is not migrated yet)")
    state = manifests.fold(log)
    linked = copied = size = 0
    for entry in state.entries:
        source, target = root / entry.path, tmp / entry.path
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            if not stat.S_ISREG(os.stat(source).st_mode):  # a pipe: copied, it waited for ever; a device, read
                # without end (committed files are never replaced, only removed: no race with the look)
                raise WarehouseError(f"{entry.path} is not a regular file: the warehouse is damaged; nothing was "
                                     "backed up: run `trialsync check`")
            if hard_links and _link(source, target):
                linked += 1
            else:
                shutil.copyfile(source, target)
                copied += 1
            size += _verify(target, entry)
        except OSError as exc:
            # DEST's side (full disk, a parent that takes no dirs): the caller says. A link loop hard-linked
            # as itself fails on the copy's side when it is read: that is the source's too.
            if not _of_source(exc, root) and not target.is_symlink():
                raise
            if isinstance(exc, FileNotFoundError) and not source.is_symlink():
                raise _SourceGone(entry.path, state.generation) from None
            # a directory or a link loop where the file should be, a file it may not read, an I/O error
            raise WarehouseError(f"{entry.path} cannot be read: {exc.strerror or exc}: the warehouse is damaged "
                                 "(or not readable to you); nothing was backed up: run `trialsync check`") from None
    folder = manifests.directory(tmp)
    folder.mkdir(parents=True)
    for gen in log:
        manifests.generation_path(tmp, gen.number).write_bytes(gen.to_bytes())
    for gen in log:  # each run's marker, as its writer left it (merged runs too): lost the catalog and the
        run_dir = tmp / RUNS_DIR / gen.run_id  # newest manifest file, repair restores from it, rolls back nothing
        run_dir.mkdir(parents=True, exist_ok=True)
        write_marker(run_dir, gen)
    return BackupResult(str(dest), state.generation, len(state.entries), linked, copied, size)


def _verify(target: Path, entry: manifests.ManifestEntry) -> int:
    """The copy's size, once its size and checksum are the ones recorded at commit."""
    actual = target.stat().st_size
    if entry.size is not None and actual != entry.size:
        raise WarehouseError(f"{entry.path} has {actual} bytes, {entry.size} at commit: the warehouse is damaged; "
                             "nothing was backed up: run `trialsync check`")
    if entry.checksum is not None and manifests.file_checksum(target) != entry.checksum:
        raise WarehouseError(f"{entry.path}: checksum differs from the one recorded at commit: the warehouse is "
                             "damaged; nothing was backed up: run `trialsync check`")
    return actual


def _fsync_tree(top: Path) -> None:
    """fsync every file the backup wrote under ``top`` (a hard-linked file is durable since its commit),
    then every directory, deepest first, ``top`` last."""
    directories = []
    for current, _, names in os.walk(top):
        directories.append(Path(current))
        for name in names:
            path = Path(current) / name
            if path.stat().st_nlink == 1:
                catalog_file.fsync_path(path)
    for directory in reversed(directories):
        catalog_file.fsync_path(directory)


def _link(source: Path, target: Path) -> bool:
    try:
        os.link(source, target)
        return True
    except OSError as exc:
        if exc.errno in _NO_LINK:
            return False
        raise
