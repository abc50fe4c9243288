"""The ``aact`` views of posted results, pending results and provided documents."""

from __future__ import annotations

from warehouse.aact.spec import B, D, I, K, N, V, AactView, T, aact_date, created, key, versioned

RESULT_TYPES = {"baseline": "Baseline", "participant_flow": "Participant Flow", "adverse_events": "Reported Event",
                "outcome": "Outcome"}


def group_key(alias: str, module: str, measure: str = "-1") -> str:
    """The id of a ``result_groups`` row from what identifies it: study, module, outcome (for outcome
    groups) and group code. Rows that point at a group compute the same digest."""
    return key(f"{alias}.nct_id", "'result_groups'", module, measure, f"{alias}.group_id")


def outcome_key(alias: str) -> str:
    return key(f"{alias}.nct_id", "'outcomes'", f"{alias}.measure_ordinal")


def _num(expr: str) -> str:
    return f"TRY_CAST({expr} AS DOUBLE)"


def _int(expr: str) -> str:
    return f"TRY_CAST({expr} AS INTEGER)"


def _measure_join() -> str:
    return (versioned("result_measurements") + "\nJOIN raw_result_measures AS ms ON ms.nct_id = t.nct_id "
            "AND ms.version = t.version AND ms.module = t.module AND ms.measure_ordinal = t.measure_ordinal")


def _denom(alias: str, measure: str, klass: str) -> str:
    return (f"LEFT JOIN raw_result_denoms AS {alias} ON {alias}.nct_id = t.nct_id AND {alias}.version = t.version "
            f"AND {alias}.module = 'baseline' AND {alias}.measure_ordinal IS NOT DISTINCT FROM {measure} "
            f"AND {alias}.class_ordinal IS NOT DISTINCT FROM {klass} AND {alias}.group_id = t.group_id "
            f"AND {alias}.units = coalesce(ms.denom_units_selected, 'Participants')")


def _measurement_values() -> tuple[tuple[str, str, str], ...]:
    return (
        ("ctgov_group_code", V, "t.group_id"), ("classification", V, "t.class_title"),
        ("category", V, "t.category_title"), ("title", V, "ms.title"), ("description", T, "ms.description"),
        ("units", V, "ms.unit_of_measure"), ("param_type", V, "ms.param_type"), ("param_value", V, "t.value"),
        ("param_value_num", N, _num("t.value")), ("dispersion_type", V, "ms.dispersion_type"),
        ("dispersion_value", V, "t.spread"), ("dispersion_value_num", N, _num("t.spread")),
        ("dispersion_lower_limit", N, _num("t.lower_limit")), ("dispersion_upper_limit", N, _num("t.upper_limit")),
    )


_MEASUREMENT_ID = ("t.measure_ordinal", "t.class_ordinal", "t.category_ordinal", "t.ordinal")

RESULTS_VIEWS: tuple[AactView, ...] = (
    AactView("result_groups", (
        ("id", K, group_key("t", "t.module", "coalesce(t.measure_ordinal, -1)")), ("nct_id", V, "t.nct_id"),
        ("ctgov_group_code", V, "t.group_id"),
        ("result_type", V, "CASE t.module " + " ".join(f"WHEN '{m}' THEN '{r}'" for m, r in RESULT_TYPES.items())
         + " END"),
        ("title", V, "t.title"), ("description", T, "t.description"),
        ("outcome_id", K, f"CASE WHEN t.module = 'outcome' THEN {outcome_key('t')} END"),
    ), versioned("result_groups")),
    AactView("participant_flows", (
        ("id", K, key("t.nct_id", "'participant_flows'")), ("nct_id", V, "t.nct_id"),
        ("recruitment_details", T, "t.flow_recruitment_details"),
        ("pre_assignment_details", T, "t.flow_pre_assignment_details"),
        ("units_analyzed", V, "t.flow_type_units_analyzed"),
    ), versioned("results_details") + "\nJOIN raw_results_summary AS rs ON rs.nct_id = t.nct_id "
       "AND rs.version = t.version\nWHERE rs.participant_flow_group_count IS NOT NULL"),
    AactView("milestones", (
        ("id", K, key("t.nct_id", "'milestones'", "t.period_ordinal", "t.item_ordinal", "t.ordinal")),
        ("nct_id", V, "t.nct_id"), ("result_group_id", K, group_key("t", "'participant_flow'")),
        ("ctgov_group_code", V, "t.group_id"), ("title", V, "t.item_type"), ("period", V, "t.period_title"),
        ("description", T, "NULL"), ("count", I, _int("t.num_subjects")),
        ("milestone_description", V, "t.item_comment"), ("count_units", V, "t.num_units"),
    ), versioned("participant_flow") + "\nWHERE t.kind = 'milestone' AND t.group_id IS NOT NULL"),
    AactView("drop_withdrawals", (
        ("id", K, key("t.nct_id", "'drop_withdrawals'", "t.period_ordinal", "t.item_ordinal", "t.ordinal")),
        ("nct_id", V, "t.nct_id"), ("result_group_id", K, group_key("t", "'participant_flow'")),
        ("ctgov_group_code", V, "t.group_id"), ("period", V, "t.period_title"), ("reason", V, "t.item_type"),
        ("count", I, _int("t.num_subjects")), ("drop_withdraw_comment", V, "t.item_comment"),
        ("reason_comment", V, "t.comment"), ("count_units", I, _int("t.num_units")),
    ), versioned("participant_flow") + "\nWHERE t.kind = 'drop_withdraw' AND t.group_id IS NOT NULL"),
    AactView("baseline_counts", (
        ("id", K, key("t.nct_id", "'baseline_counts'", "t.denom_ordinal", "t.ordinal")), ("nct_id", V, "t.nct_id"),
        ("result_group_id", K, group_key("t", "'baseline'")), ("ctgov_group_code", V, "t.group_id"),
        ("units", V, "t.units"), ("scope", V, "'overall'"), ("count", I, _int("t.value")),
    ), versioned("result_denoms") + "\nWHERE t.module = 'baseline' AND t.measure_ordinal IS NULL "
       "AND t.group_id IS NOT NULL"),
    AactView("baseline_measurements", (
        ("id", K, key("t.nct_id", "'baseline_measurements'", *_MEASUREMENT_ID)), ("nct_id", V, "t.nct_id"),
        ("result_group_id", K, group_key("t", "'baseline'")),
        *_measurement_values(),
        ("explanation_of_na", V, "t.comment"),
        ("number_analyzed", I, _int("coalesce(cd.value, md.value, od.value)")),
        ("number_analyzed_units", V, "coalesce(ms.denom_units_selected, 'Participants')"),
        ("population_description", V, "ms.population_description"),
        ("calculate_percentage", V, "CASE ms.calculate_pct WHEN true THEN 'Yes' WHEN false THEN 'No' END"),
    ), "\n".join((_measure_join(), _denom("cd", "t.measure_ordinal", "t.class_ordinal"),
                  _denom("md", "t.measure_ordinal", "NULL"), _denom("od", "NULL", "NULL"),
                  "WHERE t.module = 'baseline' AND t.group_id IS NOT NULL"))),
    AactView("outcomes", (
        ("id", K, outcome_key("t")), ("nct_id", V, "t.nct_id"), ("outcome_type", V, "t.outcome_type"),
        ("title", T, "t.title"), ("description", T, "t.description"), ("time_frame", T, "t.time_frame"),
        ("population", T, "t.population_description"),
        ("anticipated_posting_date", D, "CASE length(t.anticipated_posting_date) WHEN 7 THEN "
                                        "CAST(t.anticipated_posting_date || '-01' AS DATE) ELSE "
                                        + aact_date("t.anticipated_posting_date") + " END"),
        ("anticipated_posting_month_year", V, "t.anticipated_posting_date"), ("units", V, "t.unit_of_measure"),
        ("units_analyzed", V, "t.type_units_analyzed"), ("dispersion_type", V, "t.dispersion_type"),
        ("param_type", V, "t.param_type"),
    ), versioned("result_measures") + "\nWHERE t.module = 'outcome'"),
    AactView("outcome_counts", (
        ("id", K, key("t.nct_id", "'outcome_counts'", "t.measure_ordinal", "t.denom_ordinal", "t.ordinal")),
        ("nct_id", V, "t.nct_id"), ("outcome_id", K, outcome_key("t")),
        ("result_group_id", K, group_key("t", "'outcome'", "t.measure_ordinal")),
        ("ctgov_group_code", V, "t.group_id"), ("scope", V, "'Measure'"), ("units", V, "t.units"),
        ("count", I, _int("t.value")),
    ), versioned("result_denoms") + "\nWHERE t.module = 'outcome' AND t.class_ordinal IS NULL "
       "AND t.group_id IS NOT NULL"),
    AactView("outcome_measurements", (
        ("id", K, key("t.nct_id", "'outcome_measurements'", *_MEASUREMENT_ID)), ("nct_id", V, "t.nct_id"),
        ("outcome_id", K, outcome_key("t")),
        ("result_group_id", K, group_key("t", "'outcome'", "t.measure_ordinal")),
        *_measurement_values(),
        ("explanation_of_na", T, "t.comment"),
        ("dispersion_upper_limit_raw", V, "t.upper_limit"), ("dispersion_lower_limit_raw", V, "t.lower_limit"),
    ), _measure_join() + "\nWHERE t.module = 'outcome' AND t.group_id IS NOT NULL"),
    AactView("outcome_analyses", (
        ("id", K, key("t.nct_id", "'outcome_analyses'", "t.measure_ordinal", "t.ordinal")),
        ("nct_id", V, "t.nct_id"), ("outcome_id", K, outcome_key("t")),
        ("non_inferiority_type", V, "t.non_inferiority_type"),
        ("non_inferiority_description", T, "t.non_inferiority_comment"), ("param_type", V, "t.param_type"),
        ("param_value", N, _num("t.param_value")), ("dispersion_type", V, "t.dispersion_type"),
        ("dispersion_value", N, _num("t.dispersion_value")),
        ("p_value_modifier", V, r"trim(regexp_replace(t.p_value, '[0-9.\-]', '', 'g'))"),
        ("p_value", "double precision", _num("regexp_replace(t.p_value, '[<>= ]', '', 'g')")),
        ("ci_n_sides", V, "t.ci_num_sides"), ("ci_percent", N, _num("t.ci_pct_value")),
        ("ci_lower_limit", N, _num("t.ci_lower_limit")), ("ci_upper_limit", N, _num("t.ci_upper_limit")),
        ("ci_upper_limit_na_comment", V, "t.ci_upper_limit_comment"),
        ("p_value_description", V, "t.p_value_comment"), ("method", V, "t.statistical_method"),
        ("method_description", T, "t.statistical_comment"), ("estimate_description", T, "t.estimate_comment"),
        ("groups_description", T, "t.group_description"),
        ("other_analysis_description", T, "t.other_analysis_description"),
        ("ci_upper_limit_raw", V, "t.ci_upper_limit"), ("ci_lower_limit_raw", V, "t.ci_lower_limit"),
        ("p_value_raw", V, "t.p_value"),
    ), versioned("result_analyses")),
    AactView("outcome_analysis_groups", (
        ("id", K, key("t.nct_id", "'outcome_analysis_groups'", "t.measure_ordinal", "t.ordinal", "g.i")),
        ("nct_id", V, "t.nct_id"),
        ("outcome_analysis_id", K, key("t.nct_id", "'outcome_analyses'", "t.measure_ordinal", "t.ordinal")),
        ("result_group_id", K, key("t.nct_id", "'result_groups'", "'outcome'", "t.measure_ordinal", "g.group_id")),
        ("ctgov_group_code", V, "g.group_id"),
    ), versioned("result_analyses") + "\nCROSS JOIN unnest(t.group_ids) WITH ORDINALITY AS g(group_id, i)"),
    AactView("reported_events", (
        ("id", K, key("t.nct_id", "'reported_events'", "t.kind", "t.event_ordinal", "t.ordinal")),
        ("nct_id", V, "t.nct_id"), ("result_group_id", K, group_key("t", "'adverse_events'")),
        ("ctgov_group_code", V, "t.group_id"), ("time_frame", T, "rx.events_time_frame"),
        ("event_type", V, "t.kind"), ("default_vocab", V, "NULL"), ("default_assessment", V, "NULL"),
        ("subjects_affected", I, "t.num_affected"), ("subjects_at_risk", I, "t.num_at_risk"),
        ("description", T, "rx.events_description"), ("event_count", I, "t.num_events"),
        ("organ_system", V, "t.organ_system"), ("adverse_event_term", V, "t.term"),
        ("frequency_threshold", I, _int("rx.events_frequency_threshold")), ("vocab", V, "t.source_vocabulary"),
        ("assessment", V, "t.assessment_type"),
    ), versioned("adverse_events") + "\nJOIN raw_results_details AS rx ON rx.nct_id = t.nct_id "
       "AND rx.version = t.version\nWHERE t.group_id IS NOT NULL"),
    AactView("reported_event_totals", (
        ("id", K, key("t.nct_id", "'reported_event_totals'", "t.group_id", "k.event_type")),
        ("nct_id", V, "t.nct_id"), ("ctgov_group_code", V, "t.group_id"), ("event_type", V, "k.event_type"),
        ("classification", V, "k.classification"),
        ("subjects_affected", I, "CASE k.event_type WHEN 'serious' THEN t.serious_num_affected "
                                 "WHEN 'other' THEN t.other_num_affected ELSE t.deaths_num_affected END"),
        ("subjects_at_risk", I, "CASE k.event_type WHEN 'serious' THEN t.serious_num_at_risk "
                                "WHEN 'other' THEN t.other_num_at_risk ELSE t.deaths_num_at_risk END"),
        *created(),
    ), versioned("result_groups") + "\nCROSS JOIN (VALUES ('serious', 'Total, serious adverse events'), "
       "('other', 'Total, other adverse events'), ('deaths', 'Total, all-cause mortality')) "
       "AS k(event_type, classification)\nWHERE t.module = 'adverse_events'"),
    AactView("result_agreements", (
        ("id", K, key("t.nct_id", "'result_agreements'")), ("nct_id", V, "t.nct_id"),
        ("pi_employee", B, "t.pi_sponsor_employee"), ("agreement", T, "NULL"),
        ("restriction_type", V, "t.restriction_type"), ("other_details", T, "t.agreement_other_details"),
        ("restrictive_agreement", B, "t.restrictive_agreement"),
    ), versioned("results_details") + "\nWHERE t.pi_sponsor_employee IS NOT NULL OR t.restriction_type IS NOT NULL "
       "OR t.agreement_other_details IS NOT NULL OR t.restrictive_agreement IS NOT NULL"),
    AactView("result_contacts", (
        ("id", K, key("t.nct_id", "'result_contacts'")), ("nct_id", V, "t.nct_id"),
        ("organization", V, "t.contact_organization"), ("name", V, "t.contact_title"), ("phone", V, "t.contact_phone"),
        ("email", V, "t.contact_email"), ("extension", V, "t.contact_phone_ext"),
    ), versioned("results_details") + "\nWHERE coalesce(t.contact_organization, t.contact_title, t.contact_phone, "
       "t.contact_email, t.contact_phone_ext) IS NOT NULL"),
    AactView("pending_results", (
        ("id", K, key("t.nct_id", "'pending_results'", "t.ordinal")), ("nct_id", V, "t.nct_id"),
        ("event", V, "t.event_type"), ("event_date_description", V, "strftime(t.event_date, '%Y-%m-%d')"),
        ("event_date", D, "t.event_date"),
    ), versioned("pending_results")),
    AactView("provided_documents", (
        ("id", K, key("t.nct_id", "'provided_documents'", "t.ordinal")), ("nct_id", V, "t.nct_id"),
        ("document_type", V, "t.label"), ("has_protocol", B, "t.has_protocol"), ("has_icf", B, "t.has_icf"),
        ("has_sap", B, "t.has_sap"), ("document_date", D, "t.document_date"),
        ("url", V, "'https://ClinicalTrials.gov/ProvidedDocs/' || right(t.nct_id, 2) || '/' || t.nct_id || '/' "
                   "|| t.filename"),
    ), versioned("provided_documents")),
)

