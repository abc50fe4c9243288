"""After a full run: the scope's studies its listing no longer held (in an ids scope, also the ids asked
for that it never held), settled by asking the registry one by one. Only a 404 from ``GET /studies/{id}``
retires a study (SPEC: "A study is removed only when the registry says so"); a listing, even one asked by
id, can leave a published study out."""

from __future__ import annotations

from typing import Any

from flows.engine import NONE, get_run_logger, task
from flows.page_walk import PageContext, drop_repeats
from pipeline.errors import RegistryError, RegistryNotFound, RegistryWrongStudy
from pipeline.parse import record_ids, record_nct_id, record_status
from pipeline.scope import lookup_params
from pipeline.versioning import Head, plan_batch
from warehouse.rows import tombstones_table


@task(name="settle-vanished", cache_policy=NONE)
def settle_vanished(pc: PageContext, scope: str) -> tuple[int, int]:
    """After a full run: studies of the scope that the listing no longer holds are looked up, and in an
    ids scope the ids asked for that it never held (from the scope's first run on).

    A listing can leave out a study the registry still publishes, and a look-up through the listing
    (``filter.ids``) has the same gap: it can only prove a study is still there. So what it does not
    return is asked for one by one, ``GET /studies/{id}``, and only a 404 there retires a study.
    A published member outside the scope's filters left the scope (``scope_exits``, reason
    ``left_scope``); one inside them was omitted by the listing (``pc.omitted``: stays a member, no
    change event, a ``listing_omitted`` reconciliation warning). Either way its current record is
    stored like any other. A requested id the listing never held that the registry publishes inside
    the filters is stored and named the same way (``listing_omitted``); outside them it is left alone;
    only a 404 makes it "not in the registry". An id the registry merged into another study (it answers
    with that study's record, which holds the id in ``nctIdAliases``) is retired like a 404'd one, as
    ``merged`` (``pc.merged`` names the study it became). A study the registry could not be asked
    about (the listing was incomplete, or the look-up failed: a timeout, a 5xx or 429 past the retry
    budget, a broken body, another study's record, a 404 that is a web page or JSON) is neither: a member stays,
    unretired, and it is named as unverified (``pc.unverified``); the run commits what it listed.
    Returns (left_scope, retired)."""
    t = pc.totals
    members = pc.run.scope_members(scope)
    never_listed = {i for i in pc.scope.ids if i not in pc.alias_of and i not in pc.seen} - members
    vanished = sorted((members - pc.seen) | never_listed)
    if not vanished:
        return 0, 0
    if t.total_count is not None and t.studies_seen < t.total_count:
        why = f"the listing was incomplete: saw {t.studies_seen} of {t.total_count} studies"
        get_run_logger().warning("%s: not looking up or retiring the %d studies it did not hold", why, len(vanished))
        _unverified(pc, vanished, why)
        return 0, 0
    by_id, gone, error = _look_up(pc, vanished)
    try:
        inside = _inside_scope(pc, by_id)
    except RegistryError as exc:  # which of them are still in the scope is unknown: settle them next time
        error, by_id, inside = str(exc), {}, set()
    if error:  # the listing itself is complete: commit it; what was not settled is asked about next time
        unsettled = sorted(set(vanished) - set(by_id) - set(gone))
        get_run_logger().warning("could not look up %d of the %d studies the scope's listing did not hold (%s): "
                                 "kept, not retired; the next full run asks again", len(unsettled),
                                 len(vanished), error)
        _unverified(pc, unsettled, f"the registry failed: {error}")
    # An id the registry merged into another study (the record it answers with, through the listing's
    # alias match or a 301, is another study's that holds the id as an alias): the registry's word that the
    # id's own record is gone, like a 404; the study it became is stored like any published study.
    merged = {n: into for n, r in by_id.items() if (into := record_nct_id(r)) is not None and into != n}
    pc.merged.update(merged)
    pc.alias_of.update({n: into for n, into in merged.items() if n in never_listed})
    outside_never = {n for n in by_id if n in never_listed and n not in inside}  # not in the scope: left alone
    pc.outside_requested.update(outside_never)
    # (the study a member was merged into is stored only inside the scope's filters: else it would join the
    # scope without ever having been in it, and leave it at the next full run)
    published = list({id(r): r for n, r in by_id.items()
                      if n not in outside_never and (n not in merged or n in inside)}.values())
    plan = drop_repeats(plan_batch(published, pc.heads_for(published), pc.ctx, lags=pc.holders.lags),
                         pc.counted)
    pc.run.append_plan(plan, pc.ctx)
    pc.written.update(plan.heads)
    pc.holders.note(plan)
    t.new_studies += plan.new_studies  # a requested id the listing never held, found by its look-up
    t.versions_written += len(plan.versions)
    t.quarantined += len(plan.quarantined)
    t.add_plan(plan)
    still_there = set(by_id) - outside_never - set(merged)
    omitted = still_there & inside
    ended = [*gone, *sorted(merged)]
    heads = pc.index.lookup(ended)  # not seen by this run, so it wrote no head for them
    retired = [(nct, head.version + 1, head.content_hash) for nct in ended
               if nct in members and nct not in pc.written and (head := heads.get(nct)) is not None
               and not head.is_removed]
    pc.run.append("study_versions", tombstones_table(retired, pc.ctx))
    for nct, version, digest in retired:
        pc.written[nct] = Head(version, digest, is_removed=True)
    exits = [nct for nct in vanished if nct in members and nct not in omitted and nct not in pc.unverified]
    pc.exited.update(exits)
    pc.left_scope.update(still_there - omitted)
    pc.omitted.update(omitted)
    pc.seen.update(omitted)
    pc.run.append_rows("scope_exits", [
        {"run_id": pc.ctx.run_id, "scope": scope, "nct_id": nct,
         "reason": "left_scope" if nct in still_there else "merged" if nct in merged else "removed"}
        for nct in exits])
    get_run_logger().info("%d unlisted studies are still in the registry (%d inside the scope: the listing "
                          "omitted them); %d retired (404, or merged into another study: %s)", len(still_there),
                          len(omitted), len(retired), ", ".join(f"{n} into {i}" for n, i in sorted(merged.items()))
                          or "none")
    return len(still_there - omitted), len(retired)


def _look_up(pc: PageContext, ids: list[str]) -> tuple[dict[str, dict[str, Any]], list[str], str | None]:
    """The records the registry publishes for ``ids`` (by the id asked for: an alias answers with the
    study it was merged into), the ids it answers 404 for, and the error that stopped the asking, if
    any (the ids neither found nor 404'd by then were not settled). Asked by id in batches through the
    listing first (cheap; a study's own record it returns is certainly published), then the rest one by
    one with the single-study endpoint, the ids the listing answered only with another study that holds
    them as aliases included: only that endpoint's 404 says a study is gone, and only its 301 to the
    study that holds the id that it was merged; any other failure (a timeout, a 5xx or a 429 past the
    retry budget, a body that is not a study, another study's record) says nothing about the study."""
    wanted, found = set(ids), dict[str, dict[str, Any]]()
    gone: list[str] = []
    wrong: str | None = None  # a look-up answered with another study's record (a cache or proxy's mistake)
    try:
        for params in lookup_params(ids):
            for page in pc.client.iter_pages(params):
                for record in page.studies:
                    # Only a record of the id's own: one that holds it as an alias is the listing's word that
                    # the id was merged, and only the single-study endpoint says a study's own record is gone
                    # (it may still serve it, or fail: then the id is unverified, not retired as merged).
                    if (own := record_nct_id(record)) in wanted and own is not None:
                        found[own] = record
        for nct in ids:
            if nct in found:
                continue
            try:
                found[nct] = pc.client.get_study(nct)
            except RegistryNotFound:
                gone.append(nct)
            except RegistryWrongStudy as exc:  # says nothing about this study; the others can still be asked
                wrong = wrong or str(exc)
    except RegistryError as exc:
        return found, gone, str(exc)
    return found, gone, wrong


def _unverified(pc: PageContext, ids: list[str], why: str) -> None:
    """Members the run could not ask the registry about: kept (still members, not retired, no change),
    named by the ``missing_ids`` check as unknown rather than as gone."""
    pc.unverified.update(ids)
    pc.totals.unverified = len(pc.unverified)
    if ids and not pc.unverified_why:
        pc.unverified_why = why


def _inside_scope(pc: PageContext, by_id: dict[str, dict[str, Any]]) -> set[str]:
    """Which of the looked-up ids still pass the scope's filters: checked here where the filters allow
    it (ids, statuses), else asked of the registry's search (the scope's parameters plus ``filter.ids``;
    what the search does not return is taken as outside, as the registry judges)."""
    inside, ask = set(), []
    for nct, record in by_id.items():
        verdict = pc.scope.admits(record_status(record), nct)
        if verdict:
            inside.add(nct)
        elif verdict is None:
            ask.append(nct)
    for params in lookup_params(ask):
        for page in pc.client.iter_pages({**pc.scope.params(), **params}):
            for record in page.studies:
                inside.update(record_ids(record) & set(ask))
    return inside
