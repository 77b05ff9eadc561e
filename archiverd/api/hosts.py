"""The Host header: parsed strictly, and trusted only when it names this
server.

Every request's Host must parse (RFC 9112 3.2: exactly one in HTTP/1.1, a
host name of 1-63 character labels or an IP literal, an optional port);
anything else is a 400 before routing, so werkzeug never meets a host it
cannot encode. Location headers are made from ``public_url`` when it is set.
When it is not (local use), they are made from the Host header, which is
then served only if it names the listening address itself (its IP, and
``localhost`` on loopback), this machine's host name, or one of ``hosts``
from the config: a client cannot have archiverd hand out URLs, with their
signatures, that point at another server.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from typing import Any

_LABEL = r"[A-Za-z0-9_-]{1,63}"
_NAME = re.compile(rf"{_LABEL}(\.{_LABEL})*\Z")
_PORT = re.compile(r"(:[0-9]{0,5})?\Z")


def _normal(name: str) -> str:
    """A name as compared: lower case; an IP literal in its one spelling."""
    name = name.strip("[]").lower()
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name


def parse_host(value: bytes) -> tuple[str, str]:
    """``(name, ":port" or "")`` of a Host value; ValueError saying why it
    is not one."""
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError("the Host header is not ASCII") from None
    if text.startswith("["):
        literal, bracket, port = text[1:].partition("]")
        try:
            ipaddress.IPv6Address(literal if bracket else "")
        except ValueError:
            raise ValueError(f"bad IPv6 literal in Host {text!r}") from None
        name = f"[{literal}]"
    else:
        name, colon, rest = text.partition(":")
        port = colon + rest
        if len(name) > 253 or not _NAME.match(name):
            raise ValueError(f"bad host name in Host {text!r}")
    if not _PORT.match(port) or int(port[1:] or 0) > 65535:
        raise ValueError(f"bad port in Host {text!r}")
    return name, port


class HostCheck:
    """Which Host headers are served, and the base URL each answer uses."""

    def __init__(self, public_url: str | None, hosts: Iterable[str] = ()) -> None:
        self.public_url = public_url
        self.hosts = tuple(hosts)
        self._names = {_normal(h) for h in self.hosts} | {_normal(socket.gethostname())}
        #: (Host value, listening IP) -> the verdict of :meth:`problem`.
        self._verdicts: dict[tuple[bytes, str], str | None] = {}

    def _own(self, name: str, local: Any) -> bool:
        """Whether ``name`` is one of ours (``local``: the listening address
        the request came in on)."""
        name = _normal(name)
        if name in self._names:
            return True
        try:
            ip = ipaddress.ip_address(getattr(local, "host", ""))
        except ValueError:
            return False
        mapped = getattr(ip, "ipv4_mapped", None)
        own = {str(ip), str(mapped)} if mapped else {str(ip)}
        if ip.is_loopback or (mapped and mapped.is_loopback):
            own.add("localhost")
        return name in own

    def problem(self, request: Any) -> str | None:
        """Why this request's Host is refused (a 400), or None."""
        values = request.requestHeaders.getRawHeaders(b"host") or []
        if len(values) > 1:
            return "more than one Host header"
        if not values:
            if request.clientproto == b"HTTP/1.1":
                return "an HTTP/1.1 request needs a Host header"
            return None
        if not values[0]:
            return None  # allowed empty: the listening address is used
        # Remembered: on the hit path a client's Host is the same every time.
        local = request.getHost()
        seen = (values[0], getattr(local, "host", ""))
        if seen in self._verdicts:
            return self._verdicts[seen]
        verdict = self._verdict(values[0], local)
        if len(values[0]) <= 300:  # only what could parse; a bounded table
            if len(self._verdicts) >= 4096:
                self._verdicts.clear()
            self._verdicts[seen] = verdict
        return verdict

    def _verdict(self, value: bytes, local: Any) -> str | None:
        try:
            name, _ = parse_host(value)
        except ValueError as e:
            return str(e)
        if self.public_url is None and not self._own(name, local):
            return (
                f"Host {name!r} is not a name of this server: set public_url "
                "in archiverd's config (or add the name to hosts)"
            )
        return None

    def base_url(self, request: Any) -> str:
        """Where clients reach archiverd: public_url, else the request's
        (checked) Host, else the listening address."""
        if self.public_url:
            return self.public_url
        scheme = "https" if request.isSecure() else "http"
        host = (request.getHeader("host") or "").strip()
        if not host:
            address = request.getHost()
            name = getattr(address, "host", "127.0.0.1")
            name = f"[{name}]" if ":" in name else name
            host = f"{name}:{getattr(address, 'port', 80)}"
        return f"{scheme}://{host}"

    def served_names(self) -> str:
        """The names served without public_url, for the start-up warning."""
        names = ["the listening address", "localhost (on loopback)"]
        return ", ".join(names + sorted(self._names))
