"""The page for people through the API (StubTreq, a Clock, a fake runner):
``GET /``, and status and archive URLs asked for as a browser asks; JSON
clients get exactly what they got before, with ``Vary: Accept``."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

import pytest
from test_web import ASH, BASE, REGIONS, REV, Answer, World
from twisted.logger import capturedLogs

from archiverd.api.dashboard import Dashboard, count_bytes
from archiverd.api.page import CSS
from archiverd.errors import UpstreamUnavailable
from archiverd.keys import ArchiveRequest
from archiverd.storage.files import FileStorage
from archiverd.tasks.model import Outcome
from archiverd.tasks.service import RECENT

BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
HOSTILE = "<script>alert('x')</script><img src=x onerror=alert(1)>"
ARCHIVE = f"/archiver/hgmo/projects/ash/{REV}"
STATUS = f"/archiver/status/{ASH.task_id}"


def html(world: World, path: str) -> Answer:
    answer = world.get(path, Accept=BROWSER)
    assert answer.code == 200, answer.body
    assert answer.header("Content-Type") == "text/html; charset=utf-8"
    return answer


def text(answer: Answer) -> str:
    return answer.body.decode()


def bars(page: str) -> list[str]:
    return re.findall(r"<progress[^>]*>", page)


# -- JSON clients: exactly today's answers ---------------------------------


JSON_ACCEPTS = [{}, {"Accept": "application/json"}, {"Accept": "*/*"}]


@pytest.mark.parametrize("headers", JSON_ACCEPTS)
def test_a_json_client_gets_the_same_status_answer_with_vary_accept(
    headers: dict[str, str],
) -> None:
    plain, asking = World(), World()
    for world in (plain, asking):
        world.get(ARCHIVE)
        world.runner.calls[0].progress(1000)
    before = plain.get(STATUS, **{"User-Agent": "x"})
    after = asking.get(STATUS, **headers)
    assert (after.code, after.body) == (before.code, before.body)
    assert after.header("Content-Type") == "application/json"
    assert after.header("Vary") == "Accept"
    for world in (plain, asking):
        world.runner.calls[0].deferred.callback(Outcome(13, "ab" * 32))
    assert asking.get(STATUS, **headers).body == plain.get(STATUS).body


@pytest.mark.parametrize("headers", JSON_ACCEPTS)
def test_a_json_client_gets_the_same_archive_answers_with_vary_accept(
    headers: dict[str, str],
) -> None:
    world = World()
    accepted = world.get(ARCHIVE, **headers)
    assert (accepted.code, accepted.json) == (202, {"result": {}})
    assert accepted.header("Location") == f"{BASE}{STATUS}"
    assert accepted.header("Vary") == "Accept"
    world.store(ASH.key)
    world.runner.calls[0].deferred.callback(Outcome(13, "ab" * 32))
    found = world.get(ARCHIVE, **headers)
    assert found.code == 302
    assert found.header("Location").startswith("https://us-east-1.s3.example/")
    assert found.header("Vary") == "Accept"


def test_a_bad_request_from_a_browser_is_still_a_json_400() -> None:
    answer = World().get(f"{ARCHIVE}?suffix=tar.xz", Accept=BROWSER)
    assert answer.code == 400
    assert "unsupported suffix" in answer.json["error"]
    assert answer.header("Vary") == "Accept"


# -- a status URL in a browser -------------------------------------------------


def test_a_running_task_in_a_browser_shows_its_progress_and_refreshes() -> None:
    world = World()
    world.get(ARCHIVE)
    call = world.runner.calls[0]
    call.task.expected_size = 4 * 2**20
    world.clock.advance(2)
    call.progress(2**20)
    answer = html(world, STATUS)
    page = text(answer)
    assert answer.header("Vary") == "Accept"
    assert bars(page) == [f'<progress class="bar" value="{2**20}" max="{4 * 2**20}">']
    assert "1.0 MiB of 4.0 MiB (25%)" in page
    assert "512.0 KiB/s" in page  # 1 MiB in the 2 s since it started
    assert "ETA 6.0 s" in page
    assert '<meta http-equiv="refresh"' in page
    assert "/archiver/files/" not in page and "s3.example" not in page


def test_without_a_length_from_upstream_the_bar_is_indeterminate() -> None:
    world = World()
    world.get(ARCHIVE)
    world.runner.calls[0].progress(3000)
    page = text(html(world, STATUS))
    assert bars(page) == ['<progress class="bar">']
    assert "ETA –" in page


def test_a_finished_task_in_a_browser_links_each_regions_download() -> None:
    world = World()
    world.get(ARCHIVE)
    world.runner.calls[0].deferred.callback(Outcome(13, "ab" * 32))
    page = text(html(world, STATUS))
    links = re.findall(r'<li>([^:]+): <a href="([^"]+)">download</a></li>', page)
    assert [region for region, _ in links] == list(REGIONS)
    for region, url in links:
        assert url.startswith(f"https://{region}.s3.example/{ASH.key}?Expires=")
    assert "ab" * 32 in page
    assert "refresh" not in page


def test_file_urls_on_the_page_are_absolute_under_public_url(tmp_path: Path) -> None:
    files = FileStorage(tmp_path, REGIONS, "s" * 32)
    files.open()
    world = World(files=files, public_url="https://cache.example/prefix")
    world.get(ARCHIVE)
    world.runner.calls[0].deferred.callback(Outcome(13, "ab" * 32))
    page = text(html(world, STATUS))
    for region in REGIONS:
        assert f'href="https://cache.example/prefix/archiver/files/{region}/' in page
    assert 'href="https://cache.example/prefix/"' in page  # the dashboard


def test_a_hostile_upstream_message_is_shown_as_text() -> None:
    world = World()
    world.get(ARCHIVE)
    world.runner.calls[0].deferred.errback(UpstreamUnavailable(HOSTILE))
    for path in (STATUS, "/"):
        page = text(html(world, path))
        assert "<script>" not in page and "<img" not in page
        assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
        assert "onerror=alert(1)&gt;" in page


def test_a_hostile_repo_name_is_shown_as_text() -> None:
    world = World()
    repo = 'x"><script>alert(1)</script>'
    world.get(f"/archiver/hgmo/{repo}/{REV}")
    wanted = ArchiveRequest.parse("hgmo", repo, REV)
    world.runner.calls[0].progress(10)
    for path in (f"/archiver/status/{wanted.task_id}", "/"):
        page = text(html(world, path))
        assert "<script>" not in page
        assert "x&quot;&gt;&lt;script&gt;" in page


def test_an_unknown_task_in_a_browser_says_so_and_does_not_refresh() -> None:
    page = text(html(World(), "/archiver/status/nobody_knows-0123456789ab.tar.gz"))
    assert "no status available at this point." in page
    assert "refresh" not in page


def test_every_page_forbids_scripts_and_allows_only_its_own_style() -> None:
    world = World()
    world.get(ARCHIVE)
    digest = base64.b64encode(hashlib.sha256(CSS.encode()).digest()).decode()
    for path in ("/", "/archiver/", STATUS):
        answer = html(world, path)
        policy = answer.header("Content-Security-Policy") or ""
        directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
        assert directives["default-src"] == "'none'"
        assert directives["script-src"] == "'none'"
        assert directives["style-src"] == f"'sha256-{digest}'"
        page = text(answer)
        assert f"<style>{CSS}</style>" in page
        assert "<script" not in page and " style=" not in page
        assert answer.header("X-Content-Type-Options") == "nosniff"
        assert answer.header("Referrer-Policy") == "no-referrer"


# -- an archive URL in a browser ----------------------------------------------


def test_a_missing_archive_in_a_browser_starts_its_task_and_shows_it() -> None:
    world = World(hold=5)
    answer = html(world, ARCHIVE)  # at once: a page is never held
    assert len(world.runner.calls) == 1  # fetched, as for any client
    page = text(answer)
    assert "STARTED" in page and '<meta http-equiv="refresh"' in page
    assert f"hgmo projects/ash@{REV} (tar.gz)" in page


def test_a_stored_archive_in_a_browser_links_each_region() -> None:
    world = World()
    world.store(ASH.key)
    page = text(html(world, f"{ARCHIVE}?preferred_region=us-west-2"))
    links = re.findall(r'<li>([^:]+): <a href="([^"]+)">download</a></li>', page)
    assert [region for region, _ in links] == list(REGIONS)
    assert world.runner.calls == []


def test_a_stored_archive_asked_by_name_in_a_browser_links_its_region() -> None:
    world = World()
    node = world.hgweb.nodes[("projects/ash", "default")]
    world.store(
        ArchiveRequest.parse("hgmo", "projects/ash", "default").with_rev(node).key
    )
    page = text(html(world, "/archiver/hgmo/projects/ash/default"))
    links = re.findall(r'<li>([^:]+): <a href="([^"]+)">download</a></li>', page)
    assert [region for region, _ in links] == ["us-east-1"]


# -- GET / ---------------------------------------------------------------------


def test_the_dashboard_shows_tasks_in_flight_the_queue_and_the_finished() -> None:
    world = World()
    world.tasks.max_concurrent = 1
    world.get(ARCHIVE)
    world.get(f"/archiver/hgmo/projects/ash/{REV}?subdir=testing")
    running = world.runner.calls[0]
    running.task.expected_size = 1000
    world.clock.advance(1)
    running.progress(250)
    page = text(html(world, "/"))
    assert bars(page) == ['<progress class="bar" value="250" max="1000">']
    in_flight = page[page.index('id="in-flight"') : page.index('id="queue"')]
    assert f"projects/ash@{REV} (tar.gz)" in in_flight
    assert f'href="{BASE}{STATUS}"' in in_flight
    queue = page[page.index('id="queue"') : page.index('id="recent"')]
    assert "Queue: 1 waiting" in queue and "testing (tar.gz)" in queue
    assert '<meta http-equiv="refresh"' in page

    running.deferred.errback(UpstreamUnavailable("hg.example is down"))
    world.runner.calls[1].deferred.callback(Outcome(13, "ab" * 32))
    page = text(html(world, "/"))
    recent = page[page.index('id="recent"') :]
    assert recent.index("testing (tar.gz)") < recent.index("hg.example is down")
    assert ">SUCCESS<" in recent and ">FAILURE<" in recent
    assert "nothing in flight" in page and "refresh" not in page


def test_the_dashboard_keeps_only_the_last_finished_tasks() -> None:
    world = World()
    for n in range(RECENT + 10):
        world.get(f"{ARCHIVE}?subdir=d{n}")
        world.runner.calls[-1].deferred.callback(Outcome(n, "ab" * 32))
    assert len(world.tasks.recent) == RECENT
    assert world.tasks.recent[0].request.subdir == f"d{RECENT + 9}"
    page = text(html(world, "/"))
    assert f"Last {RECENT} finished" in page
    assert " d59 (tar.gz)" in page and " d9 (tar.gz)" not in page


def test_the_dashboard_counts_hits_and_misses() -> None:
    world = World()
    world.get(ARCHIVE)
    world.store(ASH.key)
    world.runner.calls[0].deferred.callback(Outcome(13, "ab" * 32))
    for _ in range(3):
        assert world.get(ARCHIVE).code == 302
    page = text(html(world, "/"))
    assert re.search(r'id="hits"><b>3</b>', page)
    assert re.search(r'id="misses"><b>1</b>', page)
    assert "75%" in page


def test_the_dashboard_names_the_version_sources_and_regions() -> None:
    from archiverd import __version__

    page = text(html(World(), "/"))
    assert f"version {__version__}" in page
    assert "<td>hgmo</td><td>hgweb</td><td>hg.mozilla.org</td>" in page
    for region in REGIONS:
        assert f"<td>{region}</td>" in page


def test_the_dashboard_is_html_for_any_client() -> None:
    answer = World().get("/")
    assert answer.code == 200
    assert answer.header("Content-Type") == "text/html; charset=utf-8"


def test_the_dashboard_counts_each_regions_bytes_under_a_file_root(
    tmp_path: Path,
) -> None:
    files = FileStorage(tmp_path, REGIONS, "s" * 32)
    files.open()
    world = World(files=files)
    world.api.dashboard = Dashboard(world.archives, world.metrics, file_root=tmp_path)
    world.store(ASH.key, regions=("us-west-2",))
    page = text(html(world, "/"))
    stored = dict(
        re.findall(r'<tr><td>([\w-]+)</td><td class="num">([^<]+)</td>', page)
    )
    assert stored["us-east-1"] == "0 B"
    assert stored["us-west-2"].endswith(" B") and stored["us-west-2"] != "0 B"
    assert "no size limit" in page


def test_bytes_are_counted_per_region_with_the_limit_in_bytes(
    tmp_path: Path,
) -> None:
    (tmp_path / "a" / "x" / "y").mkdir(parents=True)
    (tmp_path / "a" / "x" / "y" / "obj").write_bytes(b"1" * 300)
    (tmp_path / "a" / "top").write_bytes(b"1" * 20)
    (tmp_path / "b").mkdir()
    used, limit = count_bytes(tmp_path, ("a", "b", "gone"), "1KiB")
    assert used == {"a": 320, "b": 0, "gone": 0}
    assert limit == 1024
    assert count_bytes(tmp_path, ("a",))[1] is None
    share = count_bytes(tmp_path, ("a",), "50%")[1]
    assert share is not None and share > 0


def test_the_dashboard_shows_the_bytes_stored_against_the_limit(
    tmp_path: Path,
) -> None:
    files = FileStorage(tmp_path, REGIONS, "s" * 32)
    files.open()
    world = World(files=files)
    world.api.dashboard = Dashboard(
        world.archives, world.metrics, file_root=tmp_path, max_bytes="10000"
    )
    world.store(ASH.key)
    page = text(html(world, "/"))
    limit = page[page.index('id="storage-limit"') :]
    assert "of 9.8 KiB (10000, all regions)" in limit
    assert re.search(r'<progress class="bar" value="\d+" max="10000">', limit)


def test_bytes_that_cannot_be_counted_leave_the_page_up(tmp_path: Path) -> None:
    world = World()
    world.api.dashboard = Dashboard(
        world.archives, world.metrics, file_root=tmp_path / "gone", max_bytes="50%"
    )
    with capturedLogs() as events:
        page = text(html(world, "/"))
    assert "counting…" in page and "limit: 50%" in page
    assert any("cannot count the bytes stored" in e["log_format"] for e in events)
