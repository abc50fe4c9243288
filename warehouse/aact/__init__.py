"""Schema ``aact``: one view per table of AACT's ``ctgov`` schema, over trialsync's versioned tables.

Names, column order and types follow AACT (docs/aact.md lists every table, its mapping and where we
deviate). Every view shows one version per study: the current one, or with ``SET VARIABLE as_of =
DATE '...'`` the version that was valid on that day (time travel). ``aact._versions`` is that choice.
Surrogate keys (``id``, ``*_id``) are BIGINT digests of the study and the row's position, so they join
like AACT's and stay the same across versions while the study's structure is unchanged.
"""

from __future__ import annotations

from warehouse.aact.protocol import CALCULATED_VALUES, NOT_FROM_STUDIES, PROTOCOL_VIEWS
from warehouse.aact.results import RESULTS_VIEWS
from warehouse.aact.spec import AactView, render
from warehouse.aact.summary import FROM_SUMMARY

VERSIONS = """CREATE OR REPLACE VIEW aact._versions AS
SELECT nct_id, version, CAST(timezone('UTC', observed_at) AS TIMESTAMP) AS observed_at
FROM study_versions
WHERE NOT is_removed AND CASE WHEN getvariable('as_of') IS NULL THEN is_current
  ELSE valid_from <= CAST(getvariable('as_of') AS DATE)
       AND (valid_to IS NULL OR valid_to > CAST(getvariable('as_of') AS DATE)) END"""

# In dependency order (calculated_values reads aact.studies).
VIEWS: tuple[AactView, ...] = (*PROTOCOL_VIEWS, *RESULTS_VIEWS, CALCULATED_VALUES, *NOT_FROM_STUDIES)


def aact_views(*, summary: bool = False) -> list[str]:
    """The statements that define schema ``aact`` (after the main views exist). ``summary``: every stored
    version has its ``study_summary`` row, so ``studies`` and ``calculated_values`` read that one table
    (``warehouse.aact.summary``) instead of joining the tables it copies."""
    chosen = (FROM_SUMMARY.get(view.name, view) if summary else view for view in VIEWS)
    return ["CREATE SCHEMA IF NOT EXISTS aact", VERSIONS, *(render(view) for view in chosen)]


__all__ = ["VIEWS", "AactView", "aact_views"]
