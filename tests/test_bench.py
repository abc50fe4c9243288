"""Issue 8: the benchmark keeps working (a small size; the real numbers are in bench/RESULTS.md)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(900)
def test_the_benchmark_compares_trialsync_the_floor_and_dlt_at_a_small_size(prefect_api: str, tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    results.write_text("# Results\n\nhand-written notes stay\n")
    run = subprocess.run([sys.executable, "-m", "bench.run", "--size", "150", "--out", str(tmp_path),
                          "--results", str(results), "--peer-limit", "20", "--peer-configs", "flat"],
                         cwd=REPO, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "PREFECT_API_URL": prefect_api})
    assert run.returncode == 0, run.stderr[-3000:]
    text = results.read_text()
    assert text.startswith("# Results\n\nhand-written notes stay\n")
    changed = json.loads((tmp_path / "corpus-150" / "corpus.json").read_text())["changed"]
    rows = {m.group(1): m.group(2).split(" | ") for m in
            re.finditer(r"^\| (initial load|no-op resync|2%-changed resync) \| (.*) \|$", text, re.M)}
    assert [rows[step][4:6] for step in ("initial load", "no-op resync", "2%-changed resync")] == [
        ["150", "0"], ["0", "150"], [str(changed), str(150 - changed)]]
    assert len(re.findall(r"^\| dlt \(max_table_nesting=0\) \| ", text, re.M)) == 3
    assert "### The parse floor" in text and "### Targets" in text and "### Where a shard's time goes" in text
