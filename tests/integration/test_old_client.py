"""The old client's contract (issue 11): RelengAPI's archiver_client.py, its
flow ported in ``oldclient.py``, against `twistd -n archiverd` on real hgweb,
with the file backend and with S3 (moto).

Every rev form extracts exactly the files of ``hg archive -r REV -I SUBDIR``;
an unknown hash or name ends the client within 2 polls; new clients see
FAILURE (or 404) for the same requests; with ``hold`` a cold archive is a
302 on the first request, and with ``hold = 0`` the 202 flow is unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures import hg
from oldclient import FAILURE_CODE, SUCCESS_CODE, OldClient
from processes import (
    open_url,
    serve,
    terminate,
    wait_for_task,
    write_config,
    write_file_config,
)

pytestmark = pytest.mark.integration

REPO = "projects/ash"
SUBDIR = "testing/mozharness"
REGIONS = ("us-east-1", "us-west-2")


@pytest.fixture(scope="module", params=["file", "s3"])
def daemon(request, tmp_path_factory, hgweb) -> Iterator[str]:
    """archiverd (default hold) in front of hgweb: its base URL."""
    tmp = tmp_path_factory.mktemp(f"old-client-{request.param}")
    if request.param == "file":
        config = write_file_config(
            tmp / "archiverd.toml", hgweb.url_template, REGIONS, tasks="hold = 5"
        )
    else:
        buckets = request.getfixturevalue("s3_buckets_module")
        config = write_config(
            tmp / "archiverd.toml", hgweb.url_template, buckets, hold=5
        )
    proc, base = serve(config, tmp)
    try:
        yield base
    finally:
        terminate(proc)


@pytest.fixture(scope="module")
def s3_buckets_module(moto_server):
    from fixtures import S3Buckets

    with S3Buckets(moto_server) as buckets:
        yield buckets


def _hg_archive(hgweb, rev: str, into: Path) -> dict[str, bytes]:
    """The files of ``hg archive -r REV -I SUBDIR``, under SUBDIR, by path."""
    hg(
        ["archive", "-r", rev, "-I", SUBDIR, "-t", "files", str(into)],
        hgweb.repo_path(REPO),
    )
    return _files(into / SUBDIR)


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _rev(hgweb, form: str) -> tuple[str, str]:
    """(the rev as the client sends it, the rev hg archives)."""
    node = hgweb.node(REPO, "default")
    return {
        "hash12": (node[:12], node),
        "hash40": (node, node),
        "prefix8": (node[:8], node),
        "default": ("default", "default"),
        "tag": ("v1.0", "v1.0"),
        "bookmark": ("feature", "feature"),
    }[form]


@pytest.mark.parametrize(
    "form", ["hash12", "hash40", "prefix8", "default", "tag", "bookmark"]
)
def test_every_rev_form_extracts_exactly_hg_archives_files(
    daemon: str, hgweb, tmp_path: Path, form: str
) -> None:
    """A name (branch, tag, bookmark) and a 40-digit id used to extract
    nothing and exit 0: the archive's top folder was ``ash-<12 hex>/``."""
    sent, archived = _rev(hgweb, form)
    expected = _hg_archive(hgweb, archived, tmp_path / "hg")
    assert "scripts/run.py" in expected
    client = OldClient(daemon)
    code = client.run(REPO, sent, SUBDIR, tmp_path / "out")
    assert code == SUCCESS_CODE, client.log
    assert _files(tmp_path / "out") == expected
    # A second run is a hit: a 302 straight to the stored archive.
    again = OldClient(daemon)
    assert again.run(REPO, sent, SUBDIR, tmp_path / "again") == SUCCESS_CODE
    assert again.polls == 0 and _files(tmp_path / "again") == expected


def test_tip_is_the_12_digit_archive_of_its_changeset(daemon: str, hgweb) -> None:
    """hgweb names tip's folder after its short hash (so did the old
    service, which fetched ``tip`` by name): tip's archive is the 12-digit
    one, resolved on every request, never a stale ``ash-tip`` key."""
    node = hgweb.node(REPO, "tip")
    url = f"{daemon}/archiver/hgmo/{REPO}/tip?subdir={SUBDIR}"
    code, headers, _ = open_url(url, follow=False)
    if code == 202:
        assert headers["Location"].endswith(
            f"ash-{node[:12]}.tar.gz_testing_mozharness"
        )
        wait_for_task(headers["Location"])
        code, headers, _ = open_url(url, follow=False)
    assert code == 302
    assert f"ash-{node[:12]}.tar.gz" in headers["Location"]
    code, _, data = open_url(headers["Location"])
    assert data == hgweb.archive(REPO, node[:12], subdir=SUBDIR)


def test_a_12_digit_request_keeps_the_old_key_and_never_gets_a_names_folder(
    daemon: str, hgweb
) -> None:
    node = hgweb.node(REPO, "default")
    url = f"{daemon}/archiver/hgmo/{REPO}/{node[:12]}?subdir={SUBDIR}"
    code, headers, _ = open_url(url, follow=False)
    if code == 202:
        wait_for_task(headers["Location"])
        code, headers, _ = open_url(url, follow=False)
    assert code == 302
    assert f"ash-{node[:12]}.tar.gz/{SUBDIR}" in headers["Location"].replace("%2F", "/")
    code, _, data = open_url(headers["Location"])
    assert code == 200
    assert data == hgweb.archive(REPO, node[:12], subdir=SUBDIR)  # upstream's bytes


@pytest.mark.parametrize("rev", ["0123456789ab", "no-such-name"])
def test_an_unknown_rev_ends_the_old_client_within_two_polls(
    daemon: str, tmp_path: Path, rev: str
) -> None:
    """It polled a FAILURE to the end (514 s at its defaults), and an
    unknown name (a 404) sent it into its retry loop."""
    client = OldClient(daemon, sleeptime=30)  # a sleep would show in the time
    assert client.run(REPO, rev, SUBDIR, tmp_path / "out") == FAILURE_CODE
    assert client.polls <= 2 and client.slept == 0, client.log
    assert "unknown revision" in client.log[-1], client.log
    assert not (tmp_path / "out").exists()


def test_new_clients_see_the_failure_itself(daemon: str) -> None:
    code, headers, _ = open_url(f"{daemon}/archiver/hgmo/{REPO}/0123456789ac")
    assert code == 202
    result = wait_for_task(headers["Location"])
    assert result["state"] == "FAILURE" and result["permanent"] is True
    assert "unknown revision" in result["status"]
    code, _, body = open_url(f"{daemon}/archiver/hgmo/{REPO}/no-such-name-2")
    assert code == 404
    assert "unknown revision" in json.loads(body)["error"]


@pytest.mark.parametrize("hold", [5, 0])
def test_hold_makes_a_cold_archive_a_302_and_zero_keeps_the_202_flow(
    tmp_path: Path, hgweb, hold: float
) -> None:
    config = write_file_config(
        tmp_path / "archiverd.toml", hgweb.url_template, REGIONS, tasks=f"hold = {hold}"
    )
    proc, base = serve(config, tmp_path)
    try:
        client = OldClient(base, sleeptime=0.2)
        node = hgweb.node(REPO, "v1.0")
        code = client.run(REPO, node[:12], SUBDIR, tmp_path / "out")
    finally:
        terminate(proc)
    assert code == SUCCESS_CODE
    if hold:
        assert client.polls == 0  # the first answer was the 302
        assert len(client.asked) == 1  # one request; urllib followed its 302
    else:
        assert client.polls >= 1 and "/archiver/status/" in client.asked[1]
