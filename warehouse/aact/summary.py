"""``aact.studies`` and ``aact.calculated_values`` over table ``study_summary`` (``pipeline.summary``).

The same columns, types and values as the definitions in ``protocol.py``, which join six to ten tables
per version; these join one. Used when every stored version has its summary row (the manifest's meta
``study_summary`` is ``complete``: a warehouse begun by this release, or one whose versions were
filled by ``warehouse.summary``); otherwise the joins answer.
"""

from __future__ import annotations

import re

from warehouse.aact.protocol import CALCULATED_VALUES, STUDIES
from warehouse.aact.spec import BOOL, DT, INT, KEY, VC, AactView, aact_date, key

_SUMMARY = "LEFT JOIN raw_study_summary AS ss ON ss.nct_id = t.nct_id AND ss.version = t.version"
# The one-row tables protocol.STUDIES joins; their columns are study_summary's under the same names.
_ONE_ROW_ALIAS = re.compile(r"\b(rd|sd|d|rx)\.")


def _from_summary(expr: str) -> str:
    return _ONE_ROW_ALIAS.sub("ss.", expr).replace("arms.n", "nullif(ss.arm_groups, 0)")


STUDIES_FROM_SUMMARY = AactView(
    "studies", tuple((name, kind, _from_summary(expr)) for name, kind, expr in STUDIES.columns),
    "\n".join((
        "FROM main.raw_study_versions AS t JOIN aact._versions AS v ON v.nct_id = t.nct_id AND v.version = t.version",
        _SUMMARY)))


def _months(start: str, end: str) -> str:
    return f"trunc(date_diff('day', {start}, {end}) / 30)"


def _age(column: str, part: str) -> str:
    if part == "num":
        return f"TRY_CAST(split_part(ss.{column}, ' ', 1) AS INTEGER)"
    return f"regexp_replace(lower(split_part(ss.{column}, ' ', -1)), 's$', '')"


_START = aact_date("t.start_date_raw")
_PRIMARY_COMPLETION = aact_date("t.primary_completion_date_raw")

CALCULATED_VALUES_FROM_SUMMARY = AactView("calculated_values", (
    ("id", KEY, key("t.nct_id", "'calculated_values'")),
    ("nct_id", VC, "t.nct_id"),
    ("number_of_facilities", INT, "coalesce(ss.facilities, 0)"),
    ("number_of_nsae_subjects", INT, "ss.other_subjects"),
    ("number_of_sae_subjects", INT, "ss.serious_subjects"),
    ("registered_in_calendar_year", INT, "year(ss.study_first_submitted)"),
    ("nlm_download_date", DT, "NULL"),
    ("actual_duration", INT, "CASE WHEN t.start_date_type IS DISTINCT FROM 'ESTIMATED' AND "
                                   "t.primary_completion_date_type IS DISTINCT FROM 'ESTIMATED' THEN "
                                   + _months(_START, _PRIMARY_COMPLETION) + " END"),
    ("were_results_reported", BOOL, "coalesce(ss.outcome_measures > 0, false)"),
    ("months_to_report_results", INT, _months(_PRIMARY_COMPLETION, "ss.results_first_submitted")),
    ("has_us_facility", BOOL, "ss.us_facility"),
    ("has_single_facility", BOOL, "nullif(ss.facilities, 0) = 1"),
    ("minimum_age_num", INT, _age("minimum_age", "num")),
    ("maximum_age_num", INT, _age("maximum_age", "num")),
    ("minimum_age_unit", VC, _age("minimum_age", "unit")),
    ("maximum_age_unit", VC, _age("maximum_age", "unit")),
    *((f"number_of_{kind}_outcomes_to_measure", INT, f"nullif(ss.{kind}_outcomes, 0)")
      for kind in ("primary", "secondary", "other")),
    ),
    "\n".join((
        "FROM main.raw_study_versions AS t JOIN aact._versions AS v ON v.nct_id = t.nct_id AND v.version = t.version",
        _SUMMARY)))

FROM_SUMMARY = {view.name: view for view in (STUDIES_FROM_SUMMARY, CALCULATED_VALUES_FROM_SUMMARY)}

for _view in FROM_SUMMARY.values():  # same names, order and types as the definitions they stand in for
    _joined = STUDIES if _view.name == "studies" else CALCULATED_VALUES
    assert [(c, k) for c, k, _ in _view.columns] == [(c, k) for c, k, _ in _joined.columns], _view.name
