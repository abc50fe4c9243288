"""The ``aact`` views of posted results, pending results and provided documents."""

from __future__ import annotations

from warehouse.aact.spec import BOOL, DT, INT, KEY, NUM, TXT, VC, AactView, aact_date, created, key, versioned

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
        ("ctgov_group_code", VC, "t.group_id"), ("classification", VC, "t.class_title"),
        ("category", VC, "t.category_title"), ("title", VC, "ms.title"), ("description", TXT, "ms.description"),
        ("units", VC, "ms.unit_of_measure"), ("param_type", VC, "ms.param_type"), ("param_value", VC, "t.value"),
        ("param_value_num", NUM, _num("t.value")), ("dispersion_type", VC, "ms.dispersion_type"),
        ("dispersion_value", VC, "t.spread"), ("dispersion_value_num", NUM, _num("t.spread")),
        ("dispersion_lower_limit", NUM, _num("t.lower_limit")), ("dispersion_upper_limit", NUM, _num("t.upper_limit")),
    )


_MEASUREMENT_ID = ("t.measure_ordinal", "t.class_ordinal", "t.category_ordinal", "t.ordinal")

RESULTS_VIEWS: tuple[AactView, ...] = (
    AactView("result_groups", (
        ("id", KEY, group_key("t", "t.module", "coalesce(t.measure_ordinal, -1)")), ("nct_id", VC, "t.nct_id"),
        ("ctgov_group_code", VC, "t.group_id"),
        ("result_type", VC, "CASE t.module " + " ".join(f"WHEN '{m}' THEN '{r}'" for m, r in RESULT_TYPES.items())
         + " END"),
        ("title", VC, "t.title"), ("description", TXT, "t.description"),
        ("outcome_id", KEY, f"CASE WHEN t.module = 'outcome' THEN {outcome_key('t')} END"),
    ), versioned("result_groups")),
    AactView("participant_flows", (
        ("id", KEY, key("t.nct_id", "'participant_flows'")), ("nct_id", VC, "t.nct_id"),
        ("recruitment_details", TXT, "t.flow_recruitment_details"),
        ("pre_assignment_details", TXT, "t.flow_pre_assignment_details"),
        ("units_analyzed", VC, "t.flow_type_units_analyzed"),
    ), versioned("results_details") + "\nJOIN raw_results_summary AS rs ON rs.nct_id = t.nct_id "
       "AND rs.version = t.version\nWHERE rs.participant_flow_group_count IS NOT NULL"),
    AactView("milestones", (
        ("id", KEY, key("t.nct_id", "'milestones'", "t.period_ordinal", "t.item_ordinal", "t.ordinal")),
        ("nct_id", VC, "t.nct_id"), ("result_group_id", KEY, group_key("t", "'participant_flow'")),
        ("ctgov_group_code", VC, "t.group_id"), ("title", VC, "t.item_type"), ("period", VC, "t.period_title"),
        ("description", TXT, "NULL"), ("count", INT, _int("t.num_subjects")),
        ("milestone_description", VC, "t.item_comment"), ("count_units", VC, "t.num_units"),
    ), versioned("participant_flow") + "\nWHERE t.kind = 'milestone' AND t.group_id IS NOT NULL"),
    AactView("drop_withdrawals", (
        ("id", KEY, key("t.nct_id", "'drop_withdrawals'", "t.period_ordinal", "t.item_ordinal", "t.ordinal")),
        ("nct_id", VC, "t.nct_id"), ("result_group_id", KEY, group_key("t", "'participant_flow'")),
        ("ctgov_group_code", VC, "t.group_id"), ("period", VC, "t.period_title"), ("reason", VC, "t.item_type"),
        ("count", INT, _int("t.num_subjects")), ("drop_withdraw_comment", VC, "t.item_comment"),
        ("reason_comment", VC, "t.comment"), ("count_units", INT, _int("t.num_units")),
    ), versioned("participant_flow") + "\nWHERE t.kind = 'drop_withdraw' AND t.group_id IS NOT NULL"),
    AactView("baseline_counts", (
        ("id", KEY, key("t.nct_id", "'baseline_counts'", "t.denom_ordinal", "t.ordinal")), ("nct_id", VC, "t.nct_id"),
        ("result_group_id", KEY, group_key("t", "'baseline'")), ("ctgov_group_code", VC, "t.group_id"),
        ("units", VC, "t.units"), ("scope", VC, "'overall'"), ("count", INT, _int("t.value")),
    ), versioned("result_denoms") + "\nWHERE t.module = 'baseline' AND t.measure_ordinal IS NULL "
       "AND t.group_id IS NOT NULL"),
    AactView("baseline_measurements", (
        ("id", KEY, key("t.nct_id", "'baseline_measurements'", *_MEASUREMENT_ID)), ("nct_id", VC, "t.nct_id"),
        ("result_group_id", KEY, group_key("t", "'baseline'")),
        *_measurement_values(),
        ("explanation_of_na", VC, "t.comment"),
        ("number_analyzed", INT, _int("coalesce(cd.value, md.value, od.value)")),
        ("number_analyzed_units", VC, "coalesce(ms.denom_units_selected, 'Participants')"),
        ("population_description", VC, "ms.population_description"),
        ("calculate_percentage", VC, "CASE ms.calculate_pct WHEN true THEN 'Yes' WHEN false THEN 'No' END"),
    ), "\n".join((_measure_join(), _denom("cd", "t.measure_ordinal", "t.class_ordinal"),
                  _denom("md", "t.measure_ordinal", "NULL"), _denom("od", "NULL", "NULL"),
                  "WHERE t.module = 'baseline' AND t.group_id IS NOT NULL"))),
    AactView("outcomes", (
        ("id", KEY, outcome_key("t")), ("nct_id", VC, "t.nct_id"), ("outcome_type", VC, "t.outcome_type"),
        ("title", TXT, "t.title"), ("description", TXT, "t.description"), ("time_frame", TXT, "t.time_frame"),
        ("population", TXT, "t.population_description"),
        ("anticipated_posting_date", DT, "CASE length(t.anticipated_posting_date) WHEN 7 THEN "
                                        "CAST(t.anticipated_posting_date || '-01' AS DATE) ELSE "
                                        + aact_date("t.anticipated_posting_date") + " END"),
        ("anticipated_posting_month_year", VC, "t.anticipated_posting_date"), ("units", VC, "t.unit_of_measure"),
        ("units_analyzed", VC, "t.type_units_analyzed"), ("dispersion_type", VC, "t.dispersion_type"),
        ("param_type", VC, "t.param_type"),
    ), versioned("result_measures") + "\nWHERE t.module = 'outcome'"),
    AactView("outcome_counts", (
        ("id", KEY, key("t.nct_id", "'outcome_counts'", "t.measure_ordinal", "t.denom_ordinal", "t.ordinal")),
        ("nct_id", VC, "t.nct_id"), ("outcome_id", KEY, outcome_key("t")),
        ("result_group_id", KEY, group_key("t", "'outcome'", "t.measure_ordinal")),
        ("ctgov_group_code", VC, "t.group_id"), ("scope", VC, "'Measure'"), ("units", VC, "t.units"),
        ("count", INT, _int("t.value")),
    ), versioned("result_denoms") + "\nWHERE t.module = 'outcome' AND t.class_ordinal IS NULL "
       "AND t.group_id IS NOT NULL"),
    AactView("outcome_measurements", (
        ("id", KEY, key("t.nct_id", "'outcome_measurements'", *_MEASUREMENT_ID)), ("nct_id", VC, "t.nct_id"),
        ("outcome_id", KEY, outcome_key("t")),
        ("result_group_id", KEY, group_key("t", "'outcome'", "t.measure_ordinal")),
        *_measurement_values(),
        ("explanation_of_na", TXT, "t.comment"),
        ("dispersion_upper_limit_raw", VC, "t.upper_limit"), ("dispersion_lower_limit_raw", VC, "t.lower_limit"),
    ), _measure_join() + "\nWHERE t.module = 'outcome' AND t.group_id IS NOT NULL"),
    AactView("outcome_analyses", (
        ("id", KEY, key("t.nct_id", "'outcome_analyses'", "t.measure_ordinal", "t.ordinal")),
        ("nct_id", VC, "t.nct_id"), ("outcome_id", KEY, outcome_key("t")),
        ("non_inferiority_type", VC, "t.non_inferiority_type"),
        ("non_inferiority_description", TXT, "t.non_inferiority_comment"), ("param_type", VC, "t.param_type"),
        ("param_value", NUM, _num("t.param_value")), ("dispersion_type", VC, "t.dispersion_type"),
        ("dispersion_value", NUM, _num("t.dispersion_value")),
        ("p_value_modifier", VC, r"trim(regexp_replace(t.p_value, '[0-9.\-]', '', 'g'))"),
        ("p_value", "double precision", _num("regexp_replace(t.p_value, '[<>= ]', '', 'g')")),
        ("ci_n_sides", VC, "t.ci_num_sides"), ("ci_percent", NUM, _num("t.ci_pct_value")),
        ("ci_lower_limit", NUM, _num("t.ci_lower_limit")), ("ci_upper_limit", NUM, _num("t.ci_upper_limit")),
        ("ci_upper_limit_na_comment", VC, "t.ci_upper_limit_comment"),
        ("p_value_description", VC, "t.p_value_comment"), ("method", VC, "t.statistical_method"),
        ("method_description", TXT, "t.statistical_comment"), ("estimate_description", TXT, "t.estimate_comment"),
        ("groups_description", TXT, "t.group_description"),
        ("other_analysis_description", TXT, "t.other_analysis_description"),
        ("ci_upper_limit_raw", VC, "t.ci_upper_limit"), ("ci_lower_limit_raw", VC, "t.ci_lower_limit"),
        ("p_value_raw", VC, "t.p_value"),
    ), versioned("result_analyses")),
    AactView("outcome_analysis_groups", (
        ("id", KEY, key("t.nct_id", "'outcome_analysis_groups'", "t.measure_ordinal", "t.ordinal", "g.i")),
        ("nct_id", VC, "t.nct_id"),
        ("outcome_analysis_id", KEY, key("t.nct_id", "'outcome_analyses'", "t.measure_ordinal", "t.ordinal")),
        ("result_group_id", KEY, key("t.nct_id", "'result_groups'", "'outcome'", "t.measure_ordinal", "g.group_id")),
        ("ctgov_group_code", VC, "g.group_id"),
    ), versioned("result_analyses") + "\nCROSS JOIN unnest(t.group_ids) WITH ORDINALITY AS g(group_id, i)"),
    AactView("reported_events", (
        ("id", KEY, key("t.nct_id", "'reported_events'", "t.kind", "t.event_ordinal", "t.ordinal")),
        ("nct_id", VC, "t.nct_id"), ("result_group_id", KEY, group_key("t", "'adverse_events'")),
        ("ctgov_group_code", VC, "t.group_id"), ("time_frame", TXT, "rx.events_time_frame"),
        ("event_type", VC, "t.kind"), ("default_vocab", VC, "NULL"), ("default_assessment", VC, "NULL"),
        ("subjects_affected", INT, "t.num_affected"), ("subjects_at_risk", INT, "t.num_at_risk"),
        ("description", TXT, "rx.events_description"), ("event_count", INT, "t.num_events"),
        ("organ_system", VC, "t.organ_system"), ("adverse_event_term", VC, "t.term"),
        ("frequency_threshold", INT, _int("rx.events_frequency_threshold")), ("vocab", VC, "t.source_vocabulary"),
        ("assessment", VC, "t.assessment_type"),
    ), versioned("adverse_events") + "\nJOIN raw_results_details AS rx ON rx.nct_id = t.nct_id "
       "AND rx.version = t.version\nWHERE t.group_id IS NOT NULL"),
    AactView("reported_event_totals", (
        ("id", KEY, key("t.nct_id", "'reported_event_totals'", "t.group_id", "k.event_type")),
        ("nct_id", VC, "t.nct_id"), ("ctgov_group_code", VC, "t.group_id"), ("event_type", VC, "k.event_type"),
        ("classification", VC, "k.classification"),
        ("subjects_affected", INT, "CASE k.event_type WHEN 'serious' THEN t.serious_num_affected "
                                 "WHEN 'other' THEN t.other_num_affected ELSE t.deaths_num_affected END"),
        ("subjects_at_risk", INT, "CASE k.event_type WHEN 'serious' THEN t.serious_num_at_risk "
                                "WHEN 'other' THEN t.other_num_at_risk ELSE t.deaths_num_at_risk END"),
        *created(),
    ), versioned("result_groups") + "\nCROSS JOIN (VALUES ('serious', 'Total, serious adverse events'), "
       "('other', 'Total, other adverse events'), ('deaths', 'Total, all-cause mortality')) "
       "AS k(event_type, classification)\nWHERE t.module = 'adverse_events'"),
    AactView("result_agreements", (
        ("id", KEY, key("t.nct_id", "'result_agreements'")), ("nct_id", VC, "t.nct_id"),
        ("pi_employee", BOOL, "t.pi_sponsor_employee"), ("agreement", TXT, "NULL"),
        ("restriction_type", VC, "t.restriction_type"), ("other_details", TXT, "t.agreement_other_details"),
        ("restrictive_agreement", BOOL, "t.restrictive_agreement"),
    ), versioned("results_details") + "\nWHERE t.pi_sponsor_employee IS NOT NULL OR t.restriction_type IS NOT NULL "
       "OR t.agreement_other_details IS NOT NULL OR t.restrictive_agreement IS NOT NULL"),
    AactView("result_contacts", (
        ("id", KEY, key("t.nct_id", "'result_contacts'")), ("nct_id", VC, "t.nct_id"),
        ("organization", VC, "t.contact_organization"), ("name", VC, "t.contact_title"),
        ("phone", VC, "t.contact_phone"),
        ("email", VC, "t.contact_email"), ("extension", VC, "t.contact_phone_ext"),
    ), versioned("results_details") + "\nWHERE coalesce(t.contact_organization, t.contact_title, t.contact_phone, "
       "t.contact_email, t.contact_phone_ext) IS NOT NULL"),
    AactView("pending_results", (
        ("id", KEY, key("t.nct_id", "'pending_results'", "t.ordinal")), ("nct_id", VC, "t.nct_id"),
        ("event", VC, "t.event_type"), ("event_date_description", VC, "strftime(t.event_date, '%Y-%m-%d')"),
        ("event_date", DT, "t.event_date"),
    ), versioned("pending_results")),
    AactView("provided_documents", (
        ("id", KEY, key("t.nct_id", "'provided_documents'", "t.ordinal")), ("nct_id", VC, "t.nct_id"),
        ("document_type", VC, "t.label"), ("has_protocol", BOOL, "t.has_protocol"), ("has_icf", BOOL, "t.has_icf"),
        ("has_sap", BOOL, "t.has_sap"), ("document_date", DT, "t.document_date"),
        ("url", VC, "'https://ClinicalTrials.gov/ProvidedDocs/' || right(t.nct_id, 2) || '/' || t.nct_id || '/' "
                   "|| t.filename"),
    ), versioned("provided_documents")),
)

