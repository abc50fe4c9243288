"""The record-history edge: the strict parsers, version choice, the merge (pure), the fake's /api/int and the client."""

from __future__ import annotations

import copy
from datetime import date
from typing import Any

import orjson
import pytest
import requests

from pipeline.errors import HistoryFormatError, RegistryNotFound, UsageError
from pipeline.history import (
    KEY_MODULES,
    FetchedVersion,
    StoredVersion,
    check_backfill_args,
    merge_history,
    parse_history_index,
    parse_history_version,
    select_versions,
)
from pipeline.markup import api_form
from pipeline.parse import parse_study
from pipeline.registry.client import RegistryClient
from pipeline.registry.fake_history import REAL_HISTORY_NCT, real_history
from pipeline.registry.fake_server import FakeRegistry
from pipeline.registry.history import HistoryClient, internal_api_url
from tests.conftest import DATA

HISTORY_DIR = DATA / "ctgov" / "history"
NCT = REAL_HISTORY_NCT
URL = "https://clinicaltrials.gov/api/int/studies/NCT03690141/history"


def real_payload() -> dict[str, Any]:
    """The real ``?history=true`` capture, its two saved members put back together."""
    study = orjson.loads(next(HISTORY_DIR.glob("*study_member_excerpt.json")).read_bytes())
    members = orjson.loads(next(HISTORY_DIR.glob("*history_members.json")).read_bytes())
    return {**study, **members}


@pytest.fixture(scope="module")
def history_registry() -> Any:
    with FakeRegistry().start() as fake:
        fake.put_history(real_history(HISTORY_DIR))
        yield fake


def test_the_real_index_parses_into_ten_dated_versions() -> None:
    index = parse_history_index(real_payload(), NCT, url=URL, nested=True)
    assert [(e.version, e.date.isoformat(), e.status) for e in index.entries] == [
        (0, "2018-09-27", "NOT_YET_RECRUITING"), (1, "2018-10-16", "RECRUITING"), (2, "2018-11-15", "RECRUITING"),
        (3, "2018-11-16", "RECRUITING"), (4, "2018-12-11", "RECRUITING"), (5, "2019-01-18", "RECRUITING"),
        (6, "2019-01-22", "RECRUITING"), (7, "2019-07-16", "ACTIVE_NOT_RECRUITING"),
        (8, "2019-12-04", "ACTIVE_NOT_RECRUITING"), (9, "2020-04-27", "COMPLETED")]
    assert index.entries[7].module_labels == ("Study Status", "Study Design", "Contacts/Locations")
    assert index.last_update_versions == {"outcomes": 5, "primaryOutcomes": 5, "secondaryOutcomes": 0,
                                          "enrollmentInfo": 7}


def _renamed(body: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    out = copy.deepcopy(body)
    for change in out["history"]["changes"]:
        change[new] = change.pop(old)
    return out


@pytest.mark.parametrize(("change", "message"), [
    (lambda b: _renamed(b, "date", "versionDate"), "changes[0] has no YYYY-MM-DD 'date' (None)"),
    (lambda b: _renamed(b, "version", "versionNumber"), "changes[0] has no version number"),
    (lambda b: {**b, "history": {"versions": b["history"]["changes"]}}, "no non-empty 'changes' array"),
    (lambda b: {"study": b["study"]}, "no 'history' object"),
    (lambda b: {**b, "history": {**b["history"], "changes": b["history"]["changes"][1:]}},
     "versions must be unique and start at 0"),
])
def test_a_changed_index_shape_is_a_clear_error_naming_what_changed(change: Any, message: str) -> None:
    with pytest.raises(HistoryFormatError) as caught:
        parse_history_index(change(real_payload()), NCT, url=URL, nested=True)
    assert str(caught.value).startswith(f"unexpected history index of {NCT}: {message}")
    assert str(caught.value).endswith("(the registry's undocumented history format may have changed)")
    assert caught.value.url == URL and not caught.value.retryable


def test_members_a_backfill_does_not_use_are_not_held_against_the_index() -> None:
    body = real_payload()
    changes = body["history"]["changes"]
    changes[3]["moduleLabels"] = None  # unknown labels: fetched even when only some modules are wanted
    changes[4]["status"] = None
    changes[5]["status"] = {"odd": True}
    changes[6]["date"], changes[7]["date"] = changes[7]["date"], changes[6]["date"]  # dates out of order
    body["history"]["lastUpdateVersions"] = {"enrollmentInfo": "7", "outcomes": 5, "other": None}
    index = parse_history_index(body, NCT, url=URL, nested=True)
    assert [e.version for e in index.entries] == list(range(10))
    assert (index.entries[3].module_labels, index.entries[4].status, index.entries[5].status) == (None, None, None)
    assert index.last_update_versions == {"outcomes": 5}
    assert 3 in select_versions(index, set(), KEY_MODULES)


def test_html_text_of_a_history_version_takes_the_api_markdown_form() -> None:
    from pipeline.markup import api_form, html_to_api_markdown

    description = real_payload()["study"]["protocolSection"]["outcomesModule"]["primaryOutcomes"][0]["description"]
    assert description.startswith("<ul><li>A ")
    assert html_to_api_markdown(description) == (
        "* A \u226550% PSA decline from baseline at any time point after therapy and maintained for \u22654 weeks\n"
        "* Objective response according to iRECIST 1.1")
    assert html_to_api_markdown("<p>Inclusion Criteria:</p><ol><li>Age &gt; 18 &amp; <b>able</b></li>"
                                "<li>x<sup>2</sup> [a]<ul><li>sub</li></ul></li></ol>") == (
        "Inclusion Criteria:\n\n1. Age \\> 18 \\& **able**\n2. x^2^ \\[a\\]\n  * sub")
    record = {"a": ["plain <not a tag> text", {"b": "<ul><li>one</li></ul>"}]}
    assert api_form(record) == {"a": ["plain <not a tag> text", {"b": "* one"}]}
    untouched = {"a": ["no markup"]}
    assert api_form(untouched) is untouched


@pytest.mark.parametrize(("body", "message"), [
    ({"studyVersion": 3, "record": {}}, "no 'study' object with a 'protocolSection'"),
    ({"version": 3, "study": {}}, "'studyVersion' is None, not 3"),
    ({"studyVersion": 4, "study": {}}, "'studyVersion' is 4, not 3"),
    ({"studyVersion": 3, "study": {"protocolSection": {"identificationModule": {"nctId": "NCT00000102"}}}},
     "'study' is the record of 'NCT00000102'"),
])
def test_a_changed_version_shape_is_a_clear_error(body: dict[str, Any], message: str) -> None:
    with pytest.raises(HistoryFormatError, match=f"unexpected history version 3 of {NCT}: {message}"):
        parse_history_version(body, NCT, 3, url=URL + "/3")


def test_backfill_takes_valid_ids_or_all_but_not_both() -> None:
    assert check_backfill_args(["nct03690141", "NCT00000102,NCT03690141"], False) == ["NCT00000102", NCT]
    assert check_backfill_args(None, True) == []
    for ids, everything, message in [(None, False, "give the NCT ids to backfill, or --all"),
                                     (["NCT00000000"], False, "invalid NCT id 'NCT00000000'"),
                                     ([NCT], True, "give NCT ids or --all, not both")]:
        with pytest.raises(UsageError, match=message):
            check_backfill_args(ids, everything)


def test_only_versions_not_stored_are_chosen_and_key_modules_keep_version_0() -> None:
    index = parse_history_index(real_payload(), NCT, url=URL, nested=True)
    assert select_versions(index, known=set()) == list(range(10))
    assert select_versions(index, known={0, 1, 2, 9}) == [3, 4, 5, 6, 7, 8]
    # Every real version after the first names "Study Status": the option saves nothing on this study.
    assert select_versions(index, set(), KEY_MODULES) == list(range(10))
    assert select_versions(index, set(), ["Study Design"]) == [0, 2, 7]
    assert select_versions(index, set(), ["Outcome Measures"]) == [0, 5]


def _stored(version: int, digest: str, updated: str | None, rv: int | None = None, removed: bool = False,
            observed: str = "2026-01-01") -> StoredVersion:
    return StoredVersion(version, digest, date.fromisoformat(updated) if updated else None, rv,
                         date.fromisoformat(observed), removed)


def _fetched(rv: int, day: str, digest: str) -> FetchedVersion:
    return FetchedVersion(rv, date.fromisoformat(day), digest, key=rv)


def _shape(merge: Any) -> list[tuple[Any, ...]]:
    return [(m.version, "stored" if m.stored else "fetched", m.stored.version if m.stored else None,
             m.registry_version, str(m.registry_updated)) for m in merge.versions]


def test_a_stored_version_equal_in_content_to_a_history_version_is_that_version() -> None:
    stored = [_stored(1, "e", "2019-01-20"), _stored(2, "j", "2020-04-28")]
    fetched = [_fetched(0, "2018-09-27", "a"), _fetched(1, "2018-10-16", "b"), _fetched(4, "2018-12-11", "e"),
               _fetched(5, "2019-01-18", "f"), _fetched(9, "2020-04-27", "j")]
    merge = merge_history(stored, fetched)
    assert _shape(merge) == [
        (1, "fetched", None, 0, "2018-09-27"), (2, "fetched", None, 1, "2018-10-16"),
        (3, "stored", 1, 4, "2018-12-11"), (4, "fetched", None, 5, "2019-01-18"), (5, "stored", 2, 9, "2020-04-27")]
    assert merge.changed
    assert not merge_history([_stored(m.version, m.content_hash, str(m.registry_updated), m.registry_version)
                              for m in merge.versions], []).changed


def test_unmatched_stored_versions_and_removals_keep_their_order_and_go_by_date() -> None:
    stored = [_stored(1, "x", "2019-02-01"), _stored(2, "x", None, removed=True, observed="2019-06-01"),
              _stored(3, "y", "2019-09-01")]
    fetched = [_fetched(0, "2018-09-27", "a"), _fetched(1, "2019-03-01", "b"), _fetched(2, "2019-10-01", "c")]
    assert _shape(merge_history(stored, fetched)) == [
        (1, "fetched", None, 0, "2018-09-27"), (2, "stored", 1, None, "2019-02-01"),
        (3, "fetched", None, 1, "2019-03-01"), (4, "stored", 2, None, "None"), (5, "stored", 3, None, "2019-09-01"),
        (6, "fetched", None, 2, "2019-10-01")]


def test_a_synced_version_the_history_shows_in_another_form_stays_the_last() -> None:
    stored = [_stored(1, "j-markdown", "2020-04-27")]
    fetched = [_fetched(8, "2019-12-04", "i"), _fetched(9, "2020-04-27", "j-html")]
    assert _shape(merge_history(stored, fetched)) == [
        (1, "fetched", None, 8, "2019-12-04"), (2, "fetched", None, 9, "2020-04-27"),
        (3, "stored", 1, None, "2020-04-27")]


def test_a_history_version_equal_to_the_one_before_adds_nothing() -> None:
    fetched = [_fetched(0, "2018-09-27", "a"), _fetched(1, "2018-10-16", "a"), _fetched(2, "2018-11-15", "b")]
    assert _shape(merge_history([], fetched)) == [
        (1, "fetched", None, 0, "2018-09-27"), (2, "fetched", None, 2, "2018-11-15")]


def test_the_fake_serves_the_real_index_verbatim_and_derived_versions(history_registry: FakeRegistry) -> None:
    base = history_registry.int_url + f"/studies/{NCT}"
    nested = requests.get(base, params={"history": "true"}, timeout=10)
    assert nested.json()["history"] == real_payload()["history"]
    assert nested.json()["topics"] == real_payload()["topics"]
    top = requests.get(base + "/history", timeout=10).json()
    assert set(top) == {"changes", "lastUpdateVersions", "outcomesUpdateCount"}
    assert top["changes"] == real_payload()["history"]["changes"]
    v7 = requests.get(base + "/history/7", timeout=10)
    assert v7.headers["X-Fake-Derived"] == "true" and set(v7.json()) == {"studyVersion", "study"}
    core = parse_study(v7.json()["study"])
    assert (core.overall_status, core.enrollment_count, core.enrollment_type) == ("ACTIVE_NOT_RECRUITING", 16,
                                                                                 "ACTUAL")
    assert "<mark" not in v7.text and "(CRPC)" in core.brief_title  # the capture's search highlighting is gone
    assert requests.get(base + "/history/10", timeout=10).status_code == 404
    assert requests.get(history_registry.int_url + "/studies/NCT00000102/history", timeout=10).status_code == 404
    assert requests.get(base + "/history/x", timeout=10).status_code == 400
    current = requests.get(history_registry.url + f"/studies/{NCT}", timeout=10).json()  # API v2: the last version
    last = requests.get(base + "/history/9", timeout=10).json()["study"]
    assert "<ul><li>" in orjson.dumps(last).decode()  # the history API's HTML, as captured ...
    assert current == api_form(last) and "<ul>" not in orjson.dumps(current).decode()  # ... API v2's markdown


def test_the_derived_versions_follow_the_real_index() -> None:
    history = real_history(HISTORY_DIR)
    cores = [parse_study(history.records[v]) for v in range(10)]
    assert [c.overall_status for c in cores] == [e["status"] for e in real_payload()["history"]["changes"]]
    assert [(c.enrollment_count, c.enrollment_type) for c in cores] == [(30, "ESTIMATED")] * 7 + [(16, "ACTUAL")] * 3
    measures = [history.records[v]["protocolSection"]["outcomesModule"]["primaryOutcomes"][0]["description"]
                for v in range(10)]
    assert ["iRECIST" in m for m in measures] == [False] * 5 + [True] * 5
    assert history.derived and history.records[9]["protocolSection"]["statusModule"]["lastUpdatePostDateStruct"] == {
        "date": "2020-04-28", "type": "ACTUAL"}


def test_the_history_client_retries_and_derives_its_url_from_the_v2_url(history_registry: FakeRegistry) -> None:
    assert internal_api_url("https://clinicaltrials.gov/api/v2/") == "https://clinicaltrials.gov/api/int"
    with pytest.raises(UsageError, match="must end with /api/v2"):
        internal_api_url("https://example.org/ctgov")
    history_registry.faults.add("status", status=503, retry_after="0", path=f"/int/studies/{NCT}/history", times=1)
    with RegistryClient(history_registry.url, min_interval=0) as client:
        history = HistoryClient(client)
        assert history.base_url == history_registry.int_url
        assert len(history.index(NCT).entries) == 10
        assert client.retries == 1
        index, study = history.index_with_study(NCT)
        assert parse_study(study).overall_status == "COMPLETED" and len(index.entries) == 10
        assert parse_study(history.version(NCT, 0)).overall_status == "NOT_YET_RECRUITING"
        with pytest.raises(RegistryNotFound):
            history.index("NCT00000102")


def _markdown_to_html(text: str) -> str | None:
    """The HTML the website would show for a simple API markdown text (paragraphs and flat ``* `` lists,
    backslash escapes), or None for anything richer (nesting, emphasis, numbered lists, line breaks)."""
    import re

    if "  " in text or "\t" in text or "**" in text or "\n\n\n" in text or text != text.strip():
        return None
    if re.search(r"(?<!\s)\\_", text):  # the registry's escaping of a "_" inside a word follows no rule we know
        return None
    out, items = [], []
    for block in text.split("\n\n"):
        lines = block.split("\n")
        if all(line.startswith("* ") for line in lines):
            items += [line[2:] for line in lines]
            continue
        if len(lines) > 1 or re.match(r"^(\d+\.|\*|-|\+) ", block):
            return None
        if items:
            out.append("<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>")
            items = []
        out.append(f"<p>{block}</p>")
    if items:
        out.append("<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>")
    rendered = "".join(out)
    if re.search(r"(?<!\\)[*^~_]", rendered.replace("<li>", "").replace("</li>", "")):
        return None  # emphasis, sup/sub: not a plain text
    return _escape_text(rendered)


def _escape_text(rendered: str) -> str:
    """Unescape the markdown backslashes of the text between tags and HTML-escape it."""
    import html
    import re

    parts = re.split(r"(</?(?:p|ul|li)>)", rendered)
    return "".join(p if re.fullmatch(r"</?(?:p|ul|li)>", p) else html.escape(re.sub(r"\\(.)", r"\1", p), quote=False)
                   for p in parts)


def test_real_api_texts_shown_as_html_by_the_history_come_back_to_the_same_text() -> None:
    from pipeline.markup import api_form
    from tests.conftest import real_records

    def texts(value: Any) -> Any:
        if isinstance(value, dict):
            for v in value.values():
                yield from texts(v)
        elif isinstance(value, list):
            for v in value:
                yield from texts(v)
        elif isinstance(value, str):
            yield value

    tried = lists = 0
    for record in real_records():
        for text in texts(record):
            rendered = _markdown_to_html(text)
            if rendered is None or ("<ul>" not in rendered and "\\" not in text):
                continue
            tried += 1
            lists += "<ul>" in rendered
            assert api_form(rendered) == text, rendered
    assert tried > 300 and lists > 100  # a real share of the 326 records' long texts
