"""``check`` names, for a damaged file, the studies that have rows in it: in a bulk load (one part file
per shard and table) not the studies of some other shard of the same run (real loads, real files)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bench import corpus
from tests.conftest import STUDIES_DIR
from tests.test_bulk import load
from warehouse import manifest as manifests
from warehouse.check import check
from warehouse.repair import repair


@pytest.fixture(scope="module")
def changes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    corpus.generate(STUDIES_DIR, 300, out)
    return out


def _ids(path: Path) -> set[str]:
    return set(pq.read_table(path, columns=["nct_id"]).column("nct_id").to_pylist())


@pytest.mark.parametrize("kind", ["delete", "truncate"])
def test_the_studies_affected_by_a_damaged_part_file_are_those_of_its_shard_and_repair_lists_them_lost(
        changes: Path, tmp_path: Path, kind: str) -> None:
    root = (tmp_path / "w").resolve()
    load(changes / "base.zip", root, workers=1)
    load(changes / "changed.zip", root, workers=1)
    second = manifests.read_log(root)[1]
    parts = [e.path for e in second.entries if e.table == "locations" and ".part-" in e.path]
    sizes = {p: len(_ids(root / p)) for p in parts}
    target = max(parts[1:], key=sizes.__getitem__)  # not the run's first part: that one named other studies
    shard = target.rsplit("/", 1)[1].removeprefix("locations")
    written = _ids(root / target.replace(f"locations{shard}", f"study_versions{shard}"))
    holding = _ids(root / target)
    assert holding and written >= holding
    path = root / target
    if kind == "delete":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    [problem] = check(root).problems
    assert problem.path == target
    assert problem.studies is not None
    assert holding <= set(problem.studies) <= written  # those of its shard, never another shard's
    lost = set(repair(root).lost_studies)
    assert set(problem.studies) <= lost


@pytest.mark.parametrize("table", ["study_versions", "run_studies"])
def test_a_damaged_list_of_a_shards_studies_is_answered_from_the_same_shards_other_list(
        changes: Path, tmp_path: Path, table: str) -> None:
    """A deleted ``study_versions`` part: its shard's ``run_studies`` part says which studies (never the
    run's other shards' versions). A deleted ``run_studies`` part: its shard's ``study_versions`` part,
    said to be a lower bound (the run saw studies without a new version too)."""
    root = (tmp_path / "w").resolve()
    load(changes / "base.zip", root, workers=1)
    load(changes / "changed.zip", root, workers=1)
    second = manifests.read_log(root)[1]
    versions = {e.path.rsplit("/", 1)[1].removeprefix("study_versions"): e.path for e in second.entries
                if e.table == "study_versions" and ".part-" in e.path}
    seen = {e.path.rsplit("/", 1)[1].removeprefix("run_studies"): e.path for e in second.entries
            if e.table == "run_studies" and ".part-" in e.path}
    shard = max(set(versions) & set(seen), key=lambda s: len(_ids(root / versions[s])))
    others = set().union(*(_ids(root / p) for s, p in versions.items() if s != shard))
    target, other = (versions[shard], seen[shard]) if table == "study_versions" else (seen[shard], versions[shard])
    expected = _ids(root / other)
    assert expected and not expected & others
    (root / target).unlink()
    [problem] = check(root).problems
    assert problem.path == target
    assert problem.studies is not None and set(problem.studies) == expected
    assert problem.at_least == (table == "run_studies")
    assert ("at least " in problem.line()) == (table == "run_studies")
