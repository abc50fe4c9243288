"""Memory of the head index at a warehouse's size: columnar (``HeadIndex``) vs a dict of ``Head``s.

``python -m bench.heads WAREHOUSE`` loads the heads the way a run does (one DuckDB query over the
committed Parquet files), then builds the dict ``RunWriter.heads()`` used to return. Prints one JSON
line: the query's seconds and peak RSS growth (transient: DuckDB's working memory), the Arrow index's
bytes, and the Python memory the dict takes on top (measured with tracemalloc).
"""

from __future__ import annotations

import json
import resource
import sys
import time
import tracemalloc

from warehouse import Warehouse
from warehouse.heads import HEADS_SQL, HeadIndex, to_dict


def main() -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    with Warehouse(sys.argv[1]).committed() as con:
        index = HeadIndex(con.sql(HEADS_SQL).to_arrow_table())
    seconds = time.monotonic() - started
    query_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    tracemalloc.start()
    heads = to_dict(index.table)
    dict_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    print(json.dumps({"studies": len(heads), "query_seconds": round(seconds, 2),
                      "query_peak_rss_growth_mb": round(query_peak / 1024, 1),
                      "index_mb": round(index.nbytes / 1e6, 1), "dict_mb": round(dict_bytes / 1e6, 1)}))


if __name__ == "__main__":
    main()
