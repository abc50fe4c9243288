"""Read consecutive stored versions as ``VersionPair``s, in bounded batches (for change derivation).

Memory does not grow with the number of pairs (a 2%-changed reload of the whole registry pairs 12,000
versions of ~18 KB of JSON each; a ``rederive`` pairs every stored version):
1. *roles*: every row a pair needs, with its roles (the new side of pair ``new_pair``, the old side of
   pair ``old_pair``: a middle version is both), found in SQL from the cheap columns alone
   (``nct_id``, ``version``, ``run_id``; no ``raw``);
2. *stream*: just those rows in storage order, ``raw`` only where a diff reads it; no sort and no
   join holds old and new JSON side by side (DuckDB cannot sort long strings past its memory limit).
   The first row of a pair to arrive waits in a temporary file until its partner does.
"""

from __future__ import annotations

import pickle
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from datetime import date, timedelta
from pathlib import Path
from typing import IO, Any

import duckdb
import orjson
import pyarrow as pa

from pipeline.changes import VersionPair, version_identity
from pipeline.errors import WarehouseError
from warehouse.catalog import version_locations_sql, version_rows_sql
from warehouse.manifest import Manifest
from warehouse.run_writer import SYNCED, commit_order

# A scope's first run: run id -> the day from which a study first posted is news all the same (None: no
# first version is news), see ``baseline_runs``.
Baselines = Mapping[str, date | None]
FIRST_POSTED_LAG = timedelta(days=1)

# Each needed row once (``k1``, ``k2``: its key), with its roles. A pair is numbered by its new side's
# row. ``need_raw``: a predecessor's JSON is always read, a selected version's unless it is a study's
# first (whose diff reads its title alone: a bulk load's 600,000 first versions cost no JSON parsing).
_ROLES = """
WITH loc AS ({locations}),
sel AS (SELECT nct_id, version, {keys}, row_number() OVER () AS pair FROM loc {where}),
pairs AS (
  SELECT s.k1, s.k2, s.pair, s.version, p.k1 AS old_k1, p.k2 AS old_k2
  FROM sel AS s LEFT JOIN (SELECT nct_id, version, {keys} FROM loc) AS p
    ON p.nct_id = s.nct_id AND p.version = s.version - 1),
roles AS (
  SELECT k1, k2, pair AS new_pair, NULL::BIGINT AS old_pair, old_k1 IS NOT NULL AS has_old,
         old_k1 IS NOT NULL OR version > 1 AS need_raw FROM pairs
  UNION ALL
  SELECT old_k1, old_k2, NULL, pair, false, true FROM pairs WHERE old_k1 IS NOT NULL)
SELECT k1, k2, max(new_pair) AS new_pair, max(old_pair) AS old_pair, bool_or(has_old) AS has_old,
       bool_or(need_raw) AS need_raw
FROM roles GROUP BY k1, k2
"""

_STREAM = """
SELECT t.nct_id, t.version, t.run_id, t.observed_at, t.registry_updated, t.source, t.is_removed,
       t.content_hash, t.brief_title, t.first_posted, CASE WHEN n.need_raw THEN t.raw END AS raw,
       n.new_pair, n.old_pair, n.has_old
FROM ({rows}) AS t JOIN _pair_roles AS n ON n.k1 = t.{k1} AND n.k2 = t.{k2}
"""

# Rows of the located files (``source`` given) are keyed by position; otherwise by study and version.
_BY_POSITION = ("_file", "_row")
_BY_VERSION = ("nct_id", "version")


def pair_rows(con: duckdb.DuckDBPyConnection, root: Path, manifest: Manifest,
              run_id: str) -> tuple[list[str], pa.Table]:
    """The files holding ``run_id``'s versions or their predecessors, and the rows' roles (``_ROLES``):
    a run's change derivation reads only its own pairs' rows, not every stored version's JSON."""
    roles = _roles(con, (root, manifest), ["run_id = ?"], [run_id])
    return _files(roles), roles


def _files(roles: pa.Table) -> list[str]:
    return sorted(roles.column("k1").unique().to_pylist())


def _roles(con: duckdb.DuckDBPyConnection, source: tuple[Path, Manifest] | None,
           where: list[str], params: list[object]) -> pa.Table:
    k1, k2 = _BY_POSITION if source is not None else _BY_VERSION
    locations = (version_locations_sql(*source) if source is not None
                 else "SELECT nct_id, version, run_id FROM raw_study_versions")
    sql = _ROLES.format(locations=locations, keys=f"{k1} AS k1, {k2} AS k2",
                        where=("WHERE " + " AND ".join(where)) if where else "")
    return con.sql(sql, params=params or None).to_arrow_table()


def version_pairs(con: duckdb.DuckDBPyConnection, *, run_id: str | None = None,
                  baseline_runs: Baselines | None = None, batch_size: int = 200,
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
    roles = _roles(con, source, where, params)
    if source is not None:
        rows, (k1, k2) = version_rows_sql(source[0], _files(roles)), _BY_POSITION
    else:
        rows, (k1, k2) = "SELECT * FROM raw_study_versions", _BY_VERSION
    con.register("_pair_roles", roles)
    reader = None
    try:
        reader = con.sql(_STREAM.format(rows=rows, k1=k1, k2=k2)).to_arrow_reader(batch_size)
        with tempfile.TemporaryFile(dir=spill_dir) as spill:
            yield from _paired(reader, _Spill(spill), baseline_runs or {}, batch_size)
    finally:
        # The open result first: while it is open DuckDB refuses to unregister, and that error used to
        # replace the one that stopped the stream (e.g. a full disk under the spill file).
        if reader is not None:
            reader.close()
        con.unregister("_pair_roles")


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


def _paired(reader: Any, spill: _Spill, baseline_runs: Baselines, batch_size: int) -> Iterator[list[VersionPair]]:
    out: list[VersionPair] = []
    for batch in reader:
        for row in batch.to_pylist():
            new_pair, old_pair, has_old = row.pop("new_pair"), row.pop("old_pair"), row.pop("has_old")
            parked: tuple[int, int] | None = None
            if new_pair is not None:  # this row is a pair's new side
                if not has_old:
                    out.append(_pair(None, row, baseline_runs))
                elif (old := spill.take(new_pair)) is not None:
                    out.append(_pair(old, row, baseline_runs))
                else:
                    parked = spill.park(new_pair, row, parked)
            if old_pair is not None:  # and (or) the next version's old side
                if (new := spill.take(old_pair)) is not None:
                    out.append(_pair(row, new, baseline_runs))
                else:
                    parked = spill.park(old_pair, row, parked)
            if len(out) >= batch_size:
                yield out
                out = []
    if spill.waiting:  # both rows come from one catalog: a pair left half means a damaged read
        raise WarehouseError(f"{len(spill.waiting)} version pair(s) found only one of their two rows")
    if out:
        yield out


def _pair(old: dict[str, Any] | None, new: dict[str, Any], baseline_runs: Baselines) -> VersionPair:
    if old is None and new["version"] <= 1:  # a first version: its title is all a diff reads
        new_raw: Any = {"protocolSection": {"identificationModule": {"briefTitle": new["brief_title"]}}}
    else:
        new_raw = orjson.loads(new["raw"]) if new["raw"] else None
    return VersionPair(
        nct_id=new["nct_id"], from_version=old["version"] if old else None, to_version=new["version"],
        old_raw=orjson.loads(old["raw"]) if old and old["raw"] else None, new_raw=new_raw,
        run_id=new["run_id"], detected_at=new["observed_at"], registry_updated=new["registry_updated"],
        old_removed=bool(old and old["is_removed"]), new_removed=new["is_removed"],
        baseline=new["source"] == "history" or (new["run_id"] in baseline_runs and not _new_to_the_registry(
            new.get("first_posted"), baseline_runs[new["run_id"]])),
        old_identity=None if old is None else version_identity(old["content_hash"], old["is_removed"],
                                                                  old["observed_at"]),
        new_identity=version_identity(new["content_hash"], new["is_removed"], new["observed_at"]),
    )


def _new_to_the_registry(first_posted: date | None, news_from: date | None) -> bool:
    """Whether a study a baseline run stores first is news all the same: the warehouse had runs before
    (of other scopes; heads are shared, so no later run will see it as new) and the registry first
    posted it since the newest of them began (less ``FIRST_POSTED_LAG``: a study can be listed a day
    after the date it was posted on)."""
    return news_from is not None and first_posted is not None and first_posted >= news_from - FIRST_POSTED_LAG


def baseline_runs(con: duckdb.DuckDBPyConnection, root: Path) -> dict[str, date | None]:
    """The first successful run of each scope (its studies' first versions are not news), each with
    the day the warehouse's newest earlier run began (None for the warehouse's first run): a study first
    posted since then is news even in a scope's first run (``_new_to_the_registry``).

    ``root``: the warehouse's, whose manifest gives the commit order (``commit_order``): "first" and
    "earlier" are by commit, not by any clock (a scope's first run made while the host's clock was ahead
    is still its first: by ``started_at`` its second run was, and rederiving made every study of the first a
    ``study_added``); an earlier run's start counts no later than the run's own."""
    with commit_order(con, root) as position:
        rows = con.execute(f"""
            WITH ok AS (SELECT s.run_id, s.scope, s.started_at, {position} AS position
                        FROM raw_sync_runs AS s LEFT JOIN _commit_order AS o USING (run_id)
                        WHERE {SYNCED} AND {position} IS NOT NULL),
            firsts AS (SELECT arg_min(run_id, position) AS run_id, min(position) AS position,
                              arg_min(started_at, position) AS started_at FROM ok GROUP BY scope)
            SELECT f.run_id, (SELECT CAST(timezone('UTC', max(least(o.started_at, f.started_at))) AS DATE)
                              FROM ok AS o WHERE o.position < f.position) FROM firsts AS f""").fetchall()
    return {run_id: day for run_id, day in rows}
