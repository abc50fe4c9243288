"""Analyses built on the history: views and macros the catalog defines over the versioned tables.

- ``fdaaa_as_of(d)`` / ``fdaaa_status`` / ``fdaaa_newly_overdue(a, b)`` / ``fdaaa_sponsors(d)``: FDAAA 801
  results reporting (../shared/FDAAA_RULES.md), judged on the version of each study valid on d, at d.
  The per-version inputs are typed at parse time (``pipeline/fdaaa.py``, table ``fdaaa_inputs``); the
  date arithmetic runs here, in SQL (no per-row Python).
- ``registered_vs_current``: each study's first stored version against its current one.
- ``status_spans``: how long each study stayed in each overall status.

Section numbers in comments refer to FDAAA_RULES.md.
"""

from __future__ import annotations

from pipeline.dates import UTC_TODAY_SQL
from pipeline.similarity import identity_sql

EFFECTIVE_DATE = "DATE '2017-01-18'"
# §3: the phase sets that qualify (legacy Phase 1/Phase 2, 2, 2/3, 3, 4 and N/A), as ``fdaaa_inputs.phase_set``
# writes them (sorted, distinct, joined by "/").
QUALIFYING_PHASES = "('PHASE1/PHASE2', 'PHASE2', 'PHASE2/PHASE3', 'PHASE3', 'PHASE4', 'NA')"
STATUSES = ("overdue", "overdue-cancelled", "reported-late", "reported", "ongoing")  # worst first
OVERDUE = "('overdue', 'overdue-cancelled')"

FDAAA_COLUMNS = (
    "nct_id", "version", "as_of", "act_kind", "completion_date_used", "due_date", "due_from", "is_due",
    "results_submitted_date", "status", "days_late", "brief_title", "lead_sponsor", "lead_sponsor_class",
    "overall_status", "valid_from", "is_fda_regulated_drug", "is_fda_regulated_device", "phases",
    "primary_purpose", "start_date", "certificate_date", "results_first_submitted", "qc_submissions",
    "qc_counted_date", "qc_newest_cancelled",
)


def qc_counted(made: str, last_cancelled: str) -> str:
    """SQL: the counted QC submission (§5.3) among the days ``made`` (DATE[]), given the newest cancelled
    day among them; NULL when the newest was cancelled or there is none. ``pipeline.fdaaa.counted_submission``
    is the same scan in Python."""
    return (f"CASE WHEN NOT coalesce(list_max({made}) = {last_cancelled}, false) THEN list_min(list_filter("
            f"{made}, lambda x: {last_cancelled} IS NULL OR x > {last_cancelled})) END")


def qc_last_cancelled(cancelled: str, cancelled_on: str, as_of: str) -> str:
    """SQL: the newest submission day among ``cancelled`` (DATE[]) cancelled by ``as_of``: each is cancelled
    from its day in ``cancelled_on`` (parallel), so a cancellation the version dates after the judged day
    had not happened on it. Rows typed before ``qc_cancelled_on`` existed have it NULL: from the submission's
    day (``trialsync rederive`` does not retype them)."""
    return f"list_max(list_filter({cancelled}, lambda x, i: coalesce({cancelled_on}[i], x) <= {as_of}))"


def qc_newest_cancelled(made: str, last_cancelled: str) -> str:
    """SQL: whether the newest of the days ``made`` was cancelled (NULL without submissions)."""
    return f"CASE WHEN len({made}) > 0 THEN coalesce(list_max({made}) = {last_cancelled}, false) END"


_FDAAA_BODY = f"""
WITH f AS (  -- what depends on the version only: §2, §3 (C), flag-yes
  SELECT *, coalesce(primary_completion_date, completion_date) AS p,
         coalesce(is_fda_regulated_drug, false) OR coalesce(is_fda_regulated_device, false) AS flag_yes,
         coalesce(study_type = 'INTERVENTIONAL', false)
           AND coalesce(phase_set IN {QUALIFYING_PHASES}, false)
           AND primary_purpose IS DISTINCT FROM 'DEVICE_FEASIBILITY'
           AND overall_status IS DISTINCT FROM 'WITHDRAWN' AS shared
  FROM fdaaa_inputs
), k AS (  -- §3: ACT and pACT
  SELECT *, CASE
      WHEN NOT shared OR start_date IS NULL THEN NULL
      WHEN flag_yes AND start_date >= {EFFECTIVE_DATE} THEN 'ACT'
      WHEN start_date < {EFFECTIVE_DATE} AND p >= {EFFECTIVE_DATE}
           AND (flag_yes OR (is_fda_regulated_drug IS NULL AND is_fda_regulated_device IS NULL
                             AND covered_intervention AND us_site)) THEN 'pACT'
    END AS act_kind
  FROM f
), v0 AS (  -- the version valid on d of each applicable trial (keys only: the window stays narrow)
  SELECT s.nct_id, s.version, s.valid_from FROM {{versions}} AS s
  JOIN k ON k.nct_id = s.nct_id AND k.version = s.version AND k.act_kind IS NOT NULL
), v AS (  -- ... evaluated at d
  SELECT v0.nct_id, v0.version, CAST(d AS DATE) AS as_of, k.act_kind, k.p, v0.valid_from, r.brief_title,
         r.lead_sponsor, r.lead_sponsor_class, r.overall_status, r.phases, k.is_fda_regulated_drug,
         k.is_fda_regulated_device, k.primary_purpose, k.start_date,
         -- what the version records as happening after d had not happened on d
         CASE WHEN k.certificate_date <= CAST(d AS DATE) THEN k.certificate_date END AS certificate_date,
         CASE WHEN k.results_first_submitted <= CAST(d AS DATE) THEN k.results_first_submitted END
           AS results_first_submitted,
         list_filter(k.qc_submission_dates, lambda x: x <= CAST(d AS DATE)) AS qc_made,
         {qc_last_cancelled("k.qc_cancelled_dates", "k.qc_cancelled_on", "CAST(d AS DATE)")} AS qc_last_cancelled
  FROM v0 JOIN k ON k.nct_id = v0.nct_id AND k.version = v0.version
  JOIN raw_study_versions AS r ON r.nct_id = v0.nct_id AND r.version = v0.version
), q AS (  -- §5.3: scanning from the newest submission back, the oldest one before a cancelled one
  SELECT *, len(qc_made) AS qc_submissions,
         {qc_newest_cancelled("qc_made", "qc_last_cancelled")} AS qc_newest_cancelled,
         {qc_counted("qc_made", "qc_last_cancelled")} AS qc_counted_date
  FROM v
), t AS (
  SELECT *,
    CASE WHEN p IS NULL THEN NULL                                                                -- §4
         WHEN certificate_date IS NULL THEN CAST(CAST(p + INTERVAL 1 YEAR AS DATE) + 31 AS DATE)
         ELSE CAST(CAST(p + INTERVAL 3 YEAR AS DATE) + 31 AS DATE) END AS due_from,
    CASE WHEN p IS NULL THEN NULL
         WHEN certificate_date IS NULL THEN CAST(p + 365 AS DATE)
         ELSE CAST(p + INTERVAL 3 YEAR AS DATE) END AS due_date
  FROM q
), j AS (
  SELECT *, coalesce(as_of >= due_from, false) AS is_due,
         coalesce(results_first_submitted, qc_counted_date) AS results_submitted_date            -- §5
  FROM t
), s AS (
  SELECT *, CASE
      WHEN NOT is_due THEN CASE WHEN results_first_submitted IS NOT NULL THEN 'reported' ELSE 'ongoing' END
      WHEN results_submitted_date IS NOT NULL
        THEN CASE WHEN results_submitted_date > due_date THEN 'reported-late' ELSE 'reported' END
      WHEN qc_newest_cancelled THEN 'overdue-cancelled'
      ELSE 'overdue' END AS status
  FROM j
)
SELECT nct_id, version, as_of, act_kind, p AS completion_date_used, due_date, due_from, is_due,
       results_submitted_date, status,
       CASE WHEN NOT is_due THEN NULL
            WHEN status IN {OVERDUE} THEN CASE WHEN as_of - due_date > 30 THEN as_of - due_date END
            WHEN results_submitted_date > due_date THEN results_submitted_date - due_date END AS days_late,
       brief_title, lead_sponsor, lead_sponsor_class, overall_status, valid_from, is_fda_regulated_drug,
       is_fda_regulated_device, phases, primary_purpose, start_date, certificate_date, results_first_submitted,
       qc_submissions, qc_counted_date, qc_newest_cancelled
FROM s"""

_FDAAA_AS_OF = "CREATE OR REPLACE MACRO fdaaa_as_of(d) AS TABLE" + _FDAAA_BODY.replace("{versions}", "studies_as_of(d)")

# The version valid on d as the warehouse knew it at t: of the versions committed by t (their run's
# ``finished_at``, the moment just before its commit; ``observed_at`` for a run without a row there). A
# version stored later, even one the registry dates before d, was not known then: the alerts run's
# "before". ``valid_from`` never decreases with ``version``, so the newest such version is the valid one.
_STUDIES_KNOWN_AS_OF = """CREATE OR REPLACE MACRO studies_known_as_of(d, t) AS TABLE
SELECT * FROM (
  SELECT v.* FROM study_versions AS v
  LEFT JOIN (SELECT run_id, max(finished_at) AS finished_at FROM raw_sync_runs GROUP BY run_id) AS r
    ON r.run_id = v.run_id
  WHERE v.valid_from <= CAST(d AS DATE) AND coalesce(r.finished_at, v.observed_at) <= CAST(t AS TIMESTAMPTZ)
  QUALIFY row_number() OVER (PARTITION BY v.nct_id ORDER BY v.version DESC) = 1)
WHERE NOT is_removed"""
_FDAAA_KNOWN_AS_OF = ("CREATE OR REPLACE MACRO fdaaa_known_as_of(d, t) AS TABLE"
                      + _FDAAA_BODY.replace("{versions}", "studies_known_as_of(d, t)"))

# Overdue on b and not on a: a time event, the record need not have changed. ``overdue_from``: the day it
# became overdue in the version valid on b (its due day, the day that version became valid, or the day its
# QC history last stopped counting as reporting: a cancellation the record's date does not move for).
# ``event_id``: the same for the same trial becoming overdue at the same due moment, whatever the window,
# so an alert keyed by it goes out once (a new completion date, a new due moment: a new event).
def overdue_event_id(alias: str) -> str:
    """SQL: the event id of a row of ``fdaaa_as_of`` (alias ``alias``) becoming overdue (a watch's change id)."""
    return f"'fdaaa-overdue:' || {alias}.nct_id || ':' || strftime({alias}.due_from, '%Y-%m-%d')"


def qc_last_reported_until(made: str, cancelled: str, cancelled_on: str) -> str:
    """SQL: the day a QC history last stopped counting as reporting (§5.3), among the submission days
    ``made`` (DATE[], oldest first, those made by the judged day): each submission was the newest, and
    counted, from its day until the earlier of its cancellation (``cancelled`` / ``cancelled_on``, as in
    ``qc_last_cancelled``) and the next submission; the latest end of such a stretch that is not empty.
    NULL when none counted for a day (so an ``overdue-cancelled`` trial was overdue from its due day)."""
    ends = (f"list_transform({made}, lambda x, i: least({made}[i + 1], CASE WHEN list_contains({cancelled}, x) "
            f"THEN coalesce({cancelled_on}[list_position({cancelled}, x)], x) END))")
    return f"list_max(list_filter({ends}, lambda e, i: {made}[i] < e))"


_NEWLY_OVERDUE = f"""CREATE OR REPLACE MACRO fdaaa_newly_overdue(a, b) AS TABLE
SELECT n.*, greatest(n.due_from, n.valid_from,
                     CASE WHEN n.status = 'overdue-cancelled' THEN {qc_last_reported_until(
                         "list_filter(i.qc_submission_dates, lambda x: x <= CAST(b AS DATE))",
                         "i.qc_cancelled_dates", "i.qc_cancelled_on")} END) AS overdue_from,
       {overdue_event_id("n")} AS event_id
FROM fdaaa_as_of(b) AS n
LEFT JOIN fdaaa_inputs AS i ON i.nct_id = n.nct_id AND i.version = n.version
WHERE n.status IN {OVERDUE}
  AND NOT EXISTS (SELECT 1 FROM fdaaa_as_of(a) AS o WHERE o.nct_id = n.nct_id AND o.status IN {OVERDUE})"""

# One row per lead sponsor: trials (ACT + pACT), due, reported (of the due ones, on time or late),
# reported on time, % on time (of the due ones), overdue (incl. overdue-cancelled), days late (the sum over
# the due trials: late reports and overdue ones). Most overdue first, then most days late.
_SPONSORS = f"""CREATE OR REPLACE MACRO fdaaa_sponsors(d) AS TABLE
SELECT lead_sponsor AS sponsor, count(*) AS trials, count(*) FILTER (WHERE is_due) AS due,
       count(*) FILTER (WHERE is_due AND status IN ('reported', 'reported-late')) AS reported,
       count(*) FILTER (WHERE is_due AND status = 'reported') AS reported_on_time,
       round(100.0 * count(*) FILTER (WHERE is_due AND status = 'reported')
             / nullif(count(*) FILTER (WHERE is_due), 0), 1) AS pct_on_time,
       count(*) FILTER (WHERE status IN {OVERDUE}) AS overdue,
       CAST(coalesce(sum(days_late) FILTER (WHERE is_due), 0) AS BIGINT) AS days_late
FROM fdaaa_as_of(d)
GROUP BY lead_sponsor
ORDER BY overdue DESC, days_late DESC, sponsor"""

_FDAAA_STATUS = f"CREATE OR REPLACE VIEW fdaaa_status AS SELECT * FROM fdaaa_as_of({UTC_TODAY_SQL})"

def _period_end(day: str, raw: str) -> str:
    """The last day of the period a registry date names (``raw`` as written, ``day`` its first day)."""
    return f"CASE length({raw}) WHEN 4 THEN make_date(year({day}), 12, 31) WHEN 7 THEN last_day({day}) ELSE {day} END"


def date_shift_sql(old: str, old_raw: str, new: str, new_raw: str) -> str:
    """SQL of the days a plan date moved, by the change feed's rule (``pipeline.date_events.date_change``):
    0 for a refinement or coarsening within the coarser date's period (``2026-06`` -> ``2026-06-20``);
    to a coarser date, the least distance to its period; else first day to first day. ``old`` / ``new``
    are the dates (a partial date's first day), ``*_raw`` as written (its length is its precision)."""
    old_end, new_end = _period_end(old, old_raw), _period_end(new, new_raw)
    return f"""(CASE
      WHEN length({new_raw}) > length({old_raw}) AND {old} <= {new} AND {new_end} <= {old_end} THEN 0
      WHEN length({new_raw}) < length({old_raw}) AND {new} <= {old} AND {old_end} <= {new_end} THEN 0
      WHEN length({new_raw}) < length({old_raw}) THEN (CASE WHEN {new} > {old} THEN {new} ELSE {new_end} END) - {old}
      ELSE {new} - {old} END)"""


def _shift(column: str) -> str:
    """``registered_vs_current``'s shift of the plan date ``column`` (r: registered, c: current)."""
    return date_shift_sql(f"r.{column}", f"r.{column}_raw", f"c.{column}", f"c.{column}_raw")


# An outcome's text for the lists: its measure, and its time frame where it has one.
_OUTCOME_TEXT = "o.measure || coalesce(' [' || o.time_frame || ']', '')"


def _outcomes_of(version: str) -> str:
    """SQL: the primary outcomes of each pair's ``version`` column (first_version / current_version) in the
    diff's terms (``pipeline.diff``): text in NFC (``m``, ``d``, ``t``), the measure's identity blind to case
    and whitespace (``ident``), ``crank``: the n-th with this very content, ``grank``: n-th with this identity."""
    return f"""SELECT p.nct_id, o.ordinal, {_OUTCOME_TEXT} AS text, o.description,
         nfc_normalize(o.measure) AS m, nfc_normalize(o.description) AS d, nfc_normalize(o.time_frame) AS t,
         {identity_sql("nfc_normalize(o.measure)")} AS ident
  FROM pair AS p
  JOIN outcomes AS o ON o.nct_id = p.nct_id AND o.version = p.{version} AND o.outcome_type = 'primary'"""


# Primary outcomes are paired as the change feed pairs them (``pipeline.diff`` and
# ``pipeline.change_events``), so a study's first and current versions diffed directly would give the same
# added / removed / changed outcomes: equal outcomes (NFC text) pair first whatever their places, then
# the rest with the same measure (blind to case and whitespace) in order, then the leftovers by the
# likeness of their measures (``pipeline.similarity``: most alike first, greedily).
_OUTCOME_PAIRS = f"""o0 AS (
  SELECT *, row_number() OVER (PARTITION BY nct_id, ident, m, d, t ORDER BY ordinal) AS crank
  FROM ({_outcomes_of("first_version")})
), o1 AS (
  SELECT *, row_number() OVER (PARTITION BY nct_id, ident, m, d, t ORDER BY ordinal) AS crank
  FROM ({_outcomes_of("current_version")})
), same AS (  -- equal outcomes, wherever they stand: no change
  SELECT a.nct_id, a.ordinal AS o0, b.ordinal AS o1 FROM o0 AS a JOIN o1 AS b
    ON a.nct_id = b.nct_id AND a.ident = b.ident AND a.m IS NOT DISTINCT FROM b.m
   AND a.d IS NOT DISTINCT FROM b.d AND a.t IS NOT DISTINCT FROM b.t AND a.crank = b.crank
), r0 AS (
  SELECT *, row_number() OVER (PARTITION BY nct_id, ident ORDER BY ordinal) AS grank FROM o0 AS a
  WHERE NOT EXISTS (SELECT 1 FROM same AS s WHERE s.nct_id = a.nct_id AND s.o0 = a.ordinal)
), r1 AS (
  SELECT *, row_number() OVER (PARTITION BY nct_id, ident ORDER BY ordinal) AS grank FROM o1 AS b
  WHERE NOT EXISTS (SELECT 1 FROM same AS s WHERE s.nct_id = b.nct_id AND s.o1 = b.ordinal)
), kept AS (  -- the same measure (the n-th left with it on each side): changed
  SELECT a.nct_id, a.ordinal AS o0, b.ordinal AS o1 FROM r0 AS a JOIN r1 AS b
    ON a.nct_id = b.nct_id AND a.ident = b.ident AND a.grank = b.grank
), l0 AS (
  SELECT * FROM r0 AS a WHERE NOT EXISTS (SELECT 1 FROM kept AS k WHERE k.nct_id = a.nct_id AND k.o0 = a.ordinal)
), l1 AS (
  SELECT * FROM r1 AS b WHERE NOT EXISTS (SELECT 1 FROM kept AS k WHERE k.nct_id = b.nct_id AND k.o1 = b.ordinal)
), likeness AS (  -- every leftover pair, most alike first (ties by the texts, then by place)
  SELECT a.nct_id, list({{'i': a.ordinal, 'j': b.ordinal}} ORDER BY
           CASE WHEN greatest(strlen(a.ident), strlen(b.ident)) = 0 THEN 0.0
                ELSE levenshtein(a.ident, b.ident) / greatest(strlen(a.ident), strlen(b.ident)) END,
           a.ident, b.ident, a.ordinal, b.ordinal) AS candidates
  FROM l0 AS a JOIN l1 AS b ON a.nct_id = b.nct_id GROUP BY a.nct_id
), greedy AS (  -- take each pair whose two outcomes are both still free
  SELECT nct_id, list_reduce(candidates, lambda acc, c: CASE
           WHEN list_contains(acc.i, c.i) OR list_contains(acc.j, c.j) THEN acc
           ELSE {{'i': list_append(acc.i, c.i), 'j': list_append(acc.j, c.j)}} END,
         {{'i': []::BIGINT[], 'j': []::BIGINT[]}}) AS chosen
  FROM likeness
), renamed AS (
  SELECT nct_id, unnest(chosen.i) AS o0, unnest(chosen.j) AS o1 FROM greedy
), changed AS (
  SELECT * FROM kept UNION ALL SELECT * FROM renamed
), gone AS (
  SELECT * FROM l0 AS a WHERE NOT EXISTS (SELECT 1 FROM renamed AS r WHERE r.nct_id = a.nct_id AND r.o0 = a.ordinal)
), new AS (
  SELECT * FROM l1 AS b WHERE NOT EXISTS (SELECT 1 FROM renamed AS r WHERE r.nct_id = b.nct_id AND r.o1 = b.ordinal)
), added AS (
  SELECT nct_id, list(text ORDER BY ordinal) AS items FROM new GROUP BY nct_id
), removed AS (
  SELECT nct_id, list(text ORDER BY ordinal) AS items FROM gone GROUP BY nct_id
), reworded AS (
  SELECT c.nct_id, list({{'before': a.text, 'after': b.text, 'description_before': a.description,
                         'description_after': b.description}} ORDER BY c.o0) AS items
  FROM changed AS c JOIN o0 AS a ON a.nct_id = c.nct_id AND a.ordinal = c.o0
  JOIN o1 AS b ON b.nct_id = c.nct_id AND b.ordinal = c.o1 GROUP BY c.nct_id"""

_REGISTERED_VS_CURRENT = f"""CREATE OR REPLACE VIEW registered_vs_current AS
WITH pair AS (
  SELECT c.nct_id, f.version AS first_version, c.version AS current_version
  FROM studies AS c
  JOIN (SELECT nct_id, min(version) AS version FROM raw_study_versions WHERE NOT is_removed GROUP BY nct_id) AS f
    USING (nct_id)
), {_OUTCOME_PAIRS}
), arms0 AS (
  SELECT p.nct_id, list(g.label ORDER BY g.ordinal) AS labels FROM pair AS p
  JOIN arm_groups AS g ON g.nct_id = p.nct_id AND g.version = p.first_version GROUP BY p.nct_id
), arms1 AS (
  SELECT p.nct_id, list(g.label ORDER BY g.ordinal) AS labels FROM pair AS p
  JOIN arm_groups AS g ON g.nct_id = p.nct_id AND g.version = p.current_version GROUP BY p.nct_id
), lists AS (
  SELECT p.nct_id, coalesce(ad.items, []) AS primary_outcomes_added, coalesce(rm.items, []) AS primary_outcomes_removed,
         coalesce(rw.items, []) AS primary_outcomes_reworded, coalesce(a0.labels, []) AS arms_registered,
         coalesce(a1.labels, []) AS arms_current
  FROM pair AS p LEFT JOIN added AS ad USING (nct_id) LEFT JOIN removed AS rm USING (nct_id)
  LEFT JOIN reworded AS rw USING (nct_id) LEFT JOIN arms0 AS a0 USING (nct_id) LEFT JOIN arms1 AS a1 USING (nct_id)
)
SELECT p.nct_id, p.first_version, p.current_version, r.valid_from AS registered_valid_from,
       r.source AS registered_source, c.brief_title,
       l.primary_outcomes_added, l.primary_outcomes_removed, l.primary_outcomes_reworded,
       r.enrollment_count AS enrollment_registered, c.enrollment_count AS enrollment_current,
       r.enrollment_type AS enrollment_type_registered, c.enrollment_type AS enrollment_type_current,
       round(100.0 * (c.enrollment_count - r.enrollment_count) / nullif(r.enrollment_count, 0), 1)
         AS enrollment_pct_change,
       r.start_date_raw AS start_registered, c.start_date_raw AS start_current,
       {_shift('start_date')} AS start_shift_days,
       r.primary_completion_date_raw AS primary_completion_registered,
       c.primary_completion_date_raw AS primary_completion_current,
       {_shift('primary_completion_date')} AS primary_completion_shift_days,
       r.completion_date_raw AS completion_registered, c.completion_date_raw AS completion_current,
       {_shift('completion_date')} AS completion_shift_days,
       r.phases AS phases_registered, c.phases AS phases_current,
       l.arms_registered, l.arms_current,
       list_filter(l.arms_current, lambda x: NOT list_contains(l.arms_registered, x)) AS arms_added,
       list_filter(l.arms_registered, lambda x: NOT list_contains(l.arms_current, x)) AS arms_removed
FROM pair AS p
JOIN study_versions AS r ON r.nct_id = p.nct_id AND r.version = p.first_version
JOIN studies AS c ON c.nct_id = p.nct_id
JOIN lists AS l ON l.nct_id = p.nct_id"""

# Consecutive versions in one overall status form one span; a span ends where the next one starts (or
# where the study was removed); the open span (current version) ends today (UTC).
_STATUS_SPANS = f"""CREATE OR REPLACE VIEW status_spans AS
WITH v AS (
  SELECT nct_id, version, valid_from, valid_to, is_removed, overall_status,
         CASE WHEN lag(overall_status) OVER w IS NOT DISTINCT FROM overall_status
                   AND lag(is_removed) OVER w IS NOT DISTINCT FROM is_removed THEN 0 ELSE 1 END AS starts
  FROM study_versions
  WINDOW w AS (PARTITION BY nct_id ORDER BY version)
), n AS (
  SELECT *, sum(starts) OVER (PARTITION BY nct_id ORDER BY version) AS span FROM v
), g AS (
  SELECT nct_id, span, any_value(overall_status) AS status, min(valid_from) AS from_date,
         bool_or(valid_to IS NULL) AS is_open, max(valid_to) AS closed_on, min(version) AS first_version,
         max(version) AS last_version
  FROM n WHERE NOT is_removed GROUP BY nct_id, span
)
SELECT nct_id, CAST(row_number() OVER (PARTITION BY nct_id ORDER BY span) AS INTEGER) AS span, status,
       from_date, CASE WHEN is_open THEN {UTC_TODAY_SQL} ELSE closed_on END AS to_date,
       (CASE WHEN is_open THEN {UTC_TODAY_SQL} ELSE closed_on END) - from_date AS days, is_open,
       first_version, last_version
FROM g"""


def fdaaa_macros() -> list[str]:
    """``fdaaa_as_of`` and ``fdaaa_known_as_of``, for a connection built without the analyses (the alerts
    run's)."""
    return [_FDAAA_AS_OF, _STUDIES_KNOWN_AS_OF, _FDAAA_KNOWN_AS_OF]


def analysis_views() -> list[str]:
    """The statements of the analyses, in dependency order (after the core views and child views)."""
    return [_FDAAA_AS_OF, _FDAAA_STATUS, _NEWLY_OVERDUE, _SPONSORS, _REGISTERED_VS_CURRENT, _STATUS_SPANS]
