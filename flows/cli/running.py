"""Long-running and offline commands: serve, demo, fake-registry."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

import flows  # noqa: F401 - sets Prefect's offline defaults before Prefect is imported
from flows import settings
from flows.cli.common import (
    app,
    console,
)
from flows.inputs import PORT_MAX


@app.command()
def serve(
    file: Annotated[Path | None, typer.Option("--file", help="Deployments file [default: deploy/prefect.yaml]")]
    = None,
    list_only: Annotated[bool, typer.Option("--list", help="Show the deployments and exit")] = False,
) -> None:
    """Run the schedules of deploy/prefect.yaml on this machine (Prefect serve; Ctrl-C stops)."""
    from flows.deployments import DEPLOY_FILE, check_config_files, describe, load
    from flows.prefect_api import check_settings

    check_settings()  # serve is Prefect's, whatever TRIALSYNC_ENGINE says

    deployments = load(file or DEPLOY_FILE)
    check_config_files(deployments, file or DEPLOY_FILE, environment=not list_only)
    for d in deployments:
        console.print(describe(d), highlight=False, markup=False)
    if list_only:
        return
    from flows.serving import serve_deployments

    serve_deployments(deployments, console)


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option("--workdir", help="Where the demo writes its warehouse")]
    = Path("demo-output"),
    data: Annotated[Path | None, typer.Option("--data", help="The shared real data (default ../shared/data)")]
    = None,
) -> None:
    """The offline demo: a local fake registry replays real records over two "days"."""
    from flows.demo import run_demo

    run_demo(workdir, settings.shared_data_dir(str(data) if data else None), console)


@app.command("fake-registry")
def fake_registry(
    port: Annotated[int, typer.Option("--port", min=1, max=PORT_MAX)] = 8765,
    data: Annotated[Path | None, typer.Option("--data")] = None,
) -> None:
    """Serve the real records on 127.0.0.1 with the API's semantics (for manual trials)."""
    import time

    from flows.demo import seed_record
    from pipeline.registry.fake_history import real_history
    from pipeline.registry.fake_server import FakeRegistry

    shared = settings.shared_data_dir(str(data) if data else None) / "ctgov"
    server = FakeRegistry.from_directory(shared / "studies")
    server.put(seed_record())  # the trial the project started from (the demo's day 2 state)
    history = real_history(shared / "history")
    server.put_history(history)  # NCT03690141's real index, its version records derived
    server.start(port=port)
    console.print(f"fake registry with {len(server.nct_ids())} studies (the seed trial NCT07011004 among them) "
                  f"at {server.url}, the history of "
                  f"{history.nct_id} at {server.int_url} (Ctrl-C stops)", markup=False)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()

