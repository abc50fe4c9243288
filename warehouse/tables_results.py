"""Arrow schemas of the child tables of ``pipeline.flatten_registry`` and ``pipeline.flatten_results``
(registry dates and details, small protocol lists, MeSH browse terms, posted and pending results,
provided documents), keyed by (nct_id, version) like every child table."""

from __future__ import annotations

import pyarrow as pa

_STR, _INT, _I64, _BOOL, _DATE, _STRS = pa.string(), pa.int32(), pa.int64(), pa.bool_(), pa.date32(), \
    pa.list_(pa.string())
_TS = pa.timestamp("us")


def _child(*columns: tuple[str, pa.DataType]) -> pa.Schema:
    return pa.schema([pa.field("nct_id", _STR, nullable=False), pa.field("version", _INT, nullable=False),
                      *(pa.field(name, kind) for name, kind in columns)])


def _all(kind: pa.DataType, *names: str) -> list[tuple[str, pa.DataType]]:
    return [(name, kind) for name in names]


REGISTRY_TABLES: dict[str, pa.Schema] = {
    "registry_dates": _child(
        ("status_verified_date", _DATE), ("status_verified_date_raw", _STR),
        ("study_first_submitted", _DATE), ("study_first_submitted_qc", _DATE), ("study_first_posted", _DATE),
        ("study_first_posted_type", _STR), ("results_first_submitted", _DATE), ("results_first_submitted_qc", _DATE),
        ("results_first_posted", _DATE), ("results_first_posted_type", _STR), ("disp_first_submitted", _DATE),
        ("disp_first_submitted_qc", _DATE), ("disp_first_posted", _DATE), ("disp_first_posted_type", _STR),
        ("last_update_submitted", _DATE), ("last_update_posted", _DATE), ("last_update_posted_type", _STR)),
    "study_details": _child(
        ("org_full_name", _STR), ("org_class", _STR),
        *_all(_BOOL, "delayed_posting", "results_waived", "has_expanded_access"),
        ("expanded_access_nct_id", _STR), ("expanded_access_status", _STR),
        *_all(_BOOL, "expanded_access_individual", "expanded_access_intermediate", "expanded_access_treatment"),
        ("n_ptrs_to_this_exp_acc_nct_id", _INT),
        *_all(_BOOL, "oversight_has_dmc", "is_fda_regulated_drug", "is_fda_regulated_device", "is_unapproved_device",
              "is_ppsd", "is_us_export", "fdaaa801_violation"),
        *_all(_STR, "responsible_party_type", "investigator_full_name", "investigator_title",
              "investigator_affiliation", "old_name_title", "old_organization", "ipd_sharing", "ipd_description"),
        ("ipd_info_types", _STRS), *_all(_STR, "ipd_time_frame", "ipd_access_criteria", "ipd_url")),
    "site_contacts": _child(("location_ordinal", _INT), ("ordinal", _INT),
                            *_all(_STR, "name", "role", "phone", "phone_ext", "email")),
    "see_also_links": _child(("ordinal", _INT), ("label", _STR), ("url", _STR)),
    "ipd_documents": _child(("ordinal", _INT), *_all(_STR, "document_id", "document_type", "url", "comment")),
    "removed_countries": _child(("ordinal", _INT), ("country", _STR)),
    "browse_terms": _child(("module", _STR), ("kind", _STR), ("ordinal", _INT), ("mesh_id", _STR), ("term", _STR)),
}

RESULTS_TABLES: dict[str, pa.Schema] = {
    "results_details": _child(
        *_all(_STR, "flow_recruitment_details", "flow_pre_assignment_details", "flow_type_units_analyzed",
              "baseline_population_description", "baseline_type_units_analyzed", "events_frequency_threshold",
              "events_time_frame", "events_description", "all_cause_mortality_comment", "limitations_and_caveats"),
        ("pi_sponsor_employee", _BOOL), ("restriction_type", _STR), ("restrictive_agreement", _BOOL),
        *_all(_STR, "agreement_other_details", "contact_title", "contact_organization", "contact_email",
              "contact_phone", "contact_phone_ext", "unposted_responsible_party"),
        ("no_sap", _BOOL)),
    "result_groups": _child(
        ("module", _STR), ("measure_ordinal", _INT), ("ordinal", _INT), ("group_id", _STR), ("title", _STR),
        ("description", _STR),
        *_all(_INT, "deaths_num_affected", "deaths_num_at_risk", "serious_num_affected", "serious_num_at_risk",
              "other_num_affected", "other_num_at_risk")),
    "result_measures": _child(
        ("module", _STR), ("measure_ordinal", _INT),
        *_all(_STR, "outcome_type", "title", "description", "population_description", "reporting_status",
              "anticipated_posting_date", "param_type", "dispersion_type", "unit_of_measure"),
        ("calculate_pct", _BOOL), *_all(_STR, "time_frame", "type_units_analyzed", "denom_units_selected")),
    "result_measurements": _child(
        ("module", _STR), ("measure_ordinal", _INT), ("class_ordinal", _INT), ("class_title", _STR),
        ("category_ordinal", _INT), ("category_title", _STR), ("ordinal", _INT),
        *_all(_STR, "group_id", "value", "spread", "lower_limit", "upper_limit", "comment")),
    "result_denoms": _child(
        ("module", _STR), ("measure_ordinal", _INT), ("class_ordinal", _INT), ("denom_ordinal", _INT),
        ("units", _STR), ("ordinal", _INT), ("group_id", _STR), ("value", _STR)),
    "result_analyses": _child(
        ("measure_ordinal", _INT), ("ordinal", _INT),
        *_all(_STR, "param_type", "param_value", "dispersion_type", "dispersion_value", "statistical_method",
              "statistical_comment", "p_value", "p_value_comment", "ci_num_sides", "ci_pct_value", "ci_lower_limit",
              "ci_upper_limit", "ci_lower_limit_comment", "ci_upper_limit_comment", "estimate_comment"),
        ("tested_non_inferiority", _BOOL),
        *_all(_STR, "non_inferiority_type", "non_inferiority_comment", "other_analysis_description",
              "group_description"),
        ("group_ids", _STRS)),
    "participant_flow": _child(
        ("period_ordinal", _INT), ("period_title", _STR), ("kind", _STR), ("item_ordinal", _INT),
        ("item_type", _STR), ("item_comment", _STR), ("ordinal", _INT),
        *_all(_STR, "group_id", "comment", "num_subjects", "num_units")),
    "adverse_events": _child(
        ("kind", _STR), ("event_ordinal", _INT),
        *_all(_STR, "term", "organ_system", "source_vocabulary", "assessment_type", "notes"),
        ("ordinal", _INT), ("group_id", _STR), *_all(_INT, "num_events", "num_affected", "num_at_risk")),
    "pending_results": _child(("ordinal", _INT), ("event_type", _STR), ("event_date", _DATE),
                              ("date_unknown", _BOOL)),
    "violation_events": _child(("ordinal", _INT), ("event_type", _STR), ("description", _STR),
                               *_all(_DATE, "creation_date", "issued_date", "release_date", "posted_date")),
    "provided_documents": _child(
        ("ordinal", _INT), ("type_abbrev", _STR), *_all(_BOOL, "has_protocol", "has_sap", "has_icf"),
        ("label", _STR), ("document_date", _DATE), ("upload_date", _TS), ("filename", _STR), ("size", _I64)),
}
