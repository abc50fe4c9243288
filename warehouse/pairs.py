"""Read consecutive stored versions as ``VersionPair``s, in bounded batches (for change derivation).

Memory does not grow with the number of pairs (a 2%-changed reload of the whole registry pairs 12,000
versions of ~18 KB of JSON each; a ``rederive`` pairs every stored version):
1. *marks*: the pairs (each selected version and its predecessor), found from the cheap columns
   alone (``nct_id``, ``version``, ``run_id``; no ``raw``);
2. *stream*: just those rows in storage order, ``raw`` only where a diff reads it; no sort and no
   join holds old and new JSON side by side (DuckDB cannot sort long strings past its memory limit).
   The first row of a pair to arrive waits in a temporary file until its partner does.
"""

from __future__ import annotations

import pickle
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import duckdb
import orjson
import pyarrow as pa

from pipeline.changes import VersionPair, version_identity
from pipeline.errors import WarehouseError
from warehouse.catalog import version_locations_sql, version_rows_sql
from warehouse.manifest import Manifest
from warehouse.run_writer import SYNCED

# One row per pair: the selected version's key and its predecessor's (NULL for a study's first).
_MARKS = """
WITH loc AS ({locations}), sel AS (SELECT nct_id, version, {keys} FROM loc {where})
SELECT s.k1 AS new_k1, s.k2 AS new_k2, p.k1 AS old_k1, p.k2 AS old_k2, s.version AS new_version
FROM sel AS s LEFT JOIN (SELECT nct_id, version, {keys} FROM loc) AS p
  ON p.nct_id = s.nct_id AND p.version = s.version - 1
"""

# The rows the pairs name; ``raw`` unless the row is only a study's first version (whose diff reads
# its title alone, so a bulk load's 600,000 first versions cost no JSON parsing).
_STREAM = """
SELECT t.nct_id, t.version, t.run_id, t.observed_at, t.registry_updated, t.source, t.is_removed,
       t.content_hash, t.brief_title, CASE WHEN n.need_raw THEN t.raw END AS raw, n.k1, n.k2
FROM ({rows}) AS t JOIN _pair_needs AS n ON n.k1 = t.{k1} AND n.k2 = t.{k2}
"""

# Rows of the located files (``source`` given) are keyed by position; otherwise by study and version.
_BY_POSITION = ("_file", "_row")
_BY_VERSION = ("nct_id", "version")


def pair_rows(con: duckdb.DuckDBPyConnection, root: Path, manifest: Manifest,
              run_id: str) -> tuple[list[str], pa.Table]:
    """The files holding ``run_id``'s versions or their predecessors, and the pairs (``_MARKS``): a run's
    change derivation reads only its own pairs' rows, not every stored version's JSON."""
    marks = _marks(con, (root, manifest), ["run_id = ?"], [run_id])
    return _files(marks), marks


def _files(marks: pa.Table) -> list[str]:
    return sorted({*marks.column("new_k1").to_pylist(), *filter(None, marks.column("old_k1").to_pylist())})


def _marks(con: duckdb.DuckDBPyConnection, source: tuple[Path, Manifest] | None,
           where: list[str], params: list[object]) -> pa.Table:
    k1, k2 = _BY_POSITION if source is not None else _BY_VERSION
    locations = (version_locations_sql(*source) if source is not None
                 else "SELECT nct_id, version, run_id FROM raw_study_versions")
    sql = _MARKS.format(locations=locations, keys=f"{k1} AS k1, {k2} AS k2",
                        where=("WHERE " + " AND ".join(where)) if where else "")
    return con.sql(sql, params=params or None).to_arrow_table()


def _needs(marks: pa.Table) -> pa.Table:
    """Each row the pairs name once, with whether its JSON is read (a predecessor's always, a selected
    version's unless it is a first version)."""
    need: dict[tuple[Any, Any], bool] = {}
    for new1, new2, old1, old2, version in zip(*(marks.column(c).to_pylist() for c in marks.column_names),
                                               strict=True):
        need[(new1, new2)] = need.get((new1, new2), False) or old1 is not None or version > 1
        if old1 is not None:
            need[(old1, old2)] = True
    keys = list(need)
    return pa.table({"k1": [k[0] for k in keys], "k2": [k[1] for k in keys], "need_raw": list(need.values())},
                    schema=pa.schema([("k1", marks.schema.field("new_k1").type),
                                      ("k2", marks.schema.field("new_k2").type), ("need_raw", pa.bool_())]))


def version_pairs(con: duckdb.DuckDBPyConnection, *, run_id: str | None = None,
                  baseline_runs: frozenset[str] = frozenset(), batch_size: int = 200,
                  nct_ids: Sequence[str] | None = None, source: tuple[Path, Manifest] | None = None,
                  spill_dir: Path | None = None) -> Iterator[list[VersionPair]]:
    """Each stored version with its predecessor; only ``run_id``'s versions, or ``nct_ids``' when given.
    Pairs come in storage order, not sorted.

    ``source`` (the warehouse root and the manifest ``con`` was built from): read only the files and
    rows of the pairs; without it, the same rows through ``raw_study_versions``. ``spill_dir``: where
    the rows waiting for their partner are kept (a temporary file, gone when the iteration ends).

    A first version from the registry's history (source ``history``) is, like a scope's first run, not
    news: no ``study_added``.
    """
    where: list[str] = []
    params: list[object] = []
    if run_id:
        where.append("run_id = ?")
        params.append(run_id)
    if nct_ids is not None:
        where.append("nct_id IN (SELECT unnest(CAST(? AS VARCHAR[])))")
        params.append(list(nct_ids))
    marks = _marks(con, source, where, params)
    if source is not None:
        rows, (k1, k2) = version_rows_sql(source[0], _files(marks)), _BY_POSITION
    else:
        rows, (k1, k2) = "SELECT * FROM raw_study_versions", _BY_VERSION
    con.register("_pair_needs", _needs(marks))
    try:
        reader = con.sql(_STREAM.format(rows=rows, k1=k1, k2=k2)).to_arrow_reader(batch_size)
        with tempfile.TemporaryFile(dir=spill_dir) as spill:
            yield from _paired(reader, _Pairing(marks), _Spill(spill), baseline_runs, batch_size)
    finally:
        con.unregister("_pair_needs")


class _Pairing:
    """Which pairs each row belongs to, as the new or the old side."""

    def __init__(self, marks: pa.Table) -> None:
        self.roles: dict[tuple[Any, Any], list[tuple[int, bool]]] = {}
        self.has_old: list[bool] = []
        columns = (marks.column(c).to_pylist() for c in ("new_k1", "new_k2", "old_k1", "old_k2"))
        for index, (new1, new2, old1, old2) in enumerate(zip(*columns, strict=True)):
            self.roles.setdefault((new1, new2), []).append((index, True))
            self.has_old.append(old1 is not None)
            if old1 is not None:
                self.roles.setdefault((old1, old2), []).append((index, False))


class _Spill:
    """Rows waiting for their partner, pickled to a temporary file; memory holds only their offsets."""

    def __init__(self, file: IO[bytes]) -> None:
        self.file = file
        self.waiting: dict[int, tuple[int, int]] = {}  # pair -> (offset, length) of the row that came first

    def park(self, pair: int, row: dict[str, Any], at: tuple[int, int] | None) -> tuple[int, int]:
        if at is None:
            data = pickle.dumps(row, protocol=pickle.HIGHEST_PROTOCOL)
            self.file.seek(0, 2)
            at = (self.file.tell(), len(data))
            self.file.write(data)
        self.waiting[pair] = at
        return at

    def take(self, pair: int) -> dict[str, Any] | None:
        at = self.waiting.pop(pair, None)
        if at is None:
            return None
        self.file.seek(at[0])
        row: dict[str, Any] = pickle.loads(self.file.read(at[1]))
        return row


def _paired(reader: Any, pairing: _Pairing, spill: _Spill, baseline_runs: frozenset[str],
            batch_size: int) -> Iterator[list[VersionPair]]:
    out: list[VersionPair] = []
    for batch in reader:
        for row in batch.to_pylist():
            parked: tuple[int, int] | None = None
            for pair, is_new in pairing.roles.get((row.pop("k1"), row.pop("k2")), ()):
                if is_new and not pairing.has_old[pair]:
                    out.append(_pair(None, row, baseline_runs))
                elif (other := spill.take(pair)) is not None:
                    out.append(_pair(other, row, baseline_runs) if is_new else _pair(row, other, baseline_runs))
                else:
                    parked = spill.park(pair, row, parked)
            if len(out) >= batch_size:
                yield out
                out = []
    if spill.waiting:  # both rows come from one catalog: a pair left half means a damaged read
        raise WarehouseError(f"{len(spill.waiting)} version pair(s) found only one of their two rows")
    if out:
        yield out


def _pair(old: dict[str, Any] | None, new: dict[str, Any], baseline_runs: frozenset[str]) -> VersionPair:
    if old is None and new["version"] <= 1:  # a first version: its title is all a diff reads
        new_raw: Any = {"protocolSection": {"identificationModule": {"briefTitle": new["brief_title"]}}}
    else:
        new_raw = orjson.loads(new["raw"]) if new["raw"] else None
    return VersionPair(
        nct_id=new["nct_id"], from_version=old["version"] if old else None, to_version=new["version"],
        old_raw=orjson.loads(old["raw"]) if old and old["raw"] else None, new_raw=new_raw,
        run_id=new["run_id"], detected_at=new["observed_at"], registry_updated=new["registry_updated"],
        old_removed=bool(old and old["is_removed"]), new_removed=new["is_removed"],
        baseline=new["run_id"] in baseline_runs or new["source"] == "history",
        old_identity=None if old is None else version_identity(old["content_hash"], old["is_removed"],
                                                                  old["observed_at"]),
        new_identity=version_identity(new["content_hash"], new["is_removed"], new["observed_at"]),
    )


def baseline_runs(con: duckdb.DuckDBPyConnection) -> frozenset[str]:
    """The first successful run of each scope: its studies' first versions are not news."""
    rows = con.execute(
        f"SELECT arg_min(run_id, started_at) FROM raw_sync_runs WHERE {SYNCED} GROUP BY scope"
    ).fetchall()
    return frozenset(r[0] for r in rows)
