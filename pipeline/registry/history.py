"""The registry's record history: its website's internal API, beside the v2 client and over its transport.

``HistoryClient`` reuses a ``RegistryClient``'s session, pacing and retries (one request per
``min_interval``; 429/5xx/timeouts retried, honouring Retry-After). The internal API lives at
``https://clinicaltrials.gov/api/int``: its URL is the v2 URL with the trailing ``/api/v2`` replaced.
Every answer is validated by ``pipeline.history``; an unknown shape raises ``HistoryFormatError``.
"""

from __future__ import annotations

from typing import Any

from pipeline.errors import UsageError
from pipeline.history import HistoryIndex, parse_history_index, parse_history_version
from pipeline.registry.client import RegistryClient

V2_SUFFIX = "/api/v2"
INT_SUFFIX = "/api/int"


def internal_api_url(v2_url: str) -> str:
    """``https://clinicaltrials.gov/api/v2`` -> ``https://clinicaltrials.gov/api/int``."""
    url = v2_url.rstrip("/")
    if not url.endswith(V2_SUFFIX):
        raise UsageError(f"cannot find the registry's history API from {v2_url!r}: the API URL must end "
                         f"with {V2_SUFFIX} (its history lives beside it, at {INT_SUFFIX})")
    return url[: -len(V2_SUFFIX)] + INT_SUFFIX


class HistoryClient:
    """``/api/int/studies/{NCT}/history``, ``?history=true`` and ``/history/{v}``, strictly validated."""

    def __init__(self, client: RegistryClient, int_url: str | None = None) -> None:
        self.client = client
        self.base_url = (int_url or internal_api_url(client.base_url)).rstrip("/")

    def index(self, nct_id: str) -> HistoryIndex:
        """The change index: ``{"changes": [...], "lastUpdateVersions": {...}, ...}``."""
        path = f"/studies/{nct_id}/history"
        body = self._get(path, {})
        return parse_history_index(body, nct_id, url=self.base_url + path)

    def index_with_study(self, nct_id: str) -> tuple[HistoryIndex, dict[str, Any]]:
        """The website's study document with the index nested under ``history`` (one request for both)."""
        path = f"/studies/{nct_id}"
        body = self._get(path, {"history": "true"})
        index = parse_history_index(body, nct_id, url=self.base_url + path, nested=True)
        return index, body["study"]

    def version(self, nct_id: str, version: int) -> dict[str, Any]:
        """The record exactly as it was at ``version`` (0 = first posted)."""
        path = f"/studies/{nct_id}/history/{version}"
        body = self._get(path, {})
        return parse_history_version(body, nct_id, version, url=self.base_url + path)

    def _get(self, path: str, params: dict[str, str]) -> Any:
        return self.client._get_json(path, params, base=self.base_url)
