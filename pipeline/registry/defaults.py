"""The registry's address and pace by default: constants the command line needs without the HTTP client
(importing it, with requests and tenacity, costs every command ~0.2 s of start-up)."""

DEFAULT_API_URL = "https://clinicaltrials.gov/api/v2"
DEFAULT_INTERVAL = 1.25  # seconds between requests: 48 a minute, under the ~50/min reported per IP
