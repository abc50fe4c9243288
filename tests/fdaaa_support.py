"""Trials for the FDAAA tests: copies of real records with dates, flags, results and QC submissions
edited, stored as versions in a real warehouse (real Parquet and DuckDB, no Prefect needed)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from pipeline.versioning import RunContext, plan_batch
from tests.conftest import STUDIES_DIR, Record, load
from warehouse import Warehouse

ABSENT = object()  # an edit that deletes the key
# Real bases: an ACT (drug flag, phase 1/2, US sites) and a flag-less pACT (no flag keys, N/A, DRUG, US site).
ACT_BASE = "NCT03377387"
FLAGLESS_BASE = "NCT02087826"


def trial(nct_id: str, *, base: str = ACT_BASE, updated: str = "2019-01-02", start: Any = "2018-03-01",
          primary_completion: Any = "2020-06-30", completion: Any = "2021-01-31", drug: Any = True,
          device: Any = False, phases: Any = ("PHASE2",), purpose: Any = "TREATMENT", status: str = "COMPLETED",
          study_type: str = "INTERVENTIONAL", results: str | None = None, certificate: str | None = None,
          qc: Sequence[dict[str, Any]] = (), countries: Sequence[str] | None = None,
          intervention_types: Sequence[str] | None = None, sponsor: str | None = None) -> Record:
    """A copy of a real record with the FDAAA inputs set (``ABSENT`` removes a key)."""
    record = copy.deepcopy(load(STUDIES_DIR / f"{base}.json"))
    p = record["protocolSection"]
    p["identificationModule"]["nctId"] = nct_id
    s = p["statusModule"]
    s["lastUpdatePostDateStruct"] = {"date": updated, "type": "ACTUAL"}
    s["overallStatus"] = status
    for key, value in (("startDateStruct", start), ("primaryCompletionDateStruct", primary_completion),
                       ("completionDateStruct", completion)):
        _set(s, key, value if value is ABSENT else {"date": value, "type": "ACTUAL"})
    oversight = p.setdefault("oversightModule", {})
    _set(oversight, "isFdaRegulatedDrug", drug)
    _set(oversight, "isFdaRegulatedDevice", device)
    design = p["designModule"]
    design["studyType"] = study_type
    _set(design, "phases", phases if phases is ABSENT else list(phases))
    _set(design.setdefault("designInfo", {}), "primaryPurpose", purpose)
    if results:
        s["resultsFirstSubmitDate"] = results
    if certificate:
        s["dispFirstSubmitDate"] = certificate
    if qc:
        misc = record.setdefault("derivedSection", {}).setdefault("miscInfoModule", {})
        misc["submissionTracking"] = {"submissionInfos": list(qc)}
    if countries is not None:
        p["contactsLocationsModule"]["locations"] = [
            {"facility": f"Site {i}", "city": "City", "country": c} for i, c in enumerate(countries)]
    if intervention_types is not None:
        p["armsInterventionsModule"]["interventions"] = [
            {"type": t, "name": f"Intervention {i}"} for i, t in enumerate(intervention_types)]
    if sponsor is not None:
        p["sponsorCollaboratorsModule"]["leadSponsor"] = {"name": sponsor, "class": "INDUSTRY"}
    return record


def _set(mapping: dict[str, Any], key: str, value: Any) -> None:
    if value is ABSENT:
        mapping.pop(key, None)
    else:
        mapping[key] = value


def store(root: Path, *batches: Sequence[Record]) -> Warehouse:
    """One committed run per batch; a study given twice in a batch gets two versions, in order. A batch is
    observed on 2026-01-n, or on the day of its newest record if later (a registry never serves a record
    before its date; a version is never valid from a day after the one it was observed on)."""
    warehouse = Warehouse(root)
    observed = datetime(2026, 1, 1, tzinfo=UTC)
    for n, batch in enumerate(batches, 1):
        newest = max((_updated(r) for r in batch), default=date.min)
        observed = max(observed, datetime(2026, 1, n, tzinfo=UTC),
                       datetime(newest.year, newest.month, newest.day, 12, tzinfo=UTC))
        ctx = RunContext(f"run-{n}", observed, "api")
        with warehouse.writer(ctx.run_id) as run:
            run.append_plan(plan_batch(batch, run.heads(), ctx), ctx)
            run.commit()
    return warehouse


def _updated(record: Record) -> date:
    struct = record.get("protocolSection", {}).get("statusModule", {}).get("lastUpdatePostDateStruct")
    try:
        return date.fromisoformat(struct["date"])
    except (TypeError, KeyError, ValueError):
        return date.min


def judge(warehouse: Warehouse, as_of: date | str) -> dict[str, dict[str, Any]]:
    """``fdaaa_as_of(as_of)`` by nct_id, each row as a dict."""
    with warehouse.connect() as con:
        result = con.execute(f"SELECT * FROM fdaaa_as_of(DATE '{as_of}') ORDER BY nct_id")
        columns = [d[0] for d in result.description]
        return {row[0]: dict(zip(columns, row, strict=True)) for row in result.fetchall()}
