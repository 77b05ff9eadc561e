"""Domain errors, each mapped to an HTTP answer or a task status in one place."""

from __future__ import annotations


class BadRequest(Exception):
    """Input that archiverd refuses (HTTP 400); the message is for the client."""


class NotFound(Exception):
    """Something the client named does not exist (HTTP 404)."""


class Forbidden(Exception):
    """Refused: a signed URL expired or altered, a repo not served (HTTP 403)."""


class UpstreamError(Exception):
    """Upstream could not give the archive; the message is for people."""

    #: True when asking again cannot help (the archive does not exist, or
    #: is too large): what old clients are told as the old service told them.
    permanent = False


class UpstreamRefused(UpstreamError):
    """Upstream answered that the archive does not exist (404, 403, 410).

    Retrying will not help; clients see upstream's own words.
    """

    permanent = True

    def __init__(self, host: str, code: int, url: str, message: str) -> None:
        self.code = code
        self.url = url
        text = f"{host} answered {code} for {url}"
        super().__init__(f"{text}: {message}" if message else text)


class TooLarge(UpstreamError):
    """The archive exceeds the source's ``max_archive_bytes``."""

    permanent = True


class UpstreamUnavailable(UpstreamError):
    """Upstream could not be reached, failed (5xx), or broke off."""


class StorageError(Exception):
    """Storage failed in a region."""


class Busy(Exception):
    """Too much unfinished work to take more (HTTP 503 with Retry-After)."""


class FleetUnavailable(Exception):
    """The fleet's shared state (Redis) could not be reached or did not
    answer in time (HTTP 503)."""
