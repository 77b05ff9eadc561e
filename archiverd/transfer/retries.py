"""Upstream failures that may pass, named for people and for metrics.

A connection that fails or a 5xx answer is retried (``Source.get``); while
it is, the task's status says why and when the next attempt comes, in the
words of :func:`retry_status`, and ``archiverd_upstream_retries_total``
counts the retry by its cause (one of :data:`CAUSES`).
"""

from __future__ import annotations

from twisted.internet import error
from twisted.web.client import ResponseFailed, ResponseNeverReceived

#: Every cause a retry is counted under, with how it reads in a status.
CAUSES = {
    "dns": "DNS lookup failed",
    "refused": "connection refused",
    "timeout": "connection timed out",
    "reset": "connection closed before an answer",
    "tls": "TLS handshake failed",
    "unreachable": "no route to host",
    "other": "connection failed",
    "5xx": "",  # an answer: its code says it
}


class Retryable(Exception):
    """A failure that may pass: connection trouble or a 5xx.

    ``str()`` is the full message (with the URL, for logs and the final
    FAILURE); ``short`` the cause as a status shows it, ``cause`` its label.
    """

    def __init__(self, message: str, cause: str, short: str) -> None:
        super().__init__(message)
        self.cause = cause
        self.short = short


def connection_cause(e: BaseException) -> str:
    """The label of a failed connection or request (a key of CAUSES)."""
    reasons = [r.value for r in getattr(e, "reasons", None) or ()]
    for value in reasons or [e]:
        if isinstance(value, error.DNSLookupError):
            return "dns"
        if isinstance(value, error.ConnectionRefusedError):
            return "refused"
        if isinstance(value, error.TCPTimedOutError | error.TimeoutError):
            return "timeout"
        if isinstance(value, error.NoRouteError):
            return "unreachable"
        if type(value).__module__.startswith("OpenSSL"):
            return "tls"
        if isinstance(
            value,
            error.ConnectionLost
            | error.ConnectionDone
            | ResponseNeverReceived
            | ResponseFailed,
        ):
            return "reset"
    return "other"


def unreachable(host: str, cause: str) -> str:
    """``cannot reach hg.mozilla.org (DNS lookup failed)``."""
    return f"cannot reach {host} ({CAUSES[cause]})"


def retry_status(short: str, attempt: int, attempts: int, delay: float) -> str:
    """The status of a task waiting to ask upstream again: ``Retrying:
    cannot reach hg.mozilla.org (DNS lookup failed); attempt 2 of 4, next in
    5 s`` (``attempt`` is the one to come)."""
    return (
        f"Retrying: {short}; attempt {attempt} of {attempts}, "
        f"next in {round(delay, 1):g} s"
    )
