"""Results under review: typed events from ``derivedSection.miscInfoModule.submissionTracking``.

The registry lists each quality-control submission of results in ``submissionInfos`` (one element
per submission, identified by its ``releaseDate``; ``pipeline.diff``); a later ``resetDate`` is its
return to the sponsor, an ``unreleaseDate`` its cancellation. The registry does not move
``lastUpdatePostDate`` for these, yet they are the only public sign of results under review, so the
section is material (``pipeline.hashing``) and each new date is an event (``pipeline.changes``):
``results_submitted`` (new value: the submission's date), ``results_returned`` and
``results_submission_cancelled`` (old value: the submission's date; new value: the return's or the
cancellation's).
"""

from __future__ import annotations

from typing import Any

import orjson

from pipeline.diff import Key, Leaf

SUBMISSION_EVENTS = {"releaseDate": "results_submitted", "resetDate": "results_returned",
                     "unreleaseDate": "results_submission_cancelled"}
_FIELDS = {"releaseDate": "results submitted for QC", "resetDate": "results returned",
           "unreleaseDate": "results submission cancelled"}
_TRACKING = "$.derivedSection.miscInfoModule.submissionTracking.submissionInfos"

# (path, field, event, old value, new value)
SubmissionEvent = tuple[str, str, str, str | None, str | None]


def submission_events(leaf: Leaf) -> list[SubmissionEvent]:
    """A submission's dates new in this version, whatever the shape of the leaf that carries them (the
    whole ``derivedSection`` or ``submissionTracking`` appearing, one submission added, a date added to
    one). The path names the submission by its date, so it does not depend on that shape."""
    names = [p for p in leaf.path if isinstance(p, str)]
    release = next((p.value for p in leaf.path if isinstance(p, Key)), None)
    old = set(_dates(leaf.old, names[-1] if names else "", release))
    events: list[SubmissionEvent] = []
    for kind, day, submitted in _dates(leaf.new, names[-1] if names else "", release):
        if (kind, day, submitted) in old:
            continue
        path = f"{_TRACKING}[{orjson.dumps(submitted).decode()}].{kind}"
        before = None if kind == "releaseDate" else submitted
        events.append((path, _FIELDS[kind], SUBMISSION_EVENTS[kind], before, day))
    return events


def _dates(value: Any, name: str, release: str | None) -> list[tuple[str, str, str | None]]:
    """(kind, date, the submission's releaseDate) for every submission date in ``value``."""
    if isinstance(value, str):
        return [(name, value, value if name == "releaseDate" else release)] if name in SUBMISSION_EVENTS else []
    if isinstance(value, list):
        return [d for item in value for d in _dates(item, name, release)]
    if isinstance(value, dict):
        own = value.get("releaseDate")
        here = own if isinstance(own, str) else release
        return [d for key, item in value.items() for d in _dates(item, key, here)]
    return []
