"""Issue 15: schema ``aact`` against AACT's own column list and the real records' JSON.

The expectations are computed here from ../shared/data/aact/aact_v2_columns.csv (AACT's tables, columns,
types and the API v2 path of each column) and the records, without the view code: a generic check of
every mapped column, row counts per study for every table, then the computed columns by AACT's rules.
"""

from __future__ import annotations

import calendar
import csv
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from datetime import date
from functools import cache
from pathlib import Path
from typing import Any

import duckdb
import pytest

from flows.backfill import backfill_history
from pipeline.registry.fake_history import REAL_HISTORY_NCT, real_history
from pipeline.registry.fake_server import FakeRegistry
from tests.conftest import DATA, nct
from tests.datadict import values_at
from tests.test_cli import run_cli
from warehouse import Warehouse

pytestmark = pytest.mark.usefixtures("prefect_api")
Record = dict[str, Any]
COLUMNS_CSV = DATA / "aact" / "aact_v2_columns.csv"
# AACT's types in DuckDB (docs/aact.md): serial keys and the joins to them are BIGINT digests; numeric
# without a scale is DOUBLE.
TYPES = {"character varying": "VARCHAR", "text": "VARCHAR", "integer": "INTEGER", "bigint": "BIGINT",
         "date": "DATE", "boolean": "BOOLEAN", "numeric": "DOUBLE", "double precision": "DOUBLE",
         "numeric(10,6)": "DECIMAL(10,6)", "json": "JSON", "timestamp without time zone": "TIMESTAMP",
         "timestamp(6) without time zone": "TIMESTAMP"}
INVESTIGATORS = {"PRINCIPAL_INVESTIGATOR", "SUB_INVESTIGATOR", "STUDY_CHAIR", "STUDY_DIRECTOR"}
# Checked by the rule tests below, not by the generic path check.
BY_RULE = {("studies", "phase"), ("studies", "last_update_submitted_qc_date"),
           ("baseline_measurements", "number_analyzed_units")}


@cache
def aact_schema() -> dict[str, list[dict[str, str]]]:
    tables: dict[str, list[dict[str, str]]] = defaultdict(list)
    with COLUMNS_CSV.open() as f:
        for row in csv.DictReader(f):
            tables[row["table"]].append(row)
    return dict(tables)


def is_key(table: str, column: dict[str, str]) -> bool:
    return column["column"] == "id" or (column["column"].endswith("_id") and column["type"] in ("integer", "bigint")
                                        and not column["api_v2_path"].endswith("nctId"))


@pytest.fixture(scope="module")
def con(loaded_warehouse: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    with Warehouse(loaded_warehouse).connect() as connection:
        yield connection


def test_every_aact_table_has_aacts_columns_in_order_with_their_types(con: duckdb.DuckDBPyConnection) -> None:
    schema = aact_schema()
    views = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE schema_name = 'aact'").fetchall()}
    assert views == set(schema) | {"_versions"} and len(schema) == 51
    for table, columns in schema.items():
        described = con.execute(f"DESCRIBE aact.{table}").fetchall()
        expected = [(c["column"], "BIGINT" if is_key(table, c) else TYPES[c["type"]]) for c in columns]
        assert [(r[0], r[1]) for r in described] == expected, table
        con.execute(f"SELECT * FROM aact.{table} LIMIT 1").fetchall()


# -- every column with an API path holds the values at that path ----------------------------------------
def last_day(text: str) -> date:
    year, month = int(text[:4]), int(text[5:7])
    return date(year, month, calendar.monthrange(year, month)[1])


def aact_date(text: str, first_day: bool = False) -> date:
    if len(text) == 4:
        return date(int(text), 12, 31)
    if len(text) == 7:
        return date(int(text[:4]), int(text[5:7]), 1) if first_day else last_day(text)
    return date.fromisoformat(text)


def number(value: Any) -> float | None:
    try:
        parsed = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(parsed) else parsed


def convert(table: str, column: dict[str, str], value: Any) -> Any:
    kind, notes = column["type"], column["notes"]
    if notes.startswith("lower-cased"):
        return value.lower()
    if kind == "date":
        if "plain cast" in notes:
            return date.fromisoformat(value)
        return aact_date(value, first_day="FIRST day" in notes)
    if kind == "integer":
        try:
            return int(value)
        except ValueError:
            return None
    if kind in ("numeric", "double precision"):
        return number(value)
    if kind == "numeric(10,6)":
        return round(float(value), 6)
    if isinstance(value, bool) and kind != "boolean":
        return "Yes" if value else "No"
    return value


def depth(path: str) -> int:
    return path.split(" | ")[0].count("[]")


def filtered(record: Record, table: str) -> Record:
    """Site contacts go to facility_investigators or facility_contacts by role (AACT's rule)."""
    if table not in ("facility_contacts", "facility_investigators"):
        return record
    keep = (lambda role: role in INVESTIGATORS) if table == "facility_investigators" else (
        lambda role: role not in INVESTIGATORS)
    sites = record["protocolSection"].get("contactsLocationsModule", {}).get("locations", [])
    return {"protocolSection": {"contactsLocationsModule": {"locations": [
        {**site, "contacts": [c for c in site.get("contacts", []) if keep(c.get("role"))]} for site in sites]}}}


def test_every_mapped_column_holds_the_values_at_its_api_path(con: duckdb.DuckDBPyConnection,
                                                              records: list[Record]) -> None:
    """Per study and column: the set of values equals the (converted) values at the column's API path;
    for a value repeated from a parent (fewer arrays in its path than the table's rows have), the rows
    hold a subset (a parent without children has no row)."""
    checked = 0
    for table, columns in aact_schema().items():
        deepest = max((depth(c["api_v2_path"]) for c in columns if c["api_v2_path"]), default=0)
        for column in columns:
            path, name = column["api_v2_path"], column["column"]
            if (not path or name == "nct_id" or (table, name) in BY_RULE or is_key(table, column)
                    or column["notes"].startswith(("computed", "join"))):
                continue
            got: dict[str, set[Any]] = defaultdict(set)
            for study, value in con.execute(f'SELECT nct_id, "{name}" FROM aact.{table}').fetchall():
                if value is not None:
                    got[study].add(round(float(value), 6) if column["type"] == "numeric(10,6)" else value)
            for record in records:
                source = filtered(record, table)
                expected = {convert(table, column, v) for p in path.split(" | ") for v in values_at(source, p)}
                expected.discard(None)
                if depth(path) < deepest:
                    assert got[nct(record)] <= expected, (table, name, nct(record))
                else:
                    assert got[nct(record)] == expected, (table, name, nct(record))
            checked += 1
    assert checked > 250


# -- rows per study, for every table ---------------------------------------------------------------------
def _get(record: Record, *keys: str) -> Any:
    node: Any = record
    for k in keys:
        node = node.get(k) if isinstance(node, dict) else None
    return node


def _n(record: Record, path: str) -> int:
    return len(values_at(record, path))


def _has(record: Record, *keys: str) -> int:
    return int(_get(record, *keys) is not None)


P, R = "protocolSection.", "resultsSection."
ROWS: dict[str, Callable[[Record], int]] = {
    "studies": lambda r: 1,
    "brief_summaries": lambda r: _has(r, "protocolSection", "descriptionModule"),
    "detailed_descriptions": lambda r: _has(r, "protocolSection", "descriptionModule"),
    "conditions": lambda r: _n(r, P + "conditionsModule.conditions[]"),
    "keywords": lambda r: _n(r, P + "conditionsModule.keywords[]"),
    "browse_conditions": lambda r: _n(r, "derivedSection.conditionBrowseModule.meshes[]")
    + _n(r, "derivedSection.conditionBrowseModule.ancestors[]"),
    "browse_interventions": lambda r: _n(r, "derivedSection.interventionBrowseModule.meshes[]")
    + _n(r, "derivedSection.interventionBrowseModule.ancestors[]"),
    "countries": lambda r: len(set(values_at(r, P + "contactsLocationsModule.locations[].country")))
    + _n(r, "derivedSection.miscInfoModule.removedCountries[]"),
    "facilities": lambda r: _n(r, P + "contactsLocationsModule.locations[]"),
    "facility_contacts": lambda r: sum(c.get("role") not in INVESTIGATORS for c in values_at(
        r, P + "contactsLocationsModule.locations[].contacts[]")),
    "facility_investigators": lambda r: sum(c.get("role") in INVESTIGATORS for c in values_at(
        r, P + "contactsLocationsModule.locations[].contacts[]")),
    "central_contacts": lambda r: _n(r, P + "contactsLocationsModule.centralContacts[]"),
    "overall_officials": lambda r: _n(r, P + "contactsLocationsModule.overallOfficials[]"),
    "sponsors": lambda r: _has(r, "protocolSection", "sponsorCollaboratorsModule", "leadSponsor")
    + _n(r, P + "sponsorCollaboratorsModule.collaborators[]"),
    "responsible_parties": lambda r: _has(r, "protocolSection", "sponsorCollaboratorsModule", "responsibleParty"),
    "id_information": lambda r: _has(r, "protocolSection", "identificationModule", "orgStudyIdInfo")
    + _n(r, P + "identificationModule.secondaryIdInfos[]") + _n(r, P + "identificationModule.nctIdAliases[]"),
    "design_groups": lambda r: _n(r, P + "armsInterventionsModule.armGroups[]"),
    "interventions": lambda r: _n(r, P + "armsInterventionsModule.interventions[]"),
    "intervention_other_names": lambda r: _n(r, P + "armsInterventionsModule.interventions[].otherNames[]"),
    "design_group_interventions": lambda r: _n(r, P + "armsInterventionsModule.interventions[].armGroupLabels[]"),
    "designs": lambda r: _has(r, "protocolSection", "designModule", "designInfo"),
    "design_outcomes": lambda r: _n(r, P + "outcomesModule.*Outcomes[]"),
    "eligibilities": lambda r: _has(r, "protocolSection", "eligibilityModule"),
    "ipd_information_types": lambda r: _n(r, P + "ipdSharingStatementModule.infoTypes[]"),
    "documents": lambda r: _n(r, P + "referencesModule.availIpds[]"),
    "links": lambda r: _n(r, P + "referencesModule.seeAlsoLinks[]"),
    "study_references": lambda r: _n(r, P + "referencesModule.references[]"),
    "retractions": lambda r: _n(r, P + "referencesModule.references[].retractions[]"),
    "provided_documents": lambda r: _n(r, "documentSection.largeDocumentModule.largeDocs[]"),
    "pending_results": lambda r: _n(r, "annotationSection.annotationModule.unpostedAnnotation.unpostedEvents[]"),
    "result_groups": lambda r: sum(_n(r, R + p) for p in (
        "participantFlowModule.groups[]", "baselineCharacteristicsModule.groups[]",
        "outcomeMeasuresModule.outcomeMeasures[].groups[]", "adverseEventsModule.eventGroups[]")),
    "participant_flows": lambda r: _has(r, "resultsSection", "participantFlowModule"),
    "milestones": lambda r: _n(r, R + "participantFlowModule.periods[].milestones[].achievements[]"),
    "drop_withdrawals": lambda r: _n(r, R + "participantFlowModule.periods[].dropWithdraws[].reasons[]"),
    "baseline_counts": lambda r: _n(r, R + "baselineCharacteristicsModule.denoms[].counts[]"),
    "baseline_measurements": lambda r: _n(
        r, R + "baselineCharacteristicsModule.measures[].classes[].categories[].measurements[]"),
    "outcomes": lambda r: _n(r, R + "outcomeMeasuresModule.outcomeMeasures[]"),
    "outcome_counts": lambda r: _n(r, R + "outcomeMeasuresModule.outcomeMeasures[].denoms[].counts[]"),
    "outcome_measurements": lambda r: _n(
        r, R + "outcomeMeasuresModule.outcomeMeasures[].classes[].categories[].measurements[]"),
    "outcome_analyses": lambda r: _n(r, R + "outcomeMeasuresModule.outcomeMeasures[].analyses[]"),
    "outcome_analysis_groups": lambda r: _n(r, R + "outcomeMeasuresModule.outcomeMeasures[].analyses[].groupIds[]"),
    "reported_events": lambda r: _n(r, R + "adverseEventsModule.*Events[].stats[]"),
    "reported_event_totals": lambda r: 3 * _n(r, R + "adverseEventsModule.eventGroups[]"),
    "result_agreements": lambda r: _has(r, "resultsSection", "moreInfoModule", "certainAgreement"),
    "result_contacts": lambda r: _has(r, "resultsSection", "moreInfoModule", "pointOfContact"),
    "calculated_values": lambda r: 1,
    **{t: (lambda r: 0) for t in ("mesh_terms", "mesh_headings", "search_results", "study_searches",
                                  "study_records")},
}


def test_every_table_has_as_many_rows_per_study_as_the_json_has_items(con: duckdb.DuckDBPyConnection,
                                                                      records: list[Record]) -> None:
    assert set(ROWS) == set(aact_schema())
    with_results = [r for r in records if "resultsSection" in r]
    assert len(with_results) == 7
    for table, count in ROWS.items():
        if table in ("mesh_terms", "mesh_headings", "study_searches"):
            assert con.execute(f"SELECT count(*) FROM aact.{table}").fetchall() == [(0,)]
            continue
        got = Counter(n for (n,) in con.execute(f"SELECT nct_id FROM aact.{table}").fetchall())
        expected = Counter({nct(r): count(r) for r in records if count(r)})
        assert got == expected, table
    keys = {t: con.execute(f"SELECT count(*), count(DISTINCT id) FROM aact.{t}").fetchall()[0] for t in ROWS
            if t != "studies"}
    assert all(total == distinct for total, distinct in keys.values()), keys  # ids are unique


# -- computed columns and links, by AACT's rules -------------------------------------------------------
US = {"United States", "Guam", "Puerto Rico", "U.S. Virgin Islands", "Virgin Islands (U.S.)",
      "Northern Mariana Islands", "American Samoa", "Midway Atoll", "Baker Island", "Howland Island",
      "Jarvis Island", "Johnston Atoll", "Kingman Reef", "Navassa Island", "Palmyra Atoll", "Wake Island",
      "Serranilla Bank", "Bajo Nuevo Bank"}


def expected_calculated(r: Record) -> tuple[Any, ...]:
    status = r["protocolSection"]["statusModule"]
    sites = values_at(r, P + "contactsLocationsModule.locations[]")
    events = {k: [s["numAffected"] for s in values_at(r, R + f"adverseEventsModule.{k}Events[].stats[]")]
              for k in ("serious", "other")}

    def when(key: str) -> tuple[date | None, str | None]:
        struct = status.get(key) or {}
        return (aact_date(struct["date"]) if "date" in struct else None), struct.get("type")

    start, start_type = when("startDateStruct")
    primary, primary_type = when("primaryCompletionDateStruct")
    submitted = status.get("resultsFirstSubmitDate")

    def months(a: date | None, b: date | None) -> int | None:
        return None if a is None or b is None else int((b - a).days / 30)

    def age(key: str) -> tuple[int | None, str | None]:
        text = r["protocolSection"].get("eligibilityModule", {}).get(key)
        return (int(text.split()[0]), text.split()[-1].lower().removesuffix("s")) if text else (None, None)

    outcomes = r["protocolSection"].get("outcomesModule", {})
    return (
        len(sites), sum(events["other"]) if events["other"] else None,
        sum(events["serious"]) if events["serious"] else None, int(status["studyFirstSubmitDate"][:4]),
        None if "ESTIMATED" in (start_type, primary_type) else months(start, primary),
        bool(values_at(r, R + "outcomeMeasuresModule.outcomeMeasures[]")),
        months(primary, date.fromisoformat(submitted) if submitted else None),
        any(s.get("country") in US for s in sites) if sites else None, len(sites) == 1 if sites else None,
        *age("minimumAge")[:1], *age("maximumAge")[:1], age("minimumAge")[1], age("maximumAge")[1],
        *(len(outcomes.get(k, [])) or None for k in ("primaryOutcomes", "secondaryOutcomes", "otherOutcomes")),
    )


def test_calculated_values_follow_aacts_rules(con: duckdb.DuckDBPyConnection, records: list[Record]) -> None:
    got = {row[0]: row[1:] for row in con.execute("""SELECT nct_id, number_of_facilities, number_of_nsae_subjects,
        number_of_sae_subjects, registered_in_calendar_year, actual_duration, were_results_reported,
        months_to_report_results, has_us_facility, has_single_facility, minimum_age_num, maximum_age_num,
        minimum_age_unit, maximum_age_unit, number_of_primary_outcomes_to_measure,
        number_of_secondary_outcomes_to_measure, number_of_other_outcomes_to_measure FROM aact.calculated_values
        WHERE nlm_download_date IS NULL""").fetchall()}
    assert {n: got[n] for n in map(nct, records)} == {nct(r): expected_calculated(r) for r in records}
    values = list(got.values())
    assert sum(v[5] for v in values) == 7 and sum(v[7] is True for v in values) > 100
    assert "year" in {v[11] for v in values} and any(v[4] is not None for v in values)


def test_studies_join_phases_count_arms_and_leave_the_missing_qc_date_empty(con: duckdb.DuckDBPyConnection,
                                                                              records: list[Record]) -> None:
    got = {row[0]: row[1:] for row in con.execute("""SELECT nct_id, phase, number_of_arms, number_of_groups,
        last_update_submitted_qc_date FROM aact.studies""").fetchall()}
    for r in records:
        design = r["protocolSection"]["designModule"]
        arms = len(values_at(r, P + "armsInterventionsModule.armGroups[]")) or None
        interventional = design["studyType"] == "INTERVENTIONAL"
        phase = "/".join(design["phases"]) if design.get("phases") else None
        assert got[nct(r)] == (phase, arms if interventional else None, None if interventional else arms,
                               None), nct(r)
    assert {"PHASE1/PHASE2", "NA"} <= {v[0] for v in got.values()}


def test_results_rows_link_to_their_groups_and_outcomes(con: duckdb.DuckDBPyConnection,
                                                        records: list[Record]) -> None:
    """Following AACT's keys (result_group_id, outcome_id, outcome_analysis_id) leads to the group and
    outcome the JSON names for that row."""
    got = Counter(con.execute("""SELECT m.nct_id, o.title, g.title, g.result_type, m.param_value
        FROM aact.outcome_measurements m JOIN aact.outcomes o ON o.id = m.outcome_id
        JOIN aact.result_groups g ON g.id = m.result_group_id AND g.outcome_id = o.id""").fetchall())
    expected: Counter[tuple[Any, ...]] = Counter()
    analyses: Counter[tuple[Any, ...]] = Counter()
    for r in records:
        for om in values_at(r, R + "outcomeMeasuresModule.outcomeMeasures[]"):
            titles = {g["id"]: g["title"] for g in om.get("groups", [])}
            for m in values_at(om, "classes[].categories[].measurements[]"):
                expected[(nct(r), om["title"], titles[m["groupId"]], "Outcome", m["value"])] += 1
            for a in om.get("analyses", []):
                for group in a.get("groupIds", []):
                    analyses[(nct(r), om["title"], a.get("pValue"), titles[group])] += 1
    assert got == expected and sum(expected.values()) == 465
    assert Counter(con.execute("""SELECT a.nct_id, o.title, a.p_value_raw, g.title FROM aact.outcome_analysis_groups x
        JOIN aact.outcome_analyses a ON a.id = x.outcome_analysis_id JOIN aact.outcomes o ON o.id = a.outcome_id
        JOIN aact.result_groups g ON g.id = x.result_group_id""").fetchall()) == analyses
    flow = Counter(con.execute("""SELECT m.nct_id, g.title, m.title, m.count FROM aact.milestones m
        JOIN aact.result_groups g ON g.id = m.result_group_id AND g.result_type = 'Participant Flow'""").fetchall())
    assert flow == Counter(
        (nct(r), {g["id"]: g["title"] for g in values_at(r, R + "participantFlowModule.groups[]")}[a["groupId"]],
         m["type"], int(a["numSubjects"]))
        for r in records for m in values_at(r, R + "participantFlowModule.periods[].milestones[]")
        for a in m.get("achievements", []))


def test_p_values_numbers_and_document_urls_are_parsed_like_aact(con: duckdb.DuckDBPyConnection,
                                                                 records: list[Record]) -> None:
    got = Counter(con.execute("SELECT p_value_raw, p_value_modifier, p_value FROM aact.outcome_analyses").fetchall())
    raws = [a.get("pValue") for r in records
            for a in values_at(r, R + "outcomeMeasuresModule.outcomeMeasures[].analyses[]")]

    def parsed(raw: str | None) -> tuple[Any, ...]:
        if raw is None:
            return (None, None, None)
        return (raw, "".join(c for c in raw if not (c.isdigit() or c in ".-")).strip(),
                number("".join(c for c in raw if c not in "<>= ")))

    assert got == Counter(map(parsed, raws)) and any(m for _, m, _ in got if m)
    urls = {u for (u,) in con.execute("SELECT url FROM aact.provided_documents").fetchall()}
    assert urls == {f"https://ClinicalTrials.gov/ProvidedDocs/{nct(r)[-2:]}/{nct(r)}/{d['filename']}"
                    for r in records for d in values_at(r, "documentSection.largeDocumentModule.largeDocs[]")}


def test_baseline_number_analyzed_comes_from_the_same_studys_denominators(con: duckdb.DuckDBPyConnection,
                                                                           records: list[Record]) -> None:
    """Class-level denominators first, then the measure's, then the baseline's overall ones, always of
    the same study (AACT's fallback does not filter by study: a deviation, docs/aact.md)."""
    expected: Counter[tuple[Any, ...]] = Counter()
    for r in records:
        baseline = _get(r, "resultsSection", "baselineCharacteristicsModule") or {}
        for measure in baseline.get("measures", []):
            units = measure.get("denomUnitsSelected", "Participants")
            for klass in measure.get("classes", []):
                for m in values_at(klass, "categories[].measurements[]"):
                    counts = [c["value"] for d in (klass.get("denoms"), measure.get("denoms"), baseline.get("denoms"))
                              for c in values_at(d or [], "[].counts[]") if c["groupId"] == m["groupId"]
                              and d and any(x["units"] == units and c in x.get("counts", []) for x in d)]
                    expected[(nct(r), measure["title"], m["groupId"], m["value"], int(counts[0]) if counts else None,
                              units)] += 1
    got = Counter(con.execute("""SELECT nct_id, title, ctgov_group_code, param_value, number_analyzed,
        number_analyzed_units FROM aact.baseline_measurements""").fetchall())
    assert got == expected and sum(got.values()) == 335
    assert sum(n for (_, _, _, _, analyzed, _), n in got.items() if analyzed is not None) == 335


# -- time travel ----------------------------------------------------------------------------------------
HISTORY = real_history(DATA / "ctgov" / "history")


def as_of_expected(day: date) -> tuple[Any, ...] | None:
    """Status and enrollment of NCT03690141 on ``day``, from the history's records and dates."""
    valid = [c["version"] for c in HISTORY.changes if date.fromisoformat(c["date"]) <= day]
    if not valid:
        return None
    p = HISTORY.records[max(valid)]["protocolSection"]
    info = p["designModule"]["enrollmentInfo"]
    return p["statusModule"]["overallStatus"], info["count"], info["type"]


def test_as_of_shows_the_registry_as_it_stood_that_day(prefect_api: str, warehouse_dir: Path) -> None:
    with FakeRegistry().start() as fake:
        fake.put_history(HISTORY)
        backfill_history(ids=[REAL_HISTORY_NCT], api_url=fake.url, warehouse=str(warehouse_dir),
                         request_interval=0.0, backoff_seconds=0.01, timeout_seconds=5.0, lock_timeout=5.0)
    days = [date(2018, 9, 1), date(2018, 9, 27), date(2018, 10, 15), date(2018, 10, 16), date(2019, 7, 15),
            date(2019, 7, 16), date(2020, 1, 1), date(2020, 4, 27), date(2025, 1, 1)]
    sql = f"SELECT overall_status, enrollment, enrollment_type FROM aact.studies WHERE nct_id = '{REAL_HISTORY_NCT}'"
    seen = []
    with Warehouse(warehouse_dir).connect() as con:
        current = con.execute(sql).fetchall()
        for day in days:
            con.execute(f"SET VARIABLE as_of = DATE '{day}'")
            rows = con.execute(sql).fetchall()
            assert rows == ([as_of_expected(day)] if as_of_expected(day) else []), day
            assert con.execute(f"""SELECT count(*) FROM aact.calculated_values
                WHERE nct_id = '{REAL_HISTORY_NCT}'""").fetchall() == [(len(rows),)]
            seen.append(rows[0] if rows else None)
        con.execute("RESET VARIABLE as_of")
        assert con.execute(sql).fetchall() == current == [as_of_expected(date(2099, 1, 1))]
    assert seen[:2] == [None, ("NOT_YET_RECRUITING", 30, "ESTIMATED")]
    assert {s[0] for s in seen if s} == {"NOT_YET_RECRUITING", "RECRUITING", "ACTIVE_NOT_RECRUITING", "COMPLETED"}
    assert ("ACTIVE_NOT_RECRUITING", 16, "ACTUAL") in seen
    # The CLI: --as-of sets the variable on the read-only, sandboxed connection.
    out = run_cli("sql", "--warehouse", str(warehouse_dir), "--as-of", "2019-01-01", "--format", "csv",
                  "SELECT overall_status, enrollment FROM aact.studies")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[1:] == ["RECRUITING,30"]
    bad = run_cli("sql", "--warehouse", str(warehouse_dir), "--as-of", "2019-1-1", "SELECT 1")
    assert bad.returncode == 2 and "--as-of expects a date as YYYY-MM-DD" in bad.stderr


def test_docs_aact_maps_every_aact_table() -> None:
    from tests.conftest import REPO

    mapped = set()
    for line in (REPO / "docs" / "aact.md").read_text().splitlines():
        if line.startswith("| `"):
            first = line.split("|")[1]
            mapped |= {name.strip().strip("`") for name in first.split(", ")}
    assert mapped == set(aact_schema())
