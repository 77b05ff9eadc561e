"""The page for people in a real browser: Debian's headless Chromium, driven
by Selenium through Debian's chromedriver, against archiverd in this process
fetching from a real (loopback) upstream into file storage.

The browser is installed by ``scripts/chromium.sh install`` (``make test``).
Where it is missing these tests are skipped with the reason, unless
``ARCHIVERD_REQUIRE_BROWSER=1`` (``.ci/run``), which makes that a failure.

Selenium's calls block, so each runs on a thread (``deferToThread``) while the
test reactor goes on serving the daemon. A page is read in one script call,
so its own refresh cannot change it half-way through a read.

Set ``ARCHIVERD_SCREENSHOT=docs/dashboard.png`` to refresh the README's
screenshot from the two-tasks test.
"""

from __future__ import annotations

import http.server
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from daemon import MIB, InProcess, tasks_config
from polling import eventually
from twisted.internet.threads import deferToThread

pytestmark = pytest.mark.integration

REQUIRE = "ARCHIVERD_REQUIRE_BROWSER"
LOOPBACK = "127.0.0.1"
REV = "0123456789abcdef0123456789abcdef01234567"
OTHER_REV = "89abcdef0123456789abcdef0123456789abcdef"
#: What a hostile upstream says; error_message() unescapes it to markup.
HOSTILE_TEXT = (
    "<script>document.title='pwned'</script>"
    "<img src=x onerror=\"document.title='pwned'\">"
)
HOSTILE_BODY = HOSTILE_TEXT.replace("<", "&lt;").replace(">", "&gt;").encode()
#: One call that reads what a test checks of a page.
READ_PAGE = """
const all = (s) => Array.from(document.querySelectorAll(s));
return {
  title: document.title,
  refresh: all('meta[http-equiv="refresh"]').length,
  bars: all('progress.bar').map(p => ({
    value: p.hasAttribute('value') ? p.value : null,
    max: p.hasAttribute('value') ? p.max : null,
    row: (p.closest('tr, p') || document.body).innerText})),
  downloads: all('#downloads a').map(a => ({
    region: a.parentElement.innerText.split(':')[0], href: a.href})),
  causes: all('.cause').map(e => e.textContent),
  inFlight: all('#in-flight tr.task').map(r => r.innerText),
  recent: all('#recent tr.task').map(r => r.innerText),
  queued: all('#queue tr.task').length,
  scripts: all('script').length,
  images: all('img').length,
  text: document.body.innerText,
};
"""


# -- the upstream -----------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Any

    def do_GET(self) -> None:  # noqa: N802 (stdlib naming)
        upstream: TrickleUpstream = self.server.owner
        repo = self.path.split("/")[1]
        if repo == "hostile":
            self.send_response(404)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(HOSTILE_BODY)))
            self.end_headers()
            self.wfile.write(HOSTILE_BODY)
            return
        size = upstream.size
        self.send_response(200)
        self.send_header("Content-Type", "application/gzip")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        sent, step = 0, 512 * 1024
        gate = upstream.gate(repo)
        hold_at = int(size * upstream.hold_at.get(repo, 0.5))
        try:
            # A steady trickle up to the hold point, then nothing until
            # released, then the rest at once.
            while sent < hold_at and not gate.wait(0.1):
                self.wfile.write(b"x" * min(step, hold_at - sent))
                self.wfile.flush()
                sent += min(step, hold_at - sent)
            gate.wait(60)
            while sent < size:
                self.wfile.write(b"x" * min(MIB, size - sent))
                sent += min(MIB, size - sent)
        except OSError:
            self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


class TrickleUpstream:
    """Serves each repo's archive (``size`` bytes, with a Content-Length) at
    about 5 MB/s up to its hold point (``hold_at``, a share of ``size``, by
    the repo's first path segment; half by default), then waits for
    :meth:`release` to send the rest; repo ``hostile`` is a 404 whose
    message is markup."""

    def __init__(self, size: int = 64 * MIB) -> None:
        self.size = size
        self.hold_at: dict[str, float] = {}
        self._gates: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer((LOOPBACK, 0), _Handler)
        self._server.daemon_threads = True
        self._server.owner = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def gate(self, repo: str) -> threading.Event:
        with self._lock:
            return self._gates.setdefault(repo, threading.Event())

    def release(self, repo: str) -> None:
        self.gate(repo).set()

    @property
    def url_template(self) -> str:
        port = self._server.server_port
        return f"http://{LOOPBACK}:{port}/{{repo}}/archive/{{rev}}.{{suffix}}"

    def __enter__(self) -> TrickleUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            for gate in self._gates.values():
                gate.set()
        self._server.shutdown()
        self._server.server_close()


# -- the browser ------------------------------------------------------------


def _unavailable() -> str:
    """Why the browser tests cannot run here, or ""."""
    for program in ("chromium", "chromedriver"):
        if shutil.which(program) is None:
            return f"{program} is not installed (scripts/chromium.sh install)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (requirements-test.txt)"
    return ""


class Browser:
    """A headless Chromium whose every call runs off the reactor thread."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver

    async def read(self, url: str) -> dict[str, Any]:
        """Open ``url`` and read the page (see ``READ_PAGE``)."""
        await deferToThread(self.driver.get, url)
        return dict(await deferToThread(self.driver.execute_script, READ_PAGE))

    async def screenshot(self, path: Path) -> None:
        """The whole page, however long, as a PNG at ``path``."""

        def shoot() -> None:
            height = self.driver.execute_script(
                "return document.documentElement.scrollHeight"
            )
            self.driver.set_window_size(1280, max(600, min(int(height) + 40, 4000)))
            assert self.driver.save_screenshot(str(path)), path

        await deferToThread(shoot)


@pytest.fixture(scope="session")
def chromium():
    reason = _unavailable()
    if reason:
        if os.environ.get(REQUIRE) == "1":
            pytest.fail(f"browser: {reason}; {REQUIRE}=1 forbids skipping", False)
        pytest.skip(f"browser: {reason}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or ""
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root, as CI runs
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,900",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(argument)
    service = Service(executable_path=shutil.which("chromedriver"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def browser(chromium: Any) -> Browser:
    return Browser(chromium)


@pytest.fixture
def upstream():
    with TrickleUpstream() as server:
        yield server


def _config(upstream: TrickleUpstream, root: Path, **tasks: Any) -> dict[str, Any]:
    return {
        "sources": {
            "hgmo": {"kind": "template", "url_template": upstream.url_template}
        },
        "storage": {
            "backend": "file",
            "file": {"root": str(root), "regions": ["a", "b"]},
        },
        "pipeline": {"part_size": 5 * MIB},
        "tasks": tasks_config(**tasks),
    }


async def _start(daemon: InProcess, repo: str, rev: str = REV) -> str:
    """Ask for ``repo``'s archive as a JSON client does; its status URL."""
    response = await daemon.get(f"/archiver/hgmo/{repo}/{rev}")
    assert response.code == 202, await response.content()
    return str(response.headers.getRawHeaders("location")[0])


async def _receiving(daemon: InProcess, location: str, at_least: int = 1) -> None:
    async def received() -> int:
        _, body = await daemon.get_json(location)
        return int(body["result"].get("bytes_received", 0))

    await eventually(
        received, until=lambda n: n >= at_least, what=f"bytes for {location}"
    )


# -- the tests --------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_task_in_a_browser_while_it_runs_and_once_it_is_stored(
    start_archiverd, upstream: TrickleUpstream, browser: Browser, tmp_path: Path
) -> None:
    """The dashboard and the status page show the task's progress bar (bytes
    of the Content-Length upstream sent, rate, ETA) while it runs; once
    stored, the status page links each region's download, which serves the
    archive; a JSON client polling the same URL still gets JSON."""
    daemon = await start_archiverd(_config(upstream, tmp_path / "data"))
    location = await _start(daemon, "projects/ash")
    await _receiving(daemon, location)

    home = await browser.read(daemon.base_url + "/")
    await browser.screenshot(tmp_path / "dashboard-running.png")
    assert home["refresh"] == 1 and home["scripts"] == 0
    assert len(home["inFlight"]) == 1 and "projects/ash@" in home["inFlight"][0]
    (bar,) = home["bars"]
    assert bar["max"] == upstream.size and 0 < bar["value"] < upstream.size
    assert "of 64.0 MiB" in bar["row"] and "/s" in bar["row"]
    assert "MiB/s" in bar["row"] or "KiB/s" in bar["row"]

    page = await browser.read(location)
    await browser.screenshot(tmp_path / "status-running.png")
    assert page["refresh"] == 1
    (bar,) = page["bars"]
    assert bar["max"] == upstream.size and bar["value"] > 0
    assert "ETA" in bar["row"] and page["downloads"] == []

    upstream.release("projects")
    result = await daemon.wait(location)
    assert result["state"] == "SUCCESS", result

    page = await browser.read(location)
    await browser.screenshot(tmp_path / "status-stored.png")
    assert page["refresh"] == 0 and page["bars"] == []
    assert [d["region"] for d in page["downloads"]] == ["a", "b"]
    for download, region in zip(page["downloads"], ("a", "b")):
        assert download["href"].startswith(
            f"{daemon.base_url}/archiver/files/{region}/"
        )
        stored = await treq.get(download["href"])
        assert stored.code == 200
        assert len(await stored.content()) == upstream.size

    home = await browser.read(daemon.base_url + "/archiver/")
    assert home["inFlight"] == [] and home["refresh"] == 0
    assert len(home["recent"]) == 1 and "SUCCESS" in home["recent"][0]

    code, body = await daemon.get_json(location)  # no Accept: JSON, as ever
    assert code == 200 and sorted(body["result"]["s3_urls"]) == ["a", "b"]


@pytest_twisted.ensureDeferred
async def test_an_archive_url_in_a_browser_shows_its_task(
    start_archiverd, upstream: TrickleUpstream, browser: Browser, tmp_path: Path
) -> None:
    """Pasting an archive URL starts its task, as for any client, and shows
    its page; once stored, the same URL shows the download links."""
    daemon = await start_archiverd(_config(upstream, tmp_path / "data"))
    url = f"{daemon.base_url}/archiver/hgmo/projects/ash/{OTHER_REV}"
    page = await browser.read(url)
    assert f"projects/ash@{OTHER_REV}" in page["text"]
    assert page["refresh"] == 1 and page["downloads"] == []
    upstream.release("projects")
    location = f"{daemon.base_url}/archiver/status/projects_ash-{OTHER_REV}.tar.gz"
    assert (await daemon.wait(location))["state"] == "SUCCESS"
    page = await browser.read(url)
    assert [d["region"] for d in page["downloads"]] == ["a", "b"]


@pytest_twisted.ensureDeferred
async def test_a_hostile_upstream_message_is_shown_as_text(
    start_archiverd, upstream: TrickleUpstream, browser: Browser, tmp_path: Path
) -> None:
    """Upstream's words are markup: the pages show them as text, and no
    script or image of theirs runs or loads."""
    daemon = await start_archiverd(_config(upstream, tmp_path / "data"))
    location = await _start(daemon, "hostile")
    result = await daemon.wait(location)
    assert result["state"] == "FAILURE" and HOSTILE_TEXT in result["status"]

    for url in (location, daemon.base_url + "/"):
        page = await browser.read(url)
        await browser.screenshot(tmp_path / f"hostile-{len(url)}.png")
        assert page["title"] != "pwned"
        assert page["scripts"] == 0 and page["images"] == 0
        assert any(HOSTILE_TEXT in cause for cause in page["causes"]), page["causes"]


@pytest_twisted.ensureDeferred
async def test_the_dashboard_with_two_tasks_in_flight(
    start_archiverd, upstream: TrickleUpstream, browser: Browser, tmp_path: Path
) -> None:
    """Two tasks in flight, one queued, two finished (one failed): the
    dashboard shows each, as the README's screenshot does."""
    config = _config(upstream, tmp_path / "data", max_concurrent_tasks=2)
    daemon = await start_archiverd(config)
    done = await _start(daemon, "build/tools")
    upstream.release("build")
    assert (await daemon.wait(done))["state"] == "SUCCESS"
    assert (await daemon.wait(await _start(daemon, "hostile")))["state"] == "FAILURE"
    upstream.hold_at.update({"mozilla-central": 0.62, "integration": 0.35})
    running = [
        await _start(daemon, "mozilla-central"),
        await _start(daemon, "integration/autoland"),
    ]
    queued = await _start(daemon, "releases/mozilla-esr128")
    for location, share in zip(running, (0.62, 0.35)):
        await _receiving(daemon, location, int(upstream.size * share))

    page = await browser.read(daemon.base_url + "/")
    shot = tmp_path / "dashboard.png"
    await browser.screenshot(shot)
    assert len(page["inFlight"]) == 2 and page["queued"] == 1
    assert [b["max"] for b in page["bars"][:2]] == [upstream.size] * 2
    assert len(page["recent"]) == 2
    assert shot.stat().st_size > 10_000
    if os.environ.get("ARCHIVERD_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["ARCHIVERD_SCREENSHOT"])
    for repo in ("mozilla", "integration", "releases"):
        upstream.release(repo)
    assert (await daemon.wait(queued))["state"] == "SUCCESS"
