"""What a source sends upstream to prove who it is, and what it shows.

A source's credentials come from its config: the userinfo of its
``url_template`` (``https://deploy:pass@host/...``, sent as HTTP Basic
auth, never in the URL), its ``headers`` (``Authorization``,
``PRIVATE-TOKEN``...) and any secret query value in the template
(``?private_token=...``, kept in the URL upstream is asked for). None of them
is ever shown: every URL a source puts in a status, an error or a log line
is its :meth:`Credentials.shown` form.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit, urlunsplit

from archiverd.config import SourceConfig
from archiverd.redact import redact_text


@dataclass(frozen=True)
class Credentials:
    """A source's URL templates without userinfo, and the headers it sends."""

    url_template: str
    rev_url_template: str
    headers: Mapping[str, tuple[str, ...]]

    @classmethod
    def of(cls, config: SourceConfig) -> Credentials:
        template, userinfo = _without_userinfo(config.url_template)
        headers = {name: (value,) for name, value in config.headers.items()}
        if userinfo is not None:
            user, _, password = userinfo.partition(":")
            pair = f"{unquote(user)}:{unquote(password)}".encode()
            headers["Authorization"] = ("Basic " + base64.b64encode(pair).decode(),)
        rev_template = _without_userinfo(config.resolved_rev_url_template)[0]
        return cls(template, rev_template, headers)

    @staticmethod
    def shown(url: str) -> str:
        """``url`` as it may be shown: no userinfo, no secret query value."""
        return redact_text(url)

    def with_headers(
        self, headers: Mapping[str, list[str]] | None
    ) -> dict[str, list[str]]:
        """The headers of one request upstream: ``headers`` and the source's."""
        sent = {name: list(values) for name, values in (headers or {}).items()}
        sent.update((name, list(values)) for name, values in self.headers.items())
        return sent


def _without_userinfo(template: str) -> tuple[str, str | None]:
    """``template`` without its userinfo, and the userinfo (None if none)."""
    parts = urlsplit(template)
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at:
        return template, None
    return urlunsplit(parts._replace(netloc=host)), userinfo
