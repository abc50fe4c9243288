"""Memory of the head index at a warehouse's size: columnar (``HeadIndex``) vs a dict of ``Head``s.

``python -m bench.heads WAREHOUSE index|dict`` loads one of them and prints its size, the process's
peak RSS and the time taken (run each in its own process: peak RSS does not go down).
"""

from __future__ import annotations

import json
import resource
import sys
import time

from warehouse import Warehouse
from warehouse.heads import HEADS_SQL, HeadIndex, to_dict


def main() -> None:
    root, kind = sys.argv[1], sys.argv[2]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    with Warehouse(root).committed() as con:
        index = HeadIndex(con.sql(HEADS_SQL).to_arrow_table())
    heads = to_dict(index.table) if kind == "dict" else index
    if kind == "dict":
        del index
    seconds = time.monotonic() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"kind": kind, "studies": len(heads), "seconds": round(seconds, 2),
                      "arrow_mb": round(heads.nbytes / 1e6, 1) if isinstance(heads, HeadIndex) else None,
                      "rss_growth_mb": round((peak - before) / 1024, 1)}))


if __name__ == "__main__":
    main()
