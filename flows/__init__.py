"""Thin Prefect flows and the ``trialsync`` CLI (the human door)."""

import os

# Offline-safe Prefect defaults (PLATFORM_NOTES); the environment can still override each one.
for _key, _value in {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}.items():
    os.environ.setdefault(_key, _value)
