"""Flatten posted results, pending results and provided documents of one record (pure).

``resultsSection`` (groups, measures with classes / categories / measurements, denominators,
analyses, participant flow, adverse events, more info), ``annotationSection`` (the review cycle of
unposted results, violation events) and ``documentSection`` (uploaded documents). Values keep the
API's types (measurement values are text, as sent: ``"12.5"``, ``"NA"``); the ``aact`` views parse
them. Nested lists become one row per innermost item, with the parents' fields repeated; a parent
with an empty list still gives one row (its item columns NULL), so no parent field is lost.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pipeline import schema as s
from pipeline.dates import parse_full_date

Columns = dict[str, list[Any]]

_RESULTS = s.ResultsSection()


def results_rows(study: s.Study) -> dict[str, Columns]:
    """The tables of this module for one version."""
    r = study.results_section or _RESULTS
    baseline, outcomes = r.baseline_characteristics_module, r.outcome_measures_module
    measures = _Measures()
    if baseline:
        measures.add_baseline(baseline)
    for index, outcome in enumerate((outcomes.outcome_measures if outcomes else None) or ()):
        measures.add_outcome(index, outcome)
    annotation = (study.annotation_section or s.AnnotationSection()).annotation_module
    documents = (study.document_section or s.DocumentSection()).large_document_module
    return {
        "results_details": _details(r, annotation, documents),
        "result_groups": _groups(r),
        **measures.tables(),
        "result_analyses": _analyses((outcomes.outcome_measures if outcomes else None) or ()),
        "participant_flow": _flow(r.participant_flow_module),
        "adverse_events": _adverse_events(r.adverse_events_module),
        "pending_results": _unposted(annotation.unposted_annotation if annotation else None),
        "violation_events": _violations(annotation.violation_annotation if annotation else None),
        "provided_documents": _documents(documents),
    }


def _details(r: s.ResultsSection, annotation: s.AnnotationModule | None,
             documents: s.LargeDocumentModule | None) -> Columns:
    flow = r.participant_flow_module or s.ParticipantFlowModule()
    baseline = r.baseline_characteristics_module or s.BaselineCharacteristicsModule()
    events = r.adverse_events_module or s.AdverseEventsModule()
    more = r.more_info_module or s.MoreInfoModule()
    caveats = more.limitations_and_caveats or s.LimitationsAndCaveats()
    agreement = more.certain_agreement or s.CertainAgreement()
    contact = more.point_of_contact or s.PointOfContact()
    unposted = annotation.unposted_annotation if annotation else None
    return {
        "flow_recruitment_details": [flow.recruitment_details],
        "flow_pre_assignment_details": [flow.pre_assignment_details],
        "flow_type_units_analyzed": [flow.type_units_analyzed],
        "baseline_population_description": [baseline.population_description],
        "baseline_type_units_analyzed": [baseline.type_units_analyzed],
        "events_frequency_threshold": [events.frequency_threshold],
        "events_time_frame": [events.time_frame],
        "events_description": [events.description],
        "all_cause_mortality_comment": [events.all_cause_mortality_comment],
        "limitations_and_caveats": [caveats.description],
        "pi_sponsor_employee": [agreement.pi_sponsor_employee],
        "restriction_type": [agreement.restriction_type],
        "restrictive_agreement": [agreement.restrictive_agreement],
        "agreement_other_details": [agreement.other_details],
        "contact_title": [contact.title],
        "contact_organization": [contact.organization],
        "contact_email": [contact.email],
        "contact_phone": [contact.phone],
        "contact_phone_ext": [contact.phone_ext],
        "unposted_responsible_party": [unposted.unposted_responsible_party if unposted else None],
        "no_sap": [documents.no_sap if documents else None],
    }


_GROUP_COLUMNS = ("module", "measure_ordinal", "ordinal", "group_id", "title", "description",
                  "deaths_num_affected", "deaths_num_at_risk", "serious_num_affected", "serious_num_at_risk",
                  "other_num_affected", "other_num_at_risk")
_TOTALS = _GROUP_COLUMNS[6:]


def _groups(r: s.ResultsSection) -> Columns:
    rows: list[tuple[Any, ...]] = []

    def add(module: str, measure: int | None, groups: Sequence[Any] | None) -> None:
        for ordinal, g in enumerate(groups or ()):
            rows.append((module, measure, ordinal, g.id, g.title, g.description,
                         *(getattr(g, column, None) for column in _TOTALS)))

    flow, baseline = r.participant_flow_module, r.baseline_characteristics_module
    add("participant_flow", None, flow.groups if flow else None)
    add("baseline", None, baseline.groups if baseline else None)
    for index, outcome in enumerate((r.outcome_measures_module or s.OutcomeMeasuresModule()).outcome_measures or ()):
        add("outcome", index, outcome.groups)
    events = r.adverse_events_module
    add("adverse_events", None, events.event_groups if events else None)
    return _columns(_GROUP_COLUMNS, rows)


def _columns(names: Sequence[str], rows: list[tuple[Any, ...]]) -> Columns:
    """Row tuples as columns, transposed by ``zip`` (appending each value to its column in a Python
    loop was most of the results tables' cost)."""
    if not rows:
        return {name: [] for name in names}
    return dict(zip(names, map(list, zip(*rows, strict=True)), strict=True))


_MEASURE_COLUMNS = ("module", "measure_ordinal", "outcome_type", "title", "description", "population_description",
                    "reporting_status", "anticipated_posting_date", "param_type", "dispersion_type",
                    "unit_of_measure", "calculate_pct", "time_frame", "type_units_analyzed",
                    "denom_units_selected")
_MEASUREMENT_COLUMNS = ("module", "measure_ordinal", "class_ordinal", "class_title", "category_ordinal",
                        "category_title", "ordinal", "group_id", "value", "spread", "lower_limit", "upper_limit",
                        "comment")
_DENOM_COLUMNS = ("module", "measure_ordinal", "class_ordinal", "denom_ordinal", "units", "ordinal", "group_id",
                  "value")


class _Measures:
    """Baseline measures and outcome measures share one shape: measure > classes > categories >
    measurements, with denominators at the module (baseline only), measure and class level."""

    def __init__(self) -> None:
        self._measures: list[tuple[Any, ...]] = []
        self._measurements: list[tuple[Any, ...]] = []
        self._denom_rows: list[tuple[Any, ...]] = []

    def tables(self) -> dict[str, Columns]:
        return {"result_measures": _columns(_MEASURE_COLUMNS, self._measures),
                "result_measurements": _columns(_MEASUREMENT_COLUMNS, self._measurements),
                "result_denoms": _columns(_DENOM_COLUMNS, self._denom_rows)}

    def add_baseline(self, module: s.BaselineCharacteristicsModule) -> None:
        self._denoms("baseline", None, None, module.denoms)
        for index, m in enumerate(module.measures or ()):
            self._measure("baseline", index, m, None, None, None, None, None)

    def add_outcome(self, index: int, m: s.OutcomeMeasure) -> None:
        self._measure("outcome", index, m, m.type, m.reporting_status, m.anticipated_posting_date, m.time_frame,
                      m.type_units_analyzed)

    def _measure(self, module: str, index: int, m: s.BaselineMeasure | s.OutcomeMeasure, outcome_type: Any,
                 reporting_status: Any, anticipated: str | None, time_frame: str | None,
                 units_analyzed: str | None) -> None:
        self._measures.append((module, index, outcome_type, m.title, m.description, m.population_description,
                               reporting_status, anticipated, m.param_type, m.dispersion_type, m.unit_of_measure,
                               m.calculate_pct, time_frame, units_analyzed, m.denom_units_selected))
        self._denoms(module, index, None, m.denoms)
        for class_index, klass in enumerate(m.classes or ()):
            self._denoms(module, index, class_index, klass.denoms)
            categories: Sequence[s.MeasureCategory | None] = klass.categories or [None]
            for category_index, category in enumerate(categories):
                measurements: Sequence[s.Measurement | None] = (category.measurements if category else None) or [None]
                for ordinal, x in enumerate(measurements):
                    self._measurements.append((
                        module, index, class_index, klass.title,
                        category_index if category else None, category.title if category else None,
                        ordinal if x else None, x.group_id if x else None, x.value if x else None,
                        x.spread if x else None, x.lower_limit if x else None, x.upper_limit if x else None,
                        x.comment if x else None))

    def _denoms(self, module: str, measure: int | None, klass: int | None, denoms: Sequence[s.Denom] | None) -> None:
        for denom_index, denom in enumerate(denoms or ()):
            for ordinal, count in enumerate(denom.counts or [None]):
                self._denom_rows.append((module, measure, klass, denom_index, denom.units, ordinal if count else None,
                                         count.group_id if count else None, count.value if count else None))


_ANALYSIS_FIELDS = ("param_type", "param_value", "dispersion_type", "dispersion_value", "statistical_method",
                    "statistical_comment", "p_value", "p_value_comment", "ci_num_sides", "ci_pct_value",
                    "ci_lower_limit", "ci_upper_limit", "ci_lower_limit_comment", "ci_upper_limit_comment",
                    "estimate_comment", "tested_non_inferiority", "non_inferiority_type", "non_inferiority_comment",
                    "other_analysis_description", "group_description", "group_ids")


def _analyses(outcomes: Sequence[s.OutcomeMeasure]) -> Columns:
    rows = [(index, ordinal, *(getattr(a, name) for name in _ANALYSIS_FIELDS))
            for index, outcome in enumerate(outcomes) for ordinal, a in enumerate(outcome.analyses or ())]
    return _columns(("measure_ordinal", "ordinal", *_ANALYSIS_FIELDS), rows)


_FLOW_COLUMNS = ("period_ordinal", "period_title", "kind", "item_ordinal", "item_type", "item_comment", "ordinal",
                 "group_id", "comment", "num_subjects", "num_units")


def _flow(module: s.ParticipantFlowModule | None) -> Columns:
    rows: list[tuple[Any, ...]] = []

    def add(*row: Any) -> None:
        rows.append(row)

    for period_index, period in enumerate((module.periods if module else None) or ()):
        items: list[tuple[str, int, s.FlowMilestone | s.DropWithdraw, Sequence[s.FlowStats] | None]] = [
            *(("milestone", i, m, m.achievements) for i, m in enumerate(period.milestones or ())),
            *(("drop_withdraw", i, d, d.reasons) for i, d in enumerate(period.drop_withdraws or ())),
        ]
        if not items:
            add(period_index, period.title, None, None, None, None, None, None, None, None, None)
        for kind, item_index, item, stats in items:
            for ordinal, x in enumerate(stats or [None]):
                add(period_index, period.title, kind, item_index, item.type, item.comment,
                    ordinal if x else None, x.group_id if x else None, x.comment if x else None,
                    x.num_subjects if x else None, x.num_units if x else None)
    return _columns(_FLOW_COLUMNS, rows)


_EVENT_COLUMNS = ("kind", "event_ordinal", "term", "organ_system", "source_vocabulary", "assessment_type", "notes",
                  "ordinal", "group_id", "num_events", "num_affected", "num_at_risk")


def _adverse_events(module: s.AdverseEventsModule | None) -> Columns:
    rows: list[tuple[Any, ...]] = []
    for kind, events in ((("serious", module.serious_events), ("other", module.other_events)) if module else ()):
        for event_index, e in enumerate(events or ()):
            head = (kind, event_index, e.term, e.organ_system, e.source_vocabulary, e.assessment_type, e.notes)
            rows.extend((*head, ordinal, x.group_id, x.num_events, x.num_affected, x.num_at_risk) if x else
                        (*head, None, None, None, None, None) for ordinal, x in enumerate(e.stats or [None]))
    return _columns(_EVENT_COLUMNS, rows)


def _unposted(annotation: s.UnpostedAnnotation | None) -> Columns:
    rows = (annotation.unposted_events if annotation else None) or ()
    return {
        "ordinal": list(range(len(rows))),
        "event_type": [e.type for e in rows],
        "event_date": [_date(e.date, "unpostedEvents.date") for e in rows],
        "date_unknown": [e.date_unknown for e in rows],
    }


def _violations(annotation: s.ViolationAnnotation | None) -> Columns:
    rows = (annotation.violation_events if annotation else None) or ()
    return {
        "ordinal": list(range(len(rows))),
        "event_type": [e.type for e in rows],
        "description": [e.description for e in rows],
        "creation_date": [_date(e.creation_date, "violationEvents.creationDate") for e in rows],
        "issued_date": [_date(e.issued_date, "violationEvents.issuedDate") for e in rows],
        "release_date": [_date(e.release_date, "violationEvents.releaseDate") for e in rows],
        "posted_date": [_date(e.posted_date, "violationEvents.postedDate") for e in rows],
    }


def _documents(module: s.LargeDocumentModule | None) -> Columns:
    rows = (module.large_docs if module else None) or ()
    return {
        "ordinal": list(range(len(rows))),
        "type_abbrev": [d.type_abbrev for d in rows],
        "has_protocol": [d.has_protocol for d in rows],
        "has_sap": [d.has_sap for d in rows],
        "has_icf": [d.has_icf for d in rows],
        "label": [d.label for d in rows],
        "document_date": [_date(d.date, "largeDocs.date") for d in rows],
        "upload_date": [datetime.fromisoformat(d.upload_date) if d.upload_date else None for d in rows],
        "filename": [d.filename for d in rows],
        "size": [d.size for d in rows],
    }


def _date(raw: str | None, field: str) -> Any:
    return None if raw is None else parse_full_date(raw, field=field)
