"""Warehouse paths with odd characters. DuckDB takes '*', '?' and '[' in a file path as a glob pattern
and its ATTACH reads '\\' as '/' and cuts at '?': a warehouse whose path holds one had views that read
the files of other directories the pattern matched (a backup beside it: every row twice, and `check
--deep` called the warehouse inconsistent), or could never commit a run. Such a path is refused in one
line (exit 2) by every command before anything is written; every other character works as itself.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.registry.fake_server import FakeRegistry
from tests.conftest import fast_sync
from tests.reliability.support import query
from warehouse import Warehouse

Run = Callable[..., tuple[int, str, str]]
PATTERN = ("*", "?", "[1]", "\\")


@pytest.fixture
def trialsync(cli: Run) -> Run:
    """``trialsync ARGS`` in this process: its exit code, stdout and stderr (tests/conftest.py ``cli``)."""
    return cli


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """A warehouse of 12 real records (one sync), and its number of versions."""
    from tests.conftest import real_records

    root = tmp_path_factory.mktemp("paths") / "base"
    with FakeRegistry(real_records()[:12]).start() as registry:
        fast_sync(registry, root, full=True)
    return root, 12


@pytest.mark.parametrize("odd", PATTERN)
def test_a_warehouse_path_duckdb_reads_as_a_pattern_is_refused_by_every_command_and_nothing_is_written(
        odd: str, small: tuple[Path, int], trialsync: Run, tmp_path: Path) -> None:
    base, versions = small
    # Beside it, the warehouses the pattern matches ('wh*' and 'wh?' match 'whA', 'wh[1]' matches 'wh1').
    for sibling in ("whA", "wh1"):
        shutil.copytree(base, tmp_path / sibling, symlinks=True)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    target = tmp_path / f"wh{odd}"
    with FakeRegistry([]).start() as registry:
        code, _, err = trialsync("sync", "--api-url", registry.url, "--warehouse", str(target), "--quiet")
    assert code == 2, err
    assert err.startswith(f"trialsync: error: the warehouse path {target} holds '{odd[0]}'"), err
    assert len(err.strip().splitlines()) == 1
    assert not target.exists()

    # A warehouse moved to such a place (by `mv`, or an older release's) is not read through the pattern.
    shutil.copytree(base, target, symlinks=True)
    for args in (["sql", "SELECT count(*) FROM study_versions"], ["check", "--deep"], ["runs"], ["compact"]):
        code, out, err = trialsync(*args, "--warehouse", str(target))
        assert (code, out) == (2, ""), (args, out, err)
        assert f"the warehouse path {target} holds '{odd[0]}'" in err

    code, _, err = trialsync("backup", "--warehouse", str(base), str(tmp_path / f"bk{odd}"))
    assert code == 2, err
    assert f"the warehouse path {tmp_path / f'bk{odd}'} holds '{odd[0]}'" in err
    assert not (tmp_path / f"bk{odd}").exists() and not list(tmp_path.glob(".bk*"))
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())  # the siblings are untouched
    assert query(tmp_path / "whA", "SELECT count(*) FROM study_versions") == [(versions,)]


def test_a_warehouse_path_with_quotes_spaces_and_other_characters_works_as_itself(
        small: tuple[Path, int], trialsync: Run, tmp_path: Path) -> None:
    """Every character DuckDB takes literally: the warehouse syncs, backs up beside a look-alike and reads
    only its own files (a backup sharing its name's start is not read twice)."""
    base, versions = small
    odd = tmp_path / "w it's \"q\" ü 日本 %41 #{a,b} $HOME ~ ,;=+@!"
    shutil.copytree(base, odd, symlinks=True)
    with FakeRegistry([]).start() as registry:
        code, out, err = trialsync("sync", "--api-url", registry.url, "--warehouse", str(odd), "--quiet",
                                   "--request-interval", "0", "--ids", "NCT00000102")
    assert code == 0, err
    backup = Path(f"{odd}-bk")
    code, out, err = trialsync("backup", "--warehouse", str(odd), str(backup))
    assert code == 0, err
    for root in (odd, backup):
        code, out, err = trialsync("check", "--deep", "--warehouse", str(root))
        assert code == 0 and out.startswith("ok (deep check)"), (out, err)
        code, out, err = trialsync("sql", "SELECT count(*) AS n FROM study_versions", "--format", "csv",
                                   "--warehouse", str(root))
        assert (code, out.split()) == (0, ["n", str(versions)]), err
        assert Warehouse(root).root == root.resolve()
