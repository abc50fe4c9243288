"""Per-run cost as runs accumulate (issue 19 item 8): ``python -m bench.growth --runs 400``.

One full sync of the 326 real records, then one incremental sync per "day", each after a handful of
real records changed (enrollment, posted that day), against the fake registry, in process (plain
engine). Prints per-run wall and CPU seconds, the commit's seconds and a fixed query's seconds
(``changes`` of the last day) at runs 1, 10, 50, 100, 200, 300, 400, with the load average.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

os.environ.setdefault("TRIALSYNC_ENGINE", "plain")
# Each run stands for a day: a merged run's directory (and its entry in the manifest's meta) would be
# gone 24 hours later, so by the next run. Minutes apart, they would pile up instead.
os.environ.setdefault("TRIALSYNC_AUTOCOMPACT_KEEP_HOURS", "0")

REPORT_AT = (1, 10, 50, 100, 200, 300, 365, 400)
WINDOW = 10  # runs averaged in each reported row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.growth")
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--changed", type=int, default=5, help="records changed per day")
    parser.add_argument("--out", type=Path, default=None, help="warehouse directory (default: a temp dir)")
    args = parser.parse_args(argv)

    from flows.sync import sync_registry
    from pipeline import mutate
    from pipeline.registry.fake_server import FakeRegistry
    from tests.conftest import real_records
    from warehouse import run_writer
    from warehouse.store import Warehouse

    commit_seconds: list[float] = []
    original = run_writer.RunWriter.commit

    def timed_commit(self: Any, *a: Any, **k: Any) -> None:
        start = time.perf_counter()
        try:
            original(self, *a, **k)
        finally:
            commit_seconds.append(time.perf_counter() - start)

    run_writer.RunWriter.commit = timed_commit  # type: ignore[method-assign]
    records = real_records()
    root = args.out or Path(tempfile.mkdtemp(prefix="trialsync-growth-")) / "warehouse"
    shutil.rmtree(root, ignore_errors=True)
    base = date(2027, 1, 1)
    # A run that merges file sets costs more than one that does not: each row shows the mean (and the
    # most) of the WINDOW runs up to the reported one, so a row compares like with like.
    print(f"| run | wall s (mean of {WINDOW}) | CPU s (mean of {WINDOW}) | CPU s (median of {WINDOW}) "
          f"| CPU s (most of {WINDOW}) | commit s | `changes` last day s | file sets | files | load avg |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    walls: list[float] = []
    cpus: list[float] = []
    with FakeRegistry(records).start() as registry:
        def sync() -> dict[str, Any]:
            result: dict[str, Any] = sync_registry(api_url=registry.url, warehouse=str(root), request_interval=0.0,
                                                   backoff_seconds=0.01, timeout_seconds=5.0)
            return result

        sync()
        for day in range(1, args.runs + 1):
            for i in range(args.changed):
                record = records[(day * args.changed + i) % len(records)]
                registry.put(mutate.posted_on(mutate.set_enrollment(record, 1000 + day), base + timedelta(days=day)))
            commit_seconds.clear()
            wall, cpu = time.perf_counter(), time.process_time()
            sync()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            walls.append(wall)
            cpus.append(cpu)
            if day in REPORT_AT or day == args.runs:
                store = Warehouse(root)
                start = time.perf_counter()
                with store.connect() as con:
                    con.execute("SELECT count(*) FROM changes_between(?, ?)",
                                [base + timedelta(days=day), base + timedelta(days=day)]).fetchall()
                query = time.perf_counter() - start
                manifest = store.manifest()
                window_wall, window_cpu = walls[-WINDOW:], cpus[-WINDOW:]
                print(f"| {day} | {sum(window_wall) / len(window_wall):.2f} | {sum(window_cpu) / len(window_cpu):.2f} "
                      f"| {statistics.median(window_cpu):.2f} | {max(window_cpu):.2f} "
                      f"| {sum(commit_seconds):.2f} | {query:.3f} | "
                      f"{len(manifest.run_ids)} | {len(manifest.entries)} | {os.getloadavg()[0]:.1f} |", flush=True)


if __name__ == "__main__":
    main()
