"""Where a bulk load's time goes: cProfile of one shard's work (``process_shard``), by stage.

``python -m bench.profile_shard ZIP [KEY]`` prints one JSON line: studies, CPU seconds, and the
seconds of each stage (cumulative time of the functions that do it). No heads: a first load. The
shard is the first task ``load-bulk`` would run with 2 workers (small folders grouped), or folder KEY.
"""

from __future__ import annotations

import cProfile
import json
import pstats
import sys
import tempfile
import time
from datetime import UTC, datetime

from flows.bulk import shard_tasks
from flows.shards import ShardJob, process_shard
from pipeline.registry.bulk import BulkArchive
from pipeline.versioning import RunContext
from warehouse.heads import HEAD_SCHEMA

# stage -> functions (file fragment, function name) whose cumulative time is the stage's.
STAGES = {
    "read + inflate + CRC (libdeflate)": [("bulk.py", "read")],
    "JSON parse (orjson.loads)": [("~", "<built-in method orjson.loads>"), ("~", "<orjson.loads>")],
    "canonical form + BLAKE2b (hash_and_unknown)": [("hashing.py", "hash_and_unknown")],
    "validation + typed core columns (parse_record)": [("parse.py", "parse_record")],
    "child-table rows (flatten)": [("flatten.py", "flatten")],
    "Arrow tables (rows.plan_tables)": [("rows.py", "plan_tables")],
    "Parquet write + zstd (ParquetWriter)": [("core.py", "write_table"), ("core.py", "close")],
    "fsync of the part files": [("catalog_file.py", "fsync_path")],
}


def main() -> None:
    archive = BulkArchive.open(sys.argv[1])
    key, shard, _ = ((sys.argv[2], archive.shards[sys.argv[2]], None) if len(sys.argv) > 2
                     else shard_tasks(archive, {}, workers=2)[0])
    ctx = RunContext("profile", datetime.now(UTC), "bulk")
    with tempfile.TemporaryDirectory() as out:
        job = ShardJob(str(archive.path), key, shard, HEAD_SCHEMA.empty_table(), ctx, out)
        profile = cProfile.Profile()
        cpu = time.process_time()
        profile.enable()
        result = process_shard(job)
        profile.disable()
        cpu = time.process_time() - cpu
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    stages = {}
    for stage, functions in STAGES.items():
        stages[stage] = round(sum(cumulative for (path, _, name), (_, _, _, cumulative, _) in stats.items()
                                  for fragment, wanted in functions
                                  if name == wanted and (fragment == "~" or path.endswith(fragment))), 3)
    total = sum(stats[k][3] for k in stats if k[2] == "process_shard")
    stages["other (Python glue)"] = round(total - sum(stages.values()), 3)
    print(json.dumps({"shard": key, "studies": result.studies, "cpu_seconds": round(cpu, 3),
                      "profiled_seconds": round(total, 3), "stages": stages}))


if __name__ == "__main__":
    main()
