"""The `trialsync` command line. Each command lives in the module named for its group:

- fetching.py: sync, load-bulk, backfill
- maintenance.py: rederive, compact
- querying.py: sql, changes, history, runs, report
- alerts.py: alerts run | test | list
- compliance.py: compliance (FDAAA 801 results reporting)
- running.py: serve, demo, fake-registry
- main.py: the console script (one-line errors, exit codes, signals); common.py: what they share
"""

from flows.cli import alerts, compliance, fetching, maintenance, querying, running  # noqa: F401 - registers the commands
from flows.cli.alerts import finish_alerts
from flows.cli.common import app, print_summary
from flows.cli.fetching import run_backfill, run_bulk, run_sync
from flows.cli.main import main

__all__ = ["app", "finish_alerts", "main", "print_summary", "run_backfill", "run_bulk", "run_sync"]
