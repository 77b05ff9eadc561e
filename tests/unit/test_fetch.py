"""archiverd.client (fetch, http, cli): the archiverd-fetch client, against a
fake opener and a fake clock (no network, no real sleeps)."""

from __future__ import annotations

import email.message
import hashlib
import io
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from archives import HG_LIKE, TOP, make_tar

from archiverd.client.cli import EXIT_INFRA, EXIT_OK, EXIT_USAGE, main
from archiverd.client.fetch import SOCKET_TIMEOUT, Env
from archiverd.client.http import Answer, applied_wait, retry_after
from archiverd.wire import UNKNOWN_STATUS

SERVER = "http://archiverd.test"
ARCHIVE_PATH = "/archiver/hgmo/projects/ash/42bf8560b395"
STATUS_URL = SERVER + "/archiver/status/projects_ash-42bf8560b395.tar.gz"
SIGNED = "http://storage.test/archive.tar.gz?sig=1"

# -- Retry-After -----------------------------------------------------------


def test_retry_after_reads_seconds_and_dates() -> None:
    assert retry_after("7") == 7.0
    assert retry_after(None) is None
    assert retry_after("soon") is None
    assert retry_after("Thu, 01 Jan 1970 00:01:40 GMT", now=90.0) == 10.0
    assert retry_after("Thu, 01 Jan 1970 00:01:40 GMT", now=200.0) == 0.0
    assert retry_after("99999") == 300.0  # capped


# -- the client against a fake server ---------------------------------------


def answer(
    status: int, body: bytes | dict[str, Any] = b"", **headers: str
) -> Callable[[str], Answer]:
    raw = json.dumps(body).encode() if isinstance(body, dict) else body
    message = email.message.Message()
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    return lambda url: Answer(status, message, io.BytesIO(raw), url)


def refused(url: str) -> Answer:
    raise ConnectionRefusedError(111, "Connection refused")


def status(
    state: str, text: str = "", *, applied: str = "", **extra: Any
) -> Callable[[str], Answer]:
    """A status answer; ``applied``: its Preference-Applied header."""
    result = {"state": state, "status": text, "src_url": "x", "s3_urls": {}}
    headers = {"Preference_Applied": applied} if applied else {}
    return answer(200, {"result": {**result, **extra}}, **headers)


def held(respond: Callable[[str], Answer], seconds: float) -> Callable[[str], Answer]:
    """``respond``, after the server held the request ``seconds`` (a long
    poll that ran its course): the fake clock moves on that much."""
    respond.held = seconds  # type: ignore[attr-defined]
    return respond


class FakeServer:
    """Answers each URL (matched by prefix) from its own queue; the last
    answer of a queue repeats. Notes each request's socket timeout and
    headers; an answer made by :func:`held` moves ``advance``'s clock on."""

    def __init__(
        self,
        routes: dict[str, list[Callable[[str], Answer]]],
        advance: Callable[[float], None] = lambda seconds: None,
    ) -> None:
        self.routes = routes
        self.advance = advance
        self.requests: list[str] = []
        self.timeouts: list[float] = []
        self.headers: list[dict[str, str]] = []

    def __call__(self, url: str, timeout: float, headers: Mapping[str, str]) -> Answer:
        assert timeout > 0
        self.requests.append(url)
        self.timeouts.append(timeout)
        self.headers.append(dict(headers))
        for prefix, queue in self.routes.items():
            if url.startswith(prefix):
                respond = queue.pop(0) if len(queue) > 1 else queue[0]
                self.advance(getattr(respond, "held", 0.0))
                return respond(url)
        raise AssertionError(f"unexpected request {url}")


class Harness:
    """main() with a fake server, a fake clock and captured stderr."""

    def __init__(self, routes: dict[str, list[Callable[[str], Answer]]]) -> None:
        self.server = FakeServer(routes, self.advance)
        self.now = 0.0
        self.sleeps: list[float] = []
        self.stderr = io.StringIO()
        self.env = Env(
            opener=self.server,
            clock=lambda: self.now,
            sleep=self.sleep,
            stderr=self.stderr,
            isatty=False,
        )

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def run(self, *args: str) -> int:
        return main(["--server", SERVER, "hgmo", "projects/ash", *args], self.env)

    @property
    def err(self) -> str:
        return self.stderr.getvalue()


PAYLOAD = make_tar(HG_LIKE)
SHA = hashlib.sha256(PAYLOAD).hexdigest()
ARCHIVE = SERVER + ARCHIVE_PATH


def download(body: bytes = PAYLOAD, **headers: str) -> Callable[[str], Answer]:
    return answer(200, body, Content_Length=str(len(body)), **headers)


def success(sha256: str = SHA) -> Callable[[str], Answer]:
    return status("SUCCESS", "done", s3_urls={"r": SIGNED}, sha256=sha256)


def test_cold_polls_with_backoff_then_saves_the_checked_archive(
    tmp_path: Path,
) -> None:
    h = Harness(
        {
            ARCHIVE: [answer(202, {"result": {}}, Location=STATUS_URL)],
            STATUS_URL: [
                status("PENDING", "queued"),
                status("STARTED", "Downloading archive from hg"),
                status("PROGRESS", "Uploading: 1 MiB so far"),
                success(),
            ],
            SIGNED: [download()],
        }
    )
    out = tmp_path / "a.tar.gz"
    assert h.run("42bf8560b395", "-o", str(out)) == EXIT_OK
    assert out.read_bytes() == PAYLOAD
    assert h.sleeps == [0.5, 1, 2, 4]
    assert h.server.requests[0] == ARCHIVE + "?suffix=tar.gz"
    assert "Uploading: 1 MiB so far" in h.err
    assert list(tmp_path.iterdir()) == [out]  # no temporary file left


def test_polling_backs_off_from_half_a_second_doubling_to_ten(
    tmp_path: Path,
) -> None:
    h = Harness(
        {
            ARCHIVE: [answer(202, Location=STATUS_URL)],
            STATUS_URL: [*[status("STARTED", "Downloading")] * 7, success()],
            SIGNED: [download()],
        }
    )
    assert h.run("42bf8560b395", "-o", str(tmp_path / "a")) == EXIT_OK
    assert h.sleeps == [0.5, 1, 2, 4, 8, 10, 10, 10]


def test_request_carries_subdir_suffix_and_region(tmp_path: Path) -> None:
    h = Harness({ARCHIVE: [answer(302, Location=SIGNED)], SIGNED: [download()]})
    args = ["--subdir", "testing/mozharness", "--region", "us-west-2"]
    assert h.run("42bf8560b395", *args, "-o", str(tmp_path / "a")) == EXIT_OK
    assert h.server.requests[0] == (
        ARCHIVE + "?suffix=tar.gz&subdir=testing%2Fmozharness"
        "&preferred_region=us-west-2"
    )


def test_warm_302_checks_the_storage_sha256_and_extracts(tmp_path: Path) -> None:
    h = Harness(
        {
            ARCHIVE: [answer(302, Location=SIGNED)],
            SIGNED: [download(x_amz_meta_sha256=SHA)],
        }
    )
    dest = tmp_path / "dest"
    args = ["42bf8560b395", "--subdir", "testing/mozharness", "--dest", str(dest)]
    assert h.run(*args) == EXIT_OK
    assert (dest / "scripts/run.py").read_bytes() == b"print('run')\n"
    assert h.sleeps == []
    assert "warning" not in h.err
    assert not [p for p in dest.iterdir() if p.name.startswith(".")]


def test_a_302_without_any_sha256_warns(tmp_path: Path) -> None:
    h = Harness({ARCHIVE: [answer(302, Location=SIGNED)], SIGNED: [download()]})
    assert h.run("42bf8560b395", "-o", str(tmp_path / "a")) == EXIT_OK
    assert "no sha256" in h.err


@pytest.mark.parametrize("where", ["status", "storage"])
def test_a_sha256_mismatch_exits_3_and_leaves_nothing(
    tmp_path: Path, where: str
) -> None:
    bad = "0" * 64
    h = Harness(
        {
            ARCHIVE: [answer(202, Location=STATUS_URL)],
            STATUS_URL: [success(bad if where == "status" else SHA)],
            SIGNED: [download(x_amz_meta_sha256=bad if where == "storage" else SHA)],
        }
    )
    assert h.run("42bf8560b395", "-o", str(tmp_path / "a")) == EXIT_INFRA
    assert "sha256 mismatch" in h.err
    assert list(tmp_path.iterdir()) == []


def test_503_retry_after_is_honoured_and_not_a_failure(tmp_path: Path) -> None:
    busy = answer(503, {"error": "too many tasks"}, Retry_After="7")
    accepted = answer(202, Location=STATUS_URL, Retry_After="3")
    h = Harness(
        {
            ARCHIVE: [busy, busy, busy, accepted],
            STATUS_URL: [success()],
            SIGNED: [download()],
        }
    )
    args = ["42bf8560b395", "--retries", "0", "-o", str(tmp_path / "a")]
    assert h.run(*args) == EXIT_OK
    assert h.sleeps == [7, 7, 7, 3]
    assert h.err.count("server busy: too many tasks; asking again in 7 s") == 3


def test_5xx_and_refused_connections_are_retried_then_succeed(
    tmp_path: Path,
) -> None:
    h = Harness(
        {
            ARCHIVE: [refused, answer(502, {"error": "bad gateway"}), refused,
                      answer(302, Location=SIGNED)],
            SIGNED: [download()],
        }
    )  # fmt: skip
    assert h.run("42bf8560b395", "-o", str(tmp_path / "a")) == EXIT_OK
    assert h.sleeps == [0.5, 1, 2]


def test_a_server_that_stays_down_exits_3_after_the_retries(tmp_path: Path) -> None:
    h = Harness({ARCHIVE: [refused]})
    args = ["42bf8560b395", "--retries", "2", "-o", str(tmp_path / "a")]
    assert h.run(*args) == EXIT_INFRA
    assert len(h.server.requests) == 3
    assert "cannot reach http://archiverd.test" in h.err
    assert h.err.count("\n") == 1  # one clear line


def test_persistent_5xx_exits_3_quoting_the_server(tmp_path: Path) -> None:
    h = Harness({ARCHIVE: [answer(500, {"error": "internal error; see log"})]})
    args = ["42bf8560b395", "--retries", "1", "-o", str(tmp_path / "a")]
    assert h.run(*args) == EXIT_INFRA
    assert "server answered 500: internal error; see log" in h.err


def test_a_4xx_is_a_usage_error_quoting_the_server(tmp_path: Path) -> None:
    h = Harness({ARCHIVE: [answer(400, {"error": "rev contains '/'"})]})
    assert h.run("42bf8560b395", "-o", str(tmp_path / "a")) == EXIT_USAGE
    assert "server refused the request (400): rev contains '/'" in h.err
    assert h.sleeps == []


def test_a_failed_task_exits_3_with_its_cause(tmp_path: Path) -> None:
    cause = "hg.example answered 404 for http://…: unknown revision"
    h = Harness(
        {
            ARCHIVE: [answer(202, Location=STATUS_URL)],
            STATUS_URL: [status("STARTED", "Downloading"), status("FAILURE", cause)],
        }
    )
    assert h.run("42bf8560b395", "-o", str(tmp_path / "a")) == EXIT_INFRA
    assert h.err.splitlines()[-1] == (
        f"archiverd-fetch: archiverd could not fetch the archive: {cause}"
    )


def test_the_overall_timeout_exits_3(tmp_path: Path) -> None:
    h = Harness(
        {
            ARCHIVE: [answer(202, Location=STATUS_URL)],
            STATUS_URL: [status("STARTED", "Downloading")],
        }
    )
    args = ["42bf8560b395", "--timeout", "30", "-o", str(tmp_path / "a")]
    assert h.run(*args) == EXIT_INFRA
    assert "timed out after 30 s" in h.err
    assert h.now <= 30


def test_a_forgotten_task_is_asked_for_again(tmp_path: Path) -> None:
    """archiverd restarted mid-poll: its status says PENDING with no source."""
    forgotten = answer(
        200,
        {"result": {"state": "PENDING", "status": UNKNOWN_STATUS, "src_url": "",
                    "s3_urls": {}}},
    )  # fmt: skip
    h = Harness(
        {
            ARCHIVE: [answer(202, Location=STATUS_URL), answer(302, Location=SIGNED)],
            STATUS_URL: [forgotten],
            SIGNED: [download()],
        }
    )
    assert h.run("42bf8560b395", "-o", str(tmp_path / "a")) == EXIT_OK
    assert [u.split("?")[0] for u in h.server.requests] == [
        ARCHIVE,
        STATUS_URL,
        ARCHIVE,
        SIGNED.split("?")[0],
    ]


# -- long polls (Prefer: wait) ----------------------------------------------


def test_applied_wait_reads_the_seconds_the_server_holds() -> None:
    assert applied_wait("wait=60") == 60.0
    assert applied_wait('respond-async, wait="7"') == 7.0
    assert applied_wait("wait=2.5") == 2.5  # archiverd's max_wait may be so
    assert applied_wait(None) is None
    assert applied_wait("respond-async") is None
    assert applied_wait("nowait=3") is None


def prefer(h: Harness) -> list[str | None]:
    """The Prefer header of each request, in order."""
    return [headers.get("Prefer") for headers in h.server.headers]


@pytest.mark.parametrize(("timeout", "wait"), [("3600", 60), ("30.9", 30), ("0.5", 1)])
def test_archive_and_status_requests_prefer_a_wait_within_the_timeout(
    tmp_path: Path, timeout: str, wait: int
) -> None:
    """N is at most 60, the whole seconds left before --timeout, at least 1;
    the socket waits for the held answer that much longer. Storage is not
    asked to wait."""
    h = Harness(
        {
            ARCHIVE: [answer(202, Location=STATUS_URL, Preference_Applied="wait=1")],
            STATUS_URL: [success()],
            SIGNED: [download()],
        }
    )
    args = ["42bf8560b395", "--timeout", timeout, "-o", str(tmp_path / "a")]
    assert h.run(*args) == EXIT_OK
    assert prefer(h) == [f"wait={wait}", f"wait={wait}", None]
    assert h.server.timeouts[0] == min(SOCKET_TIMEOUT + wait, float(timeout))


def test_the_wait_preferred_shrinks_with_the_time_left(tmp_path: Path) -> None:
    h = Harness(
        {
            ARCHIVE: [answer(202, Location=STATUS_URL)],
            STATUS_URL: [*[status("STARTED", "Downloading")] * 3, success()],
            SIGNED: [download()],
        }
    )
    args = ["42bf8560b395", "--timeout", "10", "-o", str(tmp_path / "a")]
    assert h.run(*args) == EXIT_OK
    assert h.sleeps == [0.5, 1, 2, 4]  # at 0, 0.5, 1.5, 3.5, 7.5 s
    assert prefer(h) == ["wait=10", "wait=9", "wait=8", "wait=6", "wait=2", None]


def test_held_answers_are_followed_by_the_next_request_at_once(
    tmp_path: Path,
) -> None:
    """Each answer the server held for its wait (Preference-Applied) is
    asked again with no sleep at all."""
    applied = "wait=60"
    h = Harness(
        {
            ARCHIVE: [
                held(answer(202, Location=STATUS_URL, Preference_Applied=applied), 60)
            ],
            STATUS_URL: [
                *[held(status("STARTED", "Downloading", applied=applied), 60)] * 3,
                held(success(), 12),
            ],
            SIGNED: [download()],
        }
    )
    assert h.run("42bf8560b395", "-o", str(tmp_path / "a")) == EXIT_OK
    assert h.sleeps == []
    assert [u.split("?")[0] for u in h.server.requests] == [
        ARCHIVE,
        *[STATUS_URL] * 4,
        SIGNED.split("?")[0],
    ]
    assert h.now == 4 * 60 + 12


def test_held_answers_without_preference_applied_back_off_as_before(
    tmp_path: Path,
) -> None:
    """An older server, or a proxy that strips the header: the client cannot
    tell it was held, and sleeps between polls exactly as it always did."""
    h = Harness(
        {
            ARCHIVE: [held(answer(202, Location=STATUS_URL), 5)],
            STATUS_URL: [*[held(status("STARTED", "Downloading"), 60)] * 3, success()],
            SIGNED: [download()],
        }
    )
    assert h.run("42bf8560b395", "-o", str(tmp_path / "a")) == EXIT_OK
    assert h.sleeps == [0.5, 1, 2, 4]


@pytest.mark.parametrize(
    ("applied", "sleeps"),
    [
        # Another daemon's task (a fleet): the 202 and polls come back at once.
        ("wait=60", [0.5, 1]),
        # A server whose max_wait is 0 holds nothing.
        ("wait=0", [0.5, 1, 2]),
    ],
)
def test_answers_that_were_not_held_back_off_despite_preference_applied(
    tmp_path: Path, applied: str, sleeps: list[float]
) -> None:
    """Asking again at once after an answer that was not held would be a
    busy loop against the server."""
    h = Harness(
        {
            ARCHIVE: [answer(202, Location=STATUS_URL, Preference_Applied=applied)],
            STATUS_URL: [
                *[status("STARTED", "Downloading", applied=applied)] * 2,
                success(),
            ],
            SIGNED: [download()],
        }
    )
    assert h.run("42bf8560b395", "-o", str(tmp_path / "a")) == EXIT_OK
    assert h.sleeps == sleeps


# -- failed tasks --------------------------------------------------------------

UNREACHABLE = "cannot reach hg.example: Connection refused"


def test_a_transient_task_failure_asks_for_the_archive_again(tmp_path: Path) -> None:
    """``"permanent": false``: a new task, after the usual backoff."""
    h = Harness(
        {
            ARCHIVE: [answer(202, Location=STATUS_URL)],
            STATUS_URL: [status("FAILURE", UNREACHABLE, permanent=False), success()],
            SIGNED: [download()],
        }
    )
    out = tmp_path / "a"
    assert h.run("42bf8560b395", "-o", str(out)) == EXIT_OK
    assert out.read_bytes() == PAYLOAD
    assert [u.split("?")[0] for u in h.server.requests] == [
        ARCHIVE,
        STATUS_URL,
        ARCHIVE,
        STATUS_URL,
        SIGNED.split("?")[0],
    ]
    assert h.sleeps == [0.5, 1, 2]
    assert f"could not fetch the archive: {UNREACHABLE}; asking again" in h.err


def test_transient_task_failures_stop_after_the_retries(tmp_path: Path) -> None:
    """The 202s between failed tasks do not start the count again."""
    h = Harness(
        {
            ARCHIVE: [answer(202, Location=STATUS_URL)],
            STATUS_URL: [status("FAILURE", UNREACHABLE, permanent=False)],
        }
    )
    args = ["42bf8560b395", "--retries", "2", "-o", str(tmp_path / "a")]
    assert h.run(*args) == EXIT_INFRA
    assert [u.split("?")[0] for u in h.server.requests].count(ARCHIVE) == 3
    assert h.err.splitlines()[-1] == (
        f"archiverd-fetch: archiverd could not fetch the archive: {UNREACHABLE}"
    )


@pytest.mark.parametrize("permanent", [{"permanent": True}, {}])
def test_a_permanent_or_unexplained_task_failure_is_not_asked_again(
    tmp_path: Path, permanent: dict[str, bool]
) -> None:
    cause = "hg.example answered 404 for http://…: unknown revision"
    h = Harness(
        {
            ARCHIVE: [answer(202, Location=STATUS_URL)],
            STATUS_URL: [status("FAILURE", cause, **permanent)],
        }
    )
    assert h.run("42bf8560b395", "-o", str(tmp_path / "a")) == EXIT_INFRA
    assert [u.split("?")[0] for u in h.server.requests] == [ARCHIVE, STATUS_URL]
    assert h.sleeps == [0.5]
    assert "asking again" not in h.err


def test_a_download_cut_short_is_retried_from_a_fresh_location(
    tmp_path: Path,
) -> None:
    short = answer(200, PAYLOAD[:100], Content_Length=str(len(PAYLOAD)))
    h = Harness({ARCHIVE: [answer(302, Location=SIGNED)], SIGNED: [short, download()]})
    out = tmp_path / "a"
    assert h.run("42bf8560b395", "-o", str(out)) == EXIT_OK
    assert out.read_bytes() == PAYLOAD
    assert [u.split("?")[0] for u in h.server.requests].count(ARCHIVE) == 2
    assert "cut short" in h.err


def test_an_expired_signed_url_is_replaced(tmp_path: Path) -> None:
    h = Harness(
        {
            ARCHIVE: [answer(302, Location=SIGNED)],
            SIGNED: [answer(403, {"error": "expired"}), download()],
        }
    )
    assert h.run("42bf8560b395", "-o", str(tmp_path / "a")) == EXIT_OK


def test_an_unsafe_archive_exits_3_and_leaves_dest_clean(tmp_path: Path) -> None:
    evil = make_tar([(f"{TOP}/ok", b"ok"), (f"{TOP}/l", ("sym", "../x"))])
    h = Harness({ARCHIVE: [answer(302, Location=SIGNED)], SIGNED: [download(evil)]})
    dest = tmp_path / "dest"
    assert h.run("42bf8560b395", "--dest", str(dest)) == EXIT_INFRA
    assert "refusing symlink 'l' -> '../x': it leaves DIR" in h.err
    assert list(dest.iterdir()) == []


def test_a_corrupt_archive_exits_3(tmp_path: Path) -> None:
    h = Harness(
        {ARCHIVE: [answer(302, Location=SIGNED)], SIGNED: [download(b"not a tar")]}
    )
    assert h.run("42bf8560b395", "--dest", str(tmp_path)) == EXIT_INFRA
    assert "cannot read the archive" in h.err


# -- progress ---------------------------------------------------------------


def big_download(h: Harness, size: int) -> Callable[[str], Answer]:
    class Slow(io.BytesIO):
        def read(self, n: int | None = -1) -> bytes:
            h.now += 0.1  # each MiB takes 0.1 s: 10 MiB/s
            return super().read(n)

    message = email.message.Message()
    message["Content-Length"] = str(size)
    return lambda url: Answer(200, message, Slow(b"\0" * size), url)


def test_progress_off_a_terminal_is_a_line_per_tenth(tmp_path: Path) -> None:
    h = Harness({ARCHIVE: [answer(302, Location=SIGNED)]})
    h.server.routes[SIGNED] = [big_download(h, 20 * 1024 * 1024)]
    assert h.run("42bf8560b395", "-o", str(tmp_path / "a")) == EXIT_OK
    lines = [line for line in h.err.splitlines() if "downloaded" in line]
    assert len(lines) == 10
    assert "\r" not in h.err
    assert lines[-1].startswith(
        "archiverd-fetch: downloaded 20.0 MiB / 20.0 MiB (100%)"
    )


def test_progress_on_a_terminal_is_one_updating_line(tmp_path: Path) -> None:
    h = Harness({ARCHIVE: [answer(302, Location=SIGNED)]})
    h.env.isatty = True
    h.server.routes[SIGNED] = [big_download(h, 20 * 1024 * 1024)]
    assert h.run("42bf8560b395", "-o", str(tmp_path / "a")) == EXIT_OK
    drawn = h.err.split("\n")[0].split("\r")[1:]
    assert len(drawn) > 5
    assert (
        "MiB / 20.0 MiB" in drawn[3] and "MiB/s" in drawn[3] and "ETA 0:00:" in drawn[3]
    )
    assert "(100%)" in drawn[-1]


# -- usage ------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        [],  # nothing
        ["--server", SERVER, "hgmo", "repo", "rev"],  # neither --dest nor -o
        ["--server", SERVER, "hgmo", "r", "v", "--dest", "d", "-o", "f"],  # both
        ["--server", SERVER, "hgmo", "r", "v", "-o", "f", "--suffix", "rar"],
        ["--server", SERVER, "hgmo", "r", "v", "-o", "f", "--timeout", "x"],
    ],
)
def test_bad_usage_exits_1(args: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == EXIT_USAGE
    assert "usage: archiverd-fetch" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args",
    [
        ["--server", "ftp://x", "hgmo", "r", "v", "-o", "{tmp}/f"],
        ["--server", SERVER, "hgmo", "r", "v", "-o", "{tmp}/missing/f"],
        ["--server", SERVER, "hgmo", "r", "v", "-o", "{tmp}"],
    ],
)
def test_bad_values_exit_1_before_any_request(tmp_path: Path, args: list[str]) -> None:
    h = Harness({})
    code = main([a.format(tmp=tmp_path) for a in args], h.env)
    assert code == EXIT_USAGE
    assert h.server.requests == []


def test_a_redirect_from_storage_is_followed(tmp_path: Path) -> None:
    moved = "http://storage.test/elsewhere"
    h = Harness(
        {
            ARCHIVE: [answer(302, Location=SIGNED)],
            SIGNED: [answer(307, Location=moved)],
            moved: [download(x_amz_meta_sha256=SHA)],
        }
    )
    assert h.run("42bf8560b395", "-o", str(tmp_path / "a")) == EXIT_OK
    assert (tmp_path / "a").read_bytes() == PAYLOAD


def test_a_body_that_breaks_off_is_fetched_again(tmp_path: Path) -> None:
    class Broken(io.BytesIO):
        def read(self, n: int | None = -1) -> bytes:
            raise ConnectionResetError(104, "Connection reset by peer")

    def broken(url: str) -> Answer:
        return Answer(200, email.message.Message(), Broken(), url)

    h = Harness({ARCHIVE: [answer(302, Location=SIGNED)], SIGNED: [broken, download()]})
    assert h.run("42bf8560b395", "-o", str(tmp_path / "a")) == EXIT_OK
    assert "download broke off after 0 bytes" in h.err
    assert list(tmp_path.iterdir()) == [tmp_path / "a"]


def test_dest_that_is_a_file_exits_1(tmp_path: Path) -> None:
    h = Harness({})
    (tmp_path / "f").write_bytes(b"")
    assert h.run("42bf8560b395", "--dest", str(tmp_path / "f")) == EXIT_USAGE
    assert h.server.requests == []
