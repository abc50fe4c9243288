"""Exceptions that carry their ids and know whether retrying can help (dlt-style)."""

from __future__ import annotations


class TrialsyncError(Exception):
    """Base class: an error a user can act on; its message is one line."""

    retryable: bool = False


class UsageError(TrialsyncError):
    """Bad input from the user (a flag, an id, a date, a file)."""


class BulkArchiveInvalid(UsageError):
    """The bulk file is not a complete, readable registry zip (a truncated download, a damaged member)."""


class BulkDownloadFailed(TrialsyncError):
    """The bulk file's download failed (network, an HTTP error status, a body that is no zip): a failed
    run (exit 1), not bad input; what came is kept in ``.part`` for the next run."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class RegistryError(TrialsyncError):
    """The registry answered in a way we cannot use."""

    def __init__(
        self,
        message: str,
        *,
        url: str,
        status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.url = url
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after


class RegistryUnavailable(RegistryError):
    """429, 5xx, timeouts, resets, truncated bodies: worth retrying."""

    def __init__(self, message: str, *, url: str, status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message, url=url, status=status, retryable=True, retry_after=retry_after)


class RegistryRejected(RegistryError):
    """400: the registry refused the request (bad parameter, expired page token)."""


class PageTokenRejected(RegistryRejected):
    """400 to a request with a ``pageToken``: the token expired (or the registry lost it); the walk
    over the pages has to start again from the first page."""


class RegistryNotFound(RegistryError):
    """404: no such study or endpoint. ``page``: the answer was a web page (HTML) or JSON, not the
    registry's plain-text error: a proxy's, a CDN's or an API gateway's, which says nothing about a study."""

    page: bool = False


class RegistryWrongStudy(RegistryError):
    """``GET /studies/{id}`` answered with the record of another study that does not hold the id as an
    alias (a cache or proxy answering for the wrong study): not the study's record, and no word on it."""


class HistoryFormatError(RegistryError):
    """The registry's undocumented history API answered in a shape we do not know (its format changed)."""


class RecordInvalid(TrialsyncError):
    """A registry record that does not fit the schema; it is quarantined, not stored."""

    def __init__(self, reason: str, *, nct_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.nct_id = nct_id


class WarehouseBusy(TrialsyncError):
    """Another sync holds the warehouse's writer lock."""


class WarehouseError(TrialsyncError):
    """The warehouse directory is not usable (not a warehouse, corrupt catalog, ...)."""


class WarehouseMissing(UsageError, WarehouseError):
    """No warehouse where one was named (``--warehouse``, ``TRIALSYNC_WAREHOUSE``): bad input, exit 2."""


class DeliveryFailed(TrialsyncError):
    """An alert channel did not take a message; ``retryable`` for HTTP 5xx, 408/409/423/425/429 or a
    403 with a valid ``Retry-After``, SMTP 4xx and a full mailbox, timeouts and resets.

    ``permanent``: the receiver refused this message for good (any other HTTP 4xx, SMTP 5xx): sending
    it again unchanged cannot help, so the outbox marks it rejected instead of re-sending it on every
    run. ``retry_after``: the seconds the receiver asked to wait (``Retry-After``)."""

    def __init__(self, message: str, *, retryable: bool = False, permanent: bool = False,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.permanent = permanent
        self.retry_after = retry_after
