"""Thin Prefect flows and the ``trialsync`` CLI (the human door)."""

import os
import warnings

# Offline-safe Prefect defaults (PLATFORM_NOTES); the environment can still override each one.
for _key, _value in {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}.items():
    os.environ.setdefault(_key, _value)

# Prefect warns on import when PREFECT_HOME cannot be created (two lines with a source line); the command
# that needs it says so in its own one line (serve, Prefect's temporary server).
warnings.filterwarnings("ignore", message="Failed to create the Prefect home directory", category=UserWarning)
