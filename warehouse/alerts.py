"""Alerts in the warehouse: which changes a watch selects, the delivery ledger, the ``where:`` check.

A watch follows a study when the version before or the version after a change satisfies its
selector (so a termination still reaches a watch on recruiting studies, and a removal a watch by
condition); its ``where:`` is a predicate over the columns of ``studies`` (and ``raw``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime
from typing import Any

import duckdb
import orjson
import pyarrow as pa

from pipeline.alerts.compliance import overdue_alert
from pipeline.alerts.message import AlertChange, Message
from pipeline.alerts.plan import LedgerState, Pending
from pipeline.alerts.watchlist import StudySelector, Watch, Watchlist
from pipeline.errors import UsageError
from warehouse.analyses import OVERDUE, fdaaa_macros, overdue_event_id
from warehouse.manifest import ManifestDamaged, generation_path
from warehouse.store import Warehouse
from warehouse.tables import CORE_FIELDS, STUDY_VERSIONS

_CORE = ", ".join(f.name for f in CORE_FIELDS)
# The shape of ``studies`` a ``where:`` predicate sees: every stored (not removed) version.
_STUDIES = f"""SELECT nct_id, {_CORE}, version, content_hash, CAST(raw AS JSON) AS raw
FROM raw_study_versions WHERE NOT is_removed"""
_COLLABORATORS = "json_extract_string(raw, '$.protocolSection.sponsorCollaboratorsModule.collaborators[*].name')"


logger = logging.getLogger("trialsync.alerts")


def _contains_any(texts_sql: str) -> str:
    """Whether one of the texts (a VARCHAR[]) contains the parameter, literally and ignoring case."""
    return f"coalesce(list_bool_or(list_transform({texts_sql}, lambda t: contains(lower(t), lower(?)))), false)"


def selector_sql(selector: StudySelector) -> tuple[str, list[Any]]:
    """The selector as one predicate over ``studies`` (keys AND-ed, a key's values OR-ed).

    Conditions and sponsors are literal substrings, ignoring case (Unicode's one-to-one lowercase,
    DuckDB's ``lower``: ``İ`` is ``i``) of one condition, the lead sponsor or one collaborator: ``%``, ``_`` and ``\\``
    match themselves (``contains``, never ``LIKE``), and a term never spans two conditions.
    """
    parts: list[str] = []
    params: list[Any] = []

    def any_of(template: str, values: Iterable[Any]) -> None:
        values = list(values)
        if values:
            uses = template.count("?")
            parts.append("(" + " OR ".join(template for _ in values) + ")")
            params.extend(v for v in values for _ in range(uses))

    if selector.ids:  # one list, not an OR per id: a watch may follow tens of thousands of ids
        parts.append("list_contains(?::VARCHAR[], studies.nct_id)")
        params.append(list(selector.ids))
    any_of(_contains_any("studies.conditions"), selector.conditions)
    any_of(_contains_any(f"list_prepend(studies.lead_sponsor, coalesce({_COLLABORATORS}, []))"), selector.sponsors)
    any_of("list_contains(studies.phases, ?)", selector.phases)
    any_of("studies.overall_status = ?", selector.status)
    if selector.where:
        parts.append(f"({selector.where})")
    return " AND ".join(parts) or "true", params


def check_predicate(where: str) -> None:
    """A ``where:`` must be one read-only expression over ``studies``: no subquery, no table function,
    nothing that ends the expression and starts another clause; and it must bind (known columns)."""
    con = duckdb.connect()
    try:
        serialized = con.execute("SELECT json_serialize_sql(?)", [f"SELECT 1 FROM studies WHERE ({where})"])
        tree = json.loads(serialized.fetchall()[0][0])
        if tree.get("error"):
            raise UsageError(f"does not parse: {tree.get('error_message', '').splitlines()[0]}")
        node = tree["statements"][0]["node"] if len(tree["statements"]) == 1 else {}
        plain = (node.get("type") == "SELECT_NODE" and not node.get("modifiers") and not node["cte_map"]["map"]
                 and node["from_table"].get("table_name") == "studies" and not node.get("group_expressions")
                 and node.get("having") is None and node.get("qualify") is None)
        if not plain or _has(node["where_clause"], {"SUBQUERY", "TABLE_FUNCTION", "WINDOW"}):
            raise UsageError("must be a single expression over the columns of studies "
                             "(no subqueries, table functions or other clauses)")
        con.register("raw_study_versions", pa.Table.from_batches([], schema=STUDY_VERSIONS))
        con.execute(f"SELECT count(*) FROM ({_STUDIES}) studies WHERE ({where})").fetchall()
    except duckdb.Error as exc:
        raise UsageError(str(exc).splitlines()[0]) from None
    finally:
        con.close()


@contextmanager
def predicate_errors(source: str, watch: Watch) -> Iterator[None]:
    """A ``where:`` binds (``check_predicate``) but can still fail on the stored rows: a cast of a text
    that is not a number, an overflow, a bad regex or JSON path. That is the watchlist's error, one line
    naming its file and key (exit 2), not DuckDB's error of the whole run."""
    try:
        yield
    except (duckdb.DataError, duckdb.InvalidInputException) as exc:
        if not watch.studies.where:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{source}: watches[{watch.name}].studies.where: fails on the stored studies: "
                         f"{first}") from None


def _has(tree: Any, kinds: set[str]) -> bool:
    if isinstance(tree, dict):
        return tree.get("type") in kinds or tree.get("class") in kinds or any(_has(v, kinds) for v in tree.values())
    if isinstance(tree, list):
        return any(_has(v, kinds) for v in tree)
    return False


_CANDIDATES = """
WITH cand AS (
    SELECT * FROM changes WHERE detected_at >= ? OR list_contains(?::VARCHAR[], change_id)
                          OR list_contains(?::VARCHAR[], run_id)
), studies_ AS (
    {studies} AND nct_id IN (SELECT nct_id FROM cand)
), titles AS (
    SELECT nct_id, arg_max(brief_title, version) AS title FROM studies_ GROUP BY nct_id
)
SELECT c.change_id, c.nct_id, t.title, c.field, c.event, c.category, c.severity, c.old_value, c.new_value,
       c.shift_days, c.pct_change, c.registry_updated, c.from_version, c.to_version, c.path, c.detected_at
FROM cand c LEFT JOIN titles t USING (nct_id)
WHERE EXISTS (SELECT 1 FROM studies_ AS studies
              WHERE studies.nct_id = c.nct_id AND studies.version IN (c.from_version, c.to_version)
                AND ({selector}))
  AND NOT EXISTS (SELECT 1 FROM raw_study_versions h
                  WHERE h.nct_id = c.nct_id AND h.version = c.to_version AND h.source = 'history')
  -- a change into the first version a sync observed came from a backfill's history: no sync saw it happen
  AND (c.from_version IS NULL
       OR EXISTS (SELECT 1 FROM raw_study_versions o
                  WHERE o.nct_id = c.nct_id AND o.version <= c.from_version AND o.source <> 'history'))
ORDER BY c.nct_id, c.to_version, c.path
"""


def candidates(con: duckdb.DuckDBPyConnection, watch: Watch, start: datetime,
               retry_ids: Sequence[str], later_runs: Sequence[str] = ()) -> list[AlertChange]:
    """Changes of the watch's studies detected since ``start`` (and the ones due for a retry, and those
    of ``later_runs``: committed after the watch's first alerts run, so news to it whatever clock
    stamped their ``detected_at``).

    Versions imported from the registry's history (a backfill) are old news and never alert; nor does
    a change into the first version a sync observed, which only the backfill's history put a version
    before (the sync that stored it saw a new study, not this change).
    """
    selector, params = selector_sql(watch.studies)
    sql = _CANDIDATES.format(studies=_STUDIES, selector=selector)
    result = con.execute(sql, [start, list(retry_ids), list(later_runs), *params])
    return [AlertChange(*row) for row in result.fetchall()]


# Overdue on b and not on a (a time event: the record need not have changed), in the version valid on b,
# which the watch's selector must match. "Not on a" is judged as the warehouse knew the study at the last
# alerts run (``t``): a version stored since then, even one the registry dates before a, is news (a
# completion date moved back makes a trial overdue at once). A study with no version known at ``t`` (new
# to the warehouse, or before the watch's first run) is judged on a with what is stored now.
_OVERDUE = """
WITH known AS (
  SELECT DISTINCT nct_id FROM studies_known_as_of(DATE '9999-12-31', CAST(? AS TIMESTAMPTZ))
)
SELECT n.nct_id, n.version, n.as_of, n.act_kind, n.status, n.due_date, n.days_late, n.completion_date_used,
       n.brief_title, n.lead_sponsor,
       CASE WHEN known.nct_id IS NOT NULL THEN k.status ELSE o.status END AS status_before,
       {event_id} AS event_id
FROM fdaaa_as_of(CAST(? AS DATE)) AS n
LEFT JOIN fdaaa_as_of(CAST(? AS DATE)) AS o USING (nct_id)
LEFT JOIN fdaaa_known_as_of(CAST(? AS DATE), CAST(? AS TIMESTAMPTZ)) AS k USING (nct_id)
LEFT JOIN known USING (nct_id)
WHERE n.status IN {overdue}
  AND coalesce((CASE WHEN known.nct_id IS NOT NULL THEN k.status ELSE o.status END) NOT IN {overdue}, true)
  AND EXISTS (SELECT 1 FROM ({studies}) AS studies
              WHERE studies.nct_id = n.nct_id AND studies.version = n.version AND ({selector}))
ORDER BY n.nct_id
"""


def overdue_candidates(con: duckdb.DuckDBPyConnection, watch: Watch, a: date, b: date,
                       last_run: datetime | None) -> list[AlertChange]:
    """The watch's studies that are FDAAA-overdue on ``b`` and were not on ``a`` as the warehouse knew them
    at ``last_run`` (the watch's last alerts run; None before its first: as stored now)."""
    if not con.execute("SELECT 1 FROM duckdb_functions() WHERE function_name = 'fdaaa_known_as_of'").fetchall():
        for statement in fdaaa_macros():  # the writer's connection is built without the analyses
            con.execute(statement)
    selector, params = selector_sql(watch.studies)
    sql = _OVERDUE.format(event_id=overdue_event_id("n"), overdue=OVERDUE, studies=_STUDIES, selector=selector)
    result = con.execute(sql, [last_run, b, a, a, last_run, *params])
    columns = [d[0] for d in result.description]
    return [overdue_alert(dict(zip(columns, row, strict=True))) for row in result.fetchall()]


# -- the ledger: the outbox (alert_messages) and the outcome of each attempt (alert_deliveries) -------
def ledger_state(con: duckdb.DuckDBPyConnection, *, resend_rejected: bool = False) -> LedgerState:
    """What earlier alerts runs recorded: the outbox, its undelivered messages, and the outcomes.

    A message whose latest attempt a receiver refused for good (status ``rejected``) is not pending:
    it is not sent again unless ``resend_rejected``."""
    rows = con.execute("""SELECT watch, channel, change_id, bool_or(status = 'sent'), count(*)
                          FROM raw_alert_deliveries GROUP BY ALL""").fetchall()
    sent = frozenset((w, ch, c) for w, ch, c, ok, _ in rows if ok)
    failed = {(w, ch, c): int(n) for w, ch, c, ok, n in rows if not ok}
    outbox = con.execute("""
        SELECT m.watch, m.channel, m.change_ids, m.change_keys, m.payload,
               (SELECT count(DISTINCT d.run_id) FROM raw_alert_deliveries d
                WHERE d.message_id = m.message_id) AS attempts,
               EXISTS (SELECT 1 FROM raw_alert_deliveries d
                       WHERE d.message_id = m.message_id AND d.status = 'sent') AS delivered,
               coalesce((SELECT d.status = 'rejected' FROM raw_alert_deliveries d WHERE d.message_id = m.message_id
                         ORDER BY d.attempted_at DESC, d.run_id DESC LIMIT 1), false) AS rejected
        FROM raw_alert_messages m ORDER BY m.created_at, m.message_id""").fetchall()
    planned = frozenset((w, ch, c) for w, ch, ids, *_ in outbox for c in ids)
    content = frozenset((w, ch, k) for w, ch, _, keys, *_ in outbox for k in keys)
    undelivered = [(Pending(Message.from_payload(json.loads(payload)), int(attempts)), bool(rejected))
                   for _, _, _, _, payload, attempts, delivered, rejected in outbox if not delivered]
    pending = tuple(p for p, rejected in undelivered if resend_rejected or not rejected)
    refused = tuple(p for p, rejected in undelivered if rejected and not resend_rejected)
    # A key of a stored message is no longer a legacy failure: the message goes again as it was.
    legacy = {key: n for key, n in failed.items() if key not in planned and key not in sent}
    return LedgerState(sent=sent, failed=legacy, planned=planned, planned_content=content, pending=pending,
                       rejected=refused, holds=holds(con))


def holds(con: duckdb.DuckDBPyConnection) -> dict[str, datetime]:
    """Each channel whose latest alerts run was asked by the receiver (``Retry-After``) not to try
    again before a time, with that time (past ones too: the caller compares with its clock)."""
    rows = con.execute("""
        SELECT channel, max(retry_at) FROM raw_alert_deliveries d
        WHERE attempted_at = (SELECT max(attempted_at) FROM raw_alert_deliveries e WHERE e.channel = d.channel)
        GROUP BY channel HAVING max(retry_at) IS NOT NULL""").fetchall()
    return {channel: at.astimezone(UTC) for channel, at in rows}


def outbox_rows(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """The outbox rows of new messages (planned from the candidates, whose changes carry the path and
    observation time their content keys need), written and committed before any of them is sent."""
    return [{
        "message_id": m.message_id, "run_id": m.run_id, "created_at": m.created_at, "watch": m.watch,
        "channel": m.channel, "mode": m.mode, "change_ids": [c.change_id for c in m.changes],
        "change_keys": [k for c in m.changes for k in c.content_keys()],
        "payload": json.dumps(m.payload(), ensure_ascii=False, sort_keys=True),
    } for m in messages]


# The manifest meta key an alerts run's commits carry: "<run id>@<generation its plan read>".
PLANNED_AT = "alerts_planned_at"


def planned_at(run_id: str, generation: int) -> dict[str, str]:
    """The meta an alerts run's commits carry: the generation its plan read (``committed_since_first_seen``)."""
    return {PLANNED_AT: f"{run_id}@{generation}"}


def write_outbox(store: Warehouse, commit_id: str, messages: Sequence[Message], *, lock_timeout: float,
                 meta: dict[str, str] | None = None) -> None:
    """Commit new messages to the outbox (``alert_messages``): durable before any of them is sent."""
    with store.writer(commit_id, lock_timeout=lock_timeout) as run:
        run.append_rows("alert_messages", outbox_rows(messages))
        run.commit(meta)


def record_outcomes(store: Warehouse, commit_id: str, deliveries: list[dict[str, Any]], run_row: dict[str, Any],
                    *, lock_timeout: float, meta: dict[str, str] | None = None) -> None:
    """Commit each attempt's outcome (``alert_deliveries``) and the alerts run's row (``alert_runs``)."""
    with store.writer(commit_id, lock_timeout=lock_timeout) as run:
        run.append_rows("alert_deliveries", deliveries)
        run.append_rows("alert_runs", [run_row])
        run.commit(meta)


def first_seen(con: duckdb.DuckDBPyConnection) -> dict[str, datetime]:
    """When each watch was first evaluated (its first alerts run)."""
    rows = con.execute("SELECT w, min(started_at) FROM raw_alert_runs, unnest(watches) AS t(w) GROUP BY w").fetchall()
    return {w: ts.astimezone(UTC) for w, ts in rows}


def committed_since_first_seen(con: duckdb.DuckDBPyConnection, store: Warehouse) -> dict[str, list[str]]:
    """For each watch, the runs committed after its first alerts run (in commit order, not by any clock).

    A watch's window starts at its first alerts run less its lookback, by ``detected_at``; a sync whose
    clock was behind (a host that lost its time, a VM resumed from a snapshot) stamps its changes before
    that start, and a first alerts run while the clock was ahead moves the start past every later change:
    either way changes that no run of the watch ever saw were passed over for good. Whatever was
    committed after the watch's first alerts run is news to it; the ledger still sends each change once.
    A damaged manifest generation (``check`` names it) leaves the windows alone rather than stop the run.
    "After" is after the generation that run's plan read (its commits carry it, ``planned_at``), not after
    its own first commit: a sync that committed while it planned and delivered was in neither its plan
    nor, by a clock behind, any window. A run of an earlier release, which did not record it: after its
    first commit.
    """
    try:
        order = store.run_order()
    except ManifestDamaged as exc:
        logger.warning("the runs' commit order is unknown (%s): changes are chosen by detected_at alone", exc)
        return {}
    first_commit: dict[str, int] = {}
    for number, run_id in order:
        first_commit.setdefault(run_id, number)
    rows = con.execute("SELECT w, list(run_id) FROM raw_alert_runs, unnest(watches) AS t(w) GROUP BY w").fetchall()
    later = {}
    for watch, run_ids in rows:
        seen = [(first_commit[i], i) for i in run_ids if i in first_commit]
        if seen:
            since, first_run = min(seen)
            since = min(since, _planned_generation(store, since, first_run))
            later[watch] = sorted({run_id for number, run_id in order if number > since and run_id != first_run})
    return later


def _planned_generation(store: Warehouse, number: int, run_id: str) -> int:
    """The generation alerts run ``run_id``'s plan read, from the meta of its commit ``number``; ``number``
    when it does not say (a run of an earlier release, an unreadable file)."""
    try:
        meta = orjson.loads(generation_path(store.root, number).read_bytes()).get("meta") or {}
        run, _, generation = str(meta.get(PLANNED_AT, "")).rpartition("@")
        planned = int(generation) if run == run_id else number
        return planned if 0 < planned <= number else number
    except (OSError, ValueError, AttributeError):
        return number


def last_seen(con: duckdb.DuckDBPyConnection) -> dict[str, datetime]:
    """When each watch was last evaluated by an alerts run that recorded its outcome."""
    rows = con.execute("SELECT w, max(started_at) FROM raw_alert_runs, unnest(watches) AS t(w) GROUP BY w").fetchall()
    return {w: ts.astimezone(UTC) for w, ts in rows}


def delivery_rows(message: Message, *, run_id: str, attempted_at: datetime, attempt: int,
                  error: str | None, rejected: bool = False, retry_at: datetime | None = None
                  ) -> list[dict[str, Any]]:
    """The ledger rows of one message's outcome: one per (watch, change, channel); status ``sent``,
    ``failed`` (sent again on the next run) or ``rejected`` (refused for good: not sent again);
    ``retry_at``: not before then (the receiver's ``Retry-After``)."""
    return [{
        "run_id": run_id, "attempted_at": attempted_at, "watch": message.watch, "channel": message.channel,
        "change_id": c.change_id, "nct_id": c.nct_id, "severity": c.severity, "message_id": message.message_id,
        "status": ("rejected" if rejected else "failed") if error else "sent", "attempt": attempt, "error": error,
        "retry_at": retry_at if error else None,
    } for c in message.changes]


def watch_overview(con: duckdb.DuckDBPyConnection | None, watchlist: Watchlist) -> list[dict[str, Any]]:
    """``trialsync alerts list``: each watch, how many current studies it follows, its deliveries so far."""
    ledger = ledger_state(con) if con is not None else LedgerState()
    rows = []
    for watch in watchlist.watches:
        following: int | None = None
        if con is not None:
            selector, params = selector_sql(watch.studies)
            with predicate_errors(watchlist.source, watch):
                result = con.execute(f"SELECT count(*) FROM ({_STUDIES} QUALIFY row_number() OVER "
                                     f"(PARTITION BY nct_id ORDER BY version DESC) = 1) studies "
                                     f"WHERE studies.nct_id IN (SELECT nct_id FROM studies) AND {selector}",
                                     params)
                following = int(result.fetchall()[0][0])
        rows.append({
            "watch": watch.name, "mode": watch.mode, "min_severity": watch.min_severity,
            "changes": (", ".join(watch.categories + watch.events) or "all")
            + "".join(f"; fdaaa: {kind}" for kind in watch.fdaaa),
            "channels": ", ".join(watch.channels), "studies": following,
            "sent": sum(1 for key in ledger.sent if key[0] == watch.name),
            "awaiting_retry": sum(1 for key in ledger.failed if key[0] == watch.name)
            + sum(len(p.message.changes) for p in ledger.pending if p.message.watch == watch.name),
            "rejected": sum(len(p.message.changes) for p in ledger.rejected if p.message.watch == watch.name),
        })
    return rows
