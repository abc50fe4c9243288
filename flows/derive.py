"""Changes derived from stored versions: a run's own (``derive_run_changes``, for a sync, a bulk load or
a backfill), or every change again from the raw versions (the ``rederive_changes`` flow).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from flows import settings
from flows.engine import NONE, flow, get_run_logger, task
from flows.runs import RunTotals, SyncSummary, commit_run, new_run_id
from pipeline.changes import Rules, derive_changes
from pipeline.errors import UsageError
from warehouse import RunWriter, Warehouse
from warehouse.pairs import Baselines, version_pairs
from warehouse.rows import changes_table


@task(name="derive-changes", cache_policy=NONE)
def derive_run_changes(run: RunWriter, rules: Rules, *, only_run: str | None,
                       baseline_runs: Baselines, nct_ids: list[str] | None = None) -> int:
    """Changes between each version this run stored (or every version, for ``rederive``; every version of
    ``nct_ids``, for a backfill) and the one before."""
    run.seal("study_versions")
    written = 0
    with run.staged() as con:
        for pairs in version_pairs(con, run_id=only_run, baseline_runs=baseline_runs, nct_ids=nct_ids,
                                   source=(run.warehouse.root, run.staged_manifest()), spill_dir=run.dir):
            rows = [change for pair in pairs for change in derive_changes(pair, rules)]
            run.append("changes", changes_table(rows))
            written += len(rows)
    return written

@flow(name="rederive_changes", validate_parameters=True)
def rederive_changes(warehouse: str | None = None, rules_file: str | None = None,
                     lock_timeout: float = 30.0) -> dict[str, Any]:
    """Recompute every change from the stored raw versions (nothing is fetched); replaces ``changes``.
    Also types ``fdaaa_inputs`` for versions stored before that table existed."""
    started = datetime.now(UTC)
    clock = time.monotonic()
    run_id = new_run_id(started)
    store = Warehouse(settings.warehouse_dir(warehouse))
    if not store.exists():  # a mistyped --warehouse must not become a new, empty warehouse with a run
        raise UsageError(f"no warehouse at {store.root} (nothing to rederive)")
    with store.writer(run_id, lock_timeout=lock_timeout) as run:
        rules = settings.rules(rules_file, run.manifest.meta)
        with store.committed() as con:
            from warehouse.pairs import baseline_runs

            baselines = baseline_runs(con, store.root)
        totals = RunTotals()
        totals.changes_written = derive_run_changes(run, rules, only_run=None, baseline_runs=baselines)
        from warehouse.compliance import fill_fdaaa_inputs

        typed = fill_fdaaa_inputs(run)  # versions stored by a release before the FDAAA inputs were typed
        if typed:
            get_run_logger().info("typed the FDAAA inputs of %d stored versions", typed)
        summary = SyncSummary(run_id, "rederive", "all", None, round(time.monotonic() - clock, 3), totals)
        commit_run(run, summary, started, params={}, api_url=None, meta={"rules": rules.to_json()},
                   replace=frozenset({"changes"}))
    return summary.as_dict()
