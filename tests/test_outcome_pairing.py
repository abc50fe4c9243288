"""``registered_vs_current`` pairs primary outcomes as the change feed does (``pipeline.diff`` +
``pipeline.change_events``): a study's first and current versions diffed directly give the same added,
removed and reworded outcomes as the view. Variants are derived at run time from real records: outcomes
inserted (another real study's), removed, reordered, reworded, re-cased, re-spaced, spelled in NFD."""

from __future__ import annotations

import copy
import random
import unicodedata
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from pipeline import mutate
from pipeline.change_events import classify
from pipeline.diff import Key, diff, keyed
from pipeline.hashing import normalise
from tests.conftest import Record, nct, real_records
from tests.fdaaa_support import store

Outcome = dict[str, Any]


def _with_outcomes(record: Record) -> bool:
    return bool(record["protocolSection"].get("outcomesModule", {}).get("primaryOutcomes"))


def _outcomes(record: Record) -> list[Outcome]:
    outcomes: list[Outcome] = record["protocolSection"]["outcomesModule"]["primaryOutcomes"]
    return outcomes


def _text(outcome: Outcome) -> str:
    """An outcome as the view lists it (its measure, its time frame in brackets), in NFC."""
    frame = outcome.get("timeFrame")
    return unicodedata.normalize("NFC", outcome.get("measure", "") + (f" [{frame}]" if frame is not None else ""))


def _nfc(texts: list[str]) -> Counter[str]:
    return Counter(unicodedata.normalize("NFC", t) for t in texts)


def expected(first: Record, current: Record) -> dict[str, Counter[str]]:
    """What the change feed says of the primary outcomes from ``first`` to ``current`` (one diff): the
    added and removed outcomes' texts, and the texts after of the outcomes it reports as changed."""
    leaves = [leaf for leaf in diff(first, current) if "primaryOutcomes" in leaf.path]
    events = [e for e in classify(leaves, first, current) if e.event == "primary_outcome_changed"]
    elements = {leaf.text: leaf for leaf in leaves if isinstance(leaf.path[-1], Key)}
    now = keyed(normalise(current)["protocolSection"]["outcomesModule"]["primaryOutcomes"], "primaryOutcomes")
    added, removed, after = [], [], {}
    for event in events:
        if event.path in elements and event.old_value is None:
            added.append(_text(elements[event.path].new))
        elif event.path in elements and event.new_value is None:
            removed.append(_text(elements[event.path].old))
        elif event.path in elements:  # a measure renamed: one removed and one added outcome paired
            after[event.path] = _text(elements[event.path].new)
        else:  # a part of an outcome paired by its measure
            leaf = next(leaf for leaf in leaves if leaf.text == event.path)
            element = leaf.path[leaf.path.index("primaryOutcomes") + 1]
            assert isinstance(element, Key)
            after[element.value] = _text(now[element.value])
    return {"added": Counter(added), "removed": Counter(removed), "reworded": Counter(after.values())}


def _reworded(record: Record, rng: random.Random) -> None:
    outcomes = _outcomes(record)
    i = rng.randrange(len(outcomes))
    o = dict(outcomes[i])
    how = rng.choice(["measure", "frame", "description", "case", "spaces", "nfd"])
    if how == "measure":
        words = o["measure"].split()
        words.insert(rng.randrange(len(words) + 1), rng.choice(["change in", "mean", "(revised)", "total"]))
        o["measure"] = " ".join(words)
    elif how == "frame":
        o["timeFrame"] = rng.choice(["12 months", "Up to 2 years", "Week 24"])
    elif how == "description":
        o["description"] = (o.get("description") or "") + " Assessed by the investigator."
    elif how == "case":
        o["measure"] = o["measure"].upper()
    elif how == "spaces":
        o["measure"] = "  " + o["measure"].replace(" ", "   ") + " "
    else:  # the same text in NFD: not a change at all
        o = {k: unicodedata.normalize("NFD", v) if isinstance(v, str) else v for k, v in o.items()}
    outcomes[i] = o


def variant(record: Record, donors: list[Outcome], rng: random.Random) -> Record:
    """``record`` posted later with its primary outcomes edited 1-3 times at random (and its enrollment
    moved, so that it is a new version whatever the outcomes)."""
    out = mutate.posted_on(record, date(2026, 6, 1))
    info = out["protocolSection"].setdefault("designModule", {}).setdefault("enrollmentInfo", {})
    info["count"] = (info.get("count") or 0) + 1
    outcomes = _outcomes(out)
    for _ in range(rng.randint(1, 3)):
        kind = rng.choice(["insert", "insert-front", "remove", "reorder", "reword", "reword"])
        if kind.startswith("insert"):
            outcomes.insert(0 if kind == "insert-front" else rng.randrange(len(outcomes) + 1),
                            copy.deepcopy(rng.choice(donors)))
        elif kind == "remove" and len(outcomes) > 1:
            outcomes.pop(rng.randrange(len(outcomes)))
        elif kind == "reorder":
            rng.shuffle(outcomes)
        elif kind == "reword":
            _reworded(out, rng)
    return out


def _view(warehouse: Any) -> dict[str, dict[str, Counter[str]]]:
    with warehouse.connect() as con:
        rows = con.execute("SELECT nct_id, primary_outcomes_added, primary_outcomes_removed, "
                           "primary_outcomes_reworded FROM registered_vs_current").fetchall()
    return {n: {"added": _nfc(a), "removed": _nfc(r), "reworded": _nfc([x["after"] for x in w])}
            for n, a, r, w in rows}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_view_pairs_primary_outcomes_as_the_change_feed_does(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    records = [r for r in real_records() if _with_outcomes(r)]
    donors = [o for r in records for o in _outcomes(r)]
    firsts = rng.sample(records, 40)
    currents = [variant(r, donors, rng) for r in firsts]
    got = _view(store(tmp_path, firsts, currents))
    want = {nct(f): expected(f, c) for f, c in zip(firsts, currents, strict=True)}
    assert sum(1 for w in want.values() if w["reworded"] and (w["added"] or w["removed"])) > 0  # mixed cases met
    assert got == want


def test_an_outcome_inserted_at_the_front_is_added_and_the_others_are_unchanged(tmp_path: Path) -> None:
    """The known defect: the view paired what was left by position, so an outcome inserted at the front
    with one outcome reworded behind it was reported as the first one reworded into the new one."""
    records = [r for r in real_records() if _with_outcomes(r) and len(_outcomes(r)) >= 3]
    first, donor = records[0], records[1]
    current = mutate.posted_on(first, date(2026, 6, 1))
    outcomes = _outcomes(current)
    outcomes[1] = dict(outcomes[1], measure=outcomes[1]["measure"] + " (revised)")
    outcomes.insert(0, _outcomes(donor)[0])
    row = _view(store(tmp_path, [first], [current]))[nct(first)]
    old = _outcomes(first)
    assert row == {"added": Counter([_text(_outcomes(donor)[0])]), "removed": Counter(),
                   "reworded": Counter([_text(outcomes[2])])}
    assert row == expected(first, current)
    assert _text(old[1]) != _text(outcomes[2])


def _accented_place() -> str:
    """A real site's city whose NFD spelling differs from its NFC one (no real outcome text has one)."""
    return next(site["city"] for r in real_records()
                for site in r["protocolSection"].get("contactsLocationsModule", {}).get("locations", [])
                if unicodedata.normalize("NFD", site.get("city", "")) != site.get("city", ""))


def test_reordered_and_nfd_outcomes_are_no_change(tmp_path: Path) -> None:
    first = copy.deepcopy(next(r for r in real_records() if _with_outcomes(r) and len(_outcomes(r)) >= 2))
    place = unicodedata.normalize("NFC", _accented_place())
    for o in _outcomes(first):  # a measure naming a place, as registered
        o["measure"] = f"{o['measure']} ({place})"
    current = mutate.set_enrollment(mutate.posted_on(first, date(2026, 6, 1)), 7)
    outcomes = _outcomes(current)
    outcomes.reverse()
    outcomes[:] = [{k: unicodedata.normalize("NFD", v) for k, v in o.items()} for o in outcomes]
    assert outcomes[0]["measure"] != _outcomes(first)[-1]["measure"]  # other code points, the same text
    none: dict[str, Counter[str]] = {"added": Counter(), "removed": Counter(), "reworded": Counter()}
    assert expected(first, current) == none
    assert _view(store(tmp_path, [first], [current]))[nct(first)] == none


def test_the_likeness_of_two_measures_is_the_same_in_python_and_in_duckdb() -> None:
    """``pipeline.similarity`` and the view's SQL: the same identity text (whitespace of every kind Python
    splits on, case) and the same distance, for real measures edited at random."""
    import duckdb

    from pipeline.similarity import distance, identity_sql
    from pipeline.sites import normalised

    rng = random.Random(7)
    measures = [o["measure"] for r in real_records() if _with_outcomes(r) for o in _outcomes(r)]
    spaces = [chr(c) for c in range(0x3001) if chr(c).isspace()]
    pairs = []
    for _ in range(300):
        a, b = rng.choice(measures), rng.choice(measures)
        cut = rng.randrange(len(b) + 1)
        b = b[:cut] + rng.choice(spaces) * rng.randint(1, 3) + a[: rng.randrange(len(a) + 1)] + b[cut:].upper()
        pairs.append((a, b))
    with duckdb.connect() as con:
        got = con.execute(f"""SELECT {identity_sql("a")}, {identity_sql("b")},
                                     levenshtein({identity_sql("a")}, {identity_sql("b")})
                                     / greatest(strlen({identity_sql("a")}), strlen({identity_sql("b")}))
                              FROM (SELECT unnest(?) AS a, unnest(?) AS b)""",
                          [[a for a, _ in pairs], [b for _, b in pairs]]).fetchall()
    assert got == [(normalised(a), normalised(b), distance(normalised(a), normalised(b))) for a, b in pairs]
