"""Issue 17: a bulk reload skips members whose bytes the warehouse already holds (size and CRC-32 from
the zip's directory, stored with each version), yet sees every change of bytes, also the material ones
that do not move ``lastUpdatePostDate``; a sampled re-hash and ``--verify`` check the shortcut."""

from __future__ import annotations

import json
import shutil
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest

from bench import corpus
from flows.bulk import run_load_bulk
from flows.shards import ShardJob, process_shard
from pipeline import hashing, mutate
from pipeline.registry.bulk import BulkArchive
from pipeline.versioning import RunContext
from tests.conftest import STUDIES_DIR, load
from warehouse import Warehouse
from warehouse.heads import HEAD_SCHEMA, HEADS_SQL, HeadIndex

pytestmark = pytest.mark.usefixtures("prefect_api")
SIZE = 300


def query(warehouse_dir: Path, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    with Warehouse(warehouse_dir).connect() as con:
        return con.execute(sql, params or []).fetchall()


def load_bulk(source: Path, warehouse_dir: Path, workers: int = 1, **kwargs: Any) -> dict[str, Any]:
    return run_load_bulk(dict(source=str(source), warehouse=str(warehouse_dir), lock_timeout=5.0, **kwargs),
                         workers=workers)


def run_params(warehouse_dir: Path, run_id: str) -> dict[str, str]:
    (params,) = query(warehouse_dir, "SELECT params FROM sync_runs WHERE run_id = ?", [run_id])[0]
    result: dict[str, str] = json.loads(params)
    return result


def rewrite(source: Path, target: Path, edit: Callable[[str, bytes], bytes]) -> Path:
    """``source`` member by member, each through ``edit`` (untouched members keep their bytes)."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, edit(info.filename, zin.read(info)))
    return target


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    corpus.generate(STUDIES_DIR, SIZE, out)
    return out / "base.zip"


@pytest.fixture(scope="module")
def first_load(base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    warehouse_dir = tmp_path_factory.mktemp("first") / "wh"
    first = load_bulk(base, warehouse_dir)
    assert first["versions_written"] == SIZE
    assert run_params(warehouse_dir, first["run_id"])["unread"] == "0"
    return warehouse_dir


@pytest.fixture
def loaded(first_load: Path, tmp_path: Path) -> Path:
    """A copy of the first load's warehouse (each test reloads into its own)."""
    return Path(shutil.copytree(first_load, tmp_path / "wh"))


def planted_heads(base: Path, warehouse_dir: Path) -> tuple[str, pa.Table, pa.Table]:
    """The first shard of ``base``: its key, its members, and its stored heads with the first head's
    hash replaced by one no record has."""
    key, members = next(iter(BulkArchive.open(base).shards.items()))
    with Warehouse(warehouse_dir).connect() as con:
        heads = HeadIndex(con.sql(HEADS_SQL).to_arrow_table()).shards()[key]
    hashes = heads["content_hash"].to_pylist()
    hashes[0] = "0" * 32
    index = heads.schema.get_field_index("content_hash")
    return key, members, heads.set_column(index, HEAD_SCHEMA.field("content_hash"), pa.array(hashes, pa.string()))


def _target(base: Path) -> tuple[str, dict[str, Any]]:
    """A member of ``base`` with no submissionTracking, and its record."""
    with zipfile.ZipFile(base) as zf:
        for info in zf.infolist():
            record = orjson.loads(zf.read(info))
            if "submissionTracking" not in record.get("derivedSection", {}).get("miscInfoModule", {}):
                return info.filename, record
    raise AssertionError("no member without submissionTracking")


def test_a_reload_of_an_unchanged_zip_reads_no_member_but_the_sample_and_writes_nothing(
        base: Path, loaded: Path) -> None:
    summary = load_bulk(base, loaded, workers=2)  # in worker processes
    params = run_params(loaded, summary["run_id"])
    assert (summary["studies_seen"], summary["versions_written"], summary["unchanged"]) == (SIZE, 0, SIZE)
    assert int(params["unread"]) + int(params["sampled"]) == SIZE
    assert int(params["unread"]) >= SIZE * 0.9
    assert (params["sample_mismatches"], params["verify"], params["verified_shards"]) == ("0", "false", "0")
    assert params["canonicaliser"] == hashing.implementation()
    assert query(loaded, "SELECT count(*) FROM run_studies WHERE run_id = ?", [summary["run_id"]]) == [(SIZE,)]
    assert query(loaded, "SELECT count(*) FROM studies") == [(SIZE,)]


def test_a_submission_tracking_change_without_a_new_post_date_is_a_version_with_its_event(
        base: Path, loaded: Path, tmp_path: Path) -> None:
    name, record = _target(base)
    tracking = load(STUDIES_DIR / "NCT05973799.json")["derivedSection"]["miscInfoModule"]["submissionTracking"]
    record.setdefault("derivedSection", {}).setdefault("miscInfoModule", {})["submissionTracking"] = tracking
    nct_id = record["protocolSection"]["identificationModule"]["nctId"]
    # The registry's nightly file is current: some study was posted yesterday (an archive whose newest
    # date is long before the warehouse stored its versions is an older file: tests/test_bulk_older_archive.py).
    other, posted = next((n, r) for n, r in _records(base) if n != name)
    posted = mutate.posted_on(posted, datetime.now(UTC).date() - timedelta(days=1))
    edits = {name: orjson.dumps(record), other: orjson.dumps(posted)}
    changed = rewrite(base, tmp_path / "tracking.zip", lambda n, data: edits.get(n, data))
    summary = load_bulk(changed, loaded)
    params = run_params(loaded, summary["run_id"])
    assert summary["versions_written"] == 2
    assert sorted(query(loaded, "SELECT nct_id, version FROM study_versions WHERE run_id = ?",
                        [summary["run_id"]])) == sorted([(nct_id, 2), (_nct(posted), 2)])
    assert sorted(query(loaded, "SELECT event, new_value FROM changes WHERE nct_id = ? AND to_version = 2",
                        [nct_id])) == [("results_returned", "2025-09-04"), ("results_submitted", "2025-08-14")]
    assert int(params["unread"]) + int(params["sampled"]) == SIZE - 2


def _records(source: Path) -> list[tuple[str, dict[str, Any]]]:
    with zipfile.ZipFile(source) as zf:
        return [(info.filename, orjson.loads(zf.read(info))) for info in zf.infolist()]


def _nct(record: dict[str, Any]) -> str:
    return str(record["protocolSection"]["identificationModule"]["nctId"])


def test_a_member_whose_bytes_changed_is_always_read(base: Path, loaded: Path, tmp_path: Path) -> None:
    """Non-material bytes (the registry's versionHolder) with the same post date: read, hashed, no version;
    it stays read in every later run (its stored version keeps the old member's key)."""
    name, record = _target(base)
    record.setdefault("derivedSection", {}).setdefault("miscInfoModule", {})["versionHolder"] = "2099-12-31"
    changed = rewrite(base, tmp_path / "holder.zip", lambda n, data: orjson.dumps(record) if n == name else data)
    for _ in range(2):
        summary = load_bulk(changed, loaded, sample=0.0)
        params = run_params(loaded, summary["run_id"])
        assert (summary["versions_written"], summary["unchanged"]) == (0, SIZE)
        assert (params["unread"], params["sampled"]) == (str(SIZE - 1), "0")


def test_verify_reads_and_hashes_every_member(base: Path, loaded: Path) -> None:
    summary = load_bulk(base, loaded, verify=True)
    params = run_params(loaded, summary["run_id"])
    assert (summary["versions_written"], summary["unchanged"]) == (0, SIZE)
    assert (params["verify"], params["unread"], params["sampled"]) == ("true", "0", "0")
    assert int(params["verified_shards"]) == summary["pages"] == 2  # 300 members in two tasks of >= 150


def test_the_sampled_check_finds_a_head_whose_hash_is_not_its_members_and_reads_the_shard(
        base: Path, loaded: Path, tmp_path: Path) -> None:
    """A planted mismatch: the stored head's hash differs from what its (byte-identical) member hashes to.
    Sampling every member finds it; the shard then reads everything, so the study gets its true version."""
    key, members, heads = planted_heads(base, loaded)
    planted = heads["nct_id"][0].as_py()
    ctx = RunContext("r-planted", datetime.now(UTC), "bulk")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    result = process_shard(ShardJob(str(base), key, members, heads, ctx, str(run_dir), sample=1.0))
    assert result.mismatched == [planted]
    assert result.verified_all and result.unread == 0
    assert result.sampled == members.num_rows
    assert (result.versions, result.unchanged) == (1, members.num_rows - 1)
    assert (run_dir / ".verify").exists()  # shards starting after this one read everything too
    later = process_shard(ShardJob(str(base), key, members, heads, ctx, str(tmp_path / "run"), sample=0.0))
    assert later.verified_all and later.unread == 0


def test_an_unsampled_planted_mismatch_is_skipped_and_verify_finds_it(base: Path, loaded: Path, tmp_path: Path) -> None:
    """What the sample is for: without it (share 0) a wrong head goes unnoticed; --verify corrects it."""
    key, members, heads = planted_heads(base, loaded)
    ctx = RunContext("r-unsampled", datetime.now(UTC), "bulk")
    for verify, versions in ((False, 0), (True, 1)):
        run_dir = tmp_path / f"run-{verify}"
        run_dir.mkdir()
        result = process_shard(ShardJob(str(base), key, members, heads, ctx, str(run_dir), sample=0.0, verify=verify))
        assert (result.versions, result.unread) == (versions, 0 if verify else members.num_rows)


def test_a_study_listed_twice_in_one_archive_ends_as_a_full_read_would_leave_it(
        base: Path, first_load: Path, tmp_path: Path) -> None:
    """A changed member, then one with the bytes the head was read from: the second is the study's last
    word. Skipping it for its key would leave the first as the head; every member of a study listed
    more than once is read."""
    name, record = _target(base)
    record["protocolSection"]["statusModule"]["overallStatus"] = "WITHDRAWN"
    nct_id = record["protocolSection"]["identificationModule"]["nctId"]
    twice = tmp_path / "twice.zip"
    with zipfile.ZipFile(base) as zin, zipfile.ZipFile(twice, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            if info.filename == name:
                with pytest.warns(UserWarning, match="Duplicate name"):
                    zout.writestr(info.filename, orjson.dumps(record))
                    zout.writestr(info.filename, zin.read(info))
            else:
                zout.writestr(info.filename, zin.read(info))
    results = {}
    for mode, kwargs in (("skipping", {"sample": 0.0}), ("verify", {"verify": True})):
        warehouse_dir = Path(shutil.copytree(first_load, tmp_path / mode))
        load_bulk(twice, warehouse_dir, **kwargs)
        results[mode] = query(warehouse_dir, "SELECT version, overall_status, content_hash FROM studies "
                                             "WHERE nct_id = ?", [nct_id])
    assert results["skipping"] == results["verify"]
    assert results["verify"][0][1] != "WITHDRAWN"  # the last member's word
