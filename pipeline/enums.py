"""Enumerations of the registry's API v2 (OpenAPI 2.0.5, components/schemas)."""

from __future__ import annotations

from typing import Literal

Status = Literal[
    "ACTIVE_NOT_RECRUITING", "COMPLETED", "ENROLLING_BY_INVITATION", "NOT_YET_RECRUITING",
    "RECRUITING", "SUSPENDED", "TERMINATED", "WITHDRAWN", "AVAILABLE", "NO_LONGER_AVAILABLE",
    "TEMPORARILY_NOT_AVAILABLE", "APPROVED_FOR_MARKETING", "WITHHELD", "UNKNOWN",
]
Phase = Literal["NA", "EARLY_PHASE1", "PHASE1", "PHASE2", "PHASE3", "PHASE4"]
StudyType = Literal["EXPANDED_ACCESS", "INTERVENTIONAL", "OBSERVATIONAL"]
DateType = Literal["ACTUAL", "ESTIMATED"]
EnrollmentType = Literal["ACTUAL", "ESTIMATED"]
AgencyClass = Literal["NIH", "FED", "OTHER_GOV", "INDIV", "INDUSTRY", "NETWORK", "AMBIG", "OTHER", "UNKNOWN"]

STATUSES: tuple[str, ...] = Status.__args__  # type: ignore[attr-defined]
