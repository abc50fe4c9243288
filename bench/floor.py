"""The JSON parse floor: read every member of a bulk zip and ``orjson.loads`` it, in one process.

What any loader must at least do (stdlib ``zipfile`` + orjson, nothing kept). Prints one JSON line.
"""

from __future__ import annotations

import json
import sys
import time
import zipfile

import orjson


def main() -> None:
    started = time.monotonic()
    records = size = 0
    with zipfile.ZipFile(sys.argv[1]) as zf:
        for info in zf.infolist():
            if info.filename.endswith(".json"):
                data = zf.read(info)
                orjson.loads(data)
                records += 1
                size += len(data)
    print(json.dumps({"seconds": round(time.monotonic() - started, 3), "records": records, "json_bytes": size}))


if __name__ == "__main__":
    main()
