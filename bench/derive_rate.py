"""CPU cost of deriving a run's changes, a pair at a time: ``diff`` (identical sections and modules
skipped) against ``full_diff`` (every module normalised and diffed), on the same pairs.

``python -m bench.derive_rate WAREHOUSE RUN_ID`` reads the run's version pairs (``warehouse.pairs``:
the read is timed too, wall and peak RSS) and derives their changes with each diff, best of 3 rounds of
process time, GC paused. Prints one JSON line.
"""

from __future__ import annotations

import gc
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

from flows import settings
from pipeline import changes, diff
from warehouse import Warehouse
from warehouse.pairs import version_pairs


def _best_of(rounds: int, work: Any) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        work()
        best = min(best, time.process_time() - start)
    return best


def main() -> None:
    root, run_id = Path(sys.argv[1]), sys.argv[2]
    store = Warehouse(root)
    manifest = store.manifest()
    rules = settings.rules(None, manifest.meta)
    clock = time.monotonic()
    with store.committed() as con:
        pairs = [p for batch in version_pairs(con, run_id=run_id, source=(root, manifest)) for p in batch]
    read_seconds = time.monotonic() - clock
    gc.disable()
    rows = sum(len(changes.derive_changes(p, rules)) for p in pairs)
    skipping = _best_of(3, lambda: [changes.derive_changes(p, rules) for p in pairs])
    changes.diff = diff.full_diff  # the peer: what derive_changes called before
    full_rows = sum(len(changes.derive_changes(p, rules)) for p in pairs)
    full = _best_of(3, lambda: [changes.derive_changes(p, rules) for p in pairs])
    print(json.dumps({
        "pairs": len(pairs), "changes": rows, "changes_full_diff": full_rows,
        "read_wall_s": round(read_seconds, 2),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10,
        "derive_us_per_pair": round(skipping / len(pairs) * 1e6),
        "full_diff_us_per_pair": round(full / len(pairs) * 1e6),
        "speedup": round(full / skipping, 2)}))


if __name__ == "__main__":
    main()
