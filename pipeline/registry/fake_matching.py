"""What the fake registry knows of a record and how ``/studies`` parameters select records.

Query matching is simpler than the registry's Essie engine: every word of the query must occur
(case-insensitively) in the searched text. What the real API refuses, the fake refuses too, with a
400 and a plain-text body: an NCT id outside the spec's pattern (``NCT00000000``), a status it does
not know, a query with unbalanced parentheses, brackets or quotes ("Error parsing query"). A query
parameter that holds only NCT ids makes the registry ignore every filter (the spec says so), and the
fake does the same.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import orjson

from pipeline.enums import STATUSES

NCT_PATTERN = re.compile(r"^[Nn][Cc][Tt]0*[1-9]\d{0,7}$")  # the spec's pattern for ids
_AREA_RANGE = re.compile(r"^AREA\[(\w+)\]RANGE\[([^,\]]+),\s*([^\]]+)\]$")
_AREA_VALUE = re.compile(r"^AREA\[(\w+)\](\w+)$")
QUERY_PARAMS = ("query.cond", "query.term", "query.spons")
_ADVANCED_FIELDS = {"StudyType": "studyType", "Phase": "phases", "OverallStatus": "overallStatus"}


class BadRequest(Exception):
    pass


def canonical_nct(text: str) -> str:
    """``nct1234`` -> ``NCT00001234`` (the spec's pattern allows dropped or extra leading zeros)."""
    return "NCT" + text[3:].lstrip("0").rjust(8, "0")


@dataclass
class Entry:
    record: dict[str, Any]
    body: bytes
    nct_id: str
    aliases: frozenset[str]
    status: str | None
    last_update: str | None
    cond_text: str
    spons_text: str
    fields: Mapping[str, frozenset[str]]

    @cached_property
    def term_text(self) -> str:  # the whole record's words; built on first query.term
        return " ".join(words(self.body.decode()))


def entry(record: dict[str, Any]) -> Entry:
    """Index one record. Malformed records (for quarantine tests) are served as they are: wrong shapes
    index as empty, and a record without a string NCT id is keyed by a digest (unfiltered lists only)."""
    protocol = _dict(record.get("protocolSection"))
    ident = _dict(protocol.get("identificationModule"))
    status = _dict(protocol.get("statusModule"))
    conditions = _dict(protocol.get("conditionsModule"))
    sponsors = _dict(protocol.get("sponsorCollaboratorsModule"))
    design = _dict(protocol.get("designModule"))
    browse = _dict(_dict(record.get("derivedSection")).get("conditionBrowseModule"))
    body = orjson.dumps(record)
    nct_id = ident.get("nctId")
    if not isinstance(nct_id, str):
        nct_id = "~" + hashlib.sha1(body).hexdigest()[:12]
    cond_words = [*_strs(conditions.get("conditions")), *_strs(conditions.get("keywords")),
                  *(_dict(m).get("term", "") for m in _list(browse.get("meshes")))]
    spons_words = [_dict(sponsors.get("leadSponsor")).get("name", ""),
                   *(_dict(c).get("name", "") for c in _list(sponsors.get("collaborators")))]
    last_update = _dict(status.get("lastUpdatePostDateStruct")).get("date")
    overall = status.get("overallStatus")
    return Entry(
        record=record,
        body=body,
        nct_id=nct_id,
        aliases=frozenset(_strs(ident.get("nctIdAliases"))),
        status=overall if isinstance(overall, str) else None,
        last_update=last_update if isinstance(last_update, str) else None,
        cond_text=" ".join(words(" ".join(cond_words))),
        spons_text=" ".join(words(" ".join(spons_words))),
        fields={
            "studyType": frozenset([str(design.get("studyType", ""))]),
            "phases": frozenset(_strs(design.get("phases"))),
            "overallStatus": frozenset([overall if isinstance(overall, str) else ""]),
        },
    )


def matcher(scope: Mapping[str, str]) -> Callable[[Entry], bool]:
    """The test a record must pass to be listed for these parameters (paging ones left out)."""
    for key in QUERY_PARAMS:
        if key in scope:
            check_essie(scope[key])
    ids_only = any(only_nct_ids(scope[key]) for key in QUERY_PARAMS if key in scope)
    tests: list[Callable[[Entry], bool]] = []
    for key, value in scope.items():
        if ids_only and key.startswith("filter."):
            _filter_test(key, value)  # still validated, then ignored (the spec: "filters are ignored")
            continue
        if key in QUERY_PARAMS:
            if only_nct_ids(value):
                tests.append(_ids_test(_id_list(value, r"[,\s]+", key)))
            else:
                text_of: Callable[[Entry], str] = {
                    "query.cond": lambda e: e.cond_text, "query.term": lambda e: e.term_text,
                    "query.spons": lambda e: e.spons_text}[key]
                tests.append(_text_test(value, text_of))
        elif key.startswith("filter."):
            tests.extend(_filter_test(key, value))
        elif key in {"format", "markupFormat"}:
            if value not in {"json", "markdown"}:
                raise BadRequest(f"fake registry serves only JSON/markdown, not {key}={value!s}")
        else:
            raise BadRequest(f"Unknown parameter: {key}")
    return lambda e: all(test(e) for test in tests)


def only_nct_ids(query: str) -> bool:
    """A query of NCT ids only (comma- and/or space-separated): the registry then ignores filters."""
    parts = [p for p in re.split(r"[,\s]+", query) if p]
    return bool(parts) and all(re.fullmatch(r"[Nn][Cc][Tt]\d+", p) for p in parts)


def check_essie(query: str) -> None:
    """Refuse what Essie cannot parse: unbalanced parentheses or brackets, an unclosed quote."""
    depth: list[str] = []
    pairs = {")": "(", "]": "["}
    in_quote = False
    for ch in query:
        if ch == '"':
            in_quote = not in_quote
        elif in_quote:
            continue
        elif ch in "([":
            depth.append(ch)
        elif ch in ")]" and (not depth or depth.pop() != pairs[ch]):
            raise BadRequest(f"Error parsing query: {query}")
    if depth or in_quote:
        raise BadRequest(f"Error parsing query: {query}")


def _filter_test(key: str, value: str) -> list[Callable[[Entry], bool]]:
    if key == "filter.ids":
        return [_ids_test(_id_list(value, r"[,|]", key))]
    if key == "filter.overallStatus":
        statuses = {s.upper() for s in split_list(value)}
        if unknown := statuses - set(STATUSES):
            raise BadRequest(f"Invalid filter.overallStatus value: {sorted(unknown)[0]}")
        return [lambda e: e.status in statuses]
    if key == "filter.advanced":
        check_essie(value)
        return _advanced(value)
    raise BadRequest(f"Unknown parameter: {key}")


def _id_list(value: str, separators: str, key: str) -> set[str]:
    ids = set()
    for part in (p.strip() for p in re.split(separators, value)):
        if not part:
            continue
        if not NCT_PATTERN.match(part):
            raise BadRequest(f"Invalid {key} value: {part}")
        ids.add(canonical_nct(part))
    return ids


def _ids_test(ids: set[str]) -> Callable[[Entry], bool]:
    return lambda e: e.nct_id in ids or bool(e.aliases & ids)


def _text_test(query: str, text_of: Callable[[Entry], str]) -> Callable[[Entry], bool]:
    wanted = words(query)
    return lambda e: all(word in text_of(e) for word in wanted)


def _advanced(expression: str) -> list[Callable[[Entry], bool]]:
    tests: list[Callable[[Entry], bool]] = []
    for term in re.split(r"\s+AND\s+", expression.strip()):
        if match := _AREA_RANGE.match(term.strip()):
            area, low, high = match.groups()
            if area != "LastUpdatePostDate":
                raise BadRequest(f"fake registry: RANGE only on LastUpdatePostDate, not {area}")
            low, high = low.strip(), high.strip()
            for bound in (low, high):
                if bound not in {"MIN", "MAX"} and not re.match(r"^\d{4}-\d{2}-\d{2}$", bound):
                    raise BadRequest(f"Invalid date in RANGE: {bound}")
            tests.append(lambda e, lo=low, hi=high: e.last_update is not None  # type: ignore[misc]
                         and (lo == "MIN" or e.last_update >= lo) and (hi == "MAX" or e.last_update <= hi))
        elif match := _AREA_VALUE.match(term.strip()):
            area, value = match.groups()
            if area not in _ADVANCED_FIELDS:
                raise BadRequest(f"fake registry: unsupported AREA[{area}]")
            name = _ADVANCED_FIELDS[area]
            tests.append(lambda e, n=name, v=value: v in e.fields.get(n, frozenset()))  # type: ignore[misc]
        else:
            raise BadRequest(f"fake registry: unsupported filter.advanced expression: {term}")
    return tests


def split_list(raw: str) -> list[str]:
    return [part.strip() for part in re.split(r"[,|]", raw) if part.strip()]


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _strs(value: Any) -> list[str]:
    return [v for v in _list(value) if isinstance(v, str)]
