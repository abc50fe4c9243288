"""The registry's bulk download, ``ctg-studies.json.zip``: one JSON file per study, read member by member.

``BulkArchive.open`` checks the archive before anything is written: the central directory must be
there and every member's data must lie inside the file (a truncated download fails here, with one
line). Members are grouped into shards by the NCT id's last two digits (the registry's own 100
folders), so a study always lands in the same shard. ``read_member`` inflates one member with
libdeflate (its size is known from the directory; ~2.5x zlib's speed) and checks its CRC-32.
Shards are small Arrow tables of member offsets, so they travel cheaply to worker processes or a
Dask cluster, which reopen the file themselves.
"""

from __future__ import annotations

import os
import re
import stat
import struct
import zipfile
import zlib
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple

import deflate
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import BulkArchiveInvalid, UsageError

_MEMBER = re.compile(rb"(?:^|/)(NCT\d{8})\.json$")  # on the name as bytes
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # the fixed 30 bytes before each member's data
_LOCAL_SIGNATURE = b"PK\x03\x04"
_CD_SIGNATURE = b"PK\x01\x02"
_CD_ENTRY = struct.Struct("<H4xLLLHHH8xL")  # from offset 10: method, (time, date), crc, sizes, lengths, offset
_EOCD = struct.Struct("<4s4H2LH")
_EOCD_SIGNATURE = b"PK\x05\x06"
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_LOCATOR_SIGNATURE = b"PK\x06\x07"
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")
_ZIP64_EOCD_SIGNATURE = b"PK\x06\x06"


class Member(NamedTuple):
    nct_id: str
    header_offset: int
    compress_size: int
    file_size: int
    crc: int
    method: int


# Shards travel as Arrow tables: ~45 bytes a member instead of ~250 as Python tuples.
MEMBER_SCHEMA = pa.schema([
    pa.field("nct_id", pa.string()),
    pa.field("header_offset", pa.int64()),
    pa.field("compress_size", pa.int64()),
    pa.field("file_size", pa.int64()),
    pa.field("crc", pa.uint32()),
    pa.field("method", pa.uint8()),
])


@dataclass(frozen=True)
class BulkArchive:
    path: Path
    shards: dict[str, pa.Table]  # shard key -> members (MEMBER_SCHEMA), keys in order
    members: int
    json_bytes: int
    skipped: int  # entries that are not NCT########.json (folders, notes)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> BulkArchive:
        """Read and check the directory; ``BulkArchiveInvalid`` (one line) if the zip is unusable.

        The central directory is parsed here (not with ``zipfile.infolist``, which takes ~10 s and
        ~500 MB for 600,000 members) straight into per-shard columns."""
        path = check_bulk_file(path)
        size = path.stat().st_size
        with path.open("rb") as f:
            count, cd_size, cd_offset = _directory_location(f, size, path)
            f.seek(cd_offset)
            directory = f.read(cd_size)
        if len(directory) != cd_size:
            raise BulkArchiveInvalid(f"{path} is truncated: its directory ends past the end of the file")
        ncts: list[str] = []
        numbers = [array("q") for _ in range(5)]  # 8 bytes a number, not ~36 as Python ints
        offsets, csizes, usizes, crcs, methods = (column.append for column in numbers)
        skipped = json_bytes = pos = entries = 0
        while pos < cd_size:  # by the directory's size, as zipfile and unzip read it; the count is checked after
            if not directory.startswith(_CD_SIGNATURE, pos) or pos + 46 > cd_size:
                raise BulkArchiveInvalid(f"{path}: damaged central directory")
            entries += 1
            (method, crc, csize, usize, name_len, extra_len, comment_len,
             offset) = _CD_ENTRY.unpack_from(directory, pos + 10)
            name = directory[pos + 46:pos + 46 + name_len]  # bytes: decoded only for a message
            extra = directory[pos + 46 + name_len:pos + 46 + name_len + extra_len]
            pos += 46 + name_len + extra_len + comment_len
            if 0xFFFFFFFF in (csize, usize, offset):
                usize, csize, offset = _zip64_sizes(extra, usize, csize, offset)
            match = _MEMBER.search(name)
            if not match:
                skipped += 1
                continue
            if method not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise BulkArchiveInvalid(f"{path}: {_text(name)} uses an unsupported compression method ({method})")
            if offset + _LOCAL_HEADER.size + csize > cd_offset:
                raise BulkArchiveInvalid(f"{path} is truncated: {_text(name)} ends past its data")
            ncts.append(match.group(1).decode("ascii"))
            offsets(offset)
            csizes(csize)
            usizes(usize)
            crcs(crc)
            methods(method)
            json_bytes += usize
        if pos != cd_size or entries % 0x10000 != count % 0x10000 or (count > 0xFFFF and entries != count):
            # A 16-bit count that wrapped (over 65,535 entries without ZIP64) is a known writers' habit.
            raise BulkArchiveInvalid(f"{path}: damaged central directory (it holds {entries} entries, its end "
                                     f"record says {count})")
        if not ncts:
            raise BulkArchiveInvalid(f"{path} holds no study files (NCT########.json)")
        shards = _by_shard(ncts, numbers)
        return cls(path, shards, len(ncts), json_bytes, skipped)


def _text(name: bytes) -> str:
    return name.decode("utf-8", "replace")


def _by_shard(ncts: list[str], numbers: list[array]) -> dict[str, pa.Table]:
    """The members by shard key, in directory order within each shard (a study listed twice is read
    in that order), keys sorted; columns built once for all members, then split in Arrow."""
    n = len(ncts)
    ints = [pa.Array.from_buffers(pa.int64(), n, [None, pa.py_buffer(column)]) for column in numbers]
    return split_by_shard(pa.table([pa.array(ncts, pa.string()), *ints], names=MEMBER_SCHEMA.names)
                          .cast(MEMBER_SCHEMA))


def _directory_location(f: BinaryIO, size: int, path: Path) -> tuple[int, int, int]:
    """(entries, size, offset) of the central directory, from the end records (ZIP64 aware)."""
    tail_len = min(size, _EOCD.size + 0xFFFF)
    f.seek(size - tail_len)
    tail = f.read(tail_len)
    at = tail.rfind(_EOCD_SIGNATURE)
    if at < 0 or at + _EOCD.size > len(tail):
        raise BulkArchiveInvalid(f"{path} is not a complete zip archive (truncated download?)")
    _, _, _, _, count, cd_size, cd_offset, _ = _EOCD.unpack_from(tail, at)
    locator_at = at - _ZIP64_LOCATOR.size
    if locator_at >= 0 and tail[locator_at:locator_at + 4] == _ZIP64_LOCATOR_SIGNATURE:
        _, _, record_offset, _ = _ZIP64_LOCATOR.unpack_from(tail, locator_at)
        f.seek(record_offset)
        record = f.read(_ZIP64_EOCD.size)
        if len(record) != _ZIP64_EOCD.size or record[:4] != _ZIP64_EOCD_SIGNATURE:
            raise BulkArchiveInvalid(f"{path}: damaged ZIP64 end record")
        _, _, _, _, _, _, _, count, cd_size, cd_offset = _ZIP64_EOCD.unpack(record)
    if cd_offset + cd_size > size:
        raise BulkArchiveInvalid(f"{path} is truncated: its directory ends past the end of the file")
    return count, cd_size, cd_offset


def _zip64_sizes(extra: bytes, usize: int, csize: int, offset: int) -> tuple[int, int, int]:
    """The ZIP64 extra field holds the 8-byte values of the fields that are 0xFFFFFFFF, in order."""
    pos = 0
    while pos + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, pos)
        if tag == 1:
            values = iter(struct.unpack_from(f"<{length // 8}Q", extra, pos + 4))
            usize = next(values) if usize == 0xFFFFFFFF else usize
            csize = next(values) if csize == 0xFFFFFFFF else csize
            offset = next(values) if offset == 0xFFFFFFFF else offset
            break
        pos += 4 + length
    return usize, csize, offset


_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a named pipe", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}


def check_bulk_file(path: str | os.PathLike[str]) -> Path:
    """The quick check (before a run starts): the file exists and ends with a zip directory."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:  # also a link to nowhere
        raise UsageError(f"no such bulk file: {path}") from None
    except OSError as exc:  # a link loop, a parent that is a file, no permission to look
        raise UsageError(f"cannot read the bulk file {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):  # it is there: 'no such bulk file' sent the user looking for a typo
        raise UsageError(f"{path} is {_KINDS.get(stat.S_IFMT(mode), 'not a regular file')}, not a bulk file "
                         "(a zip archive)")
    if not zipfile.is_zipfile(path):
        raise BulkArchiveInvalid(f"{path} is not a complete zip archive (truncated download?)")
    return path


def members(table: pa.Table) -> list[Member]:
    """A shard's (or a slice's) members as tuples, for reading."""
    return [Member(*row) for row in zip(*(table[name].to_pylist() for name in MEMBER_SCHEMA.names), strict=True)]


def member_key(member: Member) -> int:
    """What the zip's directory says of a member's bytes: its uncompressed size << 32 | its CRC-32.
    Stored with the version read from it: a later archive's member with the same key has the same
    bytes (a changed member keeps both its size and its CRC-32 by chance once in ~4 billion; the
    sampled re-hash of each load and ``load-bulk --verify`` are there for what remains)."""
    return (member.file_size << 32) | member.crc


def split_by_shard(table: pa.Table) -> dict[str, pa.Table]:
    """The rows of ``table`` by shard key (the last two digits of ``nct_id``), keys sorted, rows in
    their order within each shard: the members of an archive, or the heads each shard task gets."""
    keys = pc.utf8_slice_codeunits(table["nct_id"], -2)
    return {key: table.filter(pc.equal(keys, key)) for key in sorted(pc.unique(keys).to_pylist())}


def group_shards(sizes: dict[str, int], target: int, multiple: int = 1) -> list[list[str]]:
    """Consecutive shard keys in groups of about ``target`` members each, as even as the folders allow,
    the number of groups a multiple of ``multiple`` (the workers: 25 tasks on 2 workers leave one
    idle for the whole last task) where there are enough folders: one task per group. Each task
    writes one file per table, so 100 tasks for a small archive would write 100 small files per table
    (per-file costs, footers every view reads). A folder bigger than a group's share is a group."""
    total = sum(sizes.values())
    wanted = max(1, -(-total // max(1, target)))
    wanted = min(len(sizes), -(-wanted // multiple) * multiple) or 1
    groups: list[list[str]] = []
    current: list[str] = []
    count, shares = 0, 1  # members so far; the group closes once they reach this many shares of the whole
    for key, size in sizes.items():
        current.append(key)
        count += size
        if count * wanted >= shares * total and len(groups) < wanted - 1:
            groups.append(current)
            current = []
            shares = count * wanted // total + 1  # a big folder may have passed several shares
    if current:
        groups.append(current)
    return groups


class MemberReader:
    """Reads members of one archive from an open file (one per worker; not shared across processes)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._file = open(path, "rb")  # noqa: SIM115 - closed by close()/__exit__

    def __enter__(self) -> MemberReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def read(self, member: Member) -> bytes:
        """The member's bytes, inflated and CRC-checked; ``BulkArchiveInvalid`` if damaged."""
        fd = self._file.fileno()
        header = os.pread(fd, _LOCAL_HEADER.size, member.header_offset)
        if len(header) != _LOCAL_HEADER.size or header[:4] != _LOCAL_SIGNATURE:
            raise BulkArchiveInvalid(f"{self.path}: bad local header for {member.nct_id}")
        fields = _LOCAL_HEADER.unpack(header)
        start = member.header_offset + _LOCAL_HEADER.size + fields[-2] + fields[-1]  # name + extra lengths
        data = os.pread(fd, member.compress_size, start)
        if len(data) != member.compress_size:
            raise BulkArchiveInvalid(f"{self.path} is truncated inside {member.nct_id}")
        if member.method == zipfile.ZIP_DEFLATED:
            try:
                data = bytes(deflate.deflate_decompress(data, member.file_size))
            except deflate.DeflateError as exc:
                raise BulkArchiveInvalid(f"{self.path}: {member.nct_id} does not inflate ({exc})") from None
        if len(data) != member.file_size or zlib.crc32(data) != member.crc:
            raise BulkArchiveInvalid(f"{self.path}: {member.nct_id} fails its CRC check (damaged archive)")
        return data


def is_url(source: str) -> bool:
    return source[:8].lower().startswith(("http://", "https://"))  # a URL's scheme is case-blind
