"""`trialsync alerts run|test|list` and the alerts summary printed after a sync."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

import flows  # noqa: F401 - sets Prefect's offline defaults before Prefect is imported
from flows import settings
from flows.cli.common import (
    FormatOpt,
    WarehouseOpt,
    app,
    check_format,
    console,
    quiet_prefect_failures,
)
from flows.inputs import check_seconds
from flows.output import render
from pipeline.errors import UsageError


def finish_alerts(result: dict[str, Any]) -> None:
    """Print an alerts run's summary; failed deliveries (due again next run) make the exit code 1."""
    from pipeline.errors import DeliveryFailed

    if "error" in result:
        raise DeliveryFailed(f"alerts: {result['error']}")
    console.print(
        f"[bold green]alerts {result['run_id']}[/]: {result['matched']} matching changes, "
        f"{result['messages']} messages, {result['messages_sent']} delivered, {result['messages_failed']} failed, "
        f"{result['already_sent']} deliveries already made, {result['retried']} retried "
        f"({result.get('resent', 0)} messages re-sent unchanged from the outbox) "
        f"in {result['duration_seconds']:.1f}s", highlight=False)
    if result["failures"]:
        first = result["failures"][0]
        rejected = result.get("messages_rejected", 0)
        retried = result["messages_failed"] - rejected
        then = ("; ".join(filter(None, [
            f"{retried} messages are retried on the next run" if retried and rejected else "",
            f"{rejected} messages were rejected by the receiver and are not re-sent (`trialsync alerts run "
            "--resend-rejected` sends them again)" if rejected else ""])) or "they are retried on the next run")
        raise DeliveryFailed(
            f"alerts: {result['deliveries_failed']} deliveries failed (channel {first['channel']}: "
            f"{first['error']}); {then}")


alerts_app = typer.Typer(no_args_is_help=True, help="Watchlists: evaluate them and deliver change alerts.")
app.add_typer(alerts_app, name="alerts")
ConfigOpt = Annotated[Path, typer.Option("--config", help="The watchlist file (YAML; see "
                                         "deploy/watchlist.example.yaml)")]


@alerts_app.command("run")
def alerts_run(
    config: ConfigOpt,
    warehouse: WarehouseOpt = None,
    lock_timeout: Annotated[float, typer.Option("--lock-timeout", help="Seconds to wait for another run")] = 30.0,
    retry_budget: Annotated[float, typer.Option(
        "--retry-budget", help="Seconds after the start past which no wait between tries (backoff, a receiver's "
        "Retry-After) ends; a longer one leaves the message for the next run")] = 60.0,
    resend_rejected: Annotated[bool, typer.Option(
        "--resend-rejected", help="Also send again the messages a receiver refused for good (HTTP 4xx, SMTP 5xx)")
    ] = False,
) -> None:
    """Deliver the alerts of every watch: each (watch, change, channel) once; failures retried next run."""
    from flows.alerts import check_config, send_alerts

    check_seconds("--lock-timeout", lock_timeout)
    check_seconds("--retry-budget", retry_budget)
    check_config(config)
    directory = settings.warehouse_dir(warehouse)
    from warehouse import Warehouse

    if not Warehouse(directory).exists():
        raise UsageError(f"no warehouse at {Warehouse(directory).root} (run `trialsync sync` first)")
    quiet_prefect_failures()
    finish_alerts(send_alerts(config=str(config), warehouse=str(directory), lock_timeout=lock_timeout,
                              retry_budget=retry_budget, resend_rejected=resend_rejected))


@alerts_app.command("test")
def alerts_test(
    config: ConfigOpt,
    channel: Annotated[str | None, typer.Option("--channel", help="Only this channel")] = None,
) -> None:
    """Send one sample alert to each channel (nothing is recorded in the ledger)."""
    from flows.alerts import send_test
    from pipeline.errors import DeliveryFailed

    results = send_test(str(config), channel)
    for name, error in results:
        console.print(f"{escape(name)}: " + (f"[red]failed[/]: {escape(error)}" if error else "[green]sent[/]"),
                      highlight=False)
    if failed := [name for name, error in results if error]:
        raise DeliveryFailed(f"the sample alert did not reach {', '.join(failed)}")


@alerts_app.command("list")
def alerts_list(
    config: ConfigOpt,
    fmt: FormatOpt = "table",
    warehouse: WarehouseOpt = None,
) -> None:
    """The watches, the studies each follows now, and their deliveries so far (sent, awaiting retry, rejected)."""
    from flows.alert_config import load_watchlist
    from flows.readonly import reading
    from warehouse import Warehouse
    from warehouse.alerts import watch_overview

    check_format(fmt)
    watchlist = load_watchlist(config)
    store = Warehouse(settings.warehouse_dir(warehouse))
    if store.root.exists() and not store.root.is_dir():
        raise UsageError(store.missing())
    if store.exists():
        with reading(store.root) as con:
            rows = watch_overview(con, watchlist)
    else:
        rows = watch_overview(None, watchlist)
    render(list(rows[0]), [list(r.values()) for r in rows], fmt, console)

