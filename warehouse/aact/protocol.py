"""The ``aact`` views of the protocol and registry tables (studies, sites, arms, outcomes, ...), and
``calculated_values`` and the tables AACT does not fill from study records."""

from __future__ import annotations

from pipeline import summary
from warehouse.aact.spec import BOOL, DT, INT, KEY, TS, TXT, VC, AactView, aact_date, created, empty, key, versioned

_ONE_ROW = "LEFT JOIN {table} AS {alias} ON {alias}.nct_id = t.nct_id AND {alias}.version = t.version"


def _join(table: str, alias: str) -> str:
    return _ONE_ROW.format(table=table, alias=alias)


def _date_columns(prefix: str, raw: str) -> tuple[tuple[str, str, str], ...]:
    return ((f"{prefix}_month_year", VC, f"t.{raw}_raw"), (f"{prefix}_date_type", VC, f"t.{raw}_type"),
            (f"{prefix}_date", DT, aact_date(f"t.{raw}_raw")))


STUDIES = AactView("studies", (
    ("nct_id", VC, "t.nct_id"),
    ("nlm_download_date_description", VC, "NULL"),
    ("study_first_submitted_date", DT, "rd.study_first_submitted"),
    ("results_first_submitted_date", DT, "rd.results_first_submitted"),
    ("disposition_first_submitted_date", DT, "rd.disp_first_submitted"),
    ("last_update_submitted_date", DT, "rd.last_update_submitted"),
    ("study_first_submitted_qc_date", DT, "rd.study_first_submitted_qc"),
    ("study_first_posted_date", DT, "rd.study_first_posted"),
    ("study_first_posted_date_type", VC, "rd.study_first_posted_type"),
    ("results_first_submitted_qc_date", DT, "rd.results_first_submitted_qc"),
    ("results_first_posted_date", DT, "rd.results_first_posted"),
    ("results_first_posted_date_type", VC, "rd.results_first_posted_type"),
    ("disposition_first_submitted_qc_date", DT, "rd.disp_first_submitted_qc"),
    ("disposition_first_posted_date", DT, "rd.disp_first_posted"),
    ("disposition_first_posted_date_type", VC, "rd.disp_first_posted_type"),
    # AACT copies lastUpdateSubmitDate here; the registry publishes no QC date for the last update.
    ("last_update_submitted_qc_date", DT, "NULL"),
    ("last_update_posted_date", DT, "rd.last_update_posted"),
    ("last_update_posted_date_type", VC, "rd.last_update_posted_type"),
    ("start_month_year", VC, "t.start_date_raw"), ("start_date_type", VC, "t.start_date_type"),
    ("start_date", DT, aact_date("t.start_date_raw")),
    ("verification_month_year", VC, "rd.status_verified_date_raw"),
    ("verification_date", DT, aact_date("rd.status_verified_date_raw")),
    *_date_columns("completion", "completion_date"),
    *_date_columns("primary_completion", "primary_completion_date"),
    ("target_duration", VC, "d.target_duration"),
    ("study_type", VC, "t.study_type"),
    ("acronym", VC, "t.acronym"),
    ("baseline_population", TXT, "rx.baseline_population_description"),
    ("brief_title", TXT, "t.brief_title"),
    ("official_title", TXT, "t.official_title"),
    ("overall_status", VC, "t.overall_status"),
    ("last_known_status", VC, "t.last_known_status"),
    ("phase", VC, "nullif(array_to_string(t.phases, '/'), '')"),
    ("enrollment", INT, "t.enrollment_count"),
    ("enrollment_type", VC, "t.enrollment_type"),
    ("source", VC, "sd.org_full_name"),
    ("limitations_and_caveats", VC, "rx.limitations_and_caveats"),
    ("number_of_arms", INT, "CASE WHEN t.study_type = 'INTERVENTIONAL' THEN arms.n END"),
    ("number_of_groups", INT, "CASE WHEN t.study_type IS DISTINCT FROM 'INTERVENTIONAL' THEN arms.n END"),
    ("why_stopped", VC, "t.why_stopped"),
    ("has_expanded_access", BOOL, "sd.has_expanded_access"),
    ("expanded_access_type_individual", BOOL, "sd.expanded_access_individual"),
    ("expanded_access_type_intermediate", BOOL, "sd.expanded_access_intermediate"),
    ("expanded_access_type_treatment", BOOL, "sd.expanded_access_treatment"),
    ("has_dmc", BOOL, "sd.oversight_has_dmc"),
    ("is_fda_regulated_drug", BOOL, "sd.is_fda_regulated_drug"),
    ("is_fda_regulated_device", BOOL, "sd.is_fda_regulated_device"),
    ("is_unapproved_device", BOOL, "sd.is_unapproved_device"),
    ("is_ppsd", BOOL, "sd.is_ppsd"),
    ("is_us_export", BOOL, "sd.is_us_export"),
    ("biospec_retention", VC, "d.bio_spec_retention"),
    ("biospec_description", TXT, "d.bio_spec_description"),
    ("ipd_time_frame", VC, "sd.ipd_time_frame"),
    ("ipd_access_criteria", VC, "sd.ipd_access_criteria"),
    ("ipd_url", VC, "sd.ipd_url"),
    ("plan_to_share_ipd", VC, "sd.ipd_sharing"),
    ("plan_to_share_ipd_description", VC, "sd.ipd_description"),
    *created(),
    ("source_class", VC, "sd.org_class"),
    ("delayed_posting", BOOL, "sd.delayed_posting"),
    ("expanded_access_nctid", VC, "sd.expanded_access_nct_id"),
    ("expanded_access_status_for_nctid", VC, "sd.expanded_access_status"),
    ("fdaaa801_violation", BOOL, "sd.fdaaa801_violation"),
    ("baseline_type_units_analyzed", VC, "rx.baseline_type_units_analyzed"),
    ("patient_registry", BOOL, "d.patient_registry"),
), "\n".join((versioned("raw_study_versions"), _join("registry_dates", "rd"), _join("study_details", "sd"),
              _join("design", "d"), _join("results_details", "rx"),
              "LEFT JOIN (SELECT nct_id, version, count(*) AS n FROM raw_arm_groups GROUP BY ALL) AS arms "
              "ON arms.nct_id = t.nct_id AND arms.version = t.version")))


def _simple(name: str, table: str, kind: str, columns: tuple[tuple[str, str, str], ...], where: str = "",
            ordinal: str = "t.ordinal") -> AactView:
    """A view with one row per row of ``table`` (of the shown version)."""
    return AactView(name, (("id", KEY, key("t.nct_id", f"'{kind}'", ordinal)), ("nct_id", VC, "t.nct_id"), *columns),
                    versioned(table) + (f"\nWHERE {where}" if where else ""))


def _names(name: str, table: str, column: str) -> AactView:
    return _simple(name, table, name, (("name", VC, f"t.{column}"), ("downcase_name", VC, f"lower(t.{column})")))


def _browse(name: str, module: str) -> AactView:
    return _simple(name, "browse_terms", name, (
        ("mesh_term", VC, "t.term"), ("downcase_mesh_term", VC, "lower(t.term)"),
        ("mesh_type", VC, "CASE t.kind WHEN 'mesh' THEN 'mesh-list' ELSE 'mesh-ancestor' END"),
    ), f"t.module = '{module}'", ordinal="t.kind, t.ordinal")


_INVESTIGATOR_ROLES = "('PRINCIPAL_INVESTIGATOR', 'SUB_INVESTIGATOR', 'STUDY_CHAIR', 'STUDY_DIRECTOR')"
_FACILITY = key("t.nct_id", "'facility'", "t.location_ordinal")

PROTOCOL_VIEWS: tuple[AactView, ...] = (
    STUDIES,
    _simple("brief_summaries", "descriptions", "brief_summaries", (("description", TXT, "t.brief_summary"),),
            "t.brief_summary IS NOT NULL", ordinal="0"),
    _simple("detailed_descriptions", "descriptions", "detailed_descriptions",
            (("description", TXT, "t.detailed_description"),),
            "t.brief_summary IS NOT NULL OR t.detailed_description IS NOT NULL", ordinal="0"),
    _names("conditions", "conditions", "condition"),
    _names("keywords", "keywords", "keyword"),
    _browse("browse_conditions", "condition"),
    _browse("browse_interventions", "intervention"),
    AactView("countries", (
        ("id", KEY, key("c.nct_id", "'countries'", "c.name", "c.removed")), ("nct_id", VC, "c.nct_id"),
        ("name", VC, "c.name"), ("removed", BOOL, "c.removed"),
    ), f"""FROM (SELECT DISTINCT t.nct_id, t.country AS name, false AS removed {versioned('locations')}
      WHERE t.country IS NOT NULL
      UNION ALL SELECT t.nct_id, t.country, true {versioned('removed_countries')}) AS c"""),
    _simple("facilities", "locations", "facility", (
        ("status", VC, "t.status"), ("name", VC, "t.facility"), ("city", VC, "t.city"), ("state", VC, "t.state"),
        ("zip", VC, "t.zip"), ("country", VC, "t.country"), ("latitude", "numeric(10,6)", "t.lat"),
        ("longitude", "numeric(10,6)", "t.lon"),
    )),
    AactView("facility_contacts", (
        ("id", KEY, key("t.nct_id", "'facility_contacts'", "t.location_ordinal", "t.ordinal")),
        ("nct_id", VC, "t.nct_id"), ("facility_id", KEY, _FACILITY),
        ("contact_type", VC, "CASE WHEN row_number() OVER (PARTITION BY t.nct_id, t.location_ordinal "
                            "ORDER BY t.ordinal) = 1 THEN 'primary' ELSE 'backup' END"),
        ("name", VC, "t.name"), ("email", VC, "t.email"), ("phone", VC, "t.phone"),
        ("phone_extension", VC, "t.phone_ext"),
    ), versioned("site_contacts") + f"\nWHERE t.role IS NULL OR t.role NOT IN {_INVESTIGATOR_ROLES}"),
    AactView("facility_investigators", (
        ("id", KEY, key("t.nct_id", "'facility_investigators'", "t.location_ordinal", "t.ordinal")),
        ("nct_id", VC, "t.nct_id"), ("facility_id", KEY, _FACILITY), ("role", VC, "t.role"), ("name", VC, "t.name"),
    ), versioned("site_contacts") + f"\nWHERE t.role IN {_INVESTIGATOR_ROLES}"),
    _simple("central_contacts", "contacts", "central_contacts", (
        ("contact_type", VC, "CASE WHEN t.ordinal = 0 THEN 'primary' ELSE 'backup' END"), ("name", VC, "t.name"),
        ("phone", VC, "t.phone"), ("email", VC, "t.email"), ("phone_extension", VC, "t.phone_ext"),
        ("role", VC, "t.role"),
    )),
    _simple("overall_officials", "officials", "overall_officials", (
        ("role", VC, "t.role"), ("name", VC, "t.name"), ("affiliation", VC, "t.affiliation"))),
    _simple("sponsors", "sponsors", "sponsors", (
        ("agency_class", VC, "t.agency_class"), ("lead_or_collaborator", VC, "t.role"), ("name", VC, "t.name"),
    ), ordinal="t.role, t.ordinal"),
    _simple("responsible_parties", "study_details", "responsible_parties", (
        ("responsible_party_type", VC, "t.responsible_party_type"), ("name", VC, "t.investigator_full_name"),
        ("title", VC, "t.investigator_title"), ("organization", VC, "t.old_organization"),
        ("affiliation", TXT, "t.investigator_affiliation"), ("old_name_title", VC, "t.old_name_title"),
    ), "coalesce(t.responsible_party_type, t.investigator_full_name, t.investigator_title, t.old_organization, "
       "t.investigator_affiliation, t.old_name_title) IS NOT NULL", ordinal="0"),
    _simple("id_information", "identifiers", "id_information", (
        ("id_source", VC, "t.id_kind"), ("id_value", VC, "t.identifier"), ("id_type", VC, "t.id_type"),
        ("id_type_description", VC, "t.domain"), ("id_link", VC, "t.link"),
    ), ordinal="t.id_kind, t.ordinal"),
    _simple("design_groups", "arm_groups", "design_groups", (
        ("group_type", VC, "t.arm_group_type"), ("title", VC, "t.label"), ("description", TXT, "t.description"))),
    _simple("interventions", "interventions", "interventions", (
        ("intervention_type", VC, "t.intervention_type"), ("name", VC, "t.name"),
        ("description", TXT, "t.description"))),
    AactView("intervention_other_names", (
        ("id", KEY, key("t.nct_id", "'intervention_other_names'", "t.ordinal", "o.i")), ("nct_id", VC, "t.nct_id"),
        ("intervention_id", KEY, key("t.nct_id", "'interventions'", "t.ordinal")), ("name", VC, "o.name"),
    ), versioned("interventions") + "\nCROSS JOIN unnest(t.other_names) WITH ORDINALITY AS o(name, i)"),
    AactView("design_group_interventions", (
        ("id", KEY, key("t.nct_id", "'design_group_interventions'", "t.ordinal", "l.i")), ("nct_id", VC, "t.nct_id"),
        ("design_group_id", KEY, "(SELECT " + key("a.nct_id", "'design_groups'", "min(a.ordinal)")
         + " FROM raw_arm_groups AS a WHERE a.nct_id = t.nct_id AND a.version = t.version AND a.label = l.label"
           " GROUP BY a.nct_id)"),
        ("intervention_id", KEY, key("t.nct_id", "'interventions'", "t.ordinal")),
    ), versioned("interventions") + "\nCROSS JOIN unnest(t.arm_group_labels) WITH ORDINALITY AS l(label, i)"),
    _simple("designs", "design", "designs", (
        ("allocation", VC, "t.allocation"), ("intervention_model", VC, "t.intervention_model"),
        ("observational_model", VC, "t.observational_model"), ("primary_purpose", VC, "t.primary_purpose"),
        ("time_perspective", VC, "t.time_perspective"), ("masking", VC, "t.masking"),
        ("masking_description", TXT, "t.masking_description"),
        ("intervention_model_description", TXT, "t.intervention_model_description"),
        *((f"{name}_masked", BOOL, f"list_contains(t.who_masked, '{code}')") for name, code in (
            ("subject", "PARTICIPANT"), ("caregiver", "CARE_PROVIDER"), ("investigator", "INVESTIGATOR"),
            ("outcomes_assessor", "OUTCOMES_ASSESSOR"))),
    ), "coalesce(t.allocation, t.intervention_model, t.observational_model, t.primary_purpose, t.time_perspective, "
       "t.masking, t.masking_description, t.intervention_model_description) IS NOT NULL "
       "OR t.who_masked IS NOT NULL", ordinal="0"),
    _simple("design_outcomes", "outcomes", "design_outcomes", (
        ("outcome_type", VC, "t.outcome_type"), ("measure", TXT, "t.measure"), ("time_frame", TXT, "t.time_frame"),
        ("population", VC, "NULL"), ("description", TXT, "t.description"),
    ), ordinal="t.outcome_type, t.ordinal"),
    _simple("eligibilities", "eligibility", "eligibilities", (
        ("sampling_method", VC, "t.sampling_method"), ("gender", VC, "t.sex"), ("minimum_age", VC, "t.minimum_age"),
        ("maximum_age", VC, "t.maximum_age"), ("healthy_volunteers", BOOL, "t.healthy_volunteers"),
        ("population", TXT, "t.study_population"), ("criteria", TXT, "t.criteria"),
        ("gender_description", TXT, "t.gender_description"), ("gender_based", BOOL, "t.gender_based"),
        *((name, BOOL, f"list_contains(t.std_ages, '{code}')") for name, code in (
            ("adult", "ADULT"), ("child", "CHILD"), ("older_adult", "OLDER_ADULT"))),
    ), "coalesce(t.criteria, t.sex, t.minimum_age, t.maximum_age, t.study_population, t.sampling_method, "
       "t.gender_description) IS NOT NULL OR t.healthy_volunteers IS NOT NULL OR t.std_ages IS NOT NULL "
       "OR t.gender_based IS NOT NULL", ordinal="0"),
    AactView("ipd_information_types", (
        ("id", KEY, key("t.nct_id", "'ipd_information_types'", "x.i")), ("nct_id", VC, "t.nct_id"),
        ("name", VC, "x.name"),
    ), versioned("study_details") + "\nCROSS JOIN unnest(t.ipd_info_types) WITH ORDINALITY AS x(name, i)"),
    _simple("documents", "ipd_documents", "documents", (
        ("document_id", VC, "t.document_id"), ("document_type", VC, "t.document_type"), ("url", VC, "t.url"),
        ("comment", TXT, "t.comment"))),
    _simple("links", "see_also_links", "links", (("url", VC, "t.url"), ("description", TXT, "t.label"))),
    _simple("study_references", "study_references", "study_references", (
        ("pmid", VC, "t.pmid"), ("reference_type", VC, "t.reference_type"), ("citation", TXT, "t.citation"))),
    AactView("retractions", (
        ("id", KEY, key("t.nct_id", "'retractions'", "t.ordinal", "r.i")),
        ("reference_id", KEY, key("t.nct_id", "'study_references'", "t.ordinal")),
        ("pmid", VC, "t.retraction_pmids[r.i]"), ("source", VC, "t.retraction_sources[r.i]"),
        ("nct_id", VC, "t.nct_id"),
    ), versioned("study_references")
        + "\nCROSS JOIN unnest(range(1, len(t.retraction_pmids) + 1)) AS r(i)"),
)

US_COUNTRIES = "(" + ", ".join(f"'{c}'" for c in summary.US_COUNTRIES) + ")"


def _age(column: str, part: str) -> str:
    if part == "num":
        return f"TRY_CAST(split_part(e.{column}, ' ', 1) AS INTEGER)"
    return f"regexp_replace(lower(split_part(e.{column}, ' ', -1)), 's$', '')"


def _months(start: str, end: str) -> str:
    return f"trunc(date_diff('day', {start}, {end}) / 30)"


def _count_per_version(table: str, alias: str, select: str, where: str = "") -> str:
    return (f"LEFT JOIN (SELECT nct_id, version, {select} FROM {table}{(' WHERE ' + where) if where else ''} "
            f"GROUP BY ALL) AS {alias} ON {alias}.nct_id = s.nct_id AND {alias}.version = s.version")


CALCULATED_VALUES = AactView("calculated_values", (
    ("id", KEY, key("s.nct_id", "'calculated_values'")),
    ("nct_id", VC, "s.nct_id"),
    ("number_of_facilities", INT, "coalesce(f.n, 0)"),
    ("number_of_nsae_subjects", INT, "ae.other"),
    ("number_of_sae_subjects", INT, "ae.serious"),
    ("registered_in_calendar_year", INT, "year(s.study_first_submitted_date)"),
    ("nlm_download_date", DT, "NULL"),
    ("actual_duration", INT, "CASE WHEN s.start_date_type IS DISTINCT FROM 'ESTIMATED' AND "
                           "s.primary_completion_date_type IS DISTINCT FROM 'ESTIMATED' THEN "
                           + _months("s.start_date", "s.primary_completion_date") + " END"),
    ("were_results_reported", BOOL, "coalesce(o.n > 0, false)"),
    ("months_to_report_results", INT, _months("s.primary_completion_date", "s.results_first_submitted_date")),
    ("has_us_facility", BOOL, "f.us"),
    ("has_single_facility", BOOL, "f.n = 1"),
    ("minimum_age_num", INT, _age("minimum_age", "num")),
    ("maximum_age_num", INT, _age("maximum_age", "num")),
    ("minimum_age_unit", VC, _age("minimum_age", "unit")),
    ("maximum_age_unit", VC, _age("maximum_age", "unit")),
    *((f"number_of_{kind}_outcomes_to_measure", INT, f"nullif(dn.{kind}, 0)") for kind in ("primary", "secondary",
                                                                                          "other")),
), "\n".join((
    "FROM (SELECT v.nct_id, v.version, a.* EXCLUDE (nct_id) FROM aact._versions AS v "
    "JOIN aact.studies AS a ON a.nct_id = v.nct_id) AS s",
    _count_per_version("raw_locations", "f", f"count(*) AS n, bool_or(country IN {US_COUNTRIES}) AS us"),
    _count_per_version("raw_adverse_events", "ae", "sum(num_affected) FILTER (kind = 'serious') AS serious, "
                       "sum(num_affected) FILTER (kind = 'other') AS other", "group_id IS NOT NULL"),
    _count_per_version("raw_result_measures", "o", "count(*) AS n", "module = 'outcome'"),
    _count_per_version("raw_outcomes", "dn", "count(*) FILTER (outcome_type = 'primary') AS primary, "
                       "count(*) FILTER (outcome_type = 'secondary') AS secondary, "
                       "count(*) FILTER (outcome_type = 'other') AS other"),
    "LEFT JOIN raw_eligibility AS e ON e.nct_id = s.nct_id AND e.version = s.version",
)))

NOT_FROM_STUDIES: tuple[AactView, ...] = (
    empty("mesh_terms", (("id", KEY), ("qualifier", VC), ("tree_number", VC), ("description", VC), ("mesh_term", VC),
                         ("downcase_mesh_term", VC))),
    empty("mesh_headings", (("id", KEY), ("qualifier", VC), ("heading", VC), ("subcategory", VC))),
    empty("search_results", (("id", KEY), ("nct_id", VC), ("name", VC), ("created_at", TS), ("updated_at", TS),
                             ("grouping", VC), ("study_search_id", KEY))),
    empty("study_searches", (("id", KEY), ("save_tsv", BOOL), ("query", VC), ("grouping", VC), ("name", VC),
                             ("beta_api", BOOL), ("created_at", TS), ("updated_at", TS), ("active", BOOL))),
    empty("study_records", (("id", KEY), ("nct_id", VC), ("type", VC), ("content", "json"), ("sha", VC),
                            ("created_at", TS), ("updated_at", TS))),
)

