"""SPEC's "one notion of equality", end to end on real records: spellings of the same content (arrays
reordered, ``100.0`` for ``100``, NFD text, another key order, whitespace in the JSON text, a member set
to null, ``[]`` or ``{}`` instead of left out) make no version and no change through a real sync and a
bulk load; material edits make exactly the documented events. A warehouse hashed by the rule before
null (or an empty member) = absent is re-hashed on first use, so its next sync makes no version either."""

from __future__ import annotations

import copy
import hashlib
import unicodedata
import zipfile
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest

from flows.bulk import run_load_bulk
from pipeline import hashing, mutate
from pipeline.changes import Rules, VersionPair, derive_changes
from pipeline.diff import diff, full_diff
from pipeline.hashing import content_hash, hash_rule
from pipeline.registry.fake_server import FakeRegistry
from pipeline.versioning import RunContext, plan_batch
from tests.conftest import Record, fast_sync, nct, real_records
from tests.fdaaa_support import store
from warehouse import Warehouse
from warehouse.catalog import Manifest
from warehouse.migrations import HASH_RULE_KEY
from warehouse.store import RunWriter


def _locations(record: Record) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = record["protocolSection"].get("contactsLocationsModule", {}).get("locations", [])
    return found


def _walk(value: Any, edit: Any) -> Any:
    """``value`` rebuilt bottom-up, each object and array passed through ``edit(kind, value)``."""
    if isinstance(value, dict):
        return edit("object", {k: _walk(v, edit) for k, v in value.items()})
    if isinstance(value, list):
        return edit("array", [_walk(v, edit) for v in value])
    return edit("scalar", value)


def reordered(record: Record) -> Record:
    """Every array reversed (the diff matches elements by identity; the hash sorts them)."""
    return _walk(record, lambda kind, v: v[::-1] if kind == "array" else v)  # type: ignore[no-any-return]


def floats(record: Record) -> Record:
    """Every integer written as a float (``100.0``)."""
    return _walk(record, lambda kind, v: float(v) if kind == "scalar" and type(v) is int else v)  # type: ignore[no-any-return]


def nfd(record: Record) -> Record:
    return _walk(record, lambda kind, v: unicodedata.normalize("NFD", v) if kind == "scalar" and isinstance(v, str)
                 else v)  # type: ignore[no-any-return]


def keys_reversed(record: Record) -> Record:
    return _walk(record, lambda kind, v: dict(reversed(v.items())) if kind == "object" else v)  # type: ignore[no-any-return]


def nulls(record: Record) -> Record:
    """Each object the schema describes with its missing known members present as null (the registry
    omits them; a re-serialising tool may write them)."""
    out = copy.deepcopy(record)

    def fill(value: Any, shape: Any) -> None:
        if isinstance(value, list):
            for item in value:
                fill(item, shape)
        elif isinstance(value, dict) and isinstance(shape, dict):
            for key, child in shape.items():
                if key not in value:
                    value[key] = None
                else:
                    fill(value[key], child)

    fill(out["protocolSection"], hashing._shape_of_study()["protocolSection"])
    return out


def _containers() -> dict[tuple[str, ...], dict[str, type]]:
    """For each object path of the real records (array indexes left out): its members that hold an array
    or an object somewhere, with that kind (so an empty one has the type the parser expects)."""
    found: dict[tuple[str, ...], dict[str, type]] = {}

    def visit(value: Any, path: tuple[str, ...]) -> None:
        if isinstance(value, list):
            for item in value:
                visit(item, path)
        elif isinstance(value, dict):
            for key, item in value.items():
                if isinstance(item, list | dict):
                    found.setdefault(path, {})[key] = type(item)
                    visit(item, (*path, key))

    for record in real_records():
        visit(record, ())
    return found


def empties(record: Record) -> Record:
    """Each object with the array members it lacks present as ``[]``, each section with the modules it
    lacks as ``{}`` (the registry omits empty fields; a re-serialising tool may write them): an empty
    array or object is no member, as null is none."""
    out = copy.deepcopy(record)
    containers = _containers()

    def fill(value: Any, path: tuple[str, ...]) -> None:
        if isinstance(value, list):
            for item in value:
                fill(item, path)
        elif isinstance(value, dict):
            for key, item in list(value.items()):
                fill(item, (*path, key))
            for key, kind in containers.get(path, {}).items():
                if kind is list or len(path) == 1:  # {} only for a module: a struct may require members
                    value.setdefault(key, kind())

    fill(out, ())
    return out


SPELLINGS = [reordered, floats, nfd, keys_reversed, nulls, empties]


def spelled(record: Record) -> Record:
    out = record
    for spelling in SPELLINGS:
        out = spelling(out)
    return out


def _pool() -> list[Record]:
    """Real records with the shapes these edits need: many sites, one site, none, non-ASCII text."""
    records = real_records()
    def decomposes(record: Record) -> bool:
        text = orjson.dumps(record).decode()
        return unicodedata.normalize("NFD", text) != text

    picks = [next(r for r in records if len(_locations(r)) > 5), next(r for r in records if len(_locations(r)) == 1),
             next(r for r in records if not _locations(r)), next(r for r in records if decomposes(r))]
    return [copy.deepcopy(r) for r in {nct(r): r for r in picks + records[:16]}.values()]


@pytest.mark.parametrize("spelling", [*SPELLINGS, spelled], ids=lambda f: f.__name__)
def test_a_spelling_of_the_same_content_has_the_same_hash_and_no_diff(spelling: Any) -> None:
    spelt = 0
    for record in _pool():
        variant = spelling(record)
        spelt += orjson.dumps(variant) != orjson.dumps(record)
        assert (hashing.python_hash_and_unknown(variant)[0], hashing.slow_hash_and_unknown(variant)[0],
                content_hash(variant)) == (content_hash(record),) * 3, (spelling.__name__, nct(record))
        assert diff(record, variant) == [] and diff(variant, record) == []
    assert spelt >= 1


def test_a_member_set_to_null_gives_the_events_of_the_member_absent() -> None:
    """``contactsLocationsModule: null`` is the module gone: a site_removed per site, not one field change."""
    for record in [r for r in _pool() if _locations(r)]:
        gone, null = copy.deepcopy(record), copy.deepcopy(record)
        del gone["protocolSection"]["contactsLocationsModule"]
        null["protocolSection"]["contactsLocationsModule"] = None
        events = _events(record, null)
        assert events == _events(record, gone)
        assert [e for e, *_ in events].count("site_removed") == len(_locations(record))


_PHASES = ("protocolSection", "designModule", "phases")


def _edits(record: Record) -> list[Record]:
    """Material edits of ``record`` whose events read its lists: phases cleared, changed and set anew,
    the status moved, every site gone."""
    edits = [mutate.set_status(record, "SUSPENDED")]
    if record["protocolSection"].get("designModule", {}).get("phases"):
        edits += [mutate.drop_path(record, _PHASES), mutate.set_path(record, _PHASES, ["PHASE4"])]
    elif "designModule" in record["protocolSection"]:
        edits.append(mutate.set_path(record, _PHASES, ["PHASE2", "PHASE3"]))
    if _locations(record):
        edits.append(mutate.drop_path(record, ("protocolSection", "contactsLocationsModule", "locations")))
    return edits


@pytest.mark.parametrize("spelling", [s for s in SPELLINGS if s is not reordered], ids=lambda f: f.__name__)
def test_events_of_an_edit_do_not_depend_on_how_either_version_is_spelled(spelling: Any) -> None:
    """A version made for a material reason reports only that reason, in the same words: ``"phases": []``
    in the new version is the phases gone (``new_value`` NULL, as when the key is left out), not a
    change to ``[]`` (array order is left out: a phase list's text is the registry's own, in its order)."""
    compared = 0
    for record in _pool():
        for edited in _edits(record):
            expected = _events(record, edited)
            assert expected, nct(record)
            assert _events(spelling(record), spelling(edited)) == expected, (nct(record), spelling.__name__)
            assert _events(spelling(edited), spelling(record)) == _events(edited, record), nct(record)
            compared += 1
    assert compared >= 2 * len(_pool())


def test_a_module_added_or_removed_beside_unchanged_ones_is_the_diff_of_the_whole_records() -> None:
    """``diff`` skips the modules that are the same on both sides; a section whose other modules were all
    the same was then an empty object on one side, i.e. absent (hash rule 4): a results module added to
    posted results read as the whole ``$.resultsSection`` appearing (old_value NULL), not one module added.
    Also where the side left has only empty members (``{}``, an object of unknown keys)."""
    records = real_records()
    with_results = sorted((r for r in records if len(r.get("resultsSection", {})) > 2), key=lambda r: len(str(r)))
    picks = with_results[:2] + records[:3]
    compared = 0
    for record in picks:
        for section, modules in record.items():
            if not isinstance(modules, dict) or len(modules) < 2:
                continue
            for module in modules:
                fewer = mutate.drop_path(record, (section, module))
                emptied = mutate.set_path(fewer, (section, "zzUnknownModule"), {"zzKey": 1})
                for old, new in ((fewer, record), (record, fewer), (emptied, record)):
                    assert diff(old, new) == full_diff(old, new), (nct(record), section, module)
                compared += 1
    assert compared >= 30


def _events(old: Record, new: Record) -> list[tuple[Any, ...]]:
    changes = derive_changes(VersionPair(nct(old), 1, 2, old, new, "run", None, None), Rules())
    return sorted((c.event, c.field, c.category, c.old_value, c.new_value, c.shift_days) for c in changes)


def _query(root: Path, sql: str) -> list[tuple[Any, ...]]:
    with Warehouse(root).connect() as con:
        return con.execute(sql).fetchall()


def _zip(path: Path, records: list[Record]) -> Path:
    """A bulk zip whose members are the records' JSON text pretty-printed with extra whitespace."""
    with zipfile.ZipFile(path, "w") as zf:
        for record in records:
            # (a raw newline only stands between tokens: the text's own are escaped)
            text = orjson.dumps(record, option=orjson.OPT_INDENT_2).replace(b"\n", b" \r\n\t")
            zf.writestr(f"{nct(record)[-2:]}/{nct(record)}.json", text)
    return path


@pytest.mark.usefixtures("prefect_api")
def test_spellings_of_the_same_records_make_no_version_and_no_change_through_a_sync_and_a_bulk_load(
        tmp_path: Path) -> None:
    records = _pool()
    directory = tmp_path / "warehouse"
    with FakeRegistry(records).start() as registry:
        first = fast_sync(registry, directory)
        assert first["versions_written"] == len(records)
        registry.put(*[spelled(r) for r in records])
        again = fast_sync(registry, directory, full=True)
    assert (again["versions_written"], again["unchanged"], again["changes_written"]) == (0, len(records), 0)
    bulk = run_load_bulk(dict(source=str(_zip(tmp_path / "ctg-studies.json.zip", [spelled(r) for r in records])),
                              warehouse=str(directory), lock_timeout=5.0), workers=1, dask=None)
    assert (bulk["versions_written"], bulk["unchanged"]) == (0, len(records))
    assert _query(directory, "SELECT count(*), max(version) FROM study_versions") == [(len(records), 1)]
    assert _query(directory, "SELECT count(*) FROM changes") == [(0,)]


@pytest.mark.usefixtures("prefect_api")
def test_material_edits_make_exactly_the_documented_events_through_a_sync(tmp_path: Path) -> None:
    records = real_records()
    def recruiting_with_a_day(record: Record) -> bool:
        status = record["protocolSection"]["statusModule"]
        return status["overallStatus"] == "RECRUITING" and len(status["primaryCompletionDateStruct"]["date"]) == 10

    many = copy.deepcopy(next(r for r in records if len(_locations(r)) > 5 and recruiting_with_a_day(r)))
    one = copy.deepcopy(next(r for r in records if len(_locations(r)) == 1))
    none = copy.deepcopy(next(r for r in records if not _locations(r)))
    site = copy.deepcopy(_locations(many)[0])  # a real site, given to the study that had none
    day = max(date.fromisoformat(r["protocolSection"]["statusModule"]["lastUpdatePostDateStruct"]["date"])
              for r in (many, one, none)) + timedelta(days=1)
    edited_many = mutate.posted_on(mutate.shift_date(mutate.set_status(many, "ACTIVE_NOT_RECRUITING"),
                                                     "primaryCompletionDate", 45), day)
    edited_one = mutate.posted_on(mutate.remove_site(one, 0), day)
    edited_none = mutate.posted_on(mutate.add_site(none, site), day)
    directory = tmp_path / "warehouse"
    with FakeRegistry([many, one, none]).start() as registry:
        fast_sync(registry, directory)
        registry.put(edited_many, edited_one, edited_none)
        summary = fast_sync(registry, directory, full=True)
    assert summary["versions_written"] == 3
    rows = _query(directory, "SELECT nct_id, event, category, old_value, new_value, shift_days, severity FROM changes "
                             "WHERE category <> 'registry' ORDER BY nct_id, event")
    status = many["protocolSection"]["statusModule"]
    old_day = date.fromisoformat(status["primaryCompletionDateStruct"]["date"])
    assert rows == sorted([
        (nct(many), "date_slipped", "dates", old_day.isoformat(), (old_day + timedelta(days=45)).isoformat(), 45,
         "notable"),
        (nct(many), "status_changed", "status", "RECRUITING", "ACTIVE_NOT_RECRUITING", None, "notable"),
        (nct(one), "site_removed", "sites", _locations(one)[0].get("facility"), None, None, "minor"),
        (nct(none), "site_added", "sites", None, site["facility"], None, "minor"),
    ])
    registry_rows = _query(directory, "SELECT DISTINCT event, severity FROM changes WHERE category = 'registry'")
    assert registry_rows == [("field_changed", "info")]  # the posting dates: bookkeeping


def _rule_2_hash(record: Record) -> str:
    """The content hash by rule 2 (before null = absent), for a record that needs no other normalising:
    arrays sorted, unknown keys left out, nulls kept; for a record without nulls, by rule 3 (before an
    empty array or object = absent): empty members kept."""
    material = hashing.material_content(record)
    arrays_sorted = hashing._sorted_arrays(material, hashing._compiled_study(), (), [])
    text = orjson.dumps(arrays_sorted, option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(text, digest_size=16).hexdigest()


@pytest.mark.parametrize(("spelling", "rule"), [(nulls, "2"), (empties, "3")], ids=["null", "empty"])
def test_a_warehouse_hashed_before_null_or_empty_was_absent_is_rehashed_and_its_next_records_make_no_version(
        tmp_path: Path, spelling: Any, rule: str) -> None:
    """Stored versions whose raw JSON holds nulls or empty arrays and objects (written by a tool that writes
    them), hashed by the rule before that; the registry then sends the same records without them:
    re-hashed once, no version."""
    records = _pool()[:6]
    with_nulls = [spelling(r) for r in records]
    warehouse = store(tmp_path, with_nulls)
    manifest = warehouse.manifest()
    old_meta = {**manifest.meta, HASH_RULE_KEY: rule + "-" + hash_rule().split("-", 1)[1]}
    run = RunWriter(warehouse, f"20260101T000000Z-rule{rule}", Manifest(manifest.entries, old_meta,
                                                                         manifest.generation))
    with warehouse.committed() as con:
        table = con.sql("SELECT * FROM raw_study_versions ORDER BY nct_id, version").to_arrow_table()
    hashes = [_rule_2_hash(orjson.loads(raw)) for raw in table["raw"].to_pylist()]
    assert all(h != content_hash(r) for h, r in zip(hashes, sorted(with_nulls, key=nct), strict=True))
    index = table.schema.get_field_index("content_hash")
    run.append("study_versions", table.set_column(index, table.schema.field(index), pa.array(hashes, pa.string())))
    run.commit(replace=frozenset({"study_versions"}))

    ctx = RunContext("run-next", datetime(2026, 2, 1, tzinfo=UTC), "api")
    with warehouse.writer(ctx.run_id) as writer:  # the records as the registry sends them
        plan = plan_batch(records, writer.heads(), ctx)
        writer.append_plan(plan, ctx)
        writer.commit()
    assert (len(plan.versions), plan.unchanged) == (0, len(records))
    assert _query(tmp_path, "SELECT count(*), max(version) FROM study_versions") == [(len(records), 1)]
    assert _query(tmp_path, "SELECT count(*) FROM sync_runs WHERE mode = 'migrate'") == [(1,)]
    assert Warehouse(tmp_path).manifest().meta[HASH_RULE_KEY] == hash_rule()
