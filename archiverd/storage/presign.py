"""Presigned GET URLs for one bucket, made the way botocore makes them, at a
tenth of its cost.

A status poll hands out one presigned URL per region, and archiverd signs
polled tasks' URLs again every few minutes (``fresh_urls.py``): 2,000 URLs
for 1,000 tasks in 2 regions. botocore's ``generate_presigned_url`` spends
~0.18 ms of CPU on each (measured: serializing the operation, resolving the
endpoint from its rule set, emitting events, then the SigV4 itself), on a
storage thread that holds the GIL meanwhile, so the reactor thread answered
~10% fewer polls while a batch was being signed (docs/performance.md).

What varies between two such URLs of one bucket is only the key, the time
and the credentials; the endpoint, path style, signing region and query
layout do not. :class:`Presigner` learns those once from a URL botocore made
(for a probe key), then signs with the same SigV4 steps (canonical request,
string to sign, derived key, kept per day) and writes the URL in botocore's
own layout. Before it is used it must make, for several probe keys, exactly
the URL botocore made for them, byte for byte, at botocore's timestamp
(:meth:`Presigner.learn`); if any differs, or botocore's URL has anything
unexpected in it, ``learn`` returns None and the caller keeps botocore.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from botocore.auth import _host_from_url
from botocore.credentials import ReadOnlyCredentials
from botocore.utils import percent_encode

#: Keys the learning signs both ways: plain, nested, and ones that need
#: escaping (``@``, spaces, ``+``, ``%``, non-ASCII, ``~``).
PROBES = (
    "archiverd-probe/x.tar.gz",
    "@hgmo/a b+c%d~e/ü-42bf8560b395.tar.gz/testing/mozharness",
    "archiverd-probe/ash-0123456789ab.zip",
)
_AUTH = (
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
)
_TOKEN = "X-Amz-Security-Token"
_SIGNATURE = "X-Amz-Signature"


class Presigner:
    """Presigned GET URLs of one bucket's keys (see the module)."""

    def __init__(self, base: str, path: str, host: str, region: str) -> None:
        #: ``scheme://netloc`` and the path up to the key, as botocore has them.
        self._base = base
        self._path = path
        self._host = host
        self._region = region
        self._keys: dict[tuple[str, str, str], bytes] = {}

    @classmethod
    def learn(
        cls, botocore_url: Callable[[str], str], credentials: ReadOnlyCredentials
    ) -> Presigner | None:
        """A Presigner for the bucket ``botocore_url(key)`` signs keys of,
        if it makes botocore's URL for every probe key; else None."""
        first = urlsplit(botocore_url(PROBES[0]))
        quoted = percent_encode(PROBES[0], safe="/~")
        if not first.path.endswith(quoted):
            return None
        params = dict(parse_qsl(first.query, keep_blank_values=True))
        scope = params.get("X-Amz-Credential", "").split("/")
        if len(scope) != 5 or scope[3:] != ["s3", "aws4_request"]:
            return None
        signer = cls(
            f"{first.scheme}://{first.netloc}",
            first.path[: -len(quoted)],
            _host_from_url(first.geturl()),
            scope[2],
        )
        for key in PROBES:
            url = botocore_url(key)
            query = dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))
            expected = (
                set(_AUTH) | {_SIGNATURE} | ({_TOKEN} if credentials.token else set())
            )
            if set(query) != expected:
                return None  # parameters this signer does not write
            when = datetime.datetime.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ")
            ours = signer.sign(key, int(query["X-Amz-Expires"]), credentials, when)
            if ours != url:
                return None
        return signer

    def sign(
        self,
        key: str,
        expires: int,
        credentials: ReadOnlyCredentials,
        now: datetime.datetime | None = None,
    ) -> str:
        """The presigned GET URL of ``key``, valid ``expires`` seconds."""
        when = now or datetime.datetime.now(datetime.UTC)
        stamp = when.strftime("%Y%m%dT%H%M%SZ")
        day = stamp[:8]
        scope = f"{day}/{self._region}/s3/aws4_request"
        params = [
            ("X-Amz-Algorithm", "AWS4-HMAC-SHA256"),
            ("X-Amz-Credential", f"{credentials.access_key}/{scope}"),
            ("X-Amz-Date", stamp),
            ("X-Amz-Expires", str(expires)),
            ("X-Amz-SignedHeaders", "host"),
        ]
        if credentials.token is not None:
            params.append((_TOKEN, credentials.token))
        encoded = [(k, percent_encode(v)) for k, v in params]
        query = "&".join(f"{k}={v}" for k, v in encoded)
        path = self._path + percent_encode(key, safe="/~")
        canonical = "\n".join(
            (
                "GET",
                path,
                "&".join(f"{k}={v}" for k, v in sorted(encoded)),
                f"host:{self._host}\n",
                "host",
                "UNSIGNED-PAYLOAD",
            )
        )
        to_sign = "\n".join(
            (
                "AWS4-HMAC-SHA256",
                stamp,
                scope,
                hashlib.sha256(canonical.encode("utf-8")).hexdigest(),
            )
        )
        signature = hmac.new(
            self._signing_key(credentials.secret_key, day),
            to_sign.encode("utf-8"),
            hashlib.sha256,
        ).hexdigest()
        return f"{self._base}{path}?{query}&{_SIGNATURE}={signature}"

    def _signing_key(self, secret: str, day: str) -> bytes:
        """SigV4's derived key, kept for the day (and these credentials)."""
        cached = self._keys.get((secret, day, self._region))
        if cached is not None:
            return cached
        key = f"AWS4{secret}".encode()
        for part in (day, self._region, "s3", "aws4_request"):
            key = hmac.new(key, part.encode("utf-8"), hashlib.sha256).digest()
        self._keys = {(secret, day, self._region): key}  # one day's, one secret's
        return key


def frozen(credentials: Any) -> ReadOnlyCredentials | None:
    """botocore's credentials, frozen now (refreshed first if due; may ask
    the credential source, so call it off the reactor thread)."""
    if credentials is None:
        return None
    got: ReadOnlyCredentials = credentials.get_frozen_credentials()
    return got
