"""What an hgweb upstream says was pushed to a repo.

Two ways, found out per repo on its first poll, not configured:

- **pushlog** (hg.mozilla.org: Mozilla's pushlog extension):
  ``/<repo>/json-pushes?version=2&tipsonly=1&startID=<last seen>`` lists the
  pushes after the last one seen, each with its head (push ids only grow): one
  request per poll.
- **heads** (a plain ``hg serve``, which answers ``json-pushes`` with "method
  not found"): ``json-branches`` and ``json-bookmarks`` give every open
  branch's and bookmark's node; a node not seen at the last poll is new: two
  requests per poll.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from twisted.internet.interfaces import IReactorTime

from archiverd.errors import UpstreamUnavailable
from archiverd.keys import FULL_REV_LENGTH, is_changeset_id
from archiverd.transfer.client import read_limited
from archiverd.transfer.sources import Source

PUSHLOG = "pushlog"
HEADS = "heads"
#: A poll's answer is small JSON; a longer one is an error, not read on.
JSON_LIMIT = 4 * 1024 * 1024


@dataclass(frozen=True)
class Push:
    """A new head: a push's (pushlog), or a branch's or bookmark's (heads)."""

    node: str
    #: The push id, or the branch or bookmark name.
    name: str
    user: str = ""
    date: float = 0.0


class NotPushlog(Exception):
    """Upstream has no pushlog for this repo: watch its heads instead."""


class HgwebFeed:
    """Asks one hgweb source about its repos (through the source's own
    client: its credentials, retries and timeouts)."""

    def __init__(self, source: Source, clock: IReactorTime) -> None:
        self.source = source
        self._clock = clock
        template = source.credentials.url_template
        self._base = template[: template.index("{repo}")]

    def url(self, repo: str, page: str) -> str:
        return f"{self._base}{quote(repo, safe='/')}/{page}"

    async def _json(self, url: str) -> tuple[int, Any]:
        """The status and decoded JSON body (None if not JSON) of a GET."""
        source = self.source
        response = await source.get(url, headers={"Accept": ["application/json"]})
        idle = source.config.idle_timeout
        body = await read_limited(
            response, JSON_LIMIT, clock=self._clock, idle=idle, total=idle
        )
        try:
            return response.code, json.loads(body)
        except ValueError:
            return response.code, None

    async def index(self) -> list[str]:
        """Every repo hgweb's index lists (to expand patterns)."""
        code, found = await self._json(f"{self._base}?style=json")
        entries = found.get("entries") if isinstance(found, dict) else None
        if code != 200 or not isinstance(entries, list):
            raise UpstreamUnavailable(f"{self.source.host}: no JSON index (got {code})")
        names = [e.get("name") for e in entries if isinstance(e, dict)]
        return [n.strip("/") for n in names if isinstance(n, str) and n.strip("/")]

    async def pushes(self, repo: str, after: int | None) -> tuple[int, list[Push]]:
        """The last push id and the pushes after ``after`` (None: none, only
        the last id). Raises :class:`NotPushlog` when there is no pushlog."""
        start = "" if after is None else f"&startID={after}"
        url = self.url(repo, f"json-pushes?version=2&tipsonly=1{start}")
        code, found = await self._json(url)
        if isinstance(found, dict) and isinstance(found.get("lastpushid"), int):
            pushes = []
            raw = found.get("pushes") or {}
            for push_id, push in raw.items() if isinstance(raw, dict) else ():
                if not isinstance(push, dict) or not str(push_id).isdigit():
                    continue
                changesets = [c for c in push.get("changesets") or () if _is_node(c)]
                if after is not None and changesets and int(push_id) > after:
                    pushes.append(
                        Push(
                            changesets[-1],
                            str(push_id),
                            str(push.get("user", "")),
                            float(push.get("date") or 0),
                        )
                    )
            pushes.sort(key=lambda p: int(p.name))
            return found["lastpushid"], pushes
        if _no_method(code, found):
            raise NotPushlog()
        raise UpstreamUnavailable(
            f"{self.source.host} answered {code} for {self.source.shown(url)}"
        )

    async def heads(self, repo: str) -> dict[str, Push]:
        """Every open branch's and bookmark's head, by node."""
        found: dict[str, Push] = {}
        for page, listing, name_key in (
            ("json-branches", "branches", "branch"),
            ("json-bookmarks", "bookmarks", "bookmark"),
        ):
            url = self.url(repo, page)
            code, answer = await self._json(url)
            entries = answer.get(listing) if isinstance(answer, dict) else None
            if code != 200 or not isinstance(entries, list):
                raise UpstreamUnavailable(
                    f"{self.source.host} answered {code} for {self.source.shown(url)}"
                )
            for entry in entries:
                if not isinstance(entry, dict) or entry.get("status") == "closed":
                    continue
                node = str(entry.get("node"))
                if _is_node(node) and node not in found:
                    date = entry.get("date")
                    when = date[0] if isinstance(date, list) and date else 0
                    found[node] = Push(
                        node, str(entry.get(name_key, "")), date=float(when or 0)
                    )
        return found


def _is_node(value: object) -> bool:
    return (
        isinstance(value, str)
        and len(value) == FULL_REV_LENGTH
        and is_changeset_id(value)
        and value != "0" * FULL_REV_LENGTH
    )


def _no_method(code: int, found: Any) -> bool:
    """hgweb's answer for a web command it does not have."""
    error = found.get("error") if isinstance(found, dict) else None
    return code in (400, 404) and isinstance(error, str) and "method not" in error
