"""Pure: the generated schema, validation of every real record, flattening, site keys, ages, dates."""

from __future__ import annotations

import copy
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import mutate
from pipeline.dates import parse_partial_date
from pipeline.flatten import CHILD_TABLES, ONE_ROW_TABLES, age_days, flatten, site_keys
from pipeline.parse import parse_record
from pipeline.versioning import RunContext, plan_batch
from tests.conftest import REPO, SPEC_FILE, nct, real_records
from warehouse.tables import CHILD_TABLES as CHILD_SCHEMAS

CTX = RunContext("run-1", datetime(2026, 11, 24, tzinfo=UTC), "api")
# Every key whose value is a registry date (PartialDate or a full date), wherever it occurs;
# largeDocs[].uploadDate is a timestamp (yyyy-MM-ddTHH:mm), not a date.
DATE_KEY = re.compile(r"^(?!uploadDate$).*(Date|^date|^versionHolder)$")


def test_generated_schema_and_enums_match_the_openapi_spec() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen_schema", REPO / "tools" / "gen_schema.py")
    assert spec and spec.loader
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    for path, text in generator.render(SPEC_FILE).items():
        assert (REPO / path).read_text() == text, f"{path} is stale: run tools/gen_schema.py"


def test_flatten_produces_exactly_the_columns_of_the_warehouse_tables() -> None:
    rows = flatten(parse_record(real_records()[0]).study)
    assert tuple(rows) == CHILD_TABLES == tuple(CHILD_SCHEMAS)
    for table, columns in rows.items():
        assert list(columns) == CHILD_SCHEMAS[table].names[2:], table


def _lengths(record: dict[str, Any]) -> dict[str, int]:
    p = record["protocolSection"]
    arms = p.get("armsInterventionsModule", {})
    outcomes = p.get("outcomesModule", {})
    return {
        "locations": len(p.get("contactsLocationsModule", {}).get("locations", [])),
        "conditions": len(p.get("conditionsModule", {}).get("conditions", [])),
        "keywords": len(p.get("conditionsModule", {}).get("keywords", [])),
        "interventions": len(arms.get("interventions", [])),
        "arm_groups": len(arms.get("armGroups", [])),
        "outcomes": sum(len(outcomes.get(k, [])) for k in ("primaryOutcomes", "secondaryOutcomes", "otherOutcomes")),
        "collaborators": len(p.get("sponsorCollaboratorsModule", {}).get("collaborators", [])),
        "secondary_ids": len(p["identificationModule"].get("secondaryIdInfos", [])),
    }


def test_every_real_record_validates_and_flattens_to_one_row_per_array_element() -> None:
    for record in real_records():
        rows = flatten(parse_record(record).study)
        counted = {table: len(next(iter(columns.values()))) for table, columns in rows.items()}
        sponsors, ids = rows["sponsors"], rows["identifiers"]
        assert {
            **{t: counted[t] for t in ("locations", "conditions", "keywords", "interventions", "arm_groups",
                                       "outcomes")},
            "collaborators": sponsors["role"].count("collaborator"),
            "secondary_ids": ids["id_kind"].count("secondary_id"),
        } == _lengths(record), nct(record)
        assert [counted[t] for t in ONE_ROW_TABLES] == [1] * len(ONE_ROW_TABLES)


def test_site_keys_survive_reordering_and_ties_go_by_list_order() -> None:
    record = max(real_records(), key=lambda r: _lengths(r)["locations"])
    sites = record["protocolSection"]["contactsLocationsModule"]["locations"]
    assert len(sites) > 1000

    def keyed(locations: list[dict[str, Any]]) -> dict[str, str]:
        identities = [(s.get("facility"), s.get("city"), s.get("state"), s.get("zip"), s.get("country"))
                      for s in locations]
        return dict(zip(site_keys(identities), (s.get("facility") for s in locations), strict=True))

    forward = keyed(sites)
    assert len(forward) == len(sites)  # unique within the study
    assert keyed(list(reversed(sites))) == forward  # reordering keeps every key
    twin = copy.deepcopy(sites[3])
    twin["status"] = "COMPLETED"  # same identity, different state: a tie
    ties = site_keys([(s.get("facility"), s.get("city"), s.get("state"), s.get("zip"), s.get("country"))
                      for s in [*sites[:5], twin]])
    assert ties[5] == f"{ties[3]}-2"
    assert site_keys([(None, "Boston", None, None, "United States")]) != site_keys(
        [("Boston", None, None, None, "United States")])  # fields do not run into each other


@pytest.mark.parametrize(("text", "days", "years"), [
    ("18 Years", 6574.5, 18.0), ("1 Year", 365.25, 1.0), ("6 Months", 182.625, 0.5),
    ("2 Weeks", 14.0, 14 / 365.25), ("28 Days", 28.0, 28 / 365.25), ("12 Hours", 0.5, 0.5 / 365.25),
    ("90 Minutes", 90 / 1440, 90 / 1440 / 365.25),
])
def test_ages_convert_to_days_and_years(text: str, days: float, years: float) -> None:
    assert age_days(text) == pytest.approx(days)
    record = mutate.set_path(real_records()[0], ("protocolSection", "eligibilityModule", "minimumAge"), text)
    row = flatten(parse_record(record).study)["eligibility"]
    assert (row["minimum_age"], row["minimum_age_days"][0], row["minimum_age_years"][0]) == (
        [text], pytest.approx(days), pytest.approx(years))


def _date_leaves(value: Any, path: str = "") -> list[tuple[str, str]]:
    """(path, text) of every string under a date key (``*Date``, ``date``, ``versionHolder``)."""
    if isinstance(value, dict):
        return [leaf for k, v in value.items() for leaf in (
            [(f"{path}.{k}", v)] if isinstance(v, str) and DATE_KEY.search(k) else _date_leaves(v, f"{path}.{k}"))]
    if isinstance(value, list):
        return [leaf for i, v in enumerate(value) for leaf in _date_leaves(v, f"{path}[{i}]")]
    return []


def test_every_date_in_the_corpus_parses_and_its_text_round_trips() -> None:
    forms: dict[int, int] = {}
    for record in real_records():
        for path, raw in _date_leaves(record):
            parsed = parse_partial_date(raw, field=path)
            assert parsed.text() == parsed.raw == raw, path
            forms[len(raw)] = forms.get(len(raw), 0) + 1
    assert set(forms) == {7, 10} and forms[7] > 100  # month-only ("2025-05") and full dates
    assert parse_partial_date("2025").text() == "2025"


# -- quarantine: records derived from real ones that do not fit --------------------------------------
def broken_variants() -> list[tuple[str, dict[str, Any], str]]:
    """(what, record, expected reason) for records that must be quarantined, each derived from a
    different real record (so a registry keyed by NCT id keeps them all)."""
    used = {"NCT05766735"}  # the real version pair other tests replay

    def pick(test: Any = lambda r: True) -> dict[str, Any]:
        record = next(r for r in real_records()[10:] if nct(r) not in used and test(r))
        used.add(nct(record))
        return record

    def has(*path: str) -> Any:
        def test(record: dict[str, Any]) -> bool:
            node: Any = record
            for key in path:
                node = node.get(key) if isinstance(node, dict) else None
            return bool(node)
        return test

    status, design = ("protocolSection", "statusModule"), ("protocolSection", "designModule")
    sites, arms = ("protocolSection", "contactsLocationsModule", "locations"), (
        "protocolSection", "armsInterventionsModule", "interventions")
    with_sites, with_arms = has(*sites), has(*arms)
    return [
        ("unknown overall status", mutate.set_status(pick(), "PAUSED"),
         "Invalid enum value 'PAUSED' - at `$.protocolSection.statusModule.overallStatus`"),
        ("unknown site status", mutate.set_site_status(pick(with_sites), 0, "OPEN"),
         "Invalid enum value 'OPEN' - at `$.protocolSection.contactsLocationsModule.locations[0].status`"),
        ("unknown intervention type", mutate.set_path(pick(with_arms), (*arms, 0, "type"), "MAGIC"),
         "Invalid enum value 'MAGIC' - at `$.protocolSection.armsInterventionsModule.interventions[0].type`"),
        ("enrollment count as text", mutate.set_enrollment(pick(), "many"),  # type: ignore[arg-type]
         "Expected `int | null`, got `str` - at `$.protocolSection.designModule.enrollmentInfo.count`"),
        ("conditions unboxed to a string", mutate.set_path(pick(), ("protocolSection", "conditionsModule",
                                                                   "conditions"), "Asthma"),
         "Expected `array | null`, got `str` - at `$.protocolSection.conditionsModule.conditions`"),
        ("latitude as text", mutate.set_path(pick(with_sites), (*sites, 0, "geoPoint", "lat"), "40.7"),
         "Expected `float`, got `str` - at `$.protocolSection.contactsLocationsModule.locations[0].geoPoint.lat`"),
        ("hasResults as text", mutate.set_path(pick(), ("hasResults",), "yes"),
         "Expected `bool | null`, got `str` - at `$.hasResults`"),
        ("age in a made-up unit", mutate.set_path(pick(), ("protocolSection", "eligibilityModule", "minimumAge"),
                                                  "18 Yrs"), "at `$.protocolSection.eligibilityModule.minimumAge`"),
        ("month 13", mutate.set_date(pick(), "startDate", "2025-13"), "startDate: '2025-13' is not a calendar date"),
        ("phase unknown", mutate.set_path(pick(), (*design, "phases"), ["PHASE5"]),
         "Invalid enum value 'PHASE5' - at `$.protocolSection.designModule.phases[0]`"),
        ("no protocolSection", mutate.drop_path(pick(), ("protocolSection",)), "record has no protocolSection"),
        ("invalid NCT id", mutate.set_path(pick(), ("protocolSection", "identificationModule", "nctId"),
                                           "NCT123"), "invalid NCT id 'NCT123'"),
        ("NCT id missing", mutate.drop_path(pick(), ("protocolSection", "identificationModule", "nctId")),
         "record has no protocolSection.identificationModule.nctId"),
        ("no last update date", mutate.drop_path(pick(), (*status, "lastUpdatePostDateStruct")),
         "incomplete record: no protocolSection.statusModule.lastUpdatePostDateStruct.date"),
        ("results submitted on 30 February", mutate.set_path(pick(has("resultsSection")),
                                                             (*status, "resultsFirstSubmitDate"), "2021-02-30"),
         "resultsFirstSubmitDate: '2021-02-30' is not a calendar date"),
    ]


def test_broken_records_are_quarantined_with_a_reason_and_the_rest_planned() -> None:
    variants = broken_variants()
    good = real_records()[100:110]
    plan = plan_batch([*good[:5], *(record for _, record, _ in variants), *good[5:]], {}, CTX)
    assert [v.core.nct_id for v in plan.versions] == [nct(r) for r in good]
    assert len(plan.quarantined) == len(variants)
    for (what, record, reason), item in zip(variants, plan.quarantined, strict=True):
        assert reason in item.reason, what
        ident = record.get("protocolSection", {}).get("identificationModule", {})
        assert item.nct_id == ident.get("nctId"), what


# What the client's JSON parser (orjson) can produce: it reads integers beyond 64 bits as floats.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


def _paths(value: Any, path: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    return [path, *(p for key, item in items for p in _paths(item, (*path, key)))]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_value_anywhere_in_a_real_record_gives_a_version_or_a_quarantine_never_a_crash(data: Any) -> None:
    record = data.draw(st.sampled_from(real_records()[:40]))
    path = data.draw(st.sampled_from(_paths(record)))
    value = data.draw(json_values)
    broken = value if not path else mutate.set_path(record, path, value)
    plan = plan_batch([broken], {}, CTX)
    assert len(plan.versions) + len(plan.quarantined) == 1
    if plan.quarantined:
        assert plan.quarantined[0].reason and "\n" not in plan.quarantined[0].reason


def test_results_parents_with_empty_lists_keep_one_row_and_lose_no_field() -> None:
    """A class without categories, a category without values, a milestone without counts, an adverse
    event without stats, a denominator without counts: each still gives one row carrying its own
    fields (the item columns NULL), so every leaf of the record stays in a typed column."""
    record = next(r for r in real_records() if "resultsSection" in r
                  and r["resultsSection"].get("adverseEventsModule", {}).get("seriousEvents"))
    results = ("resultsSection",)
    outcome = (*results, "outcomeMeasuresModule", "outcomeMeasures", 0)
    emptied = record
    for path in [(*outcome, "classes", 0, "categories", 0, "measurements"),
                 (*results, "participantFlowModule", "periods", 0, "milestones", 0, "achievements"),
                 (*results, "adverseEventsModule", "seriousEvents", 0, "stats"),
                 (*outcome, "denoms", 0, "counts")]:
        emptied = mutate.set_path(emptied, path, [])
    rows = flatten(parse_record(emptied).study)
    before = flatten(parse_record(record).study)

    def first(table: str, **where: Any) -> dict[str, Any]:
        columns = rows[table]
        index = next(i for i in range(len(columns["ordinal"]))
                     if all(columns[k][i] == v for k, v in where.items()))
        return {k: v[index] for k, v in columns.items()}

    o = record["resultsSection"]["outcomeMeasuresModule"]["outcomeMeasures"][0]
    category = first("result_measurements", module="outcome", measure_ordinal=0, class_ordinal=0, category_ordinal=0)
    assert (category["category_title"], category["ordinal"], category["group_id"]) == (
        o["classes"][0]["categories"][0].get("title"), None, None)
    flow = record["resultsSection"]["participantFlowModule"]["periods"][0]
    milestone = first("participant_flow", period_ordinal=0, kind="milestone", item_ordinal=0)
    assert (milestone["item_type"], milestone["ordinal"], milestone["num_subjects"]) == (
        flow["milestones"][0]["type"], None, None)
    event = record["resultsSection"]["adverseEventsModule"]["seriousEvents"][0]
    assert (lambda e: (e["term"], e["ordinal"], e["num_affected"]))(
        first("adverse_events", kind="serious", event_ordinal=0)) == (event["term"], None, None)
    denom = first("result_denoms", module="outcome", measure_ordinal=0, denom_ordinal=0)
    assert (denom["units"], denom["group_id"]) == (o["denoms"][0]["units"], None)
    lost = len(o["classes"][0]["categories"][0]["measurements"]) - 1
    assert len(rows["result_measurements"]["ordinal"]) == len(before["result_measurements"]["ordinal"]) - lost


def test_a_batchs_child_rows_are_each_versions_flattened_rows_in_order_with_its_key() -> None:
    """``ChildRows`` gathers the batch while planning; the result must be exactly the versions' own
    ``flatten`` rows, concatenated in plan order, each row keyed by its version's (nct_id, version)."""
    from warehouse.rows import child_tables

    records = [copy.deepcopy(r) for r in real_records()[:60]]
    ctx = RunContext("r1", datetime(2026, 1, 1, tzinfo=UTC), "bulk")
    first = plan_batch(records[:30], {}, ctx)
    second_version = copy.deepcopy(records[0])
    second_version["protocolSection"]["conditionsModule"]["conditions"] = ["Changed condition", "Another"]
    plan = plan_batch([*records[30:], second_version], first.heads, ctx)
    tables = child_tables(plan.child_rows)
    expected_versions = [(nct(r), 1) for r in records[30:]] + [(nct(records[0]), 2)]
    assert [(v.core.nct_id, v.version) for v in plan.versions] == expected_versions
    for table, schema in CHILD_SCHEMAS.items():
        expected: dict[str, list[Any]] = {f.name: [] for f in schema}
        for record, (nct_id, version) in zip([*records[30:], second_version], expected_versions, strict=True):
            rows = flatten(parse_record(record).study)[table]
            count = len(next(iter(rows.values())))
            expected["nct_id"] += [nct_id] * count
            expected["version"] += [version] * count
            for name in list(expected)[2:]:
                expected[name] += rows[name]
        assert tables[table].schema == schema
        assert tables[table].to_pydict() == expected, table
    conditions = tables["conditions"].to_pydict()
    assert [c for c, v in zip(conditions["condition"], conditions["version"], strict=True) if v == 2] == [
        "Changed condition", "Another"]


_SITE_TEXT = st.one_of(st.none(), st.sampled_from(["", "Boston", "MA", "02115", "United States", "x\x1fy", "Zürich"]))


@settings(max_examples=200, deadline=None)
@given(sites=st.lists(st.tuples(_SITE_TEXT, _SITE_TEXT, _SITE_TEXT, _SITE_TEXT, _SITE_TEXT), max_size=8))
def test_site_keys_are_the_digest_of_the_five_fields_numbered_in_list_order_on_ties(
        sites: list[tuple[str | None, ...]]) -> None:
    """The stored ``site_key`` is the rule the data dictionary documents, whatever code computes it:
    BLAKE2b-64 of the five fields joined by U+001F (NULL as empty), ``-2``, ``-3``, ... on repeats."""
    import hashlib

    expected, seen = [], {}
    for identity in sites:
        digest = hashlib.blake2b("\x1f".join(p or "" for p in identity).encode(), digest_size=8).hexdigest()
        seen[digest] = seen.get(digest, 0) + 1
        expected.append(digest if seen[digest] == 1 else f"{digest}-{seen[digest]}")
    assert site_keys(iter(sites)) == expected
