"""Building blocks of the ``aact`` views: a view is a list of (column, AACT type, SQL expression) over a
FROM clause; ``render`` casts every expression to the DuckDB type that stands for the AACT type."""

from __future__ import annotations

from dataclasses import dataclass

# AACT's Postgres types -> DuckDB. ``numeric`` without a scale becomes DOUBLE (DuckDB's bare DECIMAL
# would round to 3 places); the serial keys AACT declares ``integer`` are BIGINT digests here.
DUCKDB_TYPES = {
    "character varying": "VARCHAR", "text": "VARCHAR", "integer": "INTEGER", "bigint": "BIGINT", "date": "DATE",
    "boolean": "BOOLEAN", "numeric": "DOUBLE", "double precision": "DOUBLE", "numeric(10,6)": "DECIMAL(10,6)",
    "timestamp": "TIMESTAMP", "json": "JSON", "key": "BIGINT",
}

VC, INT, DT, BOOL, NUM, KEY, TS = "character varying", "integer", "date", "boolean", "numeric", "key", "timestamp"
TXT = "text"


@dataclass(frozen=True)
class AactView:
    name: str
    columns: tuple[tuple[str, str, str], ...]  # (column, AACT type or "key", SQL expression)
    source: str  # FROM ... (and WHERE / GROUP BY) clause

    @property
    def column_names(self) -> list[str]:
        return [c for c, _, _ in self.columns]


def render(view: AactView) -> str:
    select = ",\n       ".join(f'CAST({expr} AS {DUCKDB_TYPES[kind]}) AS "{name}"'
                              for name, kind, expr in view.columns)
    return f"CREATE OR REPLACE VIEW aact.{view.name} AS\nSELECT {select}\n{view.source}"


def versioned(table: str, alias: str = "t") -> str:
    """``table`` restricted to the versions ``aact._versions`` shows (``v.observed_at`` available)."""
    return (f"FROM main.{table} AS {alias} JOIN aact._versions AS v "
            f"ON v.nct_id = {alias}.nct_id AND v.version = {alias}.version")


def key(*parts: str) -> str:
    """A surrogate key: a 63-bit digest of the study and the row's place (stable across versions)."""
    return f"CAST(hash({', '.join(parts)}) >> 1 AS BIGINT)"


def aact_date(raw: str) -> str:
    """AACT's date rule: ``yyyy-MM-dd`` kept, ``yyyy-MM`` -> last day of the month, ``yyyy`` -> 31 December."""
    return (f"CASE length({raw}) WHEN 4 THEN make_date(CAST({raw} AS INTEGER), 12, 31) "
            f"WHEN 7 THEN last_day(CAST({raw} || '-01' AS DATE)) ELSE CAST({raw} AS DATE) END")


def empty(name: str, columns: tuple[tuple[str, str], ...]) -> AactView:
    """A table AACT fills from its own reference files or admin settings, not from study records."""
    return AactView(name, tuple((c, kind, "NULL") for c, kind in columns), "WHERE false")


def created(alias: str = "v") -> tuple[tuple[str, str, str], ...]:
    """AACT's row timestamps: here the time trialsync stored the version."""
    return (("created_at", TS, f"{alias}.observed_at"), ("updated_at", TS, f"{alias}.observed_at"))
