"""Old and new values shortened for one line keep their difference in sight (history, report, alerts)."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from flows.history import describe
from pipeline.abbreviate import abbreviate_pair
from pipeline.alerts.message import AlertChange
from pipeline.report.page import describe as report_describe
from tests.conftest import DATA

texts = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=300)


@settings(max_examples=400)
@given(prefix=texts, old_tail=texts, new_tail=texts, width=st.integers(5, 200))
def test_two_different_values_never_look_the_same_and_fit_the_width(
        prefix: str, old_tail: str, new_tail: str, width: int) -> None:
    old, new = prefix + old_tail, prefix + new_tail
    shown_old, shown_new = abbreviate_pair(old, new, width)
    assert len(shown_old) <= width and len(shown_new) <= width
    assert (shown_old == shown_new) == (old == new)


@given(old=texts, new=texts, width=st.integers(5, 200))
def test_values_that_fit_are_shown_as_they_are(old: str, new: str, width: int) -> None:
    old, new = old[:width], new[:width]
    assert abbreviate_pair(old, new, width) == (old, new)
    assert abbreviate_pair(old, None, width) == (old, "∅")


def _real_outcome_description() -> str:
    """A real primary outcome description longer than the history's 80 characters."""
    for path in sorted((DATA / "ctgov" / "studies").glob("*.json")):
        record = json.loads(path.read_text())
        outcomes = record["protocolSection"].get("outcomesModule", {}).get("primaryOutcomes", [])
        for outcome in outcomes:
            if len(outcome.get("description", "")) > 300:
                return str(outcome["description"])
    raise AssertionError("no long real outcome description")


def test_a_reworded_long_outcome_shows_the_reworded_words_in_history_report_and_alerts() -> None:
    old = _real_outcome_description()
    cut = len(old) - 40  # reworded near its end, far past any width shown
    new = old[:cut] + "REWORDED" + old[cut + 8:]
    change = {"event": "primary_outcome_changed", "field": "primary outcome description", "old_value": old,
              "new_value": new, "shift_days": None, "pct_change": None}
    for line in (describe(change), report_describe(change),
                 AlertChange(change_id="c1", nct_id="NCT03690141", title=None, field=change["field"],
                             event=change["event"], category="design", severity="notable", old_value=old,
                             new_value=new).summary()):
        shown_old, shown_new = line.split(": ", 2)[-1].split(" → ")
        assert shown_old != shown_new
        assert "REWORDED" in shown_new and "REWORDED" not in shown_old
        assert shown_old.startswith("…") and shown_new.startswith("…")
