"""Quick checks that the integration fixtures behave as the tests assume."""

from __future__ import annotations

import http.client
import io
import socket
import tarfile
import urllib.error
import zipfile

import pytest
from fixtures import MIB, free_port, http_get

pytestmark = pytest.mark.integration

ASH = "projects/ash"


def tar_names(data: bytes) -> list[str]:
    """Member names of a tar.gz held in memory."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return tar.getnames()


def test_free_port_is_bindable():
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_archive_at_tip_is_a_tar_gz(hgweb):
    data = hgweb.archive(ASH, "tip")
    assert len(data) > MIB  # the 2 MiB random blob does not compress
    names = tar_names(data)
    assert all(name.startswith("ash-") for name in names)
    top = names[0].split("/")[0]
    assert f"{top}/README" in names
    assert f"{top}/testing/mozharness/blob.bin" in names
    assert f"{top}/some_dir/file_with_underscore.txt" in names


def test_archives_are_deterministic_and_revisions_differ(hgweb):
    v1 = hgweb.node(ASH, "v1.0")
    assert hgweb.archive(ASH, v1) == hgweb.archive(ASH, v1)
    nodes = {hgweb.json_rev(ASH, rev)["node"] for rev in ("feature", "tip")}
    assert len(nodes | {v1}) == 3
    assert hgweb.cat(ASH, v1, "README") != hgweb.cat(ASH, "tip", "README")


def test_subdir_archive_holds_only_that_subdir(hgweb):
    names = tar_names(hgweb.archive(ASH, "v1.0", subdir="testing/mozharness"))
    files = [name.split("/", 1)[1] for name in names if "/" in name]
    assert files
    assert all(name.startswith("testing/mozharness/") for name in files)
    assert "testing/mozharness/scripts/run.py" in files


def test_zip_archive(hgweb):
    data = hgweb.archive("mozilla-central", "tip", suffix="zip")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert any(name.endswith("/README.txt") for name in archive.namelist())


def test_access_log_counts_one_request_per_fetch(hgweb):
    node = hgweb.node(ASH, "v1.0")
    path = f"/{ASH}/archive/{node}.zip/browser"
    before = hgweb.count(path)
    hgweb.archive(ASH, node, suffix="zip", subdir="browser")
    assert hgweb.count(path) == before + 1
    (line,) = hgweb.requests(path)[before:]
    assert f'"GET {path} HTTP/1.1" 200' in line


def test_unknown_rev_is_404(hgweb):
    with pytest.raises(urllib.error.HTTPError) as info:
        hgweb.archive(ASH, "no-such-rev")
    assert info.value.code == 404


def test_json_rev_gives_the_node(hgweb):
    answer = hgweb.json_rev(ASH, "v1.0")
    assert answer["node"] == hgweb.node(ASH, "v1.0")
    assert len(answer["node"]) == 40


def test_commit_creates_and_moves_a_scratch_repo(hgweb):
    repo = "scratch/moving"
    first = hgweb.commit(repo, {"a.txt": b"one\n"}, "one")
    assert hgweb.json_rev(repo, "tip")["node"] == first
    second = hgweb.commit(repo, {"a.txt": None, "b.txt": b"two\n"}, "two")
    assert hgweb.node(repo, "default") == second != first
    names = tar_names(hgweb.archive(repo, "tip"))
    assert any(name.endswith("/b.txt") for name in names)
    assert not any(name.endswith("/a.txt") for name in names)


def test_s3_roundtrip(s3_buckets):
    assert list(s3_buckets.buckets) == ["us-east-1", "us-west-2"]
    for region, bucket in s3_buckets.buckets.items():
        client = s3_buckets.client(region)
        location = client.get_bucket_location(Bucket=bucket)["LocationConstraint"]
        assert (location or "us-east-1") == region
        client.put_object(Bucket=bucket, Key="some/key", Body=b"payload")
        assert s3_buckets.keys(region) == ["some/key"]
        assert s3_buckets.get(region, "some/key") == b"payload"
        assert s3_buckets.head(region, "some/key")["ContentLength"] == 7
        assert s3_buckets.pending_uploads(region) == []


def test_s3_pending_uploads_are_listed(s3_buckets):
    client = s3_buckets.client("us-west-2")
    bucket = s3_buckets.buckets["us-west-2"]
    upload = client.create_multipart_upload(Bucket=bucket, Key="partial")
    (pending,) = s3_buckets.pending_uploads("us-west-2")
    assert pending["UploadId"] == upload["UploadId"]
    assert s3_buckets.pending_uploads("us-east-1") == []


def test_breaking_upstream_cuts_the_body(breaking_upstream):
    breaking_upstream.nbytes = MIB
    url = breaking_upstream.url_template.format(
        repo=ASH, rev="tip", suffix="tar.gz", subdir=""
    )
    with pytest.raises(http.client.IncompleteRead):
        http_get(url)
    assert breaking_upstream.requests == 1
    assert breaking_upstream.paths == [f"/{ASH}/archive/tip.tar.gz/"]
