"""Ad hoc SQL on the warehouse, read-only: only queries, never DDL/DML/ATTACH/COPY/INSTALL/SET.

Two layers. ``check_query`` accepts only SELECT-type statements (and EXPLAIN of one: ``EXPLAIN
ANALYZE`` *runs* its statement, so ``EXPLAIN ANALYZE COPY ... TO`` would write a file). Then the
query runs on a sandboxed connection (``Warehouse.connect(sandbox=True)``): the database is opened
read-only, DuckDB may open no file outside the warehouse's data directories (so ``read_text``,
``read_csv``, ``glob`` and URLs cannot reach the rest of the disk or the network), extensions are
neither installed nor loaded, and the configuration is locked.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import duckdb

from pipeline.errors import TrialsyncError, UsageError, WarehouseError
from warehouse.problems import Problem

_ALLOWED = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}
# EXPLAIN [(options)] [ANALYZE] <statement>
_EXPLAIN_PREFIX = re.compile(r"^\s*EXPLAIN\s+(?:\([^)]*\)\s*)?(?:ANALY[SZ]E\s+)?", re.IGNORECASE)


def check_query(sql: str) -> None:
    """Refuse anything that is not a plain query; ``COPY (...) TO``, ``ATTACH``, ``SET`` and DDL/DML
    would write files, reach other databases or change the session."""
    statements = _statements(sql)
    if not statements:
        raise UsageError("no SQL statement given")
    for statement in statements:
        kind = statement.type
        if kind == duckdb.StatementType.EXPLAIN:
            inner = _statements(_EXPLAIN_PREFIX.sub("", statement.query, count=1))
            if [s.type for s in inner] != [duckdb.StatementType.SELECT]:
                raise UsageError("trialsync sql is read-only: EXPLAIN is accepted only for a SELECT")
        elif kind not in _ALLOWED:
            raise UsageError(f"trialsync sql is read-only: {kind.name} statements are refused")
    if len(statements) > 1:  # only the last one's rows would be shown
        raise UsageError(f"one statement at a time, please (got {len(statements)})")


def _statements(sql: str) -> list[duckdb.Statement]:
    try:
        return list(duckdb.extract_statements(sql))
    except duckdb.Error as exc:
        raise UsageError(f"SQL does not parse: {str(exc).splitlines()[0]}") from None


def query_error(exc: Exception) -> UsageError:
    """A failed query as one line; a sandbox refusal says so."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, duckdb.PermissionException) or "disabled by configuration" in first \
            or "configuration has been locked" in first:
        return UsageError(f"trialsync sql reads only the warehouse: {first}")
    return UsageError(f"query failed: {first}")


_MISSING_NAME = re.compile(r"with name (\S+) does not exist", re.IGNORECASE)


@cache
def _view_names() -> frozenset[str]:
    """Every view and macro the catalog defines (a reader of a damaged warehouse skips those it cannot)."""
    from warehouse.catalog import plan_catalog
    from warehouse.manifest import Manifest

    made = re.compile(r"CREATE OR REPLACE (?:VIEW|MACRO) (?:\w+\.)?(\w+)")
    return frozenset(m.group(1).lower() for statement in plan_catalog(Path("/"), Manifest())
                     if (m := made.match(statement)))


def damage_error(root: Path, exc: Exception) -> WarehouseError | None:
    """A query that failed because the warehouse is damaged (a committed file missing or unreadable,
    so its view could not be read or even defined): one line naming the damage and pointing at
    ``check`` and ``repair`` (exit 1, not the bad-input 2). None when the query failed otherwise.

    Only a failure reading files can be damage: a view the reader had to leave out (its files are
    damaged) that does not exist, an I/O, invalid-input or internal error, or an error naming a file of
    the warehouse; and only when ``check`` then finds the damage (the quick check; else a deep look at
    the committed files the error names, e.g. a page that does not decode behind a good footer). An
    invalid-input error that names no damaged file is the query's own (a user's ``error()``)."""
    from warehouse.check import check

    if not isinstance(exc, duckdb.Error) or isinstance(exc, duckdb.PermissionException):  # the sandbox's refusal
        return None
    text = str(exc)
    if isinstance(exc, duckdb.CatalogException):
        named = _MISSING_NAME.search(text)
        if named is None or named.group(1).strip("\"'!").lower() not in _view_names():
            return None
    elif type(exc) not in _READ_FAILURES and str(root) not in text:
        return None
    try:
        problems = [p for p in check(root, studies=False).problems if p.table is not None]
        if not problems:
            problems = _named_damage(root, text)
    except Exception:  # the check itself failed: the query's own error is all there is to say
        return None
    naming = [p for p in problems if str(root / p.path) in text]
    if not naming and isinstance(exc, duckdb.InvalidInputException):
        # a damaged file's invalid input names the file; unnamed, it is the query's own (``error()``,
        # a bad argument), whatever damage a table it did not read has
        return None
    problems = naming + [p for p in problems if p not in naming]  # the file the error names first
    if not problems:
        return None
    more = f" and {len(problems) - 1} more damaged file(s)" if len(problems) > 1 else ""
    return WarehouseError(f"query failed: the warehouse is damaged ({problems[0].line()}{more}): "
                          "see `trialsync check`, then `trialsync repair`")


# What DuckDB raises when a file it reads is missing or damaged (a bad page: a bare ``duckdb.Error``)
_READ_FAILURES = (duckdb.Error, duckdb.IOException, duckdb.InvalidInputException, duckdb.InternalException,
                  duckdb.SerializationException)


def _named_damage(root: Path, text: str) -> list[Problem]:
    """The committed files ``text`` names that a deep look finds damaged (size and footer are fine)."""
    from warehouse import Warehouse
    from warehouse.check import check_file

    problems = []
    for entry in Warehouse(root).manifest().entries:
        if str(root / entry.path) in text and (found := check_file(root, entry, deep=True)) is not None:
            problems.append(Problem(found[0], entry.path, found[1], entry.table, entry.run_id))
    return problems


@contextmanager
def reading(directory: Path, *, sandbox: bool = False, user_query: bool = False
            ) -> Iterator[duckdb.DuckDBPyConnection]:
    """The connection of every read-only command (``sql``, ``changes``, ``history``, ``runs``, ``report``,
    ``compliance``, ``alerts list``): the committed state, views over the files that are intact (a damaged
    file's table is left out, the others answer). A query that fails because the warehouse is damaged
    becomes one line naming the file and pointing at ``check`` and ``repair`` (exit 1); ``user_query``
    (SQL a user typed): any other failure is the query's own (exit 2)."""
    from warehouse import Warehouse

    store = Warehouse(directory)
    with store.connect(sandbox=sandbox) as con:
        try:
            yield con
        except duckdb.Error as exc:
            damage = damage_error(store.root, exc)
            if damage is not None:
                raise damage from None
            if user_query:
                raise query_error(exc) from None
            raise
        except Exception as exc:  # e.g. a value Python cannot hold, met while fetching a user's rows
            if user_query and not isinstance(exc, TrialsyncError):
                raise query_error(exc) from None
            raise


@contextmanager
def naming_damage(root: Path) -> Iterator[None]:
    """For a writing command's reads of the committed state (an alerts run's outbox, ledger and changes):
    a failure on a damaged file is the read commands' one line naming it and pointing at ``check`` and
    ``repair`` (it was DuckDB's own 'No magic bytes found at end of file ...', 'rerun with --debug')."""
    try:
        yield
    except duckdb.Error as exc:
        damage = damage_error(root, exc)
        if damage is not None:
            raise damage from None
        raise
