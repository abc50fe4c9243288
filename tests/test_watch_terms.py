"""Issue 13.5: watch terms (conditions, sponsors) are literal substrings, ignoring case: ``%``, ``_``
and ``\\`` match themselves. The SQL match of ``selector_sql`` equals Python's
``term.lower() in text.lower()`` over the real records' conditions, lead sponsors and collaborators."""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cache
from typing import Any

import duckdb
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pipeline.alerts.watchlist import StudySelector
from tests.conftest import nct, real_records
from warehouse.alerts import selector_sql


@cache
def _studies() -> list[dict[str, Any]]:
    out = []
    for record in real_records():
        protocol = record["protocolSection"]
        sponsors = protocol.get("sponsorCollaboratorsModule") or {}
        out.append({"nct_id": nct(record), "conditions": (protocol.get("conditionsModule") or {}).get("conditions"),
                    "lead_sponsor": (sponsors.get("leadSponsor") or {}).get("name"),
                    "collaborators": [c.get("name") for c in sponsors.get("collaborators") or []],
                    "raw": json.dumps(record)})
    return out


@pytest.fixture(scope="module")
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    """``studies`` with the columns a selector reads, from the real records."""
    connection = duckdb.connect()
    connection.execute("CREATE TABLE studies (nct_id VARCHAR, conditions VARCHAR[], lead_sponsor VARCHAR, raw JSON)")
    connection.executemany("INSERT INTO studies VALUES (?, ?, ?, ?)",
                           [[s["nct_id"], s["conditions"], s["lead_sponsor"], s["raw"]] for s in _studies()])
    yield connection
    connection.close()


def _texts(kind: str, study: dict[str, Any]) -> list[str]:
    if kind == "conditions":
        return list(study["conditions"] or [])
    return [t for t in [study["lead_sponsor"], *study["collaborators"]] if t]


def _lower(text: str) -> str:
    """Unicode's simple (one-to-one) lowercase, as DuckDB's lower(): 'İ' is 'i', not Python's 'i̇'."""
    return "".join(ch.lower()[:1] for ch in text)


def _python_match(kind: str, term: str) -> set[str]:
    return {s["nct_id"] for s in _studies() if any(_lower(term) in _lower(t) for t in _texts(kind, s))}


def _sql_match(con: duckdb.DuckDBPyConnection, kind: str, term: str) -> set[str]:
    predicate, params = selector_sql(StudySelector(**{kind: (term,)}))
    return {row[0] for row in con.execute(f"SELECT nct_id FROM studies WHERE {predicate}", params).fetchall()}


_ALPHABET = sorted({ch for s in _studies() for kind in ("conditions", "sponsors") for t in _texts(kind, s)
                    for ch in t} | set("%_\\"))


@st.composite
def terms(draw: st.DrawFn) -> tuple[str, str]:
    """A watch kind and a term: a piece of a real text (case changed, with wildcards put in) or random."""
    kind = draw(st.sampled_from(["conditions", "sponsors"]))
    texts = [t for s in _studies() for t in _texts(kind, s)]
    if draw(st.booleans()):
        text = draw(st.sampled_from(texts))
        start = draw(st.integers(0, len(text) - 1))
        term = text[start:start + draw(st.integers(1, 12))]
        term = draw(st.sampled_from([term, term.upper(), term.swapcase()]))
        at = draw(st.integers(0, len(term)))
        term = term[:at] + draw(st.sampled_from(["", "%", "_", "\\", "%%", "_%"])) + term[at:]
    else:
        term = draw(st.text(st.sampled_from(_ALPHABET), min_size=1, max_size=4))
    return kind, term


@settings(max_examples=300, deadline=None)
@given(terms())
@example(("conditions", "İ"))  # found by hypothesis: a letter whose Python lowercase is two characters
def test_a_watch_term_matches_exactly_the_studies_whose_text_contains_it_literally(
        con: duckdb.DuckDBPyConnection, kind_term: tuple[str, str]) -> None:
    kind, term = kind_term
    assert _sql_match(con, kind, term) == _python_match(kind, term)


@pytest.mark.parametrize(("kind", "term"), [("conditions", "_"), ("conditions", "%"), ("sponsors", "%"),
                                            ("sponsors", "_"), ("conditions", "\\"), ("conditions", "a%")])
def test_a_wildcard_character_is_a_literal_and_does_not_follow_every_study(
        con: duckdb.DuckDBPyConnection, kind: str, term: str) -> None:
    assert _sql_match(con, kind, term) == _python_match(kind, term)
    assert len(_sql_match(con, kind, term)) < len(_studies()) // 10


def test_a_term_does_not_span_two_conditions(con: duckdb.DuckDBPyConnection) -> None:
    study = next(s for s in _studies() if len(s["conditions"] or []) >= 2)
    first, second = study["conditions"][:2]
    spanning = f"{first[-3:]} | {second[:3]}"
    assert study["nct_id"] not in _sql_match(con, "conditions", spanning)
    assert study["nct_id"] in _sql_match(con, "conditions", second[:3])
