"""Flatten the registry's bookkeeping and the smaller protocol lists of one record (pure).

Registry dates and the organization, oversight, expanded access, responsible party and IPD sharing
statement (``study_details``, ``registry_dates``: one row per version), site contacts, see-also links,
available IPD documents, removed countries and the MeSH browse terms. The rows of each table come
back column-wise like those of ``pipeline.flatten``; ``docs/data-dictionary.md`` documents them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Any

from pipeline import schema as s
from pipeline.dates import parse_full_date, parse_partial_date

Columns = dict[str, list[Any]]

_STATUS = s.StatusModule()


def registry_rows(study: s.Study) -> dict[str, Columns]:
    """The tables of this module for one version."""
    p = study.protocol_section or s.ProtocolSection()
    contacts = p.contacts_locations_module
    references = p.references_module
    derived = study.derived_section or s.DerivedSection()
    misc = derived.misc_info_module
    return {
        "registry_dates": _registry_dates(p.status_module or _STATUS),
        "study_details": _study_details(p),
        "site_contacts": _site_contacts(contacts.locations if contacts else None),
        "see_also_links": _links(references.see_also_links if references else None),
        "ipd_documents": _ipd_documents(references.avail_ipds if references else None),
        "removed_countries": _removed_countries(misc.removed_countries if misc else None),
        "browse_terms": _browse_terms(derived),
    }


def _full(raw: str | None, field: str) -> date | None:
    return None if raw is None else parse_full_date(raw, field=field)


def _registry_dates(st: s.StatusModule) -> Columns:
    first, results = st.study_first_post_date_struct, st.results_first_post_date_struct
    disp, last = st.disp_first_post_date_struct, st.last_update_post_date_struct
    verified = st.status_verified_date
    return {
        "status_verified_date": [parse_partial_date(verified, field="statusVerifiedDate").value
                                 if verified else None],
        "status_verified_date_raw": [verified],
        "study_first_submitted": [_full(st.study_first_submit_date, "studyFirstSubmitDate")],
        "study_first_submitted_qc": [_full(st.study_first_submit_qc_date, "studyFirstSubmitQcDate")],
        "study_first_posted": [_full(first.date if first else None, "studyFirstPostDate")],
        "study_first_posted_type": [first.type if first else None],
        "results_first_submitted": [_full(st.results_first_submit_date, "resultsFirstSubmitDate")],
        "results_first_submitted_qc": [_full(st.results_first_submit_qc_date, "resultsFirstSubmitQcDate")],
        "results_first_posted": [_full(results.date if results else None, "resultsFirstPostDate")],
        "results_first_posted_type": [results.type if results else None],
        "disp_first_submitted": [_full(st.disp_first_submit_date, "dispFirstSubmitDate")],
        "disp_first_submitted_qc": [_full(st.disp_first_submit_qc_date, "dispFirstSubmitQcDate")],
        "disp_first_posted": [_full(disp.date if disp else None, "dispFirstPostDate")],
        "disp_first_posted_type": [disp.type if disp else None],
        "last_update_submitted": [_full(st.last_update_submit_date, "lastUpdateSubmitDate")],
        "last_update_posted": [_full(last.date if last else None, "lastUpdatePostDate")],
        "last_update_posted_type": [last.type if last else None],
    }


def _study_details(p: s.ProtocolSection) -> Columns:
    ident = p.identification_module or s.IdentificationModule()
    org = ident.organization or s.Organization()
    st = p.status_module or _STATUS
    access = st.expanded_access_info or s.ExpandedAccessInfo()
    design = p.design_module or s.DesignModule()
    types = design.expanded_access_types or s.ExpandedAccessTypes()
    oversight = p.oversight_module or s.OversightModule()
    sponsors = p.sponsor_collaborators_module
    party = (sponsors.responsible_party if sponsors else None) or s.ResponsibleParty()
    ipd = p.ipd_sharing_statement_module or s.IpdSharingStatementModule()
    return {
        "org_full_name": [org.full_name],
        "org_class": [org.class_],
        "delayed_posting": [st.delayed_posting],
        "results_waived": [st.results_waived],
        "has_expanded_access": [access.has_expanded_access],
        "expanded_access_nct_id": [access.nct_id],
        "expanded_access_status": [access.status_for_nct_id],
        "expanded_access_individual": [types.individual],
        "expanded_access_intermediate": [types.intermediate],
        "expanded_access_treatment": [types.treatment],
        "n_ptrs_to_this_exp_acc_nct_id": [design.n_ptrs_to_this_exp_acc_nct_id],
        "oversight_has_dmc": [oversight.oversight_has_dmc],
        "is_fda_regulated_drug": [oversight.is_fda_regulated_drug],
        "is_fda_regulated_device": [oversight.is_fda_regulated_device],
        "is_unapproved_device": [oversight.is_unapproved_device],
        "is_ppsd": [oversight.is_ppsd],
        "is_us_export": [oversight.is_us_export],
        "fdaaa801_violation": [oversight.fdaaa801_violation],
        "responsible_party_type": [party.type],
        "investigator_full_name": [party.investigator_full_name],
        "investigator_title": [party.investigator_title],
        "investigator_affiliation": [party.investigator_affiliation],
        "old_name_title": [party.old_name_title],
        "old_organization": [party.old_organization],
        "ipd_sharing": [ipd.ipd_sharing],
        "ipd_description": [ipd.description],
        "ipd_info_types": [ipd.info_types],
        "ipd_time_frame": [ipd.time_frame],
        "ipd_access_criteria": [ipd.access_criteria],
        "ipd_url": [ipd.url],
    }


def _site_contacts(locations: Sequence[s.Location] | None) -> Columns:
    sites: list[int] = []
    ordinals: list[int] = []
    rows: list[s.Contact] = []
    for site, location in enumerate(locations or ()):
        contacts = location.contacts or ()
        sites += [site] * len(contacts)
        ordinals += range(len(contacts))
        rows += contacts
    return {
        "location_ordinal": sites,
        "ordinal": ordinals,
        "name": [c.name for c in rows],
        "role": [c.role for c in rows],
        "phone": [c.phone for c in rows],
        "phone_ext": [c.phone_ext for c in rows],
        "email": [c.email for c in rows],
    }


def _links(items: Sequence[s.SeeAlsoLink] | None) -> Columns:
    rows = items or ()
    return {"ordinal": list(range(len(rows))), "label": [x.label for x in rows], "url": [x.url for x in rows]}


def _ipd_documents(items: Sequence[s.AvailIpd] | None) -> Columns:
    rows = items or ()
    return {
        "ordinal": list(range(len(rows))),
        "document_id": [x.id for x in rows],
        "document_type": [x.type for x in rows],
        "url": [x.url for x in rows],
        "comment": [x.comment for x in rows],
    }


def _removed_countries(items: Sequence[str] | None) -> Columns:
    values = list(items or ())
    return {"ordinal": list(range(len(values))), "country": values}


def _browse_terms(derived: s.DerivedSection) -> Columns:
    out: Columns = {"module": [], "kind": [], "ordinal": [], "mesh_id": [], "term": []}
    for module, browse in (("condition", derived.condition_browse_module),
                           ("intervention", derived.intervention_browse_module)):
        if browse is None:
            continue
        for kind, meshes in (("mesh", browse.meshes), ("ancestor", browse.ancestors)):
            items = meshes or ()
            out["module"] += [module] * len(items)
            out["kind"] += [kind] * len(items)
            out["ordinal"] += range(len(items))
            out["mesh_id"] += [m.id for m in items]
            out["term"] += [m.term for m in items]
    return out
