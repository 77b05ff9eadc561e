"""Several sources at once: an hgweb source and template sources (GitHub-like
codeload URLs), each with its own repo allow-list and limits, on one daemon."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
import treq
from daemon import MIB, tasks_config
from faults import FaultyUpstream, body_bytes

pytestmark = pytest.mark.integration

FULL = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def upstream():
    with FaultyUpstream() as server:
        yield server


def _config(upstream: FaultyUpstream, root: Any, **github: Any) -> dict:
    return {
        "sources": {
            "hgmo": {"url_template": upstream.url_template},
            "github": {
                "kind": "template",
                "url_template": upstream.base_url + "/{repo}/{suffix}/{rev}",
                "repos": ["mozilla/*"],
                **github,
            },
        },
        "storage": {"backend": "file", "file": {"root": str(root)}},
        "pipeline": {"part_size": 5 * MIB},
        "tasks": tasks_config(),
    }


@pytest_twisted.ensureDeferred
async def test_a_template_source_fetches_full_commits_then_redirects(
    upstream, tmp_path, start_archiverd
):
    d = await start_archiverd(_config(upstream, tmp_path))
    path = f"/archiver/github/mozilla/gecko-dev/{FULL}?suffix=zip"
    response = await d.get(path)
    assert response.code == 202
    location = response.headers.getRawHeaders("location")[0]
    assert location.endswith(f"/archiver/status/@github_mozilla_gecko-dev-{FULL}.zip")
    result = await d.wait(location)
    assert result["state"] == "SUCCESS", result
    assert upstream.paths == [f"/mozilla/gecko-dev/zip/{FULL}"]
    assert result["src_url"] == upstream.base_url + upstream.paths[0]

    response = await d.get(path)
    assert response.code == 302
    stored = await treq.get(response.headers.getRawHeaders("location")[0])
    assert stored.headers.getRawHeaders("content-type") == ["application/zip"]
    assert await stored.content() == body_bytes(MIB)

    # The same repo and rev through hgmo is another archive, under another key.
    response = await d.get(f"/archiver/hgmo/mozilla/gecko-dev/{FULL}")
    assert response.code == 202
    assert (await d.wait(response.headers.getRawHeaders("location")[0]))[
        "state"
    ] == "SUCCESS"
    assert upstream.requests == 2


@pytest.mark.parametrize(
    ("path", "code", "error"),
    [
        ("/archiver/github/mozilla/gecko-dev/main", 400, "full 40-digit commit id"),
        (f"/archiver/github/mozilla/gecko-dev/{FULL[:12]}", 400, "full 40-digit"),
        (f"/archiver/github/evil/repo/{FULL}", 403, "does not serve repo"),
        (f"/archiver/github/mozilla/a/b/{FULL}", 403, "does not serve repo"),
        (f"/archiver/github/mozilla/x/{FULL}?subdir=t", 400, "subdirectories"),
        (f"/archiver/gitlab/mozilla/x/{FULL}", 404, "unknown source 'gitlab'"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_refused_requests_never_reach_upstream(
    upstream, tmp_path, start_archiverd, path, code, error
):
    d = await start_archiverd(_config(upstream, tmp_path))
    response = await d.get(path)
    assert response.code == code
    assert error in (await response.json())["error"]
    assert upstream.requests == 0


@pytest_twisted.ensureDeferred
async def test_allow_symbolic_caches_a_name_as_it_is(
    upstream, tmp_path, start_archiverd
):
    d = await start_archiverd(_config(upstream, tmp_path, allow_symbolic=True))
    response = await d.get("/archiver/github/mozilla/gecko-dev/main")
    assert response.code == 202
    assert (await d.wait(response.headers.getRawHeaders("location")[0]))[
        "state"
    ] == "SUCCESS"
    assert upstream.paths == ["/mozilla/gecko-dev/tar.gz/main"]  # no lookup first
    assert (await d.get("/archiver/github/mozilla/gecko-dev/main")).code == 302


@pytest_twisted.ensureDeferred
async def test_each_source_has_its_own_size_limit(upstream, tmp_path, start_archiverd):
    d = await start_archiverd(_config(upstream, tmp_path, max_archive_bytes=1000))
    response = await d.get(f"/archiver/github/mozilla/gecko-dev/{FULL}")
    result = await d.wait(response.headers.getRawHeaders("location")[0])
    assert result["state"] == "FAILURE"
    assert "archive exceeds 1000 bytes" in result["status"]
    response = await d.get(f"/archiver/hgmo/mozilla/gecko-dev/{FULL}")
    result = await d.wait(response.headers.getRawHeaders("location")[0])
    assert result["state"] == "SUCCESS"


@pytest_twisted.ensureDeferred
async def test_a_restarted_daemon_answers_a_template_sources_status_from_storage(
    upstream, tmp_path, start_archiverd
):
    config = _config(upstream, tmp_path)
    first = await start_archiverd(config)
    response = await first.get(f"/archiver/github/mozilla/gecko-dev/{FULL}")
    location = response.headers.getRawHeaders("location")[0]
    assert (await first.wait(location))["state"] == "SUCCESS"
    await first.stop()

    second = await start_archiverd(config)
    task_id = location.rsplit("/", 1)[1]
    code, body = await second.get_json(f"/archiver/status/{task_id}")
    assert (code, body["result"]["state"]) == (200, "SUCCESS")
    assert set(body["result"]["s3_urls"]) == {"local"}
    # Without the source configured, the same id names nothing served.
    del config["sources"]["github"]
    await second.stop()
    third = await start_archiverd(config)
    code, body = await third.get_json(f"/archiver/status/{task_id}")
    assert body["result"]["state"] == "PENDING"
