"""archiverd-fetch's HTTP: one response type, the opener, and reading answers.

The client follows redirects and retries itself (it must tell a 302 to storage
from a 202 to poll, and honour ``Retry-After``), so the opener here never
follows a redirect and never raises for an HTTP status.

It asks archiverd to hold its requests until the task finishes (RFC 7240's
``Prefer: wait=N``); a server that did says so in ``Preference-Applied``
(:func:`applied_wait`).
"""

from __future__ import annotations

import email.utils
import http.client
import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import urlsplit

from archiverd import __version__

#: The program's name: in its User-Agent and at the start of every message.
PROG = "archiverd-fetch"
#: The longest Retry-After honoured, so a bad header cannot park a CI job.
MAX_RETRY_AFTER = 300.0


@dataclass
class Answer:
    """One HTTP response: status, headers, and the body as a stream."""

    status: int
    headers: Any  # email.message.Message-like: case-insensitive .get()
    body: IO[bytes]
    url: str

    def header(self, name: str) -> str | None:
        """The header's value, or None when it was not sent."""
        value = self.headers.get(name)
        return None if value is None else str(value)

    def close(self) -> None:
        """Release the connection."""
        self.body.close()


#: Opens a URL with a socket timeout and extra request headers; never follows
#: redirects and never raises for an HTTP status, only for transport errors
#: (OSError, HTTPException).
Opener = Callable[[str, float, Mapping[str, str]], Answer]

#: ``wait=N`` in a ``Preference-Applied`` header (RFC 7240 section 4.3); N
#: may have a fraction (archiverd's ``max_wait`` may, and it says what it used).
_WAIT = re.compile(
    r"(?:^|[,;\s])wait\s*=\s*\"?(\d{1,9}(?:\.\d+)?)\"?\s*(?:[,;]|$)", re.I
)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def urllib_opener() -> Opener:
    """The real :data:`Opener`, on urllib (environment proxies honoured)."""
    opener = urllib.request.build_opener(_NoRedirect)
    agent = f"{PROG}/{__version__}"

    def open_url(url: str, timeout: float, headers: Mapping[str, str]) -> Answer:
        request = urllib.request.Request(url, headers={**headers, "User-Agent": agent})
        try:
            response = opener.open(request, timeout=timeout)
        except urllib.error.HTTPError as e:
            return Answer(e.code, e.headers, e, url)
        return Answer(response.status, response.headers, response, url)

    return open_url


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta or HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def applied_wait(value: str | None) -> float | None:
    """The seconds of ``wait=N`` in a ``Preference-Applied`` header: how long
    the server would hold the request for its task; None when not said."""
    match = _WAIT.search(value.strip()) if value else None
    return float(match.group(1)) if match else None


def error_text(answer: Answer) -> str:
    """archiverd's ``{"error": ...}``, or the start of whatever came back."""
    try:
        raw = answer.body.read(4096)
    except (OSError, http.client.HTTPException):
        raw = b""
    try:
        return str(json.loads(raw)["error"])
    except (ValueError, KeyError, TypeError):
        text = raw.decode("utf-8", "replace").strip()
        return " ".join(text.split())[:200] or http.client.responses.get(
            answer.status, "error"
        )


def origin(url: str) -> str:
    """``scheme://host[:port]`` of a URL, to name a server in messages."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
