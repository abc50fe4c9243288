"""Issue 8: the registry's bulk zip as one run, streamed in shards, continued by API syncs; Dask too."""

from __future__ import annotations

import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest

from bench import corpus
from flows.bulk import run_load_bulk
from pipeline.errors import BulkArchiveInvalid, BulkDownloadFailed, UsageError
from pipeline.registry.bulk import BulkArchive, MemberReader, members
from pipeline.registry.fake_server import FakeRegistry
from pipeline.scope import WATERMARK_OVERLAP
from tests.conftest import STUDIES_DIR, fast_sync, nct
from warehouse import Warehouse

pytestmark = pytest.mark.usefixtures("prefect_api")
TRIALSYNC = Path(sys.executable).parent / "trialsync"


def query(warehouse_dir: Path, sql: str) -> list[tuple[Any, ...]]:
    with Warehouse(warehouse_dir).connect() as con:
        return con.execute(sql).fetchall()


def write_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


@pytest.fixture(scope="module")
def real_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 326 real records, as the registry lays out its bulk zip (their real bytes, pretty-printed)."""
    files = {f"{p.stem[-2:]}/{p.name}": p.read_bytes() for p in sorted(STUDIES_DIR.glob("NCT*.json"))}
    return write_zip(tmp_path_factory.mktemp("bulk") / "ctg-studies.json.zip", files)


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    corpus.generate(STUDIES_DIR, 400, out)
    return out


def load(source: Path | str, warehouse_dir: Path, **kwargs: Any) -> dict[str, Any]:
    workers = kwargs.pop("workers", 2)
    dask = kwargs.pop("dask", None)
    return run_load_bulk(dict(source=str(source), warehouse=str(warehouse_dir), lock_timeout=5.0, **kwargs),
                         workers=workers, dask=dask)


def content(warehouse_dir: Path) -> list[tuple[Any, ...]]:
    return query(warehouse_dir, """SELECT nct_id, version, content_hash, overall_status, enrollment_count,
        start_date, completion_date_raw, last_update_posted, conditions, raw::VARCHAR
        FROM study_versions ORDER BY nct_id, version""")


def test_a_bulk_load_is_one_run_that_api_syncs_continue_without_new_versions(
        real_zip: Path, records: list[dict[str, Any]], tmp_path: Path) -> None:
    bulk_dir, api_dir = tmp_path / "bulk", tmp_path / "api"
    summary = load(real_zip, bulk_dir)
    watermark = max(date.fromisoformat(r["protocolSection"]["statusModule"]["lastUpdatePostDateStruct"]["date"])
                    for r in records)
    assert (summary["mode"], summary["scope"], summary["studies_seen"], summary["versions_written"],
            summary["pages"], summary["watermark"]) == ("bulk", "all", 326, 326, 4, watermark.isoformat())
    assert query(bulk_dir, "SELECT mode, scope, status, studies_seen, versions_written, watermark FROM sync_runs") \
        == [("bulk", "all", "succeeded", 326, 326, watermark)]
    assert query(bulk_dir, "SELECT DISTINCT source FROM study_versions") == [("bulk",)]
    assert query(bulk_dir, "SELECT count(*) FROM run_studies") == [(326,)]
    with FakeRegistry(records).start() as registry:
        fast_sync(registry, api_dir)
        # Same records through the API: the same rows and hashes as from the bulk file.
        assert content(bulk_dir) == content(api_dir)
        day = watermark + timedelta(days=1)
        from pipeline import mutate
        registry.put(mutate.posted_on(mutate.set_status(records[0], "COMPLETED"), day))
        registry.requests.clear()
        after = fast_sync(registry, bulk_dir)
        since = watermark - WATERMARK_OVERLAP
        assert (after["mode"], after["since"], after["versions_written"]) == ("incremental", since.isoformat(), 1)
        assert {r["filter.advanced"] for r in registry.study_requests()} == {
            f"AREA[LastUpdatePostDate]RANGE[{since.isoformat()},MAX]"}
        assert after["unchanged"] == after["studies_seen"] - 1 > 0
    assert query(bulk_dir, f"SELECT version, source, studies.overall_status FROM studies JOIN study_versions "
                           f"USING (nct_id, version) WHERE nct_id = '{nct(records[0])}'") == [(2, "api", "COMPLETED")]


def test_reloading_a_bulk_file_adds_nothing_and_a_changed_one_adds_exactly_its_changes(
        small_corpus: Path, warehouse_dir: Path) -> None:
    info = orjson.loads((small_corpus / "corpus.json").read_bytes())
    first = load(small_corpus / "base.zip", warehouse_dir, batch_size=7)
    again = load(small_corpus / "base.zip", warehouse_dir)
    changed = load(small_corpus / "changed.zip", warehouse_dir, workers=1)
    assert (first["versions_written"], first["new_studies"]) == (400, 400)
    assert (again["versions_written"], again["unchanged"]) == (0, 400)
    assert (changed["versions_written"], changed["new_studies"], changed["unchanged"]) == (
        info["changed"], 0, 400 - info["changed"])
    assert sorted(r[0] for r in query(warehouse_dir, "SELECT nct_id FROM study_versions WHERE version = 2")) == \
        sorted(info["changed_ids"])
    assert query(warehouse_dir, "SELECT count(*), count(DISTINCT nct_id) FROM studies") == [(400, 400)]


def test_a_worker_plans_one_batch_at_a_time_and_writes_its_part_files_in_few_row_groups(
        small_corpus: Path, warehouse_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows import shards

    planned: list[int] = []
    plan = shards._plan

    def recorded(reader: Any, batch: list[Any], *args: Any) -> Any:
        planned.append(len(batch))
        return plan(reader, batch, *args)

    monkeypatch.setattr(shards, "_plan", recorded)
    load(small_corpus / "base.zip", warehouse_dir, batch_size=3, workers=1)  # in process: the patch holds
    assert max(planned) == 3 and sum(planned) == 400
    files = sorted(warehouse_dir.glob("runs/*/*.part-*.parquet"))
    # 400 studies in process: folders grouped into two tasks of >= 200 members, a file per table each.
    assert len([f for f in files if f.name.startswith("study_versions.")]) == 2
    # Batches of 3 rows, but a row group per file: footers do not grow with the number of batches.
    groups = {f.name: pq.ParquetFile(f).metadata.num_row_groups for f in files}
    assert set(groups.values()) == {1}
    assert sum(pq.ParquetFile(f).metadata.num_rows for f in files if f.name.startswith("study_versions.")) == 400


def test_members_are_inflated_and_crc_checked(small_corpus: Path) -> None:
    archive = BulkArchive.open(small_corpus / "base.zip")
    assert (archive.members, len(archive.shards), archive.skipped) == (400, 100, 0)
    with zipfile.ZipFile(small_corpus / "base.zip") as zf, MemberReader(archive.path) as reader:
        for key, shard in list(archive.shards.items())[:5]:
            for member in members(shard):
                assert member.nct_id.endswith(key)
                assert reader.read(member) == zf.read(f"{key}/{member.nct_id}.json")


def test_a_truncated_zip_is_refused_with_one_line_before_anything_is_written(
        small_corpus: Path, tmp_path: Path, prefect_api: str) -> None:
    truncated = tmp_path / "ctg-studies.json.zip"
    truncated.write_bytes((small_corpus / "base.zip").read_bytes()[:-5000])
    result = subprocess.run([str(TRIALSYNC), "load-bulk", str(truncated), "--warehouse", str(tmp_path / "wh")],
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PREFECT_API_URL": prefect_api})
    assert result.returncode == 2
    assert result.stderr.strip() == (f"trialsync: error: {truncated} is not a complete zip archive "
                                     "(truncated download?)")
    assert not (tmp_path / "wh").exists()


@pytest.mark.parametrize("kind", ["directory", "named pipe", "link to /dev/zero", "missing", "link to nowhere"])
def test_a_bulk_path_that_is_not_a_file_is_named_for_what_it_is_in_one_line(
        kind: str, tmp_path: Path, prefect_api: str) -> None:
    """'no such bulk file' of a directory, a pipe or a device that is there sent the user looking for a
    typo; a pipe or a device is never opened (a pipe nobody writes to would wait for ever)."""
    path = tmp_path / "ctg-studies.json.zip"
    if kind == "directory":
        path.mkdir()
    elif kind == "named pipe":
        os.mkfifo(path)
    elif kind == "link to /dev/zero":
        path.symlink_to("/dev/zero")
    elif kind == "link to nowhere":
        path.symlink_to(tmp_path / "gone.zip")
    result = subprocess.run([str(TRIALSYNC), "load-bulk", str(path), "--warehouse", str(tmp_path / "wh")],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PREFECT_API_URL": prefect_api})
    what = {"directory": "a directory", "named pipe": "a named pipe", "link to /dev/zero": "a character device"}
    expected = (f"{path} is {what[kind]}, not a bulk file (a zip archive)" if kind in what
                else f"no such bulk file: {path}")
    assert (result.returncode, result.stderr.strip()) == (2, f"trialsync: error: {expected}")
    assert not (tmp_path / "wh").exists()


def test_a_damaged_member_fails_the_run_and_leaves_the_warehouse_as_it_was(
        small_corpus: Path, real_zip: Path, tmp_path: Path, warehouse_dir: Path) -> None:
    load(real_zip, warehouse_dir)
    catalog = (warehouse_dir / "warehouse.duckdb").read_bytes()
    damaged = tmp_path / "damaged.zip"
    shutil.copy(small_corpus / "base.zip", damaged)
    member = members(BulkArchive.open(damaged).shards["42"])[0]
    with damaged.open("r+b") as f:  # flip bytes inside one member's compressed data
        f.seek(member.header_offset + 30 + len(f"42/{member.nct_id}.json") + member.compress_size // 2)
        f.write(b"\x00\xff\x00\xff")
    with pytest.raises(BulkArchiveInvalid, match=member.nct_id):
        load(damaged, warehouse_dir)
    assert (warehouse_dir / "warehouse.duckdb").read_bytes() == catalog
    assert len(list((warehouse_dir / "runs").iterdir())) == 1
    assert query(warehouse_dir, "SELECT count(*) FROM sync_runs") == [(1,)]


def test_unusable_members_are_quarantined_and_the_rest_commits(
        records: list[dict[str, Any]], tmp_path: Path, warehouse_dir: Path) -> None:
    good = records[:3]
    no_protocol = {k: v for k, v in records[3].items() if k != "protocolSection"}
    path = write_zip(tmp_path / "bulk.zip", {
        **{f"{nct(r)[-2:]}/{nct(r)}.json": orjson.dumps(r) for r in good},
        f"{nct(records[3])[-2:]}/{nct(records[3])}.json": orjson.dumps(no_protocol),
        "01/NCT00000001.json": b'{"protocolSection": {"identificationModule": ',
        "README.txt": b"not a study",
    })
    summary = load(path, warehouse_dir)
    assert (summary["versions_written"], summary["quarantined"]) == (3, 2)
    assert query(warehouse_dir, "SELECT nct_id, reason FROM quarantine ORDER BY reason") == [
        ("NCT00000001", "invalid JSON: unexpected end of data: line 1 column 46 (char 45)"),
        (nct(records[3]), "record has no protocolSection")]  # the file's name says whose it was


@pytest.mark.parametrize("when", ["first load", "reload"])
def test_a_member_holding_another_studys_record_is_quarantined_not_a_second_version_1(
        records: list[dict[str, Any]], tmp_path: Path, warehouse_dir: Path, when: str) -> None:
    """The file name picks the shard, and with it the stored heads a record is compared with: a record
    of another study there used to be taken for a new study, a second version 1 of a stored one."""
    first, other = records[0], next(r for r in records[1:] if nct(r)[-2:] != nct(records[0])[-2:])
    stray = f"{nct(other)[-2:]}/{nct(other)}.json"
    base = {f"{nct(r)[-2:]}/{nct(r)}.json": orjson.dumps(r) for r in records[:20] if nct(r) != nct(other)}
    if when == "reload":
        load(write_zip(tmp_path / "base.zip", base), warehouse_dir)
        files = {stray: orjson.dumps(first)}
    else:
        files = {**base, stray: orjson.dumps(first)}
    summary = load(write_zip(tmp_path / "bulk.zip", files), warehouse_dir)
    assert summary["quarantined"] == 1 and summary["changes_written"] == 0
    assert query(warehouse_dir, "SELECT nct_id, reason FROM quarantine") == [
        (nct(other), f"the file {nct(other)}.json holds study {nct(first)}: file name and record disagree")]
    assert query(warehouse_dir, f"SELECT count(*) FROM study_versions WHERE nct_id = '{nct(first)}'") == [(1,)]
    assert query(warehouse_dir, "SELECT count(*) FROM study_versions GROUP BY nct_id, version HAVING count(*) > 1"
                 ) == []


@pytest.mark.filterwarnings("ignore:Duplicate name")  # the point: one study's file twice in the zip
def test_a_first_load_that_lists_a_study_twice_derives_the_change_between_its_versions(
        records: list[dict[str, Any]], tmp_path: Path, warehouse_dir: Path) -> None:
    """Versions 1 and 2 of one study in one first load: the change between them is derived, as a
    reload of the same zip or a rederive would, while the other studies' first versions cost nothing."""
    from pipeline import mutate

    twice = records[0]
    files = {f"{nct(r)[-2:]}/{nct(r)}.json": orjson.dumps(r) for r in records[:10]}
    path = tmp_path / "bulk.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr(f"{nct(twice)[-2:]}/{nct(twice)}.json", orjson.dumps(mutate.set_status(twice, "SUSPENDED")))
    summary = load(path, warehouse_dir)
    assert (summary["versions_written"], summary["new_studies"]) == (11, 10)
    derived = query(warehouse_dir, "SELECT nct_id, from_version, to_version, event FROM changes "
                                   "WHERE event = 'status_changed'")
    assert derived == [(nct(twice), 1, 2, "status_changed")]
    assert summary["changes_written"] == query(warehouse_dir, "SELECT count(*) FROM changes")[0][0] > 0


@pytest.mark.filterwarnings("ignore:Duplicate name")  # the point: one study's file twice in the zip
@pytest.mark.parametrize("copy", ["same bytes", "changed"])
def test_a_study_listed_twice_in_a_bulk_zip_has_one_run_studies_row_at_the_version_the_run_ended_at(
        records: list[dict[str, Any]], tmp_path: Path, warehouse_dir: Path, copy: str) -> None:
    """Two members for one study (its own file and a copy elsewhere in the zip, in another batch):
    one ``run_studies`` row for the run, at its last version, and the study counted once as seen.
    It was two rows (one per member): readers joining run_studies saw the study twice."""
    from pipeline import mutate

    twice = records[0]
    again = twice if copy == "same bytes" else mutate.set_status(twice, "SUSPENDED")
    files = {f"{nct(r)[-2:]}/{nct(r)}.json": orjson.dumps(r) for r in records[:10]}
    files[f"copy/{nct(twice)}.json"] = orjson.dumps(again)
    summary = load(write_zip(tmp_path / "bulk.zip", files), warehouse_dir, batch_size=3)
    last = 1 if copy == "same bytes" else 2
    assert query(warehouse_dir, f"SELECT version FROM run_studies WHERE nct_id = '{nct(twice)}'") == [(last,)]
    assert query(warehouse_dir, "SELECT count(*), count(DISTINCT (run_id, nct_id)) FROM run_studies") == [(10, 10)]
    assert (summary["studies_seen"], summary["versions_written"]) == (10, 9 + last)
    # A reload of the same zip: every member unchanged, still one row per study.
    load(tmp_path / "bulk.zip", warehouse_dir, batch_size=3)
    assert query(warehouse_dir, "SELECT count(*), count(DISTINCT (run_id, nct_id)) FROM run_studies") == [(20, 20)]


def test_a_bulk_load_runs_its_shard_tasks_on_a_local_dask_cluster(
        small_corpus: Path, tmp_path: Path) -> None:
    summary = load(small_corpus / "base.zip", tmp_path / "dask", dask="local", workers=2)
    load(small_corpus / "base.zip", tmp_path / "local", workers=1)
    assert (summary["studies_seen"], summary["versions_written"]) == (400, 400)
    assert query(tmp_path / "dask", "SELECT nct_id, content_hash FROM studies ORDER BY 1") == \
        query(tmp_path / "local", "SELECT nct_id, content_hash FROM studies ORDER BY 1")


@pytest.fixture
def served(small_corpus: Path) -> Iterator[str]:
    """The corpus directory over loopback HTTP (a download source)."""
    handler = type("Quiet", (http.server.SimpleHTTPRequestHandler,), {"log_message": lambda *a: None})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             lambda *a: handler(*a, directory=str(small_corpus)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_bulk_url_is_downloaded_to_disk_then_loaded(served: str, small_corpus: Path, tmp_path: Path) -> None:
    summary = load(f"{served}/base.zip", tmp_path / "wh", download_dir=str(tmp_path / "dl"))
    assert summary["versions_written"] == 400
    downloaded = [p for p in (tmp_path / "dl").iterdir() if p.suffix != ".lock"]  # complete: no ".part" left
    assert len(downloaded) == 1 and downloaded[0].name.endswith(".zip")
    assert downloaded[0].read_bytes() == (small_corpus / "base.zip").read_bytes()


def test_the_head_index_looks_up_a_page_and_splits_by_shard() -> None:
    import pyarrow as pa

    from pipeline.versioning import Head
    from warehouse.heads import HEAD_SCHEMA, HeadIndex

    index = HeadIndex(pa.table({"nct_id": ["NCT00000142", "NCT00000242", "NCT00000107"], "version": [1, 3, 2],
                                "content_hash": ["a", "b", "c"], "is_removed": [False, False, True],
                                "registry_updated": [date(2026, 1, 2), date(2026, 3, 4), None],
                                "member_key": [None, 5, None], "as_of": [None, date(2026, 3, 5), None]},
                               schema=HEAD_SCHEMA))
    assert index.lookup(["NCT00000242", "NCT00000107", "NCT09999999"]) == {
        "NCT00000242": Head(3, "b", registry_updated=date(2026, 3, 4), member_key=5, as_of=date(2026, 3, 5)),
        "NCT00000107": Head(2, "c", True)}
    assert {key: t["nct_id"].to_pylist() for key, t in index.shards().items()} == {
        "07": ["NCT00000107"], "42": ["NCT00000142", "NCT00000242"]}
    assert HeadIndex.empty().lookup(["NCT00000142"]) == {}


class _RangeServer:
    """Serves one file over loopback HTTP with ``Range``/``If-Range`` and an ``ETag``, like a CDN; the
    first ``drops`` answers close the connection after ``cut`` bytes of the body."""

    def __init__(self, data: bytes, *, drops: int = 0, cut: int = 0, etag: str = '"v1"') -> None:
        self.data, self.drops, self.cut, self.etag = data, drops, cut, etag
        self.seen: list[dict[str, str]] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                owner.seen.append({k: v for k, v in self.headers.items()})
                start = 0
                ranged = self.headers.get("Range", "")
                if ranged.startswith("bytes=") and self.headers.get("If-Range", owner.etag) == owner.etag:
                    start = int(ranged[6:].split("-")[0])
                body = owner.data[start:]
                self.send_response(206 if start else 200)
                self.send_header("ETag", owner.etag)
                self.send_header("Content-Length", str(len(body)))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(owner.data) - 1}/{len(owner.data)}")
                self.end_headers()
                if owner.drops > 0:
                    owner.drops -= 1
                    self.wfile.write(body[:owner.cut])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/ctg-studies.json.zip"

    def close(self) -> None:
        self.server.shutdown()


def test_a_dropped_bulk_download_resumes_with_range_and_sends_the_user_agent(small_corpus: Path,
                                                                            tmp_path: Path) -> None:
    from pipeline.registry.client import USER_AGENT
    from pipeline.registry.download import download

    data = (small_corpus / "base.zip").read_bytes()
    server = _RangeServer(data, drops=2, cut=len(data) // 5)
    try:
        path = download(server.url, tmp_path / "dl", chunk_bytes=4096)
    finally:
        server.close()
    assert path.read_bytes() == data and sorted(p.name for p in (tmp_path / "dl").iterdir()) == [
        "ctg-studies.json.zip", "ctg-studies.json.zip.lock"]
    starts = [int(s["Range"][6:-1]) for s in server.seen[1:]]  # what had come (whole chunks) before the drop
    assert "Range" not in server.seen[0] and len(starts) == 2
    assert 0 < starts[0] <= len(data) // 5 < starts[1] <= 2 * (len(data) // 5)
    assert all(s["User-Agent"] == USER_AGENT for s in server.seen)
    assert server.seen[1]["If-Range"] == '"v1"'


def test_a_part_left_by_an_earlier_run_is_resumed_only_while_the_file_is_the_same(small_corpus: Path,
                                                                                 tmp_path: Path) -> None:
    from pipeline.registry.download import download

    data = (small_corpus / "base.zip").read_bytes()
    first = _RangeServer(data, drops=5, cut=len(data) // 3)
    with pytest.raises(BulkDownloadFailed, match=r"failed after 2 tries \(.* bytes kept in .*\.part for the"):
        download(first.url, tmp_path / "dl", attempts=2)
    first.close()
    kept = (tmp_path / "dl" / "ctg-studies.json.zip.part").stat().st_size
    assert len(data) // 3 < kept <= 2 * (len(data) // 3)
    again = _RangeServer(data)  # the next run, same file: one request for the rest
    try:
        assert download(again.url, tmp_path / "dl").read_bytes() == data
    finally:
        again.close()
    assert [s.get("Range") for s in again.seen] == [f"bytes={kept}-"]
    (tmp_path / "dl" / "ctg-studies.json.zip").unlink()
    interrupted = _RangeServer(data, drops=1, cut=len(data) // 3)
    with pytest.raises(BulkDownloadFailed):
        download(interrupted.url, tmp_path / "dl", attempts=1)
    interrupted.close()
    changed = _RangeServer(data, etag='"v2"')  # the registry published a new file since: start over
    try:
        assert download(changed.url, tmp_path / "dl").read_bytes() == data
    finally:
        changed.close()
    assert changed.seen[0]["If-Range"] == '"v1"' and len(changed.seen) == 1


class _OverlapServer:
    """Serves ``data`` (``Range`` honoured); each answer sends half the body, then waits (up to ``patience``
    seconds) for a second request to come in before sending the rest, so two downloads that do not
    wait for each other overlap. Records each answer's (start, end) on one monotonic clock."""

    def __init__(self, data: bytes, patience: float = 2.0) -> None:
        import time

        self.data, self.windows = data, []  # type: ignore[var-annotated]
        self.ranges: list[str | None] = []
        self.second = threading.Event()
        owner, lock = self, threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                start = time.monotonic()
                with lock:
                    if owner.windows:
                        owner.second.set()
                    owner.windows.append([start, None])
                    mine = owner.windows[-1]
                    owner.ranges.append(self.headers.get("Range"))
                ranged = self.headers.get("Range", "")
                offset = int(ranged[6:].split("-")[0]) if ranged.startswith("bytes=") else 0
                body = owner.data[offset:]
                self.send_response(206 if offset else 200)
                self.send_header("ETag", '"v1"')
                self.send_header("Content-Length", str(len(body)))
                if offset:
                    self.send_header("Content-Range", f"bytes {offset}-{len(owner.data) - 1}/{len(owner.data)}")
                self.end_headers()
                half = len(body) // 2
                self.wfile.write(body[:half])
                self.wfile.flush()
                owner.second.wait(patience)
                self.wfile.write(body[half:])
                self.wfile.flush()
                mine[1] = time.monotonic()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/ctg-studies.json.zip"

    def close(self) -> None:
        self.server.shutdown()


_DOWNLOAD = """
import logging, sys
from pathlib import Path
logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
from pipeline.registry.download import download
print(download(sys.argv[1], Path(sys.argv[2])))
"""


def _download_process(url: str, directory: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", _DOWNLOAD, url, str(directory)], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ.copy())


def test_two_processes_downloading_into_one_directory_take_turns_and_both_get_the_whole_file(
        small_corpus: Path, tmp_path: Path) -> None:
    """Sibling warehouses share ``downloads/``: two ``load-bulk URL`` at once wrote one ``.part`` together
    (each truncating and appending: a corrupt file, or one renamed away under the other). Now the
    second waits for the first's lock: the answers do not overlap, and each ends with the whole zip."""
    data = (small_corpus / "base.zip").read_bytes()
    server = _OverlapServer(data)
    try:
        procs = [_download_process(server.url, tmp_path / "dl") for _ in range(2)]
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        server.close()
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    assert {out.strip() for out, _ in outs} == {str(tmp_path / "dl" / "ctg-studies.json.zip")}
    assert (tmp_path / "dl" / "ctg-studies.json.zip").read_bytes() == data
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == ["ctg-studies.json.zip", "ctg-studies.json.zip.lock"]
    (_, first_end), (second_start, _) = sorted(server.windows)
    assert second_start >= first_end  # the second request only once the first file was complete


def test_a_download_waits_while_a_load_holds_the_file_it_would_replace(small_corpus: Path, tmp_path: Path) -> None:
    """A load reads the downloaded zip by name for minutes (each shard opens it): another process's
    download of the same URL must not rename a new file over it meanwhile. It waits, saying so."""
    from pipeline.registry.download import download, held

    data = (small_corpus / "base.zip").read_bytes()
    server = _RangeServer(data)
    try:
        path = download(server.url, tmp_path / "dl")
        requests_before = len(server.seen)
        with held(path):
            proc = _download_process(server.url, tmp_path / "dl")
            assert proc.stderr is not None
            line = proc.stderr.readline()  # the waiting process says so, before any request
            assert "waiting for another trialsync process downloading or loading" in line
            assert len(server.seen) == requests_before and path.read_bytes() == data
        out, err = proc.communicate(timeout=120)
    finally:
        server.close()
    assert proc.returncode == 0, err
    assert out.strip() == str(path) and path.read_bytes() == data and len(server.seen) == requests_before + 1


def test_a_downloader_killed_mid_file_leaves_its_part_to_the_one_that_waited_which_resumes_it(
        small_corpus: Path, tmp_path: Path) -> None:
    """kill -9 of the process holding the download: the kernel drops its lock, and the process waiting
    for it resumes the ``.part`` it left (a ``Range`` request from where it stopped) to the whole zip."""
    import signal
    import time

    data = (small_corpus / "base.zip").read_bytes()
    server = _OverlapServer(data, patience=120.0)  # the first answer stalls after half the body
    try:
        first = _download_process(server.url, tmp_path / "dl")
        part = tmp_path / "dl" / "ctg-studies.json.zip.part"
        while not (part.stat().st_size if part.exists() else 0):  # its first chunks are written
            assert first.poll() is None
            time.sleep(0.05)
        second = _download_process(server.url, tmp_path / "dl")
        assert second.stderr is not None
        assert "waiting for another trialsync process" in second.stderr.readline()
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        server.second.set()  # no later answer stalls
        _, err = second.communicate(timeout=120)
    finally:
        server.close()
    assert second.returncode == 0, err
    assert (tmp_path / "dl" / "ctg-studies.json.zip").read_bytes() == data and not part.exists()
    assert server.ranges[0] is None and len(server.ranges) == 2
    resumed_at = int(str(server.ranges[1]).removeprefix("bytes=").removesuffix("-"))
    assert 0 < resumed_at <= len(data) // 2  # resumed where the killed one stopped, not started over


def test_a_downloaded_file_that_is_not_a_complete_zip_is_refused_and_not_kept(tmp_path: Path) -> None:
    from pipeline.registry.download import download

    server = _RangeServer(b"PK\x03\x04 this is not a zip at all")
    try:
        with pytest.raises(BulkDownloadFailed, match="is not a usable zip"):
            download(server.url, tmp_path / "dl")
    finally:
        server.close()
    assert [p.name for p in (tmp_path / "dl").iterdir()] == ["ctg-studies.json.zip.lock"]  # no file kept


def test_a_download_that_cannot_connect_is_a_failed_run_not_bad_input(tmp_path: Path) -> None:
    from pipeline.registry.download import download

    with pytest.raises(BulkDownloadFailed) as info:
        download("http://127.0.0.1:1/ctg-studies.json.zip", tmp_path / "dl", attempts=2)
    assert not isinstance(info.value, UsageError) and info.value.retryable  # exit 1: run it again later
    assert "failed after 2 tries: " in str(info.value) and "bytes kept" not in str(info.value)  # no .part exists


def test_an_http_error_status_of_the_download_is_a_failed_run_not_bad_input(tmp_path: Path) -> None:
    from pipeline.registry.download import download

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(BulkDownloadFailed, match="failed: HTTP 404") as info:
            download(f"http://127.0.0.1:{server.server_address[1]}/missing/ctg-studies.json.zip", tmp_path / "dl")
    finally:
        server.shutdown()
    assert not isinstance(info.value, UsageError) and not info.value.retryable


def test_a_member_that_inflates_past_any_record_is_quarantined_without_being_inflated(
        records: list[dict[str, Any]], tmp_path: Path, warehouse_dir: Path) -> None:
    """A zip bomb's member (65 MB of zeros in ~65 KB) would have filled memory and then the quarantine."""
    from flows.shards import MAX_MEMBER_BYTES

    size = MAX_MEMBER_BYTES + 1
    path = write_zip(tmp_path / "bulk.zip", {
        **{f"{nct(r)[-2:]}/{nct(r)}.json": orjson.dumps(r) for r in records[:3]},
        "01/NCT00000001.json": bytes(size),
    })
    assert path.stat().st_size < 1 << 20
    summary = load(path, warehouse_dir)
    assert (summary["versions_written"], summary["quarantined"]) == (3, 1)
    assert query(warehouse_dir, "SELECT nct_id, reason, raw::VARCHAR FROM quarantine") == [
        ("NCT00000001", f"the member inflates to {size} bytes, over the 64 MB a record may have", "null")]
