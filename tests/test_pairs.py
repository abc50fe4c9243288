"""Version pairs for change derivation: the streamed pairing equals a plain self-join of the versions."""

from __future__ import annotations

import copy
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline import mutate
from pipeline.changes import VersionPair
from pipeline.registry.fake_server import FakeRegistry
from tests.conftest import fast_sync, nct
from warehouse import Warehouse, autocompact
from warehouse.pairs import version_pairs

# Written apart from warehouse.pairs: every version joined to the one before it, in one query.
_REFERENCE = """
SELECT n.nct_id, o.version, n.version, o.raw, n.raw, n.run_id, o.is_removed, n.is_removed
FROM raw_study_versions n LEFT JOIN raw_study_versions o ON o.nct_id = n.nct_id AND o.version = n.version - 1
"""


def _expected(con: Any, where: str = "", params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    rows = con.execute(_REFERENCE + where, params or []).fetchall()
    return sorted(((n, ov, nv, orjson.loads(oraw) if oraw else None,
                    orjson.loads(nraw) if (nraw and (ov is not None or nv > 1)) else "first", run, bool(orem), nrem)
                   for n, ov, nv, oraw, nraw, run, orem, nrem in rows), key=_by_study_version)


def _got(pairs: list[list[VersionPair]]) -> list[tuple[Any, ...]]:
    return sorted(((p.nct_id, p.from_version, p.to_version, p.old_raw,
                   p.new_raw if (p.from_version is not None or p.to_version > 1) else "first",
                   p.run_id, p.old_removed, p.new_removed) for batch in pairs for p in batch), key=_by_study_version)


def _by_study_version(row: tuple[Any, ...]) -> tuple[str, int]:
    return row[0], row[2]


@pytest.fixture(scope="module")
def built(prefect_api: str, records: list[dict[str, Any]], tmp_path_factory: pytest.TempPathFactory,
          ) -> tuple[Path, list[str]]:
    """Twelve studies, three of them changed in each of three later runs (each run its own file set);
    built once, read only."""
    directory = tmp_path_factory.mktemp("pairs") / "warehouse"
    studies = [copy.deepcopy(r) for r in records[:12]]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(autocompact.ENV, "off")
        with FakeRegistry(studies).start() as registry:
            runs = [fast_sync(registry, directory)["run_id"]]
            for day, picked in enumerate([(0, 1, 2), (1, 2, 3), (2, 5, 7)], start=1):
                for i in picked:
                    studies[i] = mutate.posted_on(mutate.set_enrollment(studies[i], 100 * day + i), date(2030, 1, day))
                    registry.put(studies[i])
                runs.append(fast_sync(registry, directory)["run_id"])
    return directory, runs


@pytest.fixture
def warehouse_dir(built: tuple[Path, list[str]]) -> Path:
    return built[0]


@pytest.fixture
def history(built: tuple[Path, list[str]]) -> list[str]:
    return built[1]


def test_each_runs_pairs_equal_the_self_join_of_its_versions(warehouse_dir: Path, history: list[str]) -> None:
    store = Warehouse(warehouse_dir)
    manifest = store.manifest()
    with store.committed() as con:
        for run_id in history:
            expected = _expected(con, "WHERE n.run_id = ?", [run_id])
            got = _got(list(version_pairs(con, run_id=run_id, source=(store.root, manifest),
                                          batch_size=2, spill_dir=warehouse_dir)))
            assert got == expected
            assert _got(list(version_pairs(con, run_id=run_id))) == expected
        assert len(_expected(con, "WHERE n.run_id = ?", [history[3]])) == 3


def test_every_version_and_a_studys_versions_pair_with_their_predecessors(
        warehouse_dir: Path, history: list[str], records: list[dict[str, Any]]) -> None:
    store = Warehouse(warehouse_dir)
    manifest = store.manifest()
    twice = [nct(records[1]), nct(records[2])]  # versions 1-3 and 1-4: a middle version is old and new
    with store.committed() as con:
        everything = _expected(con)
        assert len(everything) == 12 + 9
        assert _got(list(version_pairs(con, source=(store.root, manifest), batch_size=3))) == everything
        assert _got(list(version_pairs(con))) == everything
        some = _expected(con, "WHERE n.nct_id IN (?, ?)", twice)
        assert [row[2] for row in some] == [1, 2, 3, 1, 2, 3, 4]
        assert _got(list(version_pairs(con, nct_ids=twice, source=(store.root, manifest)))) == some



def test_a_full_disk_under_the_spill_file_surfaces_as_itself_not_as_a_duckdb_error(
        warehouse_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The open result used to make the cleanup's unregister fail, and that DuckDB error replaced the
    real one: a user saw "connection has an open result" instead of "No space left on device"."""
    import errno

    import warehouse.pairs as pairs

    def full(*args: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pairs._Spill, "park", full)
    store = Warehouse(warehouse_dir)
    with store.committed() as con:
        with pytest.raises(OSError, match="No space left on device"):
            list(version_pairs(con, source=(store.root, store.manifest()), batch_size=2))
        assert con.sql("SELECT count(*) FROM study_versions").fetchall()[0][0] > 0  # the connection still works
