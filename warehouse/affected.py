"""What damage to committed files means: which studies a damaged file affects (``check`` names them
beside the file), and how far ``repair`` must roll back for it (``check``'s hint says the same)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath

import pyarrow.parquet as pq

from warehouse import manifest as manifests
from warehouse.manifest import Generation, Manifest, ManifestEntry
from warehouse.tables import TABLES


def studies_affected(root: Path, manifest: Manifest, entry: ManifestEntry) -> tuple[tuple[str, ...] | None, bool]:
    """(the studies a damaged file holds rows of, whether that is only a lower bound): from its own nct_id
    column if that still reads, else the studies its run listed beside it. A bulk load writes
    ``<table>.part-<key>.parquet`` per shard: then only the same shard's other parts (``study_versions``,
    then ``run_studies``), never a run-wide list that holds other shards' studies. ``run_studies`` lists
    every study the run saw, ``study_versions`` only those with a new version: a damaged ``run_studies``
    file is answered from ``study_versions`` as a lower bound."""
    if "nct_id" not in TABLES[entry.table].names:
        return (), False
    found = _nct_ids(root, [entry.path])
    if found is not None:
        return found, False
    name = PurePosixPath(entry.path).name
    shard = name[len(entry.table):] if name.startswith(f"{entry.table}.part-") else None
    for table in ("study_versions", "run_studies"):
        files = [e.path for e in manifest.entries if e.run_id == entry.run_id and e.table == table
                 and e.path != entry.path]
        group = [f for f in files if PurePosixPath(f).name == f"{table}{shard}"] if shard is not None else files
        if group and (found := _nct_ids(root, group)) is not None:
            if entry.table != "run_studies":
                return found, False
            return (found, True) if found else (None, False)  # none with a new version: the rest unknown
    return None, False


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
