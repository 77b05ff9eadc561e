"""archiverd-fetch checks a multipart S3 archive's sha256 on a 302, now that
the object carries it in a tag (which a download does not show) rather than
in metadata written by a second copy: the redirect names it."""

from __future__ import annotations

import hashlib

import pytest
import pytest_twisted
from daemon import s3_config
from test_fetch_end_to_end import fetch

from archiverd import wire

pytestmark = pytest.mark.integration


@pytest_twisted.ensureDeferred
async def test_fetch_checks_a_multipart_archive_on_a_302_cold_and_warm(
    hgweb, any_s3_buckets, tmp_path, start_archiverd
):
    """Cold (held until stored, then a 302) and warm at a daemon that did not
    store it (the sha256 read from the tag): both say the sha256, and a
    download that does not match it fails."""
    config = s3_config(hgweb.url_template, any_s3_buckets)
    config["tasks"]["hold"] = 30
    first = await start_archiverd(config)
    node = hgweb.node("big/repo", "tip")[:12]
    key = f"big/repo-{node}.zip"
    args = ["hgmo", "big/repo", node, "--suffix", "zip"]
    expected = hgweb.archive("big/repo", node, suffix="zip")
    sha256 = hashlib.sha256(expected).hexdigest()

    cold = tmp_path / "cold.zip"
    code, err = await fetch("--server", first.base_url, *args, "-o", str(cold))
    assert code == 0, err
    assert "no sha256" not in err
    assert cold.read_bytes() == expected
    assert first.daemon.tasks.get(key.replace("/", "_")) is not None  # it was cold
    head = any_s3_buckets.head("us-east-1", key)
    assert "sha256" not in head.get("Metadata", {})  # one write: no copy

    config["tasks"]["hold"] = 0
    second = await start_archiverd(config)
    response = await second.get(f"/archiver/hgmo/big/repo/{node}?suffix=zip")
    assert response.code == 302
    assert response.headers.getRawHeaders(wire.SHA256_HEADER) == [sha256]

    warm = tmp_path / "warm.zip"
    code, err = await fetch("--server", second.base_url, *args, "-o", str(warm))
    assert code == 0, err
    assert "no sha256" not in err
    assert warm.read_bytes() == expected

    # The stored bytes changed under the tag: the check catches it.
    any_s3_buckets.client("us-east-1").put_object(
        Bucket=any_s3_buckets.buckets["us-east-1"], Key=key, Body=b"not the archive"
    )
    code, err = await fetch(
        "--server", second.base_url, *args, "-o", str(tmp_path / "bad.zip")
    )
    assert code != 0
    assert f"sha256 mismatch: expected {sha256}" in err
