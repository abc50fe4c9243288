"""Ad hoc commands, wall and CPU time, on the demo's warehouse: how each way of running flows costs.

``python -m bench.commands [--repeat 3]`` (issue 17's first two rows):
1. builds the demo's warehouse (``trialsync demo``) in a scratch directory;
2. serves the same records (326 real + the seed trial) from a fake registry and the demo's webhook;
3. times, as a user runs them, ``sync --ids NCT07011004 --request-interval 0``, ``rederive``,
   ``compact`` and ``alerts run`` in three set-ups:
   - ``in process``: no Prefect server configured (the default: the flow's functions run in process);
   - ``Prefect server``: ``PREFECT_API_URL`` names a running ``prefect server start`` (flow runs);
   - ``temporary server``: ``TRIALSYNC_ENGINE=prefect`` without a server (Prefect starts its own,
     what every command did before);
4. writes the section between ``<!-- commands:begin -->`` and ``<!-- commands:end -->`` of
   ``--results`` (default bench/RESULTS.md). Each number is the median of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from bench.run import BIN, REPO, Step, measure, prefect_server

BEGIN, END = "<!-- commands:begin -->", "<!-- commands:end -->"
TARGETS = {"sync": 3.0, "rederive": 2.0, "compact": 2.0, "alerts run": 2.0}


def commands(registry_url: str, warehouse: Path, watchlist: Path) -> dict[str, list[str]]:
    trialsync = str(BIN / "trialsync")
    return {
        "sync": [trialsync, "sync", "-q", "--ids", "NCT07011004", "--request-interval", "0", "--api-url",
                 registry_url, "--warehouse", str(warehouse)],
        "rederive": [trialsync, "rederive", "--warehouse", str(warehouse)],
        "compact": [trialsync, "compact", "--warehouse", str(warehouse)],
        "alerts run": [trialsync, "alerts", "run", "--config", str(watchlist), "--warehouse", str(warehouse)],
    }


def run(repeat: int, data: Path) -> tuple[dict[str, dict[str, list[Step]]], str]:
    from flows.demo import seed_record
    from flows.webhook_receiver import WebhookReceiver
    from pipeline.registry.fake_server import FakeRegistry, load_records

    workdir = Path(tempfile.mkdtemp(prefix="commands-", dir=REPO / "bench" / "out"))
    plain = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "TRIALSYNC_ENGINE")}
    plain["PREFECT_HOME"] = str(workdir / "prefect-home")
    os.environ.clear()
    os.environ.update(plain)
    try:
        measure("demo", [str(BIN / "trialsync"), "demo", "--workdir", str(workdir / "demo"), "--data", str(data)])
        warehouse, watchlist = workdir / "demo" / "warehouse", workdir / "demo" / "watchlist.yaml"
        results: dict[str, dict[str, list[Step]]] = {}
        records = [*load_records(data / "ctgov" / "studies"), seed_record()]
        with FakeRegistry(records).start() as registry, WebhookReceiver() as inbox:
            os.environ["TRIALSYNC_DEMO_WEBHOOK_URL"] = f"{inbox.url}/alerts"
            cmds = commands(registry.url, warehouse, watchlist)
            setups = {"in process": {}, "temporary server": {"TRIALSYNC_ENGINE": "prefect"}}
            with prefect_server(workdir) as api:
                setups["Prefect server"] = {"PREFECT_API_URL": api}
                for setup, env in setups.items():
                    print(f"bench: {setup}", flush=True)
                    results[setup] = {name: [measure(name, cmd, env) for _ in range(repeat)]
                                      for name, cmd in cmds.items()}
        return results, str(workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def section(results: dict[str, dict[str, list[Step]]], repeat: int, started: datetime) -> str:
    def median(steps: list[Step], attr: str) -> float:
        return statistics.median(getattr(s, attr) for s in steps)

    lines = [BEGIN, "", f"Measured {started:%Y-%m-%d %H:%M} UTC by `python -m bench.commands --repeat {repeat}` "
             "on the demo's warehouse (327 studies), median of each; load avg = the 1-minute load average "
             "before the step (above ~2, other jobs were taking CPU from it).", "",
             "| command | set-up | wall s | CPU s | peak RSS (MB, tree) | load avg | target (wall) | wall met "
             "| CPU s within it (idle-machine wall) |",
             "|---|---|---:|---:|---:|---:|---:|---|---|"]
    for name, target in TARGETS.items():
        for setup, by_command in results.items():
            steps = by_command[name]
            wall = median(steps, "seconds")
            cpu = median(steps, "cpu_seconds")
            met = "yes" if wall <= target else "**no**"
            cpu_met = "yes" if cpu <= target else "**no**"
            lines.append(f"| `{name}` | {setup} | {wall:.2f} | {cpu:.1f} | "
                         f"{median(steps, 'peak_rss_mb'):,.0f} | {median(steps, 'load_before'):.1f} | "
                         f"≤ {target:.0f} s | {met} | {cpu_met} |")
    lines += ["", END]
    return "\n".join(lines)


def write(path: Path, text: str, begin: str = BEGIN, end: str = END) -> None:
    """Replace the measured section between ``begin`` and ``end``, or append it under its own heading."""
    old = path.read_text() if path.exists() else "# Benchmark results\n"
    if begin in old and end in old:
        new = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: text, old, flags=re.S)
    else:
        new = old.rstrip("\n") + "\n\n## Ad hoc commands (issue 17)\n\n" + text + "\n"
    path.write_text(new)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="ad hoc commands: in process vs a Prefect server vs a temporary one")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "RESULTS.md")
    args = parser.parse_args(argv)
    (REPO / "bench" / "out").mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC)
    results, _ = run(args.repeat, args.data.resolve())
    text = section(results, args.repeat, started)
    write(args.results, text)
    print(text)


if __name__ == "__main__":
    main()
