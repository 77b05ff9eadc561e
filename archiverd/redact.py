"""What must never be shown: secrets in URLs, wherever a URL is written.

A URL archiverd shows (a task's ``src_url``, an error's text, a log line)
carries no credentials: userinfo (``https://user:pass@host/``) becomes
``REDACTED@``, and the value of every query parameter that holds a secret
becomes ``REDACTED``: archiverd's own ``signature``, S3's (``Signature``,
``AWSAccessKeyId``, ``X-Amz-Signature``, ``X-Amz-Credential``,
``X-Amz-Security-Token``) and an upstream's (``private_token``,
``access_token``, ``token``, ``password``, ``secret``, ``api_key``...).
A value ends at ``&``, white space, a quote or a backslash (which end it in
a JSON line or a repr, and never occur in a real one).
"""

from __future__ import annotations

import re

_NAMES = r"signature|credential|token|accesskeyid|password|passwd|secret|key"
_PARAM = rf"({_NAMES})=[^&#\s\"'\\]*"
#: userinfo: after "scheme://", up to "@", within one host part.
_USERINFO = r"(://)[^/?#@\s\"'\\]+@"
_BYTES = re.compile(rf"{_PARAM}|{_USERINFO}".encode(), re.I)
_TEXT = re.compile(rf"{_PARAM}|{_USERINFO}", re.I)
_NEEDLES = tuple(f"{n}=" for n in _NAMES.split("|")) + ("@",)
_NEEDLE_BYTES = tuple(n.encode() for n in _NEEDLES)


def has_secret(text: bytes) -> bool:
    """A cheap first test, true for anything :func:`redact` would change
    (most lines, every hit and poll, carry no secret)."""
    lower = text.lower()
    return any(needle in lower for needle in _NEEDLE_BYTES)


def _bytes_sub(match: re.Match[bytes]) -> bytes:
    if match.group(1) is not None:
        return match.group(1) + b"=REDACTED"
    return b"://REDACTED@"


def _text_sub(match: re.Match[str]) -> str:
    if match.group(1) is not None:
        return match.group(1) + "=REDACTED"
    return "://REDACTED@"


def redact(text: bytes) -> bytes:
    """``text`` with every secret in a URL replaced by ``REDACTED``."""
    return _BYTES.sub(_bytes_sub, text) if has_secret(text) else text


def redact_text(text: str) -> str:
    """:func:`redact` for text."""
    lower = text.lower()
    if not any(needle in lower for needle in _NEEDLES):
        return text
    return _TEXT.sub(_text_sub, text)
