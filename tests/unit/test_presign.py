"""archiverd's presigner (archiverd/storage/presign.py) makes botocore's own
URLs, byte for byte, for every endpoint shape and key; where it cannot,
archiverd signs with botocore."""

from __future__ import annotations

import datetime
from typing import Any

import botocore.auth
import botocore.session
import pytest
from botocore.credentials import ReadOnlyCredentials as Credentials
from twisted.logger import capturedLogs

from archiverd.storage.presign import Presigner
from archiverd.storage.s3 import S3Storage

WHEN = datetime.datetime(2026, 12, 2, 5, 6, 7)
KEYS = [
    "ash-42bf8560b395.tar.gz",
    "mozilla-central-0123456789ab.tar.gz/testing/mozharness",
    "@hgmo/projects/ash-tip@42bf8560b395.zip",
    "spaces and+plus/%41/~tilde/ünïcødé/日本.tar.bz2",
    "a//double/slash/",
    "!$&'()*,;=:@[]{}|^`\"<>#?.tar.gz",
]
SHAPES = [
    # endpoint_url, addressing_style, region, bucket
    ("http://127.0.0.1:9000", "path", "region-0", "bench-0"),
    ("http://localhost:80", "path", "us-east-1", "b"),
    ("https://s3.example.com:443", "virtual", "eu-west-1", "my-bucket"),
    ("https://minio.internal:9443", "path", "us-west-2", "Bucket.With.Dots"),
    (None, None, "us-east-1", "archives"),
    (None, None, "eu-central-1", "archives-eu"),
    (None, "path", "ap-southeast-2", "archives.au"),
]


def _session(token: str | None) -> Any:
    session = botocore.session.get_session()
    session.set_credentials(
        "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token
    )
    return session


def _storage(shape: tuple[Any, ...], token: str | None) -> S3Storage:
    endpoint, style, region, bucket = shape
    storage = S3Storage(
        {region: bucket},
        endpoint_url=endpoint,
        addressing_style=style,
        session=_session(token),
    )
    storage.open()
    return storage


@pytest.fixture
def frozen_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore signs at WHEN."""
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: WHEN)


@pytest.mark.parametrize("token", [None, "FwoGZXIvYXdzE/token+with=signs"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}-{s[1]}-{s[2]}")
def test_the_presigner_makes_botocores_url_for_every_key(
    shape: tuple[Any, ...], token: str | None, frozen_time: None
) -> None:
    storage = _storage(shape, token)
    region = shape[2]
    credentials = Credentials(
        "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token
    )
    presigner = Presigner.learn(
        lambda k: storage._botocore_url(region, k, 300), credentials
    )
    assert presigner is not None
    for key in KEYS:
        for expires in (1, 300, 604800):
            assert presigner.sign(key, expires, credentials, WHEN) == (
                storage._botocore_url(region, key, expires)
            )


@pytest.mark.parametrize("shape", SHAPES[:1] + SHAPES[4:5])
def test_storage_hands_out_the_presigners_urls(
    shape: tuple[Any, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = _storage(shape, None)
    region = shape[2]
    url = storage.signed_url(region, KEYS[1], 300)
    assert storage._presigners[region] is not None
    # The URL carries its own time: botocore, signing at that time, agrees.
    stamp = url.split("X-Amz-Date=")[1][:16]
    when = datetime.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ")
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: when)
    assert url == storage._botocore_url(region, KEYS[1], 300)


def test_a_url_shape_it_does_not_know_is_left_to_botocore() -> None:
    """botocore adding a parameter this signer does not write (as a later
    release might): the presigner is not used, and says so once."""
    storage = _storage(SHAPES[0], None)
    real = storage._botocore_url
    storage._botocore_url = lambda r, k, e: real(r, k, e) + "&x-id=GetObject"  # type: ignore[method-assign]
    with capturedLogs() as events:
        url = storage.signed_url("region-0", "k", 300)
        storage.signed_url("region-0", "k2", 300)
    assert url.endswith("&x-id=GetObject")
    assert storage._presigners["region-0"] is None
    assert sum("with botocore" in e["log_format"] for e in events) == 1


def test_a_signature_it_would_get_wrong_is_left_to_botocore(frozen_time: None) -> None:
    """Any difference from botocore's URL for a probe key, however small,
    and learning refuses."""
    storage = _storage(SHAPES[0], None)
    credentials = Credentials(
        "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", None
    )

    def other_secret(key: str) -> str:
        return storage._botocore_url("region-0", key, 300)

    wrong = Credentials("AKIDEXAMPLE", "another secret", None)
    assert Presigner.learn(other_secret, credentials) is not None
    assert Presigner.learn(other_secret, wrong) is None


def test_no_credentials_means_botocore_signs() -> None:
    session = botocore.session.get_session()
    session.set_credentials("a", "b")
    storage = S3Storage({"r": "b"}, endpoint_url="http://127.0.0.1:9", session=session)
    storage.open()
    storage._credentials = None
    assert "X-Amz-Signature=" in storage.signed_url("r", "k", 60)
    assert storage._presigners == {}
