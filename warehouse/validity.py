"""When each stored version was valid: ``valid_from`` of the ``study_versions`` view.

A version is valid from its registry date (``registry_updated``, the record's ``lastUpdatePostDate``)
when that date moved past every earlier version's; otherwise (the registry edited the record without
moving the date, e.g. ``submissionTracking``; or a version stored by an older release from a stale
record) from the day it was observed, unless the registry's history dates it (a backfilled version, or
a stored one a backfill found in the history: ``registry_version`` is known). The day observed is
the UTC day of ``observed_at``, or a later version's if earlier (versions are stored in order: one
stored while the host's clock was ahead was observed no later than the next). Only a later version
whose own registry date is no later than the day after it was observed (``latest_plausible``) bounds
an earlier one so: a version stored while the host's clock was behind (its registry date is after its
observation) says nothing about when the versions before it were seen, and must not move them (one
run with the clock 60 days behind dated the study's earlier, rightly observed versions back by weeks,
changing what ``studies_as_of`` of a past day answered). A registry date later than the day after the
version was observed is its day when a later such version confirms it (it was observed by then: the
host's clock was behind); else (a damaged record's 2099, or nothing observed since) it counts as the
day observed: one such record must not date every later version of the study in the future
(``studies_as_of(today)`` would show none of them). Then, so that versions
never overlap and no interval has zero length, each ``valid_from`` is at least one day after the
previous version's:
``valid_from[n] = max(c[k] + (n - k) days for k <= n)``, a running maximum, where ``c`` is the day
just described and ``n`` the version's rank. For ordinary histories (each registry date later than
the last) this is exactly the registry date.
"""

from __future__ import annotations

# The day a version was observed: its UTC day, or a later version's if earlier (a host clock ahead when
# the version was stored and right when the next one was: versions are stored in order, so it was
# observed no later than that). A later version counts only when its own registry date does not
# contradict its observation (no later than the next day, ``pipeline.dates.latest_plausible``): one stored
# while the clock was behind would date every earlier version back (``_LATER``). A version whose registry
# date is after its own observation was observed on that date when a later such observation confirms it
# (no later than that one: the clock was behind), else on its own day (a damaged 2099, or not yet known).
_SEEN = "_seen"
_ON = "CAST(timezone('UTC', observed_at) AS DATE)"
_CREDIBLE = f"CASE WHEN registry_updated IS NULL OR registry_updated <= {_ON} + 1 THEN {_ON} END"
_LATER = (f"min({_CREDIBLE}) OVER (PARTITION BY nct_id ORDER BY version "
          "ROWS BETWEEN 1 FOLLOWING AND UNBOUNDED FOLLOWING)")
_OBSERVED = (f"CASE WHEN registry_updated > {_ON} + 1 AND registry_updated <= _later THEN registry_updated "
             f"ELSE least({_ON}, _later) END")
# A registry date after the day the record was observed (a damaged record's, 2099; or a clock behind)
# says nothing about when the registry started saying it: it did on the day we saw it.
_DAY = f"least(coalesce(registry_updated, {_SEEN}), {_SEEN})"
_EARLIER = "(PARTITION BY nct_id ORDER BY version ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)"
_UP_TO = "(PARTITION BY nct_id ORDER BY version ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)"


def versions_with_validity(source: str = "raw_study_versions") -> str:
    """``source``'s rows plus ``valid_from`` (a DATE), as a subquery."""
    # History versions (backfill) were not observed when they were valid: their own date, then +1 day.
    # So are stored versions a backfill matched to a history version (``registry_version`` is set only
    # then): the history dates them and orders them after its earlier versions of the same day; their
    # observation day (a first sync or a bulk load, maybe years later) says nothing about when they began.
    candidate = (f"CASE WHEN _before IS NULL OR _day > _before THEN _day "
                 f"WHEN source = 'history' OR registry_version IS NOT NULL THEN _day "
                 f"ELSE greatest({_SEEN}, _day) END")
    seen = f"SELECT * EXCLUDE (_later), {_OBSERVED} AS _seen FROM (SELECT *, {_LATER} AS _later FROM {source})"
    ranked = (f"SELECT *, {_DAY} AS _day, max({_DAY}) OVER {_EARLIER} AS _before, "
              f"row_number() OVER (PARTITION BY nct_id ORDER BY version) AS _rank FROM ({seen})")
    return (f"SELECT * EXCLUDE (_seen, _day, _before, _rank, _start), "
            f"CAST(max(_start) OVER {_UP_TO} + CAST(_rank AS INTEGER) AS DATE) AS valid_from "
            f"FROM (SELECT *, CAST({candidate} AS DATE) - CAST(_rank AS INTEGER) AS _start FROM ({ranked}))")


# The day a change happened, as far as the registry tells: its new version's ``valid_from`` (the
# registry's date when it moved; else, e.g. a results submission that kept the date, the day it was
# observed), so a change detected today that the registry did not date is not filed under an old day.
CHANGES_WITH_DAY = """(SELECT c.*, coalesce(v.valid_from, c.registry_updated,
                                          CAST(timezone('UTC', c.detected_at) AS DATE)) AS changed_on
 FROM changes AS c
 LEFT JOIN (SELECT nct_id, version, valid_from FROM study_versions) AS v
   ON v.nct_id = c.nct_id AND v.version = c.to_version)"""
