"""What a request says about its client: how long it will wait for an answer
(``Prefer: wait=N``, RFC 7240), and whether it is an old client that stops
polling only on SUCCESS."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

from twisted.web.iweb import IRequest

_WAIT = re.compile(rb"(?:^|[,;\s])wait\s*=\s*\"?(\d{1,9})\"?\s*(?:[,;]|$)", re.I)


def preferred_wait(request: IRequest) -> int | None:
    """The seconds of a ``Prefer: wait=N`` preference, or None without one."""
    for value in request.requestHeaders.getRawHeaders(b"prefer", ()):
        match = _WAIT.search(value.strip())
        if match:
            return int(match.group(1))
    return None


class LegacyClients:
    """User-Agent patterns (``*``: any run of characters) of clients that
    stop polling only on SUCCESS, such as RelengAPI's archiver_client.py
    (``Python-urllib/2.7``)."""

    def __init__(self, patterns: Iterable[str]) -> None:
        alternatives = [".*".join(map(re.escape, p.split("*"))) for p in patterns]
        self._match = (
            re.compile("(?:" + "|".join(alternatives) + r")\Z").match
            if alternatives
            else None
        )

    def __contains__(self, request: IRequest) -> bool:
        if self._match is None:
            return False
        agent = request.getHeader(b"user-agent")
        return agent is not None and self._is_legacy(agent)

    @functools.lru_cache(maxsize=256)  # noqa: B019 (few agents; lives with the app)
    def _is_legacy(self, agent: bytes) -> bool:
        assert self._match is not None
        return self._match(agent.decode("latin-1")) is not None
