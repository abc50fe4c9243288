"""CPU cost of the content hash: the fast path against the full walk, on the same records.

``python -m bench.hash_rate ZIP [N]`` hashes the first N members of a corpus zip (default 3,000) with
``hash_and_unknown`` (fast path, the walk as fallback), ``slow_hash_and_unknown`` (the walk alone) and,
as the floor, BLAKE2b of orjson's key-sorted dump of the material content (the rule before arrays
were multisets, schema-pruned and NFC: not the same values). Prints one JSON line; CPU seconds
(process time), GC paused as in a shard, best of 3 rounds.
"""

from __future__ import annotations

import gc
import hashlib
import json
import sys
import time
import zipfile
from collections.abc import Callable
from typing import Any

import orjson

from pipeline import hashing


def _floor(record: dict[str, Any]) -> str:
    return hashlib.blake2b(orjson.dumps(hashing.material_content(record), option=orjson.OPT_SORT_KEYS),
                           digest_size=16).hexdigest()


def main() -> None:
    path, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3000
    with zipfile.ZipFile(path) as zf:
        records = [orjson.loads(zf.read(info)) for info in zf.infolist()[:n]]
    fast = sum(1 for r in records if hashing._fast_canonical(hashing.material_content(r)) is not None)
    gc.disable()
    out: dict[str, Any] = {"records": len(records), "fast_path_records": fast}
    functions: dict[str, Callable[[dict[str, Any]], object]] = {
        "hash_and_unknown": hashing.hash_and_unknown, "walk_only": hashing.slow_hash_and_unknown,
        "orjson_sorted_floor": _floor}
    for name, fn in functions.items():
        best = float("inf")
        for _ in range(3):
            clock = time.process_time()
            for record in records:
                fn(record)
            best = min(best, time.process_time() - clock)
        out[f"{name}_us_per_record"] = round(best / len(records) * 1e6, 1)
    out["walk_over_fast"] = round(out["walk_only_us_per_record"] / out["hash_and_unknown_us_per_record"], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
