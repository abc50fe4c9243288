"""Which studies a damaged committed file affects (``check`` names them beside the file)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import pyarrow.parquet as pq

from warehouse.manifest import Manifest, ManifestEntry
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
