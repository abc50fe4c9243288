"""The bulk zip's directory on a bad day: an end record whose entry count disagrees with the directory it
points at is a damaged archive, refused before anything is written (a count too low loaded that many
members and called the run whole: the other studies silently not loaded)."""

from __future__ import annotations

import struct
import subprocess
import zipfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import BulkArchiveInvalid
from pipeline.registry.bulk import BulkArchive
from tests.conftest import STUDIES_DIR, examples
from tests.reliability.support import TRIALSYNC

MEMBERS = 12


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("zip") / "ctg-studies.json.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as out:
        out.writestr(zipfile.ZipInfo("00/"), b"")  # a folder entry, as the registry's zip has
        for study in sorted(STUDIES_DIR.glob("NCT*.json"))[:MEMBERS]:
            out.write(study, f"{study.stem[-2:]}/{study.name}")
    return path.read_bytes()


def _counted(data: bytes, count: int) -> bytes:
    """The archive with its end record announcing ``count`` entries (both of its count fields)."""
    damaged = bytearray(data)
    struct.pack_into("<HH", damaged, damaged.rfind(b"PK\x05\x06") + 8, count, count)
    return bytes(damaged)


@settings(max_examples=examples(25, 200), deadline=None)
@given(count=st.integers(0, 0xFFFF))
def test_an_end_record_counting_other_than_the_directory_holds_is_refused(
        archive: bytes, tmp_path_factory: pytest.TempPathFactory, count: int) -> None:
    path = tmp_path_factory.mktemp("counted") / "ctg-studies.json.zip"
    path.write_bytes(_counted(archive, count))
    if count == MEMBERS + 1:  # the directory's own count (the folder entry too)
        assert BulkArchive.open(path).members == MEMBERS
        return
    with pytest.raises(BulkArchiveInvalid, match=rf"damaged central directory \(it holds {MEMBERS + 1} entries, "
                                                 rf"its end record says {count}\)"):
        BulkArchive.open(path)


def test_load_bulk_refuses_an_archive_whose_end_record_counts_too_few_and_writes_nothing(
        archive: bytes, tmp_path: Path) -> None:
    path = tmp_path / "ctg-studies.json.zip"
    path.write_bytes(_counted(archive, 5))
    result = subprocess.run([str(TRIALSYNC), "load-bulk", str(path), "--warehouse", str(tmp_path / "wh"),
                             "--workers", "1"], capture_output=True, text=True, timeout=300)
    assert (result.returncode, result.stderr.strip()) == (2, f"trialsync: error: {path}: damaged central directory "
                                                             f"(it holds {MEMBERS + 1} entries, its end record says 5)")
    assert not (tmp_path / "wh").exists()  # refused before the warehouse was made
