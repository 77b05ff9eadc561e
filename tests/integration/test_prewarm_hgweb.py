"""Pre-warm against a real ``hg serve`` (no pushlog: the heads of branches
and bookmarks): a commit to a watched repo is archived into every region
before anyone asks, and the first client request is a 302 with no upstream
GET of its own."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import pytest_twisted
from daemon import s3_config
from polling import eventually

pytestmark = pytest.mark.integration


SUBDIR = "testing/mozharness"


def prewarm_config(hgweb: Any, buckets: Any, repo: str, state: str) -> dict:
    raw = s3_config(hgweb.url_template, buckets)
    raw["sources"]["hgmo"]["prewarm"] = {
        "repos": [repo],
        "shapes": [{"subdir": SUBDIR}],
        "interval": 1,
        "state": state,
    }
    return raw


def files(n: int) -> dict[str, bytes | None]:
    return {f"{SUBDIR}/run.py": f"print({n})\n".encode(), "README": b"r\n"}


def stored_everywhere(buckets: Any, key: str) -> bool:
    return all(key in buckets.keys(region) for region in buckets.buckets)


async def metric(d: Any, name: str) -> float:
    response = await d.get("/metrics")
    text = (await response.content()).decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


@pytest_twisted.ensureDeferred
async def test_a_push_to_a_watched_repo_is_stored_in_every_region_before_anyone_asks(
    hgweb, s3_buckets, tmp_path, start_archiverd
):
    repo = f"prewarm/{uuid.uuid4().hex[:8]}"
    hgweb.commit(repo, files(0), "first")
    d = await start_archiverd(
        prewarm_config(hgweb, s3_buckets, repo, str(tmp_path / "state.json"))
    )
    watcher = d.daemon.prewarm.watchers["hgmo"]
    await eventually(lambda: watcher.positions.get(repo), what="the first poll")
    assert watcher.modes[repo] == "heads"  # found out: hg serve has no pushlog

    node = hgweb.commit(repo, files(1), "second")
    key = f"{repo}-{node[:12]}.tar.gz/{SUBDIR}"
    await eventually(
        lambda: stored_everywhere(s3_buckets, key), what=f"{key} in every region"
    )
    archive_path = f"/{repo}/archive/{node[:12]}.tar.gz/{SUBDIR}"
    assert hgweb.count(archive_path) == 1  # pre-warm's own GET

    response = await d.get(f"/archiver/hgmo/{repo}/{node[:12]}?subdir={SUBDIR}")
    assert response.code == 302
    assert hgweb.count(archive_path) == 1  # none of the client's own
    assert await metric(d, "archiverd_prewarmed_archives_total") == 1
    assert await metric(d, "archiverd_prewarm_hits_total") == 1
    # The previous head was seen before watching began: not archived.
    assert not stored_everywhere(
        s3_buckets, f"{repo}-{hgweb.node(repo, '0')[:12]}.tar.gz/{SUBDIR}"
    )


@pytest_twisted.ensureDeferred
async def test_the_position_survives_a_restart_and_a_missed_push_is_archived(
    hgweb, s3_buckets, tmp_path, start_archiverd
):
    repo = f"prewarm/{uuid.uuid4().hex[:8]}"
    hgweb.commit(repo, files(0), "first")
    state = str(tmp_path / "state.json")
    d = await start_archiverd(prewarm_config(hgweb, s3_buckets, repo, state))
    watcher = d.daemon.prewarm.watchers["hgmo"]
    await eventually(lambda: watcher.positions.get(repo), what="the first poll")
    await d.stop()

    node = hgweb.commit(repo, files(1), "pushed while archiverd was down")
    hgweb.bookmark(repo, node, "release")
    d = await start_archiverd(prewarm_config(hgweb, s3_buckets, repo, state))
    key = f"{repo}-{node[:12]}.tar.gz/{SUBDIR}"
    await eventually(
        lambda: stored_everywhere(s3_buckets, key), what=f"{key} in every region"
    )
    # The branch and the bookmark name one node: one archive, one GET.
    assert hgweb.count(f"/{repo}/archive/{node[:12]}.tar.gz/{SUBDIR}") == 1
