"""Pre-warm by webhook, for a template source (GitHub-like, here served by
real hgweb): signed GitHub-style and Gitea-style push bodies are archived
before anyone asks; unsigned, wrongly signed and replayed ones are refused
and start nothing."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from typing import Any

import pytest
import pytest_twisted
import treq
from daemon import file_config
from polling import eventually

pytestmark = pytest.mark.integration

SUBDIR = "testing/mozharness"
SECRET = "a webhook secret of some length"


@pytest.fixture
def repo(hgweb) -> str:
    name = f"hooks/{uuid.uuid4().hex[:8]}"
    hgweb.commit(name, {f"{SUBDIR}/run.py": b"print(0)\n"}, "first")
    return name


def config(hgweb: Any, root: Any, repo: str) -> dict:
    raw = file_config(hgweb.url_template, str(root))
    raw["sources"]["gh"] = {
        "kind": "template",
        "url_template": hgweb.base_url + "/{repo}/archive/{rev}.{suffix}/{subdir}",
        "prewarm": {
            "repos": ["hooks/*"],
            "shapes": [{"subdir": SUBDIR}],
            "secret": SECRET,
        },
    }
    return raw


def body(repo: str, node: str) -> bytes:
    return json.dumps(
        {
            "ref": "refs/heads/main",
            "before": "0" * 40,
            "after": node,
            "repository": {"full_name": repo},
            "commits": [{"id": node, "message": "c"}],
        }
    ).encode()


def signature(data: bytes, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), data, hashlib.sha256).hexdigest()


async def post(d: Any, data: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    response = await treq.post(
        d.base_url + "/archiver/hooks/gh",
        data=data,
        headers={"Content-Type": "application/json", **headers},
    )
    return response.code, json.loads(await response.content())


def stored(d: Any, repo: str, node: str) -> bool:
    key = f"@gh/{repo}-{node}.tar.gz/{SUBDIR}"
    return all(d.daemon.files.exists(region, key) for region in ("a", "b"))


async def first_request_is_a_hit(d: Any, hgweb: Any, repo: str, node: str) -> None:
    await eventually(lambda: stored(d, repo, node), what="the pre-warmed archive")
    archive_path = f"/{repo}/archive/{node}.tar.gz/{SUBDIR}"
    assert hgweb.count(archive_path) == 1
    response = await d.get(f"/archiver/gh/{repo}/{node}?subdir={SUBDIR}")
    assert response.code == 302
    assert hgweb.count(archive_path) == 1


@pytest_twisted.ensureDeferred
async def test_a_signed_github_push_is_archived_before_anyone_asks(
    hgweb, repo, tmp_path, start_archiverd
):
    d = await start_archiverd(config(hgweb, tmp_path, repo))
    node = hgweb.commit(repo, {f"{SUBDIR}/run.py": b"print(1)\n"}, "second")
    data = body(repo, node)
    code, answer = await post(
        d,
        data,
        {
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": str(uuid.uuid4()),
            "X-Hub-Signature-256": "sha256=" + signature(data),
        },
    )
    assert (code, answer) == (202, {"pushes": 1})
    await first_request_is_a_hit(d, hgweb, repo, node)


@pytest_twisted.ensureDeferred
async def test_a_signed_gitea_push_is_archived_before_anyone_asks(
    hgweb, repo, tmp_path, start_archiverd
):
    d = await start_archiverd(config(hgweb, tmp_path, repo))
    node = hgweb.commit(repo, {f"{SUBDIR}/run.py": b"print(2)\n"}, "second")
    data = body(repo, node)
    code, answer = await post(
        d,
        data,
        {
            "X-Gitea-Event": "push",
            "X-Gitea-Delivery": str(uuid.uuid4()),
            "X-Gitea-Signature": signature(data),
        },
    )
    assert (code, answer) == (202, {"pushes": 1})
    await first_request_is_a_hit(d, hgweb, repo, node)


@pytest_twisted.ensureDeferred
async def test_unsigned_wrongly_signed_and_replayed_bodies_start_nothing(
    hgweb, repo, tmp_path, start_archiverd
):
    d = await start_archiverd(config(hgweb, tmp_path, repo))
    node = hgweb.commit(repo, {f"{SUBDIR}/run.py": b"print(3)\n"}, "second")
    data = body(repo, node)
    tasks = d.daemon.tasks
    refusals = [
        ({"X-GitHub-Event": "push"}, 401),
        ({"X-Gitea-Event": "push"}, 401),
        ({"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + "0" * 64}, 403),
        (
            {
                "X-GitHub-Event": "push",
                "X-Hub-Signature-256": "sha256=" + signature(data, "another secret!!"),
            },
            403,
        ),
        ({"X-Gitea-Event": "push", "X-Gitea-Signature": signature(data + b" ")}, 403),
        ({"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": "not the secret"}, 403),
    ]
    for headers, expected in refusals:
        code, answer = await post(d, data, headers)
        assert code == expected, (headers, answer)
        assert "error" in answer
        assert len(tasks) == 0
    signed = {
        "X-GitHub-Event": "push",
        "X-Hub-Signature-256": "sha256=" + signature(data),
    }
    assert await post(d, data, signed) == (202, {"pushes": 1})
    code, answer = await post(d, data, signed)  # the same delivery again
    assert (code, answer["error"]) == (403, "replayed: this delivery was taken before")
    await eventually(lambda: stored(d, repo, node), what="the signed push's archive")
    assert hgweb.count(f"/{repo}/archive/{node}.tar.gz/{SUBDIR}") == 1
    assert len(tasks) == 1
