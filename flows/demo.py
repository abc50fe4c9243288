"""The offline demo: a local fake registry replays real records over two "days".

Day 1 serves the 326 real records (NCT05766735 as its older real download) plus the seed trial
NCT07011004 (reconstructed from its registry page). Day 2 posts updates: the real NCT05766735
change, the seed trial's later state, and a few changes derived from real records. Each day is
synced by the ``sync_registry`` flow; the demo then shows what changed and answers a SQL query.
"""

from __future__ import annotations

import os
import shlex
import shutil
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table
from rich.text import Text

from flows.cli import finish_alerts, print_summary, run_sync
from flows.report import write_report
from flows.webhook_receiver import WebhookReceiver
from pipeline import mutate
from pipeline.errors import UsageError
from pipeline.registry.fake_server import FakeRegistry, load_records
from warehouse import Warehouse

SEED_NCT = "NCT07011004"
PAIR_NCT = "NCT05766735"
SEED_RECORD = Path(__file__).parent / "demo_data" / f"{SEED_NCT}.json"
WATCHLIST = Path(__file__).parent / "demo_data" / "watchlist.yaml"
MARKER = ".trialsync-demo"  # in a workdir the demo made: its outputs there may be replaced
OUTPUTS = ("warehouse", "watchlist.yaml", "report.html", "alerts-feed.json")
Record = dict[str, Any]


@dataclass(frozen=True)
class Update:
    record: Record
    story: str


def seed_record() -> Record:
    """The seed trial as last shown on its page (2025-10-10); see demo_data/PROVENANCE.md."""
    record: Record = orjson.loads(SEED_RECORD.read_bytes())
    return record


def seed_day1(seed: Record) -> Record:
    """The seed trial's earlier state: completion date shown as "2028-05"."""
    earlier = mutate.set_date(seed, "completionDate", "2028-05")
    return mutate.posted_on(earlier, date(2025, 7, 9))


def pair_versions(data_dir: Path) -> tuple[Record, Record]:
    older, newer = sorted((data_dir / "ctgov" / "snapshots" / PAIR_NCT).glob("*.json"))
    return orjson.loads(older.read_bytes()), orjson.loads(newer.read_bytes())


def day1_records(data_dir: Path) -> list[Record]:
    records = {r["protocolSection"]["identificationModule"]["nctId"]: r
               for r in load_records(data_dir / "ctgov" / "studies")}
    records[PAIR_NCT] = pair_versions(data_dir)[0]
    records[SEED_NCT] = seed_day1(seed_record())
    return [records[k] for k in sorted(records)]


def last_update(record: Record) -> date:
    return date.fromisoformat(record["protocolSection"]["statusModule"]["lastUpdatePostDateStruct"]["date"])


def day2_updates(day1: list[Record], data_dir: Path, day2: date) -> list[Update]:
    """Day 2's registry updates, each derived from a real record (or the seed) and posted on ``day2``."""
    by_id = {r["protocolSection"]["identificationModule"]["nctId"]: r for r in day1}
    taken = {PAIR_NCT, SEED_NCT}

    def pick(test: Any) -> Record:
        for nct in sorted(by_id):
            if nct not in taken and test(by_id[nct]["protocolSection"]):
                taken.add(nct)
                return by_id[nct]
        raise LookupError("no real record fits the demo's change")

    def status(p: Record) -> str:
        return str(p["statusModule"].get("overallStatus"))

    def sites(p: Record) -> list[Record]:
        return list(p.get("contactsLocationsModule", {}).get("locations", []))

    real_why = sorted(r["protocolSection"]["statusModule"]["whyStopped"] for r in day1
                      if r["protocolSection"]["statusModule"].get("whyStopped"))[0]
    updates = [
        Update(pair_versions(data_dir)[1], "real registry update: completion dates moved 2027-04-15 -> 2027-05-31"),
        Update(seed_record(), "seed trial: completion date refined from 2028-05 to 2028-05-31"),
    ]
    active = pick(lambda p: status(p) == "RECRUITING" and sites(p))
    updates.append(Update(mutate.set_status(active, "ACTIVE_NOT_RECRUITING"), "recruitment closed"))
    stopped = pick(lambda p: status(p) == "RECRUITING")
    updates.append(Update(mutate.set_status(stopped, "TERMINATED", real_why), f"terminated: {real_why}"))
    enrolled = pick(lambda p: status(p) == "ACTIVE_NOT_RECRUITING"
                    and p.get("designModule", {}).get("enrollmentInfo", {}).get("type") == "ESTIMATED"
                    and p["designModule"]["enrollmentInfo"].get("count", 0) >= 20)
    estimate = enrolled["protocolSection"]["designModule"]["enrollmentInfo"]["count"]
    updates.append(Update(mutate.set_enrollment(enrolled, int(estimate * 0.75), "ACTUAL"),
                          f"enrollment became actual: {estimate} estimated -> {int(estimate * 0.75)} actual"))
    site_closed = pick(lambda p: status(p) == "RECRUITING" and len(sites(p)) >= 3
                       and sites(p)[0].get("status") == "RECRUITING")
    updates.append(Update(mutate.set_site_status(site_closed, 0, "COMPLETED"), "a site closed"))
    slipped = pick(lambda p: status(p) == "NOT_YET_RECRUITING"  # a full date: a month-only one moves by months
                   and len(p["statusModule"].get("primaryCompletionDateStruct", {}).get("date", "")) == 10)
    updates.append(Update(mutate.shift_date(slipped, "primaryCompletionDate", 90),
                          "primary completion slipped 90 days"))
    return [Update(mutate.posted_on(u.record, day2), u.story) for u in updates]


def claim_workdir(workdir: Path) -> None:
    """The demo replaces only what an earlier demo made: a new or empty directory becomes the demo's
    (marked); a file, or a directory holding anything without the marker, is refused."""
    try:
        if workdir.exists() and not workdir.is_dir():
            raise UsageError(f"--workdir {workdir} is not a directory; name a new or empty directory")
        marker = workdir / MARKER
        if workdir.is_dir() and not marker.is_file() and any(workdir.iterdir()):
            raise UsageError(f"--workdir {workdir} holds files the demo did not make; name a new or empty "
                             "directory (or delete this one if an older demo made it)")
        for name in OUTPUTS:  # a link would make the demo replace what it points to
            path = workdir / name
            if path.is_symlink() or (name == "warehouse" and path.exists() and not path.is_dir()):
                raise UsageError(f"--workdir {workdir}: {name} is not the demo's; move it or name another directory")
        workdir.mkdir(parents=True, exist_ok=True)
        marker.write_text("Made by `trialsync demo`: each run replaces its " + ", ".join(OUTPUTS) + " here.\n")
    except OSError as exc:
        raise UsageError(f"--workdir {workdir} cannot be used: {exc.strerror or exc}") from None


def run_demo(workdir: Path, data_dir: Path, console: Console) -> None:
    workdir = workdir.resolve()
    claim_workdir(workdir)
    warehouse_dir = workdir / "warehouse"
    shutil.rmtree(warehouse_dir, ignore_errors=True)  # an earlier demo's (claim_workdir checked)
    day1 = day1_records(data_dir)
    day2 = max(last_update(r) for r in day1) + timedelta(days=1)
    watchlist = demo_watchlist(workdir)
    with FakeRegistry(day1).start() as registry, WebhookReceiver() as inbox:
        os.environ["TRIALSYNC_DEMO_WEBHOOK_URL"] = f"{inbox.url}/alerts"
        console.rule(f"[bold]Day 1[/]: a fake registry on {registry.url} serves {len(day1)} real records")
        common = dict(api_url=registry.url, warehouse=str(warehouse_dir), request_interval=0.0, page_size=100,
                      alerts=str(watchlist))
        day1_summary = run_sync(common)
        print_summary(day1_summary)
        finish_alerts(day1_summary["alerts"])
        updates = day2_updates(day1, data_dir, day2)
        registry.put(*(u.record for u in updates))
        console.rule(f"[bold]Day 2[/] ({day2}): the registry posts {len(updates)} updates")
        for u in updates:
            nct = u.record["protocolSection"]["identificationModule"]["nctId"]
            console.print(f"  {nct}: {u.story}", highlight=False, markup=False)
        day2_summary = run_sync(common)
        print_summary(day2_summary)
        finish_alerts(day2_summary["alerts"])
        show_alerts(inbox, watchlist, console)
    show_changes(Warehouse(warehouse_dir), day2_summary["run_id"], console)
    show_answer(Warehouse(warehouse_dir), console)
    console.print(f"\nThe seed trial's history: {history_hint(warehouse_dir)}", highlight=False, markup=False)
    console.print(f"\nWarehouse: {warehouse_dir}\nQuery it: {query_hint(warehouse_dir)}", highlight=False,
                  markup=False)
    report = write_report(warehouse_dir, workdir / "report.html", ncts=[SEED_NCT, PAIR_NCT],
                          run_id=day2_summary["run_id"])
    console.print(f"\nReport of the seed trial, {PAIR_NCT} and day 2's changes (one HTML file, works offline):"
                  f"\n{report}", highlight=False, markup=False)


def history_hint(warehouse_dir: Path) -> str:
    return f"trialsync history {SEED_NCT} --warehouse {shlex.quote(str(warehouse_dir))}"


def query_hint(warehouse_dir: Path) -> str:
    return f".venv/bin/duckdb -readonly {shlex.quote(str(warehouse_dir / 'warehouse.duckdb'))}"


def ledger_hint(warehouse_dir: Path) -> str:
    return ("trialsync sql \"SELECT watch, channel, nct_id, status FROM alert_deliveries\" "
            f"--warehouse {shlex.quote(str(warehouse_dir))}")


def demo_watchlist(workdir: Path) -> Path:
    """The demo's watchlist, copied where its feed file may be written."""
    workdir.mkdir(parents=True, exist_ok=True)
    target = workdir / "watchlist.yaml"
    shutil.copyfile(WATCHLIST, target)
    (workdir / "alerts-feed.json").unlink(missing_ok=True)
    return target


def show_alerts(inbox: WebhookReceiver, watchlist: Path, console: Console) -> None:
    """What the local webhook received after the day-2 sync (the same went into the feed file)."""
    console.rule(f"[bold]Alerts[/]: {len(inbox.received)} messages arrived at the local webhook {inbox.url}")
    for message in inbox.received:
        console.print(message.body["text"].rstrip(), highlight=False, markup=False)
        console.print()
    console.print(f"Watchlist: {watchlist}\nFeed (JSON Feed 1.1): {watchlist.parent / 'alerts-feed.json'}\n"
                  f"Ledger: {ledger_hint(watchlist.parent / 'warehouse')}", highlight=False, markup=False)


def show_changes(store: Warehouse, run_id: str, console: Console) -> None:
    """The day-2 run's typed changes (registry bookkeeping and other info-level rows left out)."""
    from flows.history import describe

    with store.connect() as con:
        result = con.execute(
            """SELECT nct_id, severity, event, field, old_value, new_value, shift_days, pct_change
               FROM changes WHERE run_id = ? AND severity <> 'info'
               ORDER BY severity_rank DESC, nct_id, path""", [run_id])
        columns = [d[0] for d in result.description]
        rows = [dict(zip(columns, row, strict=True)) for row in result.fetchall()]
    table = Table(title="What changed on day 2 (trialsync changes --since <day 2> --min-severity minor)",
                  header_style="bold")
    for name in ("study", "severity", "change"):
        table.add_column(name, overflow="fold")
    for row in rows:
        table.add_row(row["nct_id"], row["severity"], Text(describe(row)))  # registry text, not markup
    console.print(table)


def show_answer(store: Warehouse, console: Console) -> None:
    query = ("SELECT nct_id, overall_status, enrollment_count, completion_date_raw, lead_sponsor "
             f"FROM studies WHERE nct_id = '{SEED_NCT}'")
    console.print(f"\n[bold]SQL[/]: {query}", highlight=False)
    with store.connect() as con:
        result = con.execute(query)
        columns = [d[0] for d in result.description]
        from flows.output import render

        render(columns, result.fetchall(), "table", console)
