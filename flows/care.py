"""Warehouse care: ``check``, ``repair`` and ``backup`` (plain functions: no Prefect server needed,
except ``repair --resync``, which fetches the lost studies through a normal sync run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flows import settings
from pipeline.errors import UsageError
from warehouse import Warehouse, readers
from warehouse.backup import BackupResult, backup
from warehouse.check import Report, check
from warehouse.repair import RepairResult, repair


def check_warehouse(warehouse: str | None = None, *, deep: bool = False) -> Report:
    store = Warehouse(settings.warehouse_dir(warehouse))
    if not store.exists():
        raise UsageError(store.missing())
    return check(store.root, deep=deep)


def repair_warehouse(warehouse: str | None = None, *, lock_timeout: float = 30.0) -> RepairResult:
    """Under the writer lock (no sync is staging files meanwhile). With the catalog and ``manifest/``
    both lost, when the runs' ``_COMMITTED`` markers (and the checkpoints) hold every generation."""
    store = Warehouse(settings.warehouse_dir(warehouse))
    if not store.exists():
        newest, missing = readers.marker_log(store.root) if store.root.is_dir() else (0, [])
        if not newest or missing or readers.unmarked_runs(store.root):
            raise UsageError(store.missing())
    with store.lock("writer", "repair", timeout=lock_timeout, what="a sync"):
        store.refresh_catalog()
        return repair(store.root)


def resync_lost(warehouse: str | None, ids: list[str], *, api_url: str | None = None,
                **sync_options: Any) -> dict[str, Any]:
    """Fetch the studies a repair lost again: one sync run of ``--ids``."""
    from flows.sync import sync_registry

    result: dict[str, Any] = sync_registry(ids=ids, warehouse=str(settings.warehouse_dir(warehouse)),
                                           api_url=api_url, **sync_options)
    return result


def backup_warehouse(dest: str, warehouse: str | None = None, *, hard_links: bool = True) -> BackupResult:
    store = Warehouse(settings.warehouse_dir(warehouse))
    if not store.exists():
        raise UsageError(store.missing())
    store.connect().close()  # brings a moved or earlier-release warehouse up to date when it can
    return backup(store.root, Path(dest), hard_links=hard_links)
