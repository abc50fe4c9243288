"""Ad hoc SQL on the warehouse, read-only: only queries, never DDL/DML/ATTACH/COPY/INSTALL/SET."""

from __future__ import annotations

import duckdb

from pipeline.errors import UsageError

_ALLOWED = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}


def check_query(sql: str) -> None:
    """Refuse anything that is not a plain query; ``COPY (...) TO``, ``ATTACH``, ``SET`` and DDL/DML
    would write files, reach other databases or change the session."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise UsageError(f"SQL does not parse: {str(exc).splitlines()[0]}") from None
    if not statements:
        raise UsageError("no SQL statement given")
    for statement in statements:
        if statement.type not in _ALLOWED:
            kind = statement.type.name
            raise UsageError(f"trialsync sql is read-only: {kind} statements are refused")
