"""The only code that touches DuckDB and Parquet.

A warehouse is a directory: append-only Parquet files per run under ``runs/`` and a small
``warehouse.duckdb`` catalog of views over the committed files. A run commits by atomically
replacing the catalog, so readers see the whole run or none of it and are never blocked.
"""

from warehouse.store import RunWriter, Warehouse

__all__ = ["RunWriter", "Warehouse"]
