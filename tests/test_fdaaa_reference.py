"""``fdaaa_as_of(d)`` against a second reading of ../shared/FDAAA_RULES.md written here from the rules'
text alone (dates with dateutil, no SQL, no ``pipeline.fdaaa``), over copies of real records whose
inputs are drawn around every boundary: completion one year (+ 30 days) or three years before the
judged day, 29 February, the 2017-01-18 effective date with day, month-only and year-only dates, every
flag combination, qualifying and other phase sets, withdrawn and terminated trials, device feasibility,
certificates, posted results and QC histories with cancellations."""

from __future__ import annotations

import calendar
import random
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from dateutil.relativedelta import relativedelta

from tests.conftest import Record, nct
from tests.fdaaa_support import ABSENT, FLAGLESS_BASE, judge, store, trial

EFFECTIVE = date(2017, 1, 18)
QUALIFYING = [{"PHASE1", "PHASE2"}, {"PHASE2"}, {"PHASE2", "PHASE3"}, {"PHASE3"}, {"PHASE4"}, {"NA"}]
COVERED = {"DRUG", "DEVICE", "BIOLOGICAL", "GENETIC", "RADIATION", "COMBINATION_PRODUCT", "DIAGNOSTIC_TEST"}
US = {"United States", "American Samoa", "Guam", "Northern Mariana Islands", "Puerto Rico", "Virgin Islands (U.S.)"}
JUDGED = (date(2024, 2, 29), date(2024, 3, 1), date(2024, 3, 2), date(2021, 3, 30))
FIELDS = ("act_kind", "completion_date_used", "due_date", "is_due", "results_submitted_date", "status", "days_late")


def end_of(text: str | None) -> date | None:
    """§2: a date as the last day of its period."""
    if text is None:
        return None
    if len(text) == 4:
        return date(int(text), 12, 31)
    if len(text) == 7:
        year, month = int(text[:4]), int(text[5:7])
        return date(year, month, calendar.monthrange(year, month)[1])
    return date.fromisoformat(text)


def expected(record: Record, as_of: date) -> dict[str, Any] | None:
    """The judgement of ``record`` on ``as_of`` by FDAAA_RULES §2-§5 (None: neither ACT nor pACT)."""
    p = record["protocolSection"]
    status, design, oversight = p["statusModule"], p["designModule"], p.get("oversightModule", {})
    shared = (design.get("studyType") == "INTERVENTIONAL" and set(design.get("phases") or ()) in QUALIFYING
              and (design.get("designInfo") or {}).get("primaryPurpose") != "DEVICE_FEASIBILITY"
              and status.get("overallStatus") != "WITHDRAWN")
    flag_yes = oversight.get("isFdaRegulatedDrug") is True or oversight.get("isFdaRegulatedDevice") is True
    start = end_of((status.get("startDateStruct") or {}).get("date"))
    used = (end_of((status.get("primaryCompletionDateStruct") or {}).get("date"))
            or end_of((status.get("completionDateStruct") or {}).get("date")))
    kind = None
    if shared and start is not None:
        if flag_yes and start >= EFFECTIVE:
            kind = "ACT"
        elif start < EFFECTIVE and used is not None and used >= EFFECTIVE:
            flagless = "isFdaRegulatedDrug" not in oversight and "isFdaRegulatedDevice" not in oversight
            types = {i.get("type") for i in p["armsInterventionsModule"].get("interventions", [])}
            countries = {site.get("country") for site in p["contactsLocationsModule"].get("locations", [])}
            if flag_yes or (flagless and types & COVERED and countries & US):
                kind = "pACT"
    if kind is None:
        return None

    def on_or_before(text: str | None) -> date | None:
        day = date.fromisoformat(text) if text else None
        return day if day is not None and day <= as_of else None

    certificate = on_or_before(status.get("dispFirstSubmitDate"))
    posted = on_or_before(status.get("resultsFirstSubmitDate"))
    is_due, due_date = False, None
    if used is not None:
        is_due = as_of > used + relativedelta(years=1) + timedelta(days=30) and (
            certificate is None or as_of > used + relativedelta(years=3) + timedelta(days=30))
        due_date = used + relativedelta(years=3) if certificate else used + timedelta(days=365)
    days: dict[date, bool] = {}  # QC submissions made by as_of: cancelled by then?
    infos = record.get("derivedSection", {}).get("miscInfoModule", {}).get("submissionTracking", {})
    for info in infos.get("submissionInfos", []):
        made = date.fromisoformat(info["releaseDate"])
        if made <= as_of:
            gone = bool(info.get("unreleaseDateUnknown")) or (
                "unreleaseDate" in info and max(made, date.fromisoformat(info["unreleaseDate"])) <= as_of)
            days[made] = days.get(made, False) or gone
    counted = None
    for day in sorted(days, reverse=True):
        if days[day]:
            break
        counted = day
    newest_cancelled = days[max(days)] if days else None
    submitted = posted or counted
    if not is_due:
        state, late = ("reported" if posted else "ongoing"), None
    elif submitted is not None:
        late = (submitted - due_date).days if due_date and submitted > due_date else None
        state = "reported-late" if late else "reported"
    else:
        assert due_date is not None
        late = (as_of - due_date).days if (as_of - due_date).days > 30 else None
        state = "overdue-cancelled" if newest_cancelled else "overdue"
    return {"act_kind": kind, "completion_date_used": used, "due_date": due_date, "is_due": is_due,
            "results_submitted_date": submitted, "status": state, "days_late": late}


def variants(seed: int, n: int) -> list[Record]:
    rnd = random.Random(seed)

    def near(anchor: date, span: int) -> date:
        return anchor + timedelta(days=rnd.randint(-span, span))

    def written(day: date) -> str:
        return day.isoformat()[:rnd.choice((10, 10, 7, 4))]

    out = []
    for i in range(n):
        as_of = JUDGED[0]
        completion = near(rnd.choice((as_of - relativedelta(years=1) - timedelta(days=30), as_of - timedelta(days=365),
                                      as_of - relativedelta(years=3) - timedelta(days=30), date(2016, 2, 29),
                                      date(2020, 2, 29), EFFECTIVE)), 40)
        start = near(EFFECTIVE, 60) if rnd.random() < 0.5 else near(completion - timedelta(days=800), 300)
        due = completion + timedelta(days=365)
        qc = []
        for _ in range(rnd.choice((0, 0, 1, 2, 3))):
            made = near(due, 80)
            entry: dict[str, Any] = {"releaseDate": made.isoformat()}
            roll = rnd.random()
            if roll < 0.3:
                entry["unreleaseDate"] = near(made + timedelta(days=20), 20).isoformat()
            elif roll < 0.4:
                entry["unreleaseDateUnknown"] = True
            if rnd.random() < 0.3:
                entry["resetDate"] = near(made + timedelta(days=30), 10).isoformat()
            qc.append(entry)
        extra: dict[str, Any] = {}
        if rnd.random() < 0.5:
            extra["countries"] = rnd.sample(["United States", "Guam", "Canada", "United States Minor Outlying Islands",
                                             "Virgin Islands (U.S.)", "Puerto Rico"], 2)
        if rnd.random() < 0.5:
            extra["intervention_types"] = rnd.sample(["DRUG", "OTHER", "BEHAVIORAL", "RADIATION", "DEVICE"], 2)
        out.append(trial(
            f"NCT9{i:07d}", base=rnd.choice(("NCT03377387", FLAGLESS_BASE)), updated="2010-01-01",
            start=written(start), primary_completion=written(completion) if rnd.random() < 0.85 else ABSENT,
            completion=near(completion, 200).isoformat()[:rnd.choice((10, 7))] if rnd.random() < 0.8 else ABSENT,
            drug=rnd.choice((True, False, ABSENT)), device=rnd.choice((True, False, ABSENT)),
            phases=rnd.choice((("PHASE2",), ("PHASE1", "PHASE2"), ("PHASE1",), ("NA",), ("EARLY_PHASE1",),
                               ("PHASE4",), ("PHASE3", "PHASE2"), ("NA", "PHASE2"), ABSENT)),
            purpose=rnd.choice(("TREATMENT", "DEVICE_FEASIBILITY", ABSENT)),
            status=rnd.choice(("COMPLETED", "TERMINATED", "WITHDRAWN", "UNKNOWN", "SUSPENDED", "RECRUITING")),
            results=near(due, 60).isoformat() if rnd.random() < 0.4 else None,
            certificate=near(completion + timedelta(days=300), 200).isoformat() if rnd.random() < 0.3 else None,
            qc=qc, **extra))
    return out


def test_the_judgement_of_every_variant_equals_the_rules_read_again(tmp_path: Path) -> None:
    records = variants(seed=801, n=300)
    warehouse = store(tmp_path, records)
    seen: set[str] = set()
    for as_of in JUDGED:
        got = judge(warehouse, as_of)
        for record in records:
            want = expected(record, as_of)
            row = got.get(nct(record))
            assert (None if row is None else {f: row[f] for f in FIELDS}) == want, (nct(record), as_of)
            seen.add("neither" if want is None else f"{want['act_kind']} {want['status']}")
    # every outcome occurs among the variants
    assert seen >= {"neither", *(f"{k} {s}" for k in ("ACT", "pACT")
                                 for s in ("ongoing", "reported", "reported-late", "overdue", "overdue-cancelled"))}
