"""``bench.same_tables``: the check that a change of the write path stores what the code before it stored
(bench/RESULTS.md, "Issue 17 ... fifth session"). It must see equal warehouses as equal whatever their runs'
ids and times, and name every table that holds a changed value."""

from __future__ import annotations

import copy
import zipfile
from pathlib import Path

import orjson
import pytest

from bench.same_tables import compare
from flows.bulk import run_load_bulk
from tests.conftest import Record, nct, real_records


def _load(tmp_path: Path, name: str, records: list[Record]) -> Path:
    archive = tmp_path / "ctg-studies.json.zip"  # one path, as two trees loading the same zip
    with zipfile.ZipFile(archive, "w") as zf:
        for record in records:
            zf.writestr(f"{nct(record)[-2:]}/{nct(record)}.json", orjson.dumps(record))
    warehouse = tmp_path / name
    run_load_bulk(dict(source=str(archive), warehouse=str(warehouse), lock_timeout=5.0), workers=1, dask=None)
    return warehouse


@pytest.mark.usefixtures("prefect_api")
def test_two_loads_of_the_same_records_store_the_same_rows_and_an_edited_site_shows_where(tmp_path: Path) -> None:
    records = [r for r in real_records() if r["protocolSection"].get("contactsLocationsModule", {}).get("locations")]
    records = records[:12]
    first = _load(tmp_path, "first", records)
    second = _load(tmp_path, "second", records)  # another run: other run ids and times
    same = compare(first, second)
    assert {r["table"] for r in same} >= {"study_versions", "locations", "adverse_events", "study_summary"}
    assert [r for r in same if r["only_a"] or r["only_b"] or r["rows_a"] != r["rows_b"]] == []
    assert next(r for r in same if r["table"] == "locations")["rows_a"] > 0

    edited = copy.deepcopy(records)
    edited[0]["protocolSection"]["contactsLocationsModule"]["locations"][0]["city"] = "Elsewhere"
    differ = {r["table"]: (r["only_a"], r["only_b"]) for r in compare(first, _load(tmp_path, "edited", edited))
              if r["only_a"] or r["only_b"]}
    # the site's row (its city and its key), the version (raw JSON, hash) and the zip the run read
    assert differ == {"study_versions": (1, 1), "locations": (1, 1), "sync_runs": (1, 1)}
