"""Results under review: ``derivedSection.miscInfoModule.submissionTracking`` is material and its new
dates are typed events (SPEC "The warehouse", issue 16.0), on copies of real records that carry it."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

from pipeline.changes import Rules, VersionPair, derive_changes
from pipeline.hashing import content_hash
from tests.conftest import STUDIES_DIR, Record, load, nct


# -- submissionTracking is material --------------------------------------------------------------
def _tracking(record: Record) -> dict[str, Any]:
    tracking: dict[str, Any] = record["derivedSection"]["miscInfoModule"]["submissionTracking"]
    return tracking


def test_a_new_qc_submission_is_a_version_and_other_derived_data_is_not() -> None:
    record = load(STUDIES_DIR / "NCT06401733.json")  # three QC submissions, each returned
    before = copy.deepcopy(record)
    _tracking(before)["submissionInfos"].pop()
    assert content_hash(before) != content_hash(record)
    mesh_only = copy.deepcopy(record)
    mesh_only["derivedSection"].pop("conditionBrowseModule", None)
    mesh_only["derivedSection"]["miscInfoModule"]["versionHolder"] = "2099-01-01"
    assert content_hash(mesh_only) == content_hash(record)


def _events(old: Record, new: Record) -> list[tuple[str, str, str, str | None, str | None]]:
    pair = VersionPair(nct(new), 1, 2, old, new, "r2", datetime(2026, 5, 1, tzinfo=UTC), None)
    return sorted((c.event, c.category, c.severity, c.old_value, c.new_value)
                  for c in derive_changes(pair, Rules()))


def test_a_cancelled_qc_submission_is_a_notable_results_event() -> None:
    record = load(STUDIES_DIR / "NCT03660631.json")  # submitted 2024-11-17, cancelled 2024-11-18, resubmitted
    before = copy.deepcopy(record)
    first = _tracking(before)["submissionInfos"][0]
    del first["unreleaseDate"]
    assert _events(before, record) == [
        ("results_submission_cancelled", "results", "notable", "2024-11-17", "2024-11-18")]


def test_submission_tracking_appearing_gives_one_event_per_submission_date() -> None:
    record = load(STUDIES_DIR / "NCT05973799.json")  # one submission, returned
    before = copy.deepcopy(record)
    del before["derivedSection"]["miscInfoModule"]["submissionTracking"]
    assert _events(before, record) == [("results_returned", "results", "notable", "2025-08-14", "2025-09-04"),
                                       ("results_submitted", "results", "notable", None, "2025-08-14")]


def test_a_return_added_to_a_submission_is_results_returned_only() -> None:
    record = load(STUDIES_DIR / "NCT06401733.json")
    before = copy.deepcopy(record)
    del _tracking(before)["submissionInfos"][-1]["resetDate"]
    assert _events(before, record) == [("results_returned", "results", "notable", "2025-11-18", "2025-12-09")]


def test_other_submission_tracking_edits_are_info_field_changes_in_results() -> None:
    record = load(STUDIES_DIR / "NCT04133493.json")
    before = copy.deepcopy(record)
    _tracking(before)["estimatedResultsFirstSubmitDate"] = "2024-05-01"
    assert _events(before, record) == [("field_changed", "results", "info", "2024-05-01", "2024-05-07")]
