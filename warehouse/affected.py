"""What damage to committed files means: which studies a damaged file affects (``check`` names them
beside the file), and how far ``repair`` must roll back for it (``check``'s hint says the same)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath

import pyarrow.parquet as pq

from warehouse import manifest as manifests
from warehouse.manifest import Generation, Manifest, ManifestEntry
from warehouse.tables import TABLES


def studies_affected(root: Path, manifest: Manifest, entry: ManifestEntry) -> tuple[str, ...] | None:
    """The studies a damaged file holds rows of: from its own nct_id column if that still reads, else
    the studies whose versions its run wrote beside it: the same shard's ``study_versions`` part (a
    bulk load writes ``<table>.part-<key>.parquet`` per shard), else all of the run's (never one other
    shard's), then its ``run_studies`` the same way."""
    if "nct_id" not in TABLES[entry.table].names:
        return ()
    found = _nct_ids(root, [entry.path])
    if found is not None:
        return found
    name = PurePosixPath(entry.path).name
    shard = name[len(entry.table):] if name.startswith(f"{entry.table}.part-") else None
    for table in ("study_versions", "run_studies"):
        files = [e.path for e in manifest.entries if e.run_id == entry.run_id and e.table == table
                 and e.path != entry.path]
        same = [f for f in files if shard is not None and PurePosixPath(f).name == f"{table}{shard}"]
        for group in (same, files):
            if group and (found := _nct_ids(root, group)) is not None:
                return found
    return None


def _nct_ids(root: Path, paths: Sequence[str]) -> tuple[str, ...] | None:
    """The studies with rows in ``paths`` (None: one of them does not read)."""
    studies: set[str] = set()
    for rel in paths:
        try:
            column = pq.read_table(root / rel, columns=["nct_id"]).column("nct_id")
        except Exception:
            return None
        studies.update(str(v) for v in column.to_pylist() if v is not None)
    return tuple(sorted(studies))


def rollback_target(log: Sequence[Generation], intact: Callable[[ManifestEntry], bool]) -> tuple[int | None, int]:
    """(how many generations stay, the first damaged one): all if every committed file is intact;
    otherwise the last state before the first damaged generation whose files are all there and intact;
    None when none is (the first run's files, or a merge that holds them, are damaged)."""
    owner = {(e.run_id, e.path): g.number for g in log for e in g.entries}
    bad = [owner.get((e.run_id, e.path), 1) for e in manifests.fold(log).entries if not intact(e)]
    if not bad:
        return len(log), 0
    first_bad = min(bad)
    for target in range(first_bad - 1, 0, -1):
        if all(intact(e) for e in manifests.fold(log[:target]).entries):
            return target, first_bad
    return None, first_bad


def unrepairable(log: Sequence[Generation], known: dict[str, bool], recheck: Callable[[ManifestEntry], bool]
                 ) -> int | None:
    """The first damaged generation when no earlier committed state is intact (``repair`` then refuses
    and says to restore a backup). ``known``: each checked file's path -> intact; ``recheck`` judges
    the others (files a merge superseded)."""
    def intact(entry: ManifestEntry) -> bool:
        if entry.path not in known:
            known[entry.path] = recheck(entry)
        return known[entry.path]

    target, first_bad = rollback_target(log, intact)
    return first_bad if target is None else None
