"""``compact_warehouse``: rewrite every table into one file per table (see ``warehouse.compact``)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from flows import settings
from flows.engine import flow, get_run_logger
from flows.inputs import check_hours
from flows.runs import RunTotals, SyncSummary, commit_run, new_run_id
from pipeline.errors import UsageError, WarehouseError
from warehouse import Warehouse
from warehouse.check import first_damaged
from warehouse.compact import copy_tables, retention_meta
from warehouse.tables import TABLES

COMPACT_SCOPE = "warehouse"  # not a sync scope: never a baseline, watermark or scope member


@flow(name="compact_warehouse", validate_parameters=True)
def compact_warehouse(warehouse: str | None = None, keep_hours: float = 24.0,
                      lock_timeout: float = 30.0) -> dict[str, Any]:
    """Copy what every view shows into one new run, commit it as the only source of every table, and
    delete the run directories earlier compactions superseded once ``keep_hours`` have passed."""
    check_hours("--keep-hours", keep_hours)
    started = datetime.now(UTC)
    clock = time.monotonic()
    run_id = new_run_id(started)
    store = Warehouse(settings.warehouse_dir(warehouse))
    if not store.exists():
        raise UsageError(f"no warehouse at {store.root} (nothing to compact)")
    with store.writer(run_id, lock_timeout=lock_timeout) as run:
        files_before = len(run.manifest.entries)
        superseded = run.manifest.run_ids
        damage = first_damaged(store.root, run.manifest.entries)
        if damage is not None:  # the rewrite would carry it into files whose checksums vouch for it
            raise WarehouseError(f"not compacting: {damage}; run `trialsync check --deep`, then `trialsync repair`")
        copied = copy_tables(run)
        summary = SyncSummary(run_id, "compact", COMPACT_SCOPE, None, round(time.monotonic() - clock, 3),
                              RunTotals())
        commit_run(run, summary, started, params={}, api_url=None,
                   meta=retention_meta(run.manifest, superseded, started, timedelta(hours=keep_hours)),
                   replace=frozenset(TABLES))
        files_after = len(store.manifest().entries)
        deleted = store.remove_superseded()  # under the writer lock: no other run is staging files
    get_run_logger().info("compacted %d files into %d; %d superseded run directories deleted",
                          files_before, files_after, deleted)
    return {"run_id": run_id, "files_before": files_before, "files_after": files_after,
            "rows": {t: n for t, n in copied.items() if n}, "deleted_runs": deleted,
            "kept_until": (started + timedelta(hours=keep_hours)).isoformat(),
            "duration_seconds": round(time.monotonic() - clock, 3)}

