"""Getting one archive from archiverd: locate it, download it, check it.

:class:`Client` asks for the archive, follows the 302 or polls the 202's
status URL, then downloads it to a temporary file while hashing it and checks
its sha256. What becomes of the file (renamed into place, or extracted) is
:mod:`archiverd.client.cli`'s.

Archive and status requests ask archiverd to hold them until the task
finishes (``Prefer: wait=N``, a long poll). An answer the server held (it says
``Preference-Applied``) is followed by the next request at once; otherwise
the client backs off between polls, honouring ``Retry-After``, as it always
did with servers that do not hold requests. A task that failed for a reason
that may pass (``"permanent": false``) is asked for again, as a new task.

Synchronous and on the standard library only: it runs on CI workers, where
archiverd and Twisted do not.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, NamedTuple
from urllib.parse import quote, urlencode, urljoin

from archiverd.client.http import (
    PROG,
    Answer,
    Opener,
    applied_wait,
    error_text,
    origin,
    retry_after,
    urllib_opener,
)
from archiverd.client.progress import Progress
from archiverd.util.backoff import Backoff
from archiverd.wire import (
    FAILURE,
    PENDING,
    REDIRECTS,
    SHA256_HEADER,
    SUCCESS,
    UNKNOWN_STATUS,
)

CHUNK = 1024 * 1024
#: Seconds a single socket operation may block before the attempt fails.
SOCKET_TIMEOUT = 60.0
MAX_REDIRECTS = 5  # followed when downloading from storage
#: The longest ``Prefer: wait`` asked for, in seconds (archiverd's default
#: ``max_wait``); never past the overall timeout.
MAX_PREFER_WAIT = 60
#: Between polls and retries: 0.5 s doubling to 10 s, unless the server asks.
FIRST_DELAY, MAX_DELAY = 0.5, 10.0


class UsageError(Exception):
    """Exit 1: the request itself is wrong (bad arguments, a 4xx)."""


class FetchError(Exception):
    """Exit 3: the archive could not be had (network, server, task, data)."""


class _Transient(Exception):
    """An attempt that may succeed when repeated (connection error, 5xx)."""

    def __init__(self, message: str, asked: float | None = None) -> None:
        super().__init__(message)
        #: Seconds the server asked us to wait (Retry-After), if it did.
        self.asked = asked


class _TaskFailed(Exception):
    """The task failed for a reason that may pass (``"permanent": false``):
    asking for the archive again starts a new task."""


class _Next(NamedTuple):
    """What one request to archiverd leads to."""

    #: Where the archive is, once it is stored.
    located: Located | None
    #: Otherwise the URL to ask next...
    url: str
    #: ...after the seconds the server asked for (Retry-After), if it did,
    asked: float | None = None
    #: ...or at once: the server held this request for the task (long poll).
    at_once: bool = False


def _backoff() -> Backoff:
    return Backoff(FIRST_DELAY, cap=MAX_DELAY)


@dataclass
class Env:
    """What the client touches outside itself, injectable for tests."""

    opener: Opener = field(default_factory=urllib_opener)
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    stderr: IO[str] = field(default_factory=lambda: sys.stderr)
    isatty: bool | None = None  # None: ask stderr

    def say(self, message: str) -> None:
        """One line on stderr, after the program's name."""
        print(f"{PROG}: {message}", file=self.stderr, flush=True)


@dataclass
class Located:
    """Where the archive is, and the sha256 the status reported (if any)."""

    url: str
    sha256: str | None = None


class Client:
    """Locates, downloads and checks one archive (see :meth:`fetch`)."""

    def __init__(
        self,
        server: str,
        source: str,
        repo: str,
        rev: str,
        *,
        subdir: str = "",
        suffix: str = "tar.gz",
        region: str = "",
        timeout: float = 3600.0,
        retries: int = 5,
        env: Env | None = None,
    ) -> None:
        self.env = env or Env()
        self.region = region
        self.timeout = timeout
        self.retries = retries
        query = {"suffix": suffix}
        if subdir:
            query["subdir"] = subdir
        if region:
            query["preferred_region"] = region
        self.archive_url = (
            f"{server.rstrip('/')}/archiver/{quote(source, safe='')}/"
            f"{quote(repo, safe='/')}/{quote(rev, safe='')}?{urlencode(query)}"
        )
        self._deadline = self.env.clock() + timeout
        self._last = "no answer yet"

    # -- time ------------------------------------------------------------

    def _remaining(self) -> float:
        return self._deadline - self.env.clock()

    def _check_deadline(self) -> None:
        if self._remaining() <= 0:
            raise FetchError(f"timed out after {self.timeout:g} s ({self._last})")

    def _wait(self, delay: float) -> None:
        if delay >= self._remaining():
            raise FetchError(f"timed out after {self.timeout:g} s ({self._last})")
        self.env.sleep(delay)

    def _prefer_wait(self) -> int:
        """The ``Prefer: wait`` to ask for: whole seconds, at most
        :data:`MAX_PREFER_WAIT`, never past the deadline, at least 1."""
        return max(1, min(MAX_PREFER_WAIT, int(self._remaining())))

    def _open(self, url: str, wait: int | None = None) -> Answer:
        """GET ``url``; with ``wait``, asking the server to hold the answer
        that long (the socket then waits that much longer for it)."""
        self._check_deadline()
        headers = {} if wait is None else {"Prefer": f"wait={wait}"}
        timeout = SOCKET_TIMEOUT + (wait or 0)
        try:
            return self.env.opener(url, min(timeout, self._remaining()), headers)
        except (OSError, http.client.HTTPException) as e:
            reason = getattr(e, "reason", None) or e
            raise _Transient(f"cannot reach {origin(url)}: {reason}") from e

    # -- locating --------------------------------------------------------

    def locate(self) -> Located:
        """Ask for the archive until it is stored: follow 302, poll 202.

        Connection errors and 5xx are retried up to ``retries`` times in a
        row; so are tasks that fail for a reason that may pass."""
        backoff = _backoff()
        failures = 0
        failed_tasks = 0
        url = self.archive_url
        while True:
            try:
                step = self._step(url)
            except _Transient as e:
                failures += 1
                self._last = str(e)
                if failures > self.retries:
                    raise FetchError(str(e)) from e
                self._wait(backoff.next(e.asked))
                continue
            except _TaskFailed as e:
                failed_tasks += 1
                self._last = str(e)
                if failed_tasks > self.retries:
                    raise FetchError(str(e)) from e
                self.env.say(f"{e}; asking again")
                url = self.archive_url
                self._wait(backoff.next())
                continue
            if step.located is not None:
                return step.located
            failures = 0
            url = step.url
            if not step.at_once:
                self._wait(backoff.next(step.asked))

    def _step(self, url: str) -> _Next:
        """One request: the archive's place, or the URL to ask next and when."""
        began = self.env.clock()
        answer = self._open(url, self._prefer_wait())
        try:
            asked = retry_after(answer.header("Retry-After"))
            # How long the server would hold this request for its task.
            holds = applied_wait(answer.header("Preference-Applied")) or 0.0
            code = answer.status
            if code == 503 and asked is not None:
                # archiverd's task table is full: not a failure, just wait.
                self._last = f"server busy: {error_text(answer)}"
                self.env.say(f"{self._last}; asking again in {asked:g} s")
                return _Next(None, url, asked)
            if code >= 500:
                error = f"server answered {code}: {error_text(answer)}"
                raise _Transient(error, asked)
            if code >= 400:
                error = f"server refused the request ({code}): {error_text(answer)}"
                raise UsageError(error)
            location = answer.header("Location")
            if code in REDIRECTS and location:
                # archiverd names the archive's sha256 beside its redirect:
                # S3 keeps it in a tag, which a download does not show.
                sha256 = answer.header(SHA256_HEADER) or None
                return _Next(Located(urljoin(url, location), sha256), url)
            if code == 202 and location:
                # Held, the task has not stored the archive (yet): its status,
                # held in turn, says how it goes, so ask for it at once (one
                # request; a poll that is not held is backed off from below).
                self._last = "waiting for the archive"
                return _Next(None, urljoin(url, location), asked, holds > 0)
            if code == 200 and url != self.archive_url:
                # A server holds a poll only for a task it runs itself (in a
                # fleet, another daemon's task is answered at once): a poll
                # answered well before its wait was up was not held, and one
                # asked again at once would be a busy loop.
                held = holds > 0 and self.env.clock() - began >= holds / 2
                return self._polled(answer, url, _Next(None, url, asked, held))
            raise _Transient(f"unexpected answer {code} from {origin(url)}")
        finally:
            answer.close()

    def _polled(self, answer: Answer, url: str, again: _Next) -> _Next:
        try:
            result = json.loads(answer.body.read())["result"]
            state = result.get("state", "")
            status = result.get("status", "")
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise _Transient(f"unreadable status from {origin(url)}") from e
        if state == SUCCESS:
            urls = result.get("s3_urls") or {}
            target = urls.get(self.region) or next(iter(urls.values()), None)
            if not target:
                raise FetchError(f"the task succeeded but named no URL: {status}")
            return _Next(Located(urljoin(url, target), result.get("sha256")), url)
        if state == FAILURE:
            error = f"archiverd could not fetch the archive: {status}"
            if result.get("permanent") is False:
                raise _TaskFailed(error)  # e.g. upstream was unreachable
            raise FetchError(error)  # asking again cannot help (or not said)
        if state == PENDING and status == UNKNOWN_STATUS:
            # archiverd forgot the task (it restarted): ask again, which
            # starts a new one or redirects to what was stored meanwhile.
            self._last = "archiverd forgot the task; asking again"
            return _Next(None, self.archive_url, again.asked)
        if status and status != self._last:
            self.env.say(f"{state.lower() or 'waiting'}: {status}")
        self._last = status or state
        return again

    # -- downloading -----------------------------------------------------

    def download(self, located: Located, into: Path) -> Path:
        """Stream the archive to a temporary file in ``into``; check its sha256.

        Returns the temporary file; on any failure it is already removed.
        """
        answer = self._open(located.url)
        for _ in range(MAX_REDIRECTS):
            location = answer.header("Location")
            if answer.status not in REDIRECTS or not location:
                break
            answer.close()
            answer = self._open(urljoin(answer.url, location))
        try:
            if answer.status != 200:
                error = f"storage answered {answer.status}: {error_text(answer)}"
                raise _Transient(error)
            stored = answer.header("x-amz-meta-sha256")
            length = answer.header("Content-Length")
            total = int(length) if length and length.isdigit() else None
            fd, name = tempfile.mkstemp(prefix=f".{PROG}-", suffix=".part", dir=into)
            path = Path(name)
            try:
                with os.fdopen(fd, "wb") as out:
                    digest, size = self._copy(answer.body, out, total)
                if total is not None and size != total:
                    raise _Transient(f"download cut short: {size} of {total} bytes")
                _check_sha256(digest, located.sha256, stored, self.env)
            except BaseException:
                path.unlink(missing_ok=True)
                raise
            return path
        finally:
            answer.close()

    def _copy(
        self, body: IO[bytes], out: IO[bytes], total: int | None
    ) -> tuple[str, int]:
        digest = hashlib.sha256()
        progress = Progress(self.env, total)
        size = 0
        while True:
            try:
                chunk = body.read(CHUNK)
            except (OSError, http.client.HTTPException) as e:
                error = f"download broke off after {size} bytes: {e}"
                raise _Transient(error) from e
            if not chunk:
                break
            digest.update(chunk)
            try:
                out.write(chunk)
            except OSError as e:  # our disk, not the network: no retry
                raise FetchError(f"cannot write the download: {e}") from e
            size += len(chunk)
            progress.update(size)
            self._check_deadline()
        progress.finish(size)
        return digest.hexdigest(), size

    def fetch(self, into: Path) -> Path:
        """Locate and download, retrying transient download failures with a
        fresh location (a fresh signed URL). Returns the checked temp file."""
        backoff = _backoff()
        failures = 0
        while True:
            located = self.locate()
            try:
                return self.download(located, into)
            except _Transient as e:
                failures += 1
                self._last = str(e)
                if failures > self.retries:
                    raise FetchError(str(e)) from e
                self.env.say(f"{e}; trying again")
                self._wait(backoff.next())


def _check_sha256(
    actual: str, status: str | None, stored: str | None, env: Env
) -> None:
    expected = [s.strip().lower() for s in (status, stored) if s]
    if not expected:
        env.say("warning: archiverd gave no sha256 for this archive; not checked")
    for wanted in expected:
        if wanted != actual:
            raise FetchError(f"sha256 mismatch: expected {wanted}, got {actual}")
