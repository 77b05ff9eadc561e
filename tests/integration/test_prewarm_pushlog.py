"""Pre-warm through Mozilla's pushlog (``json-pushes``, as hg.mozilla.org
serves it): a small server of the test's answers the pushlog for the pushes
the test makes and passes every other request (archives) to real hgweb."""

from __future__ import annotations

import http.server
import json
import threading
import urllib.request
import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import pytest_twisted
from daemon import file_config
from fixtures import LOOPBACK
from polling import eventually

pytestmark = pytest.mark.integration

SUBDIR = "testing/mozharness"


class Pushlog:
    """``/<repo>/json-pushes?version=2[&startID=N][&tipsonly=1]`` from
    ``pushes``; anything else fetched from hgweb and passed on."""

    def __init__(self, hgweb_url: str) -> None:
        self.hgweb_url = hgweb_url
        #: (node, user) per push; push ids count from 1.
        self.pushes: dict[str, list[tuple[str, str]]] = {}
        self.queries: list[dict[str, list[str]]] = []
        pushlog = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (stdlib naming)
                parts = urlsplit(self.path)
                if parts.path.endswith("/json-pushes"):
                    repo = parts.path[1 : -len("/json-pushes")]
                    query = parse_qs(parts.query)
                    pushlog.queries.append(query)
                    body = pushlog.answer(repo, query)
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                else:
                    with urllib.request.urlopen(pushlog.hgweb_url + self.path) as up:
                        body = up.read()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/x-gzip")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.base_url = f"http://{LOOPBACK}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def answer(self, repo: str, query: dict[str, list[str]]) -> bytes:
        pushes = self.pushes.get(repo, [])
        start = int(query.get("startID", ["0"])[0])
        shown = {
            str(i): {"changesets": [node], "date": 1_700_000_000 + i, "user": user}
            for i, (node, user) in enumerate(pushes, 1)
            if i > start
        }
        return json.dumps({"lastpushid": len(pushes), "pushes": shown}).encode()

    def __enter__(self) -> Pushlog:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def pushlog(hgweb):
    with Pushlog(hgweb.base_url) as server:
        yield server


def config(pushlog: Pushlog, root: Any, repo: str, **prewarm: Any) -> dict:
    template = pushlog.base_url + "/{repo}/archive/{rev}.{suffix}/{subdir}"
    raw = file_config(template, str(root))
    raw["sources"]["hgmo"]["prewarm"] = {
        "repos": [repo],
        "shapes": [{"subdir": SUBDIR}],
        "interval": 1,
        **prewarm,
    }
    return raw


def push(hgweb: Any, pushlog: Pushlog, repo: str, n: int) -> str:
    node = hgweb.commit(repo, {f"{SUBDIR}/run.py": f"print({n})\n".encode()}, "c")
    pushlog.pushes.setdefault(repo, []).append((node, "dev@example.com"))
    return node


def stored(d: Any, repo: str, node: str) -> bool:
    key = f"{repo}-{node[:12]}.tar.gz/{SUBDIR}"
    return all(d.daemon.files.exists(region, key) for region in ("a", "b"))


@pytest_twisted.ensureDeferred
async def test_a_push_in_the_pushlog_is_archived_before_anyone_asks(
    hgweb, pushlog, tmp_path, start_archiverd
):
    repo = f"pushlog/{uuid.uuid4().hex[:8]}"
    push(hgweb, pushlog, repo, 0)
    d = await start_archiverd(config(pushlog, tmp_path, repo))
    watcher = d.daemon.prewarm.watchers["hgmo"]
    await eventually(lambda: watcher.positions.get(repo), what="the first poll")
    assert watcher.modes[repo] == "pushlog"
    assert watcher.positions[repo] == {"pushlog": 1}

    node = push(hgweb, pushlog, repo, 1)
    await eventually(lambda: stored(d, repo, node), what="the archive")
    archive_path = f"/{repo}/archive/{node[:12]}.tar.gz/{SUBDIR}"
    assert hgweb.count(archive_path) == 1
    response = await d.get(f"/archiver/hgmo/{repo}/{node[:12]}?subdir={SUBDIR}")
    assert response.code == 302
    assert hgweb.count(archive_path) == 1
    # One request per poll, from the last push seen, heads only.
    await eventually(lambda: pushlog.queries[-1].get("startID") == ["2"])
    assert pushlog.queries[-1]["tipsonly"] == ["1"]


@pytest_twisted.ensureDeferred
async def test_pushes_missed_while_stopped_are_archived_up_to_max_gap(
    hgweb, pushlog, tmp_path, start_archiverd
):
    repo = f"pushlog/{uuid.uuid4().hex[:8]}"
    push(hgweb, pushlog, repo, 0)
    raw = config(pushlog, tmp_path, repo, max_gap=2)
    d = await start_archiverd(raw)
    watcher = d.daemon.prewarm.watchers["hgmo"]
    await eventually(lambda: watcher.positions.get(repo), what="the first poll")
    await d.stop()

    missed = [push(hgweb, pushlog, repo, n) for n in (1, 2, 3)]
    d = await start_archiverd(raw)
    await eventually(
        lambda: stored(d, repo, missed[1]) and stored(d, repo, missed[2]),
        what="the last two missed pushes",
    )
    watcher = d.daemon.prewarm.watchers["hgmo"]
    await eventually(lambda: watcher.positions.get(repo) == {"pushlog": 4})
    assert not stored(d, repo, missed[0])  # beyond max_gap
    assert hgweb.count(f"/{repo}/archive/{missed[0][:12]}") == 0
