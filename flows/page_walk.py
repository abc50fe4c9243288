"""The page walk of a sync run: page after page of the scope's listing, each planned and staged.

gather (fetch a page; the warehouse's heads) -> decide (``plan_batch``, pure) -> apply (stage the
page's rows), one Prefect task a page (``sync_page``), sharing a ``PageContext``.

Fetched pages go to the warehouse's page spool first, so a re-run after a crash can replay them
(``warehouse.spool`` says when that is safe). A page token the registry refuses mid-run (it expired)
restarts the walk from the first page, at most ``MAX_RESTARTS`` times; pages that come back identical
are not staged twice, and a study met again in the same run (paging under a moving data set) counts once.
A large ids scope is walked in batches of ids (one URL of all of them would pass the 8 KB limit); page
numbers run on across the batches. Page tasks are not retried by Prefect: the client's ``max_attempts``
is the total number of tries of a request, within the run's retry budget.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import orjson

from flows import progress
from flows.engine import NONE, get_run_logger, task
from flows.runs import RunTotals
from pipeline.dates import utc_day
from pipeline.errors import PageTokenRejected, RegistryError
from pipeline.parse import record_ids, record_nct_id, record_status
from pipeline.registry.client import RegistryClient
from pipeline.registry.pages import Page, check_token_progress, check_walk_length, page_from_body
from pipeline.scope import Scope
from pipeline.versioning import BatchPlan, Head, Quarantined, RunContext, plan_batch
from warehouse import RunWriter
from warehouse.crashpoints import crashpoint
from warehouse.heads import HeadIndex, SnapshotDays
from warehouse.spool import PageSpool

MAX_RESTARTS = 2  # fresh walks from page 1 after the registry refused a page token

class PageContext:
    """What every page task shares; a plain object so Prefect neither hashes nor walks it."""

    def __init__(self, client: RegistryClient, run: RunWriter, index: HeadIndex,
                 batches: list[dict[str, str]], ctx: RunContext, spool: PageSpool | None,
                 scope: Scope | None = None) -> None:
        self.client, self.run, self.index, self.batches, self.ctx = client, run, index, batches, ctx
        self.params = batches[0]  # the walk's current request parameters (one batch of a large ids scope)
        self.scope = scope or Scope()
        self.scope_ids = frozenset(self.scope.ids)
        self.met_outside: set[str] = set()  # listed studies outside the scope's filters (quarantined)
        self.alias_of: dict[str, str] = {}  # an id of an ids scope -> the study listed for it by alias
        self.first_met = 0  # studies the last page brought that the run had not met before
        self.spool = spool
        self.batch_totals: dict[int, int] = {}  # first page number of a batch -> its totalCount
        self.batch_page_sizes: dict[int, int] = {}  # ... -> how many studies its first page held
        self.written: dict[str, Head] = {}  # heads this run wrote: a study can show up on two pages
        # their data snapshot days: a lagging replica's record is stale
        self.holders = SnapshotDays(run, utc_day(ctx.observed_at))
        self.totals = RunTotals()
        self.seen: set[str] = set()
        self.staged: dict[int, str] = {}  # page number -> digest of the body staged for it
        self.counted: set[tuple[str, int]] = set()  # (nct_id, version) already counted in this run
        self.exited: set[str] = set()  # members of the scope that this full run found gone from it
        self.left_scope: set[str] = set()  # ... of which the registry still publishes these
        self.omitted: set[str] = set()  # unlisted members that the registry still publishes inside the scope
        self.unverified: set[str] = set()  # unlisted members the registry could not be asked about (kept)
        self.unverified_why = ""  # ... why: the look-up's error, or an incomplete listing
        self.outside_requested: set[str] = set()  # ids asked for, published, but outside the scope's filters
        self.merged: dict[str, str] = {}  # unlisted ids the registry merged into another study -> that study

    def get_page(self, token: str | None, number: int) -> Page:
        """From the spool if an interrupted run of the same request sequence stored it, else fetched."""
        if self.spool and (body := self.spool.get(number, token)) is not None:
            try:
                replayed = page_from_body(body, number, self.client.base_url)
            except (ValueError, RegistryError):  # damaged: fetch it (and what follows) again
                self.spool.reset(number)
            else:
                self.totals.pages_replayed += 1
                return replayed
        page = self.client.get_page(self.params, token, number)
        if self.spool and page.body:
            self.spool.put(number, token, page.body)
        return page

    def heads_for(self, records: list[dict[str, Any]]) -> dict[str, Head]:
        """The page's heads only: looked up in the columnar index, then this run's own versions."""
        ids = [nct for nct in map(record_nct_id, records) if nct]
        return self.index.lookup(ids) | {nct: self.written[nct] for nct in ids if nct in self.written}


@task(name="sync-page", cache_policy=NONE)  # no task retries: the client's tries are the total
def sync_page(pc: PageContext, token: str | None, number: int, first: int = 1) -> str | None:
    """Fetch one page, plan its versions and stage them; returns the next page token."""
    pc.first_met = 0
    page = pc.get_page(token, number)
    crashpoint("page-fetched")
    digest = hashlib.blake2b(page.body or json.dumps(page.studies).encode(), digest_size=16).hexdigest()
    if pc.staged.get(number) == digest:  # the same page again after a restart: staged already
        return page.next_token
    inside, outside = _split_by_scope(page.studies, pc.scope, pc.scope_ids)
    pc.first_met = first_met = _first_met(page.studies, pc.seen, pc.met_outside)
    plan = drop_repeats(plan_batch(inside, pc.heads_for(inside), pc.ctx, lags=pc.holders.lags), pc.counted)
    pc.seen.update(nct for nct, _ in plan.seen)
    pc.seen.update(q.nct_id for q in plan.quarantined if q.nct_id)  # a bad record is no reason to retire
    plan.quarantined.extend(outside)
    pc.met_outside.update(q.nct_id for q in outside if q.nct_id)
    if pc.scope_ids:  # asked for by an alias: reconciliation counts the asked id as found
        for record in inside:
            if (nct := record_nct_id(record)) is not None and nct not in pc.scope_ids:
                pc.alias_of.update(dict.fromkeys(record_ids(record) & pc.scope_ids, nct))
    pc.run.append_plan(plan, pc.ctx)
    pc.staged[number] = digest
    crashpoint("page-staged")
    pc.written.update(plan.heads)
    pc.holders.note(plan)
    t = pc.totals
    t.pages = max(t.pages, number)
    t.studies_seen += first_met
    t.new_studies += plan.new_studies
    t.versions_written += len(plan.versions)
    t.unchanged += plan.unchanged
    t.quarantined += len(plan.quarantined)
    t.add_plan(plan)
    if page.total_count is not None:  # a batch's first page
        pc.batch_totals[first] = page.total_count
        pc.batch_page_sizes[first] = len(page.studies)
        t.total_count = sum(pc.batch_totals.values())
    t.watermark = max(filter(None, [t.watermark, plan.newest_update]), default=None)
    progress.emit("page", number=number, studies=len(page.studies), total=t.total_count,
                  seen=t.studies_seen, versions=t.versions_written)
    get_run_logger().info("page %d: %d studies, %d new versions, %d unchanged, %d quarantined",
                          number, len(page.studies), len(plan.versions), plan.unchanged, len(plan.quarantined))
    return page.next_token


def _split_by_scope(records: list[dict[str, Any]], scope: Scope,
                    scope_ids: frozenset[str]) -> tuple[list[dict[str, Any]], list[Quarantined]]:
    """The listed records the scope's own filters admit, and the others quarantined: a registry or a
    proxy that ignored ``filter.ids`` or ``filter.overallStatus`` must not add studies to the scope
    (each would be announced as added, then as having left it). ``scope_ids``: the scope's ids as a
    set; a record is one of them by its id or one of its aliases, as ``filter.ids`` matches."""
    inside: list[dict[str, Any]] = []
    outside: list[Quarantined] = []
    for record in records:
        nct, status = record_nct_id(record), record_status(record)
        why = None
        if nct is not None and scope_ids and not (nct in scope_ids or record_ids(record) & scope_ids):
            why = "not one of the scope's ids"
        elif status is not None and scope.statuses and status not in scope.statuses:
            why = f"status {status} is not one of the scope's {', '.join(scope.statuses)}"
        if why is None:  # a record without an id or status is quarantined by plan_batch, saying so
            inside.append(record)
        else:
            outside.append(Quarantined(nct, f"listed outside the scope ({why}): the registry ignored a filter",
                                       orjson.dumps(record)))
    if outside:
        get_run_logger().warning("%d listed studies are outside the scope's filters (e.g. %s): quarantined, "
                                 "not stored", len(outside), outside[0].nct_id)
    return inside, outside


def _first_met(records: list[dict[str, Any]], *known: set[str]) -> int:
    """How many of the page's records are studies this run had not met yet: one met again (the same
    page after a restart, or at a newer version on a later page of a moving listing) counts once."""
    met: set[str] = set()
    count = 0
    for nct in map(record_nct_id, records):
        if nct is None or (nct not in met and not any(nct in ids for ids in known)):
            count += 1
            if nct is not None:
                met.add(nct)
    return count


def drop_repeats(plan: BatchPlan, counted: set[tuple[str, int]]) -> BatchPlan:
    """Leave out studies this run already met at the same version (the same study on two pages, or a
    page read again after a restart): they were counted the first time, as unchanged or as stale."""
    fresh: list[tuple[str, int]] = []
    repeated: list[str] = []
    for pair in plan.seen:
        if pair in counted:
            repeated.append(pair[0])
        else:
            counted.add(pair)
            fresh.append(pair)
    if not repeated:
        return plan
    stale = list(plan.stale)
    unchanged = plan.unchanged
    for nct_id in repeated:
        if nct_id in stale:
            stale.remove(nct_id)
        else:
            unchanged -= 1
    return dataclasses.replace(plan, seen=fresh, unchanged=unchanged, stale=stale)


def walk(pc: PageContext, fetch: Any) -> None:
    """Page through the scope, batch after batch; a refused page token (expired) restarts the batch
    from its first page, boundedly; a token met twice stops the walk (the registry is looping)."""
    number = 1
    for params in pc.batches:
        pc.params = params
        number = _walk_batch(pc, fetch, number) + 1


def _walk_batch(pc: PageContext, fetch: Any, first: int) -> int:
    """One batch's pages, numbered from ``first``; returns the number of its last page."""
    token, number = None, first
    tokens: set[str] = set()
    idle = 0  # pages in a row that brought no study this run had not met
    reached = first - 1  # the furthest page of the batch so far: pages read again after a restart are not idle
    while True:
        try:
            token = fetch(pc, token, number, first)
        except PageTokenRejected as exc:
            if number == first or pc.totals.restarts >= MAX_RESTARTS:
                raise PageTokenRejected(f"{exc} (page {number}; gave up after {pc.totals.restarts} fresh starts "
                                        "from page 1)", url=exc.url, status=exc.status) from None
            pc.totals.restarts += 1
            get_run_logger().warning("page %d: the registry refused the page token (%s); starting again from "
                                     "page %d (%d of %d)", number, exc, first, pc.totals.restarts, MAX_RESTARTS)
            if pc.spool:
                pc.spool.reset(first)  # its tokens are stale: fetch afresh
            token, number, tokens, idle = None, first, set(), 0
            continue
        if not token:
            return number
        idle = 0 if number <= reached or pc.first_met else idle + 1
        reached = max(reached, number)
        try:
            check_token_progress(token, tokens, number, pc.client.base_url)
            check_walk_length(number - first + 1, idle, pc.batch_totals.get(first),
                              pc.batch_page_sizes.get(first, 0), pc.client.base_url)
        except RegistryError:
            if pc.spool:
                pc.spool.reset(number)  # not replayed: a re-run asks the registry for this page again
            raise
        number += 1
