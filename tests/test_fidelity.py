"""Issue 3 acceptance: nothing the registry publishes is lost; child tables match the JSON; misfits are
quarantined while the rest of their run commits. Real syncs (Prefect) against the fake registry."""

from __future__ import annotations

import copy
from collections import Counter
from datetime import date, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline import mutate
from pipeline.dates import parse_partial_date
from pipeline.registry.fake_server import FakeRegistry
from pipeline.versioning import plan_batch
from tests.conftest import DATA, SPEC_FILE, ctrdata_records, fast_sync, nct, partial_records, snapshot_pairs
from tests.datadict import dictionary, leaves, normalise, path_pattern
from tests.test_flatten import CTX, broken_variants
from warehouse import Warehouse

pytestmark = pytest.mark.usefixtures("prefect_api")

# Leaves of protocolSection that no column types: reachable only through the raw JSON. locations_nested
# is a key a third party added to two records (not in the API spec).
RAW_ONLY_PROTOCOL = {
    *(f"protocolSection.contactsLocationsModule.locations_nested[].{k}"
      for k in ("city", "country", "facility", "geoPoint.lat", "geoPoint.lon", "state", "zip")),
}
# Every leaf of these sections has a typed column (issue 15: results, pending results, documents).
FULLY_TYPED_SECTIONS = ("resultsSection.", "annotationSection.", "documentSection.")


def query(directory: Path, sql: str) -> list[tuple[Any, ...]]:
    with Warehouse(directory).connect() as con:
        return con.execute(sql).fetchall()


def _canon(value: Any) -> bytes:
    return orjson.dumps(value)


def test_every_leaf_of_every_real_record_is_reachable_in_the_warehouse(loaded_warehouse: Path,
                                                                       records: list[dict[str, Any]]) -> None:
    published = Counter((nct(r), path, _canon(value)) for r in records for path, value in leaves(r))
    stored: Counter[tuple[str, str, bytes]] = Counter()
    with Warehouse(loaded_warehouse).connect() as con:
        # One study at a time: a lateral json_tree over many large records exhausts DuckDB's memory.
        for record in records:
            stored.update((nct(record), path, _canon(orjson.loads(value))) for path, value in con.execute("""
                SELECT t.fullkey, t.value FROM (SELECT raw FROM study_versions WHERE nct_id = ?) AS v,
                json_tree(v.raw) AS t WHERE t.type NOT IN ('OBJECT', 'ARRAY')
                OR CAST(t.value AS VARCHAR) IN ('{}', '[]')""", [nct(record)]).fetchall())
    lost = published - stored
    assert not lost, f"{sum(lost.values())} leaves lost, e.g. {next(iter(lost))}"
    assert stored == published  # and nothing invented
    # Which of them also have a typed column (the column's values are checked in test_docs.py):
    patterns = [path_pattern(p) for columns in dictionary().views.values() for c in columns
                for p in c.mentioned_paths]
    shapes = Counter(normalise(path) for _, path, _ in published.elements())
    untyped = {shape for shape in shapes if not any(p.match(shape) for p in patterns)}
    assert {s for s in untyped if s.startswith("protocolSection.")} == RAW_ONLY_PROTOCOL
    results = {shape for shape in shapes if shape.startswith(FULLY_TYPED_SECTIONS)}
    assert len(results) > 120 and not results & untyped, sorted(results & untyped)
    typed = sum(n for shape, n in shapes.items() if shape not in untyped)
    protocol = sum(n for shape, n in shapes.items() if shape.startswith("protocolSection."))
    protocol_typed = sum(n for shape, n in shapes.items()
                         if shape.startswith("protocolSection.") and shape not in untyped)
    # 116k leaves, 112k typed; of protocolSection 96% (the rest is a third party's locations_nested); the
    # untyped rest of derivedSection is the registry's own bookkeeping (versionHolder, browse leaves, ...).
    assert len(published) > 100_000 and typed > 110_000 and protocol_typed / protocol > 0.95


def _array_lengths(record: dict[str, Any]) -> dict[str, int]:
    p = record["protocolSection"]
    arms, outcomes = p.get("armsInterventionsModule", {}), p.get("outcomesModule", {})
    return {
        "locations": len(p.get("contactsLocationsModule", {}).get("locations", [])),
        "conditions": len(p.get("conditionsModule", {}).get("conditions", [])),
        "interventions": len(arms.get("interventions", [])),
        "arm_groups": len(arms.get("armGroups", [])),
        "outcomes": sum(len(outcomes.get(k, [])) for k in ("primaryOutcomes", "secondaryOutcomes", "otherOutcomes")),
        "collaborators": len(p.get("sponsorCollaboratorsModule", {}).get("collaborators", [])),
        "secondary_ids": len(p["identificationModule"].get("secondaryIdInfos", [])),
    }


COUNT_SQL = {
    "locations": "SELECT nct_id, count(*) FROM current_locations GROUP BY ALL",
    "conditions": "SELECT nct_id, count(*) FROM current_conditions GROUP BY ALL",
    "interventions": "SELECT nct_id, count(*) FROM current_interventions GROUP BY ALL",
    "arm_groups": "SELECT nct_id, count(*) FROM current_arm_groups GROUP BY ALL",
    "outcomes": "SELECT nct_id, count(*) FROM current_outcomes GROUP BY ALL",
    "collaborators": "SELECT nct_id, count(*) FROM current_sponsors WHERE role = 'collaborator' GROUP BY ALL",
    "secondary_ids": "SELECT nct_id, count(*) FROM current_identifiers WHERE id_kind = 'secondary_id' GROUP BY ALL",
}


def test_child_row_counts_equal_the_json_array_lengths_for_every_real_record(
        loaded_warehouse: Path, records: list[dict[str, Any]]) -> None:
    counted = {name: dict(query(loaded_warehouse, sql)) for name, sql in COUNT_SQL.items()}
    for record in records:
        lengths = _array_lengths(record)
        assert {name: counted[name].get(nct(record), 0) for name in COUNT_SQL} == lengths, nct(record)
    assert sum(counted["locations"].values()) > 3000 and max(counted["locations"].values()) == 1148
    one_row = query(loaded_warehouse, """SELECT count(*), count(DISTINCT nct_id) FROM current_eligibility
        UNION ALL SELECT count(*), count(DISTINCT nct_id) FROM current_design
        UNION ALL SELECT count(*), count(DISTINCT nct_id) FROM current_results_summary""")
    assert one_row == [(326, 326)] * 3


def test_partial_dates_are_dates_and_their_raw_text_is_exact(loaded_warehouse: Path,
                                                             records: list[dict[str, Any]]) -> None:
    fields = ("start_date", "primary_completion_date", "completion_date")
    rows = {r[0]: r[1:] for r in query(loaded_warehouse, "SELECT nct_id, " + ", ".join(
        f"{f}, {f}_raw, {f}_type" for f in fields) + " FROM studies")}
    forms: Counter[int] = Counter()
    for record in records:
        status = record["protocolSection"]["statusModule"]
        expected: list[Any] = []
        for key in ("startDateStruct", "primaryCompletionDateStruct", "completionDateStruct"):
            struct = status.get(key, {})
            raw = struct.get("date")
            expected += [parse_partial_date(raw).value if raw else None, raw, struct.get("type")]
            forms[len(raw or "")] += 1
        assert list(rows[nct(record)]) == expected, nct(record)
    assert forms[7] > 150 and forms[10] > 600  # "2025-05" and "2025-05-30" forms both occur
    month_only = query(loaded_warehouse, "SELECT count(*) FROM studies WHERE length(start_date_raw) = 7 "
                                         "AND start_date = CAST(start_date_raw || '-01' AS DATE)")
    assert month_only[0][0] > 50


# -- quarantine --------------------------------------------------------------------------------------
@cache
def _spec() -> dict[str, Any]:
    schemas: dict[str, Any] = yaml.safe_load(SPEC_FILE.read_text())["components"]["schemas"]
    return schemas


def unboxed_arrays(value: Any, schema: dict[str, Any] | None = None, path: str = "$") -> list[str]:
    """Paths where the published spec has an array but the record holds something else (jsonlite's
    auto-unboxing of one-element arrays): an oracle independent of pipeline.schema."""
    schema = schema or _spec()["Study"]
    while "$ref" in schema:
        schema = _spec()[schema["$ref"].rsplit("/", 1)[-1]]
    if schema.get("type") == "array":
        if not isinstance(value, list):
            return [path]
        return [p for item in value for p in unboxed_arrays(item, schema["items"], f"{path}[]")]
    if "properties" in schema and isinstance(value, dict):
        return [p for key, item in value.items() if key in schema["properties"]
                for p in unboxed_arrays(item, schema["properties"][key], f"{path}.{key}")]
    return []


def test_ctrdata_records_are_quarantined_exactly_when_arrays_were_unboxed() -> None:
    """ctrdata stored records through R jsonlite, which collapsed one-element arrays to scalars in
    older copies; newer copies keep them. Unboxed ones do not fit the schema; faithful ones are stored."""
    unboxed = 0
    for name, record in ctrdata_records().items():
        plan = plan_batch([record], {}, CTX)
        broken = unboxed_arrays(record)
        if broken:
            unboxed += 1
            assert len(plan.quarantined) == 1 and not plan.versions, name
            assert "Expected `array | null`, got" in plan.quarantined[0].reason, name
        else:
            assert len(plan.versions) == 1 and not plan.quarantined, (name, plan.quarantined)
    assert unboxed >= 20


def test_every_partial_record_is_quarantined_as_incomplete() -> None:
    """All 25 are fields= projections or trimmed copies: none has lastUpdatePostDate (two have no
    statusModule at all, three no conditions, eligibility or description either)."""
    plan = plan_batch(partial_records(), {}, CTX)
    assert not plan.versions
    reasons = Counter(q.reason.split(" (")[0] for q in plan.quarantined)
    assert reasons == {
        "incomplete record: no protocolSection.statusModule.lastUpdatePostDateStruct.date": 23,
        "incomplete record: no protocolSection.statusModule.overallStatus": 2,
    }
    assert [q.nct_id for q in plan.quarantined] == [nct(r) for r in partial_records()]


def test_the_three_verbatim_fields_projected_responses_are_quarantined_with_their_ids() -> None:
    """other_responses/: real ``GET /studies/{nctId}?fields=...`` bodies (the same records are in
    studies_partial/): projections lack the registry's bookkeeping, so none can be a version."""
    files = sorted((DATA / "ctgov" / "other_responses").glob("*.json"))
    bodies = [orjson.loads(f.read_bytes()) for f in files]
    plan = plan_batch(bodies, {}, CTX)
    assert len(files) == 3 and not plan.versions
    assert [q.nct_id for q in plan.quarantined] == [nct(b) for b in bodies]
    assert all(q.reason.startswith("incomplete record: no protocolSection.statusModule") for q in plan.quarantined)
    assert [orjson.loads(q.raw) for q in plan.quarantined] == bodies


def _reversed_sites_plus_a_twin(record: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(record)
    sites = out["protocolSection"]["contactsLocationsModule"]["locations"]
    twin = {**copy.deepcopy(sites[0]), "status": "WITHDRAWN"}
    sites.reverse()
    sites.append(twin)
    return out


def test_misfits_land_in_quarantine_and_the_rest_of_their_run_commits(warehouse_dir: Path,
                                                                      records: list[dict[str, Any]]) -> None:
    variants = broken_variants()
    partial = partial_records()
    ctrdata = [r for name, r in ctrdata_records().items() if name.startswith("studies/")]
    faithful_ctrdata = [r for r in ctrdata if not unboxed_arrays(r)]
    older, newer = snapshot_pairs()["NCT05766735"]
    taken = {nct(r) for _, r, _ in variants if "nctId" in r.get("protocolSection", {}).get("identificationModule", {})}
    good = [r for r in records[100:160] if nct(r) not in taken | {"NCT05766735"}]
    with_sites = next(r for r in good if len(r["protocolSection"].get("contactsLocationsModule", {})
                                            .get("locations", [])) > 5)
    misfits = len(variants) + len(partial) + len(ctrdata) - len(faithful_ctrdata)
    with FakeRegistry([*good, older, *(r for _, r, _ in variants), *partial, *ctrdata]).start() as registry:
        first = fast_sync(registry, warehouse_dir, page_size=25)
        registry.put(newer, mutate.posted_on(_reversed_sites_plus_a_twin(with_sites), newer_day(newer)))
        second = fast_sync(registry, warehouse_dir, page_size=25, full=True)

    assert (first["versions_written"], first["quarantined"]) == (len(good) + 1 + len(faithful_ctrdata), misfits)
    assert len(faithful_ctrdata) == 5 and misfits == len(variants) + 30
    assert (second["versions_written"], second["quarantined"], second["unchanged"]) == (
        2, misfits, len(good) + len(faithful_ctrdata) - 1)
    assert query(warehouse_dir, "SELECT quarantined FROM sync_runs ORDER BY started_at") == [(misfits,)] * 2
    quarantined = query(warehouse_dir, f"SELECT nct_id, reason, raw FROM quarantine WHERE run_id = '{first['run_id']}'")
    assert len(quarantined) == misfits
    by_id = {n: reason for n, reason, _ in quarantined if n}
    for what, record, reason in variants:
        ident = record.get("protocolSection", {}).get("identificationModule", {})
        if "nctId" in ident:
            assert reason in by_id[ident["nctId"]], what
    assert sum(1 for n, _, _ in quarantined if n is None) == 2  # no protocolSection; no nctId
    assert all(by_id[nct(r)].startswith("incomplete record") for r in partial)
    served = [r for _, r, _ in variants] + partial + [r for r in ctrdata if unboxed_arrays(r)]
    stored_raw = [orjson.loads(raw) for _, _, raw in quarantined]
    assert sorted(stored_raw, key=_sort_key) == sorted(served, key=_sort_key)  # kept exactly as received

    # The rest committed, child rows included; the faithful ctrdata records keep their results summary.
    assert query(warehouse_dir, "SELECT count(*) FROM studies") == [(len(good) + 1 + 5,)]
    summary = dict((r[0], r[1:]) for r in query(warehouse_dir, """SELECT nct_id, outcome_measure_count,
        adverse_event_group_count FROM current_results_summary"""))
    for record in faithful_ctrdata:
        results = record["resultsSection"]
        assert summary[nct(record)] == (len(results["outcomeMeasuresModule"]["outcomeMeasures"]),
                                        len(results["adverseEventsModule"]["eventGroups"])), nct(record)

    # Rows are written only for new versions, in the run that stored them; current_* shows the latest.
    run2 = warehouse_dir / "runs" / second["run_id"]
    written = pq.read_table(run2 / "locations.parquet").select(["nct_id", "version"]).to_pylist()
    assert {(r["nct_id"], r["version"]) for r in written} == {("NCT05766735", 2), (nct(with_sites), 2)}
    assert query(warehouse_dir, """SELECT version, count(*) FROM outcomes WHERE nct_id = 'NCT05766735'
        GROUP BY ALL ORDER BY 1""") == [(1, _array_lengths(older)["outcomes"]), (2, _array_lengths(newer)["outcomes"])]
    keys = {v: {r[0] for r in query(warehouse_dir, f"""SELECT site_key FROM locations
        WHERE nct_id = '{nct(with_sites)}' AND version = {v}""")} for v in (1, 2)}
    first_key = query(warehouse_dir, f"""SELECT site_key FROM locations WHERE nct_id = '{nct(with_sites)}'
        AND version = 1 AND ordinal = 0""")[0][0]
    assert keys[2] == keys[1] | {f"{first_key}-2"}  # reordering kept every key; the twin got -2
    assert query(warehouse_dir, f"""SELECT DISTINCT version FROM current_locations
        WHERE nct_id IN ('NCT05766735', '{nct(with_sites)}')""") == [(2,)]


def _sort_key(record: dict[str, Any]) -> bytes:
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)


def newer_day(record: dict[str, Any]) -> date:
    return date.fromisoformat(record["protocolSection"]["statusModule"]["lastUpdatePostDateStruct"]["date"]) + \
        timedelta(days=1)
