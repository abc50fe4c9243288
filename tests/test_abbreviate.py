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


one_line_texts = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zl", "Zp")),
                         max_size=300)


@given(old=one_line_texts, new=one_line_texts, width=st.integers(5, 200))
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


# Text with what breaks a line or hides on it: line breaks of every kind, controls, the pictures shown
# for them, the quote and escape characters of the quoted form, and the sign for "no value".
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
tricky = st.text(alphabet=st.sampled_from(list(LINE_BREAKS + "\t\x00\x7f⏎␍␉␤¶∅\"\\u abc")) | st.characters(
    codec="utf-8", exclude_categories=("Cs",)), max_size=120)
values = st.none() | tricky


@settings(max_examples=600)
@given(old=values, new=values, width=st.integers(5, 200))
def test_different_values_never_display_alike_and_each_stays_on_one_line(
        old: str | None, new: str | None, width: int) -> None:
    shown_old, shown_new = abbreviate_pair(old, new, width)
    assert (shown_old == shown_new) == (old == new)
    assert len(shown_old) <= width and len(shown_new) <= width
    for shown in (shown_old, shown_new):
        assert len(f"a{shown}b".splitlines()) == 1
        assert not any(ord(ch) < 32 or ord(ch) == 127 for ch in shown)


def test_a_multi_line_value_reads_on_one_line_in_history_report_and_alerts() -> None:
    """A real description of several lines: its line breaks were printed inside the one-line change."""
    old = next(d for d in (_real_descriptions()) if "\n" in d[:60])
    new = old.replace("\n", "\n\n", 1)
    change = {"event": "field_changed", "field": "brief summary", "old_value": old, "new_value": new,
              "shift_days": None, "pct_change": None}
    for line in (describe(change), report_describe(change),
                 AlertChange(change_id="c1", nct_id="NCT03690141", title=None, field=change["field"],
                             event=change["event"], category="other", severity="info", old_value=old,
                             new_value=new).summary()):
        assert len(line.splitlines()) == 1
        shown_old, shown_new = line.split(": ", 2)[-1].split(" → ")
        assert "⏎" in shown_old and "⏎" in shown_new and shown_old != shown_new


def test_a_literal_picture_against_a_line_break_is_shown_quoted() -> None:
    assert abbreviate_pair("a\nb", "a⏎b", 40) == ('"a\\nb"', '"a⏎b"')
    assert abbreviate_pair("a\r\nb", "a\nb", 40) == ("a␍⏎b", "a⏎b")
    assert abbreviate_pair(None, "∅", 40) == ("∅", '"∅"')


def _real_descriptions() -> list[str]:
    found = []
    for path in sorted((DATA / "ctgov" / "studies").glob("*.json")):
        description = json.loads(path.read_text())["protocolSection"].get("descriptionModule", {})
        found += [v for v in description.values() if isinstance(v, str) and "\n" in v]
    return found


def test_the_alerts_run_artifact_shows_a_multi_line_change_on_one_line_with_its_difference() -> None:
    """The markdown table squeezed every run of white space to one space and cut the cell at 300
    characters: a paragraph break added ("a\\n\\nb" against "a\\nb"), or an edit past the cut, looked unchanged."""
    from flows.alert_artifacts import summary_markdown

    old = next(d for d in _real_descriptions() if len(d) > 400)
    for new in (old.replace("\n", "\n\n", 1), old[:350] + "REWORDED" + old[358:]):
        row = {"watch": "w", "nct_id": "NCT03690141", "title": "t", "field": "brief summary", "old_value": old,
               "new_value": new, "shift_days": None, "pct_change": None, "severity": "info", "url": "u",
               "history_url": "h", "sent_to": "out", "failed_to": ""}
        summary = {"run_id": "r", "watches": 1, "matched": 1, "messages": 1, "messages_sent": 1,
                   "messages_failed": 0, "already_sent": 0, "retried": 0, "resent": 0, "failures": []}
        table_row = summary_markdown(summary, [row]).splitlines()[-1]
        cell = table_row.split(" | ")[3]
        shown_old, shown_new = cell.removeprefix("brief summary: ").split(" → ")
        assert shown_old != shown_new and len(table_row.splitlines()) == 1
        assert "⏎" in shown_old or "REWORDED" in shown_new


def _as_rendered(shown: str) -> str:
    """What HTML (the report), Markdown (the run's artifact) and chat clients show: runs of white space as
    one space, none at either end."""
    return " ".join(shown.split())


spacey = st.text(alphabet=st.sampled_from(list("  ab\n⏎\"∅")), max_size=60)


@settings(max_examples=600)
@given(old=st.none() | spacey, new=st.none() | spacey, width=st.integers(5, 80))
def test_values_that_differ_in_spaces_only_do_not_render_alike_where_white_space_collapses(
        old: str | None, new: str | None, width: int) -> None:
    shown_old, shown_new = abbreviate_pair(old, new, width)
    assert (_as_rendered(shown_old) == _as_rendered(shown_new)) == (old == new)
    assert len(shown_old) <= width and len(shown_new) <= width


def test_a_registry_edit_that_collapses_a_double_space_reads_as_a_change_in_the_report() -> None:
    """Real descriptions hold double spaces; an edit that made one single was shown "a b → a b" in the
    HTML report and the run's Markdown artifact (both collapse white space): a change showing none."""
    old = next(d for d in _real_descriptions() if "  " in d)
    new = old.replace("  ", " ", 1)
    change = {"event": "field_changed", "field": "brief summary", "old_value": old, "new_value": new,
              "shift_days": None, "pct_change": None}
    shown_old, shown_new = report_describe(change).split(": ", 2)[-1].split(" → ")
    assert _as_rendered(shown_old) != _as_rendered(shown_new)
    assert abbreviate_pair("a  b", "a b", 40) == ('"a \\u0020b"', '"a b"')
    assert json.loads(abbreviate_pair("a  b", "a b", 40)[0]) == "a  b"
