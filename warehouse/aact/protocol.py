"""The ``aact`` views of the protocol and registry tables (studies, sites, arms, outcomes, ...), and
``calculated_values`` and the tables AACT does not fill from study records."""

from __future__ import annotations

from warehouse.aact.spec import B, D, I, K, TS, V, AactView, T, aact_date, created, empty, key, versioned

_ONE_ROW = "LEFT JOIN {table} AS {alias} ON {alias}.nct_id = t.nct_id AND {alias}.version = t.version"


def _join(table: str, alias: str) -> str:
    return _ONE_ROW.format(table=table, alias=alias)


def _date_columns(prefix: str, raw: str) -> tuple[tuple[str, str, str], ...]:
    return ((f"{prefix}_month_year", V, f"t.{raw}_raw"), (f"{prefix}_date_type", V, f"t.{raw}_type"),
            (f"{prefix}_date", D, aact_date(f"t.{raw}_raw")))


STUDIES = AactView("studies", (
    ("nct_id", V, "t.nct_id"),
    ("nlm_download_date_description", V, "NULL"),
    ("study_first_submitted_date", D, "rd.study_first_submitted"),
    ("results_first_submitted_date", D, "rd.results_first_submitted"),
    ("disposition_first_submitted_date", D, "rd.disp_first_submitted"),
    ("last_update_submitted_date", D, "rd.last_update_submitted"),
    ("study_first_submitted_qc_date", D, "rd.study_first_submitted_qc"),
    ("study_first_posted_date", D, "rd.study_first_posted"),
    ("study_first_posted_date_type", V, "rd.study_first_posted_type"),
    ("results_first_submitted_qc_date", D, "rd.results_first_submitted_qc"),
    ("results_first_posted_date", D, "rd.results_first_posted"),
    ("results_first_posted_date_type", V, "rd.results_first_posted_type"),
    ("disposition_first_submitted_qc_date", D, "rd.disp_first_submitted_qc"),
    ("disposition_first_posted_date", D, "rd.disp_first_posted"),
    ("disposition_first_posted_date_type", V, "rd.disp_first_posted_type"),
    # AACT copies lastUpdateSubmitDate here; the registry publishes no QC date for the last update.
    ("last_update_submitted_qc_date", D, "NULL"),
    ("last_update_posted_date", D, "rd.last_update_posted"),
    ("last_update_posted_date_type", V, "rd.last_update_posted_type"),
    ("start_month_year", V, "t.start_date_raw"), ("start_date_type", V, "t.start_date_type"),
    ("start_date", D, aact_date("t.start_date_raw")),
    ("verification_month_year", V, "rd.status_verified_date_raw"),
    ("verification_date", D, aact_date("rd.status_verified_date_raw")),
    *_date_columns("completion", "completion_date"),
    *_date_columns("primary_completion", "primary_completion_date"),
    ("target_duration", V, "d.target_duration"),
    ("study_type", V, "t.study_type"),
    ("acronym", V, "t.acronym"),
    ("baseline_population", T, "rx.baseline_population_description"),
    ("brief_title", T, "t.brief_title"),
    ("official_title", T, "t.official_title"),
    ("overall_status", V, "t.overall_status"),
    ("last_known_status", V, "t.last_known_status"),
    ("phase", V, "nullif(array_to_string(t.phases, '/'), '')"),
    ("enrollment", I, "t.enrollment_count"),
    ("enrollment_type", V, "t.enrollment_type"),
    ("source", V, "sd.org_full_name"),
    ("limitations_and_caveats", V, "rx.limitations_and_caveats"),
    ("number_of_arms", I, "CASE WHEN t.study_type = 'INTERVENTIONAL' THEN arms.n END"),
    ("number_of_groups", I, "CASE WHEN t.study_type IS DISTINCT FROM 'INTERVENTIONAL' THEN arms.n END"),
    ("why_stopped", V, "t.why_stopped"),
    ("has_expanded_access", B, "sd.has_expanded_access"),
    ("expanded_access_type_individual", B, "sd.expanded_access_individual"),
    ("expanded_access_type_intermediate", B, "sd.expanded_access_intermediate"),
    ("expanded_access_type_treatment", B, "sd.expanded_access_treatment"),
    ("has_dmc", B, "sd.oversight_has_dmc"),
    ("is_fda_regulated_drug", B, "sd.is_fda_regulated_drug"),
    ("is_fda_regulated_device", B, "sd.is_fda_regulated_device"),
    ("is_unapproved_device", B, "sd.is_unapproved_device"),
    ("is_ppsd", B, "sd.is_ppsd"),
    ("is_us_export", B, "sd.is_us_export"),
    ("biospec_retention", V, "d.bio_spec_retention"),
    ("biospec_description", T, "d.bio_spec_description"),
    ("ipd_time_frame", V, "sd.ipd_time_frame"),
    ("ipd_access_criteria", V, "sd.ipd_access_criteria"),
    ("ipd_url", V, "sd.ipd_url"),
    ("plan_to_share_ipd", V, "sd.ipd_sharing"),
    ("plan_to_share_ipd_description", V, "sd.ipd_description"),
    *created(),
    ("source_class", V, "sd.org_class"),
    ("delayed_posting", B, "sd.delayed_posting"),
    ("expanded_access_nctid", V, "sd.expanded_access_nct_id"),
    ("expanded_access_status_for_nctid", V, "sd.expanded_access_status"),
    ("fdaaa801_violation", B, "sd.fdaaa801_violation"),
    ("baseline_type_units_analyzed", V, "rx.baseline_type_units_analyzed"),
    ("patient_registry", B, "d.patient_registry"),
), "\n".join((versioned("raw_study_versions"), _join("registry_dates", "rd"), _join("study_details", "sd"),
              _join("design", "d"), _join("results_details", "rx"),
              "LEFT JOIN (SELECT nct_id, version, count(*) AS n FROM raw_arm_groups GROUP BY ALL) AS arms "
              "ON arms.nct_id = t.nct_id AND arms.version = t.version")))


def _simple(name: str, table: str, kind: str, columns: tuple[tuple[str, str, str], ...], where: str = "",
            ordinal: str = "t.ordinal") -> AactView:
    """A view with one row per row of ``table`` (of the shown version)."""
    return AactView(name, (("id", K, key("t.nct_id", f"'{kind}'", ordinal)), ("nct_id", V, "t.nct_id"), *columns),
                    versioned(table) + (f"\nWHERE {where}" if where else ""))


def _names(name: str, table: str, column: str) -> AactView:
    return _simple(name, table, name, (("name", V, f"t.{column}"), ("downcase_name", V, f"lower(t.{column})")))


def _browse(name: str, module: str) -> AactView:
    return _simple(name, "browse_terms", name, (
        ("mesh_term", V, "t.term"), ("downcase_mesh_term", V, "lower(t.term)"),
        ("mesh_type", V, "CASE t.kind WHEN 'mesh' THEN 'mesh-list' ELSE 'mesh-ancestor' END"),
    ), f"t.module = '{module}'", ordinal="t.kind, t.ordinal")


_INVESTIGATOR_ROLES = "('PRINCIPAL_INVESTIGATOR', 'SUB_INVESTIGATOR', 'STUDY_CHAIR', 'STUDY_DIRECTOR')"
_FACILITY = key("t.nct_id", "'facility'", "t.location_ordinal")

PROTOCOL_VIEWS: tuple[AactView, ...] = (
    STUDIES,
    _simple("brief_summaries", "descriptions", "brief_summaries", (("description", T, "t.brief_summary"),),
            "t.brief_summary IS NOT NULL", ordinal="0"),
    _simple("detailed_descriptions", "descriptions", "detailed_descriptions",
            (("description", T, "t.detailed_description"),),
            "t.brief_summary IS NOT NULL OR t.detailed_description IS NOT NULL", ordinal="0"),
    _names("conditions", "conditions", "condition"),
    _names("keywords", "keywords", "keyword"),
    _browse("browse_conditions", "condition"),
    _browse("browse_interventions", "intervention"),
    AactView("countries", (
        ("id", K, key("c.nct_id", "'countries'", "c.name", "c.removed")), ("nct_id", V, "c.nct_id"),
        ("name", V, "c.name"), ("removed", B, "c.removed"),
    ), f"""FROM (SELECT DISTINCT t.nct_id, t.country AS name, false AS removed {versioned('locations')}
      WHERE t.country IS NOT NULL
      UNION ALL SELECT t.nct_id, t.country, true {versioned('removed_countries')}) AS c"""),
    _simple("facilities", "locations", "facility", (
        ("status", V, "t.status"), ("name", V, "t.facility"), ("city", V, "t.city"), ("state", V, "t.state"),
        ("zip", V, "t.zip"), ("country", V, "t.country"), ("latitude", "numeric(10,6)", "t.lat"),
        ("longitude", "numeric(10,6)", "t.lon"),
    )),
    AactView("facility_contacts", (
        ("id", K, key("t.nct_id", "'facility_contacts'", "t.location_ordinal", "t.ordinal")),
        ("nct_id", V, "t.nct_id"), ("facility_id", K, _FACILITY),
        ("contact_type", V, "CASE WHEN row_number() OVER (PARTITION BY t.nct_id, t.location_ordinal "
                            "ORDER BY t.ordinal) = 1 THEN 'primary' ELSE 'backup' END"),
        ("name", V, "t.name"), ("email", V, "t.email"), ("phone", V, "t.phone"),
        ("phone_extension", V, "t.phone_ext"),
    ), versioned("site_contacts") + f"\nWHERE t.role IS NULL OR t.role NOT IN {_INVESTIGATOR_ROLES}"),
    AactView("facility_investigators", (
        ("id", K, key("t.nct_id", "'facility_investigators'", "t.location_ordinal", "t.ordinal")),
        ("nct_id", V, "t.nct_id"), ("facility_id", K, _FACILITY), ("role", V, "t.role"), ("name", V, "t.name"),
    ), versioned("site_contacts") + f"\nWHERE t.role IN {_INVESTIGATOR_ROLES}"),
    _simple("central_contacts", "contacts", "central_contacts", (
        ("contact_type", V, "CASE WHEN t.ordinal = 0 THEN 'primary' ELSE 'backup' END"), ("name", V, "t.name"),
        ("phone", V, "t.phone"), ("email", V, "t.email"), ("phone_extension", V, "t.phone_ext"),
        ("role", V, "t.role"),
    )),
    _simple("overall_officials", "officials", "overall_officials", (
        ("role", V, "t.role"), ("name", V, "t.name"), ("affiliation", V, "t.affiliation"))),
    _simple("sponsors", "sponsors", "sponsors", (
        ("agency_class", V, "t.agency_class"), ("lead_or_collaborator", V, "t.role"), ("name", V, "t.name"),
    ), ordinal="t.role, t.ordinal"),
    _simple("responsible_parties", "study_details", "responsible_parties", (
        ("responsible_party_type", V, "t.responsible_party_type"), ("name", V, "t.investigator_full_name"),
        ("title", V, "t.investigator_title"), ("organization", V, "t.old_organization"),
        ("affiliation", T, "t.investigator_affiliation"), ("old_name_title", V, "t.old_name_title"),
    ), "coalesce(t.responsible_party_type, t.investigator_full_name, t.investigator_title, t.old_organization, "
       "t.investigator_affiliation, t.old_name_title) IS NOT NULL", ordinal="0"),
    _simple("id_information", "identifiers", "id_information", (
        ("id_source", V, "t.id_kind"), ("id_value", V, "t.identifier"), ("id_type", V, "t.id_type"),
        ("id_type_description", V, "t.domain"), ("id_link", V, "t.link"),
    ), ordinal="t.id_kind, t.ordinal"),
    _simple("design_groups", "arm_groups", "design_groups", (
        ("group_type", V, "t.arm_group_type"), ("title", V, "t.label"), ("description", T, "t.description"))),
    _simple("interventions", "interventions", "interventions", (
        ("intervention_type", V, "t.intervention_type"), ("name", V, "t.name"), ("description", T, "t.description"))),
    AactView("intervention_other_names", (
        ("id", K, key("t.nct_id", "'intervention_other_names'", "t.ordinal", "o.i")), ("nct_id", V, "t.nct_id"),
        ("intervention_id", K, key("t.nct_id", "'interventions'", "t.ordinal")), ("name", V, "o.name"),
    ), versioned("interventions") + "\nCROSS JOIN unnest(t.other_names) WITH ORDINALITY AS o(name, i)"),
    AactView("design_group_interventions", (
        ("id", K, key("t.nct_id", "'design_group_interventions'", "t.ordinal", "l.i")), ("nct_id", V, "t.nct_id"),
        ("design_group_id", K, "(SELECT " + key("a.nct_id", "'design_groups'", "min(a.ordinal)")
         + " FROM raw_arm_groups AS a WHERE a.nct_id = t.nct_id AND a.version = t.version AND a.label = l.label"
           " GROUP BY a.nct_id)"),
        ("intervention_id", K, key("t.nct_id", "'interventions'", "t.ordinal")),
    ), versioned("interventions") + "\nCROSS JOIN unnest(t.arm_group_labels) WITH ORDINALITY AS l(label, i)"),
    _simple("designs", "design", "designs", (
        ("allocation", V, "t.allocation"), ("intervention_model", V, "t.intervention_model"),
        ("observational_model", V, "t.observational_model"), ("primary_purpose", V, "t.primary_purpose"),
        ("time_perspective", V, "t.time_perspective"), ("masking", V, "t.masking"),
        ("masking_description", T, "t.masking_description"),
        ("intervention_model_description", T, "t.intervention_model_description"),
        *((f"{name}_masked", B, f"list_contains(t.who_masked, '{code}')") for name, code in (
            ("subject", "PARTICIPANT"), ("caregiver", "CARE_PROVIDER"), ("investigator", "INVESTIGATOR"),
            ("outcomes_assessor", "OUTCOMES_ASSESSOR"))),
    ), "coalesce(t.allocation, t.intervention_model, t.observational_model, t.primary_purpose, t.time_perspective, "
       "t.masking, t.masking_description, t.intervention_model_description) IS NOT NULL "
       "OR t.who_masked IS NOT NULL", ordinal="0"),
    _simple("design_outcomes", "outcomes", "design_outcomes", (
        ("outcome_type", V, "t.outcome_type"), ("measure", T, "t.measure"), ("time_frame", T, "t.time_frame"),
        ("population", V, "NULL"), ("description", T, "t.description"),
    ), ordinal="t.outcome_type, t.ordinal"),
    _simple("eligibilities", "eligibility", "eligibilities", (
        ("sampling_method", V, "t.sampling_method"), ("gender", V, "t.sex"), ("minimum_age", V, "t.minimum_age"),
        ("maximum_age", V, "t.maximum_age"), ("healthy_volunteers", B, "t.healthy_volunteers"),
        ("population", T, "t.study_population"), ("criteria", T, "t.criteria"),
        ("gender_description", T, "t.gender_description"), ("gender_based", B, "t.gender_based"),
        *((name, B, f"list_contains(t.std_ages, '{code}')") for name, code in (
            ("adult", "ADULT"), ("child", "CHILD"), ("older_adult", "OLDER_ADULT"))),
    ), "coalesce(t.criteria, t.sex, t.minimum_age, t.maximum_age, t.study_population, t.sampling_method, "
       "t.gender_description) IS NOT NULL OR t.healthy_volunteers IS NOT NULL OR t.std_ages IS NOT NULL "
       "OR t.gender_based IS NOT NULL", ordinal="0"),
    AactView("ipd_information_types", (
        ("id", K, key("t.nct_id", "'ipd_information_types'", "x.i")), ("nct_id", V, "t.nct_id"),
        ("name", V, "x.name"),
    ), versioned("study_details") + "\nCROSS JOIN unnest(t.ipd_info_types) WITH ORDINALITY AS x(name, i)"),
    _simple("documents", "ipd_documents", "documents", (
        ("document_id", V, "t.document_id"), ("document_type", V, "t.document_type"), ("url", V, "t.url"),
        ("comment", T, "t.comment"))),
    _simple("links", "see_also_links", "links", (("url", V, "t.url"), ("description", T, "t.label"))),
    _simple("study_references", "study_references", "study_references", (
        ("pmid", V, "t.pmid"), ("reference_type", V, "t.reference_type"), ("citation", T, "t.citation"))),
    AactView("retractions", (
        ("id", K, key("t.nct_id", "'retractions'", "t.ordinal", "r.i")),
        ("reference_id", K, key("t.nct_id", "'study_references'", "t.ordinal")),
        ("pmid", V, "t.retraction_pmids[r.i]"), ("source", V, "t.retraction_sources[r.i]"),
        ("nct_id", V, "t.nct_id"),
    ), versioned("study_references")
        + "\nCROSS JOIN unnest(range(1, len(t.retraction_pmids) + 1)) AS r(i)"),
)

_US = ("United States", "Guam", "Puerto Rico", "U.S. Virgin Islands", "Virgin Islands (U.S.)",
       "Northern Mariana Islands", "American Samoa", "Midway Atoll", "Baker Island", "Howland Island",
       "Jarvis Island", "Johnston Atoll", "Kingman Reef", "Navassa Island", "Palmyra Atoll", "Wake Island",
       "Serranilla Bank", "Bajo Nuevo Bank")
US_COUNTRIES = "(" + ", ".join(f"'{c}'" for c in _US) + ")"


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
    ("id", K, key("s.nct_id", "'calculated_values'")),
    ("nct_id", V, "s.nct_id"),
    ("number_of_facilities", I, "coalesce(f.n, 0)"),
    ("number_of_nsae_subjects", I, "ae.other"),
    ("number_of_sae_subjects", I, "ae.serious"),
    ("registered_in_calendar_year", I, "year(s.study_first_submitted_date)"),
    ("nlm_download_date", D, "NULL"),
    ("actual_duration", I, "CASE WHEN s.start_date_type IS DISTINCT FROM 'ESTIMATED' AND "
                           "s.primary_completion_date_type IS DISTINCT FROM 'ESTIMATED' THEN "
                           + _months("s.start_date", "s.primary_completion_date") + " END"),
    ("were_results_reported", B, "coalesce(o.n > 0, false)"),
    ("months_to_report_results", I, _months("s.primary_completion_date", "s.results_first_submitted_date")),
    ("has_us_facility", B, "f.us"),
    ("has_single_facility", B, "f.n = 1"),
    ("minimum_age_num", I, _age("minimum_age", "num")),
    ("maximum_age_num", I, _age("maximum_age", "num")),
    ("minimum_age_unit", V, _age("minimum_age", "unit")),
    ("maximum_age_unit", V, _age("maximum_age", "unit")),
    *((f"number_of_{kind}_outcomes_to_measure", I, f"nullif(dn.{kind}, 0)") for kind in ("primary", "secondary",
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
    empty("mesh_terms", (("id", K), ("qualifier", V), ("tree_number", V), ("description", V), ("mesh_term", V),
                         ("downcase_mesh_term", V))),
    empty("mesh_headings", (("id", K), ("qualifier", V), ("heading", V), ("subcategory", V))),
    empty("search_results", (("id", K), ("nct_id", V), ("name", V), ("created_at", TS), ("updated_at", TS),
                             ("grouping", V), ("study_search_id", K))),
    empty("study_searches", (("id", K), ("save_tsv", B), ("query", V), ("grouping", V), ("name", V),
                             ("beta_api", B), ("created_at", TS), ("updated_at", TS), ("active", B))),
    empty("study_records", (("id", K), ("nct_id", V), ("type", V), ("content", "json"), ("sha", V),
                            ("created_at", TS), ("updated_at", TS))),
)

