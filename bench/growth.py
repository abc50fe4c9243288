"""Per-run cost as runs accumulate (issue 19 item 8): ``python -m bench.growth --runs 400``.

One full sync of the 326 real records, then one incremental sync per "day", each after a handful of
real records changed (enrollment, posted that day), against the fake registry, in process (plain
engine). Prints per-run wall and CPU seconds, the commit's seconds and a fixed query's seconds
(``changes`` of the last day) at runs 1, 10, 50, 100, 200, 300, 400, with the load average.

``--paired 9,364``: the warehouse as it stood after those runs is kept, and afterwards the next day's
sync (runs 10 and 365 themselves: five changed records) is run on each kept state in turn, ``--repeat``
times, alternating, so both sides share the machine's moments. A row of means of ten consecutive runs
moves with the merges in its window; this compares one run's cost on a young and an old warehouse
directly. A kept day whose next run merges is refused (pick another). Each kept state is moved to one
path per side once (its catalog rewritten there, untimed), and after each timed sync put back as it
was at that same path, so a timed sync does what a daily one does. Before each, the process's
memo of parsed manifest generations is cleared: a daily run is a new process, which reads and parses
the generation files after the newest manifest checkpoint once.
"""

from __future__ import annotations

import argparse
import multiprocessing
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


def _calendar_past_today() -> None:
    """The bench's days run on past today (from 2027-01-01): keep each run's watermark at its own day
    instead of the product's cap at the real next day, so each incremental window is its day's, as on
    a real calendar (capped, every window would hold every earlier bench day's changes)."""
    import flows.sync

    flows.sync.next_watermark = lambda previous, newest, today: max(filter(None, [previous, newest]), default=None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.growth")
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--changed", type=int, default=5, help="records changed per day")
    parser.add_argument("--out", type=Path, default=None, help="warehouse directory (default: a temp dir)")
    parser.add_argument("--paired", default="", help="runs whose warehouse is kept and compared, e.g. 9,364")
    parser.add_argument("--repeat", type=int, default=10, help="syncs on each kept warehouse (--paired)")
    parser.add_argument("--fresh", action="store_true",
                        help="run each day's sync in a new process, as a scheduled daily run is (slower)")
    parser.add_argument("--compare-only", action="store_true",
                        help="only compare the warehouses an earlier run kept beside --out (kept-<run>)")
    args = parser.parse_args(argv)
    if args.compare_only and not (args.out and args.paired):
        parser.error("--compare-only needs --out and --paired")

    from flows.sync import sync_registry
    from pipeline import mutate
    from pipeline.registry.fake_server import FakeRegistry
    from tests.conftest import real_records
    from warehouse import run_writer
    from warehouse.store import Warehouse

    _calendar_past_today()
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
    base = date(2027, 1, 1)

    def change_day(registry: FakeRegistry, day: int) -> None:
        for i in range(args.changed):
            record = records[(day * args.changed + i) % len(records)]
            registry.put(mutate.posted_on(mutate.set_enrollment(record, 1000 + day), base + timedelta(days=day)))

    if args.compare_only:
        compare_kept({int(day): args.out.parent / f"kept-{int(day)}" for day in args.paired.split(",") if day},
                     records, change_day, args.repeat, fresh=args.fresh)
        return
    root = args.out or Path(tempfile.mkdtemp(prefix="trialsync-growth-")) / "warehouse"
    shutil.rmtree(root, ignore_errors=True)
    # A run that merges file sets costs more than one that does not: each row shows the mean (and the
    # most) of the WINDOW runs up to the reported one, so a row compares like with like.
    extra = (f" of which merging, CPU s (mean of {WINDOW}) |", "---:|") if args.fresh else ("", "")
    print(f"| run | wall s (mean of {WINDOW}) | CPU s (mean of {WINDOW}) | CPU s (median of {WINDOW}) "
          f"| CPU s (most of {WINDOW}) | commit s | `changes` last day s | file sets | files | load avg |{extra[0]}")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + extra[1])
    walls: list[float] = []
    cpus: list[float] = []
    merging: list[float] = []  # CPU s of each run's automatic merges (--fresh only)
    spawn = multiprocessing.get_context("spawn")
    pool = spawn.Pool(1, maxtasksperchild=1) if args.fresh else None
    paired = sorted(int(day) for day in args.paired.split(",") if day)
    kept: dict[int, Path] = {}

    with FakeRegistry(records).start() as registry:
        def sync() -> dict[str, Any]:
            result: dict[str, Any] = sync_registry(api_url=registry.url, warehouse=str(root), request_interval=0.0,
                                                   backoff_seconds=0.01, timeout_seconds=5.0)
            return result

        sync()
        for day in range(1, args.runs + 1):
            change_day(registry, day)
            commit_seconds.clear()
            if pool is not None:  # the child measures its own sync (not its start-up and imports)
                wall, cpu, merge_cpu, commit = pool.apply(_sync_in_child, (registry.url, str(root)))
                merging.append(merge_cpu)
                commit_seconds.append(commit)
            else:
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
                      f"{len(manifest.run_ids)} | {len(manifest.entries)} | {os.getloadavg()[0]:.1f} |"
                      + (f" {sum(merging[-WINDOW:]) / len(merging[-WINDOW:]):.2f} |" if merging else ""), flush=True)
            if day in paired:
                kept[day] = root.parent / f"kept-{day}"
                shutil.copytree(root, kept[day])
    if pool is not None:
        pool.close()
    if kept:
        compare_kept(kept, records, change_day, args.repeat, fresh=args.fresh)


def _sync_in_child(url: str, root: str) -> tuple[float, float, float, float]:
    """One day's sync in a new process: (wall s, CPU s, CPU s of the automatic merges after it, wall s
    of its commits)."""
    _calendar_past_today()
    from flows.sync import sync_registry
    from warehouse.run_writer import RunWriter
    from warehouse.store import Warehouse

    merge_cpu, commit = [0.0], [0.0]
    compact_after, run_commit = Warehouse._compact_after, RunWriter.commit

    def timed_merges(self: Warehouse, run: Any) -> None:
        start = time.process_time()
        try:
            compact_after(self, run)
        finally:
            merge_cpu[0] += time.process_time() - start

    def timed_commit(self: Any, *a: Any, **k: Any) -> None:
        start = time.perf_counter()
        try:
            run_commit(self, *a, **k)
        finally:
            commit[0] += time.perf_counter() - start

    Warehouse._compact_after = timed_merges  # type: ignore[method-assign]
    RunWriter.commit = timed_commit  # type: ignore[method-assign]
    wall, cpu = time.perf_counter(), time.process_time()
    sync_registry(api_url=url, warehouse=root, request_interval=0.0, backoff_seconds=0.01, timeout_seconds=5.0)
    return time.perf_counter() - wall, time.process_time() - cpu, merge_cpu[0], commit[0]


def compare_kept(kept: dict[int, Path], records: list[dict[str, Any]], change_day: Any, repeat: int,
                 *, fresh: bool = False) -> None:
    """The next day's sync on each kept warehouse, alternating (see the module doc); ``fresh``: each in
    a new process (then no memo to clear, and the process's age is the same for both)."""
    _calendar_past_today()
    from flows.sync import sync_registry
    from pipeline.registry.fake_server import FakeRegistry
    from warehouse import manifest as manifests
    from warehouse.store import Warehouse

    cpus: dict[int, list[float]] = {day: [] for day in kept}
    sets: dict[int, tuple[int, int]] = {}
    registries = {}
    places: dict[int, Path] = {}
    for day, source in kept.items():
        registry = FakeRegistry(records)
        for past in range(1, day + 2):  # the registry as it was on the next day
            change_day(registry, past)
        registries[day] = registry.start()
        places[day] = source.parent / f"run-{day}" / "warehouse"
        shutil.rmtree(places[day].parent, ignore_errors=True)
        shutil.copytree(source, places[day])
        Warehouse(places[day]).connect().close()  # the catalog rewritten for this place, untimed
        manifest = Warehouse(places[day]).manifest()
        sets[day] = (len(manifest.run_ids), len(manifest.entries))
    try:
        for _ in range(repeat):
            for day, place in places.items():
                saved = place.with_name("saved")
                shutil.rmtree(saved, ignore_errors=True)
                shutil.copytree(place, saved)
                if fresh:
                    with multiprocessing.get_context("spawn").Pool(1) as pool:
                        cpus[day].append(pool.apply(_sync_in_child, (registries[day].url, str(place)))[1])
                else:
                    manifests._parse_generation.cache_clear()  # as in a new process
                    manifests._last_fold = None
                    cpu = time.process_time()
                    sync_registry(api_url=registries[day].url, warehouse=str(place), request_interval=0.0,
                                  backoff_seconds=0.01, timeout_seconds=5.0)
                    cpus[day].append(time.process_time() - cpu)
                after = Warehouse(place).manifest()
                shutil.rmtree(place)
                saved.rename(place)
                if len(after.run_ids) != sets[day][0] + 1:
                    raise SystemExit(f"the run after {day} merged file sets: pick another day to compare")
    finally:
        for registry in registries.values():
            registry.stop()
    first = min(kept)
    print(f"\n| warehouse after run | file sets | files | next run's CPU s (median of {repeat}) "
          f"| (min) | (max) | median ÷ run {first}'s |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for day in kept:
        median = statistics.median(cpus[day])
        print(f"| {day} | {sets[day][0]} | {sets[day][1]} | {median:.3f} | {min(cpus[day]):.3f} "
              f"| {max(cpus[day]):.3f} | {median / statistics.median(cpus[first]):.2f} |", flush=True)


if __name__ == "__main__":
    main()
