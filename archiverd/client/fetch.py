"""archiverd-fetch: get one archive from archiverd, check it, save or extract it.

::

    archiverd-fetch --server URL SOURCE REPO REV [--subdir S] [--suffix tar.gz]
                    [--region R] (--dest DIR | -o FILE)

The successor of the old service's ``archiver_client``: ask for the archive,
follow the 302 or poll the 202's status URL (backing off, honouring
``Retry-After``), download the archive while hashing it, check its sha256,
then rename it into place (``-o``) or extract it (``--dest``) the way the old
client did: only the subdir, with the archive's top folder and the subdir
stripped, refusing any member that would land outside DIR.

A plain synchronous program on the standard library: it runs where archiverd
does not (CI workers) and needs nothing but Python.

Exit codes: 0 done, 1 usage (bad arguments, or a 4xx from archiverd),
3 infrastructure (archiverd unreachable, 5xx after retries, the task failed,
a bad checksum, an unsafe archive, time out).
"""

from __future__ import annotations

import argparse
import email.utils
import hashlib
import http.client
import json
import os
import posixpath
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NoReturn
from urllib.parse import quote, urlencode, urljoin, urlsplit

from archiverd import __version__
from archiverd.client.extract import UnsafeArchive, extract

PROG = "archiverd-fetch"
EXIT_OK, EXIT_USAGE, EXIT_INFRA = 0, 1, 3
SUFFIXES = ("tar.gz", "tar.bz2", "zip")
UNKNOWN_STATUS = "no status available at this point."
CHUNK = 1024 * 1024
MIB = 1024 * 1024
#: Seconds a single socket operation may block before the attempt fails.
SOCKET_TIMEOUT = 60.0
#: The longest Retry-After honoured, so a bad header cannot park a CI job.
MAX_RETRY_AFTER = 300.0
REDIRECTS = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 5  # followed when downloading from storage


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


# -- HTTP --------------------------------------------------------------------


@dataclass
class Answer:
    """One HTTP response: status, headers, and the body as a stream."""

    status: int
    headers: Any  # email.message.Message-like: case-insensitive .get()
    body: IO[bytes]
    url: str

    def header(self, name: str) -> str | None:
        value = self.headers.get(name)
        return None if value is None else str(value)

    def close(self) -> None:
        self.body.close()


#: Opens a URL with a socket timeout; never follows redirects and never raises
#: for an HTTP status, only for transport errors (OSError, HTTPException).
Opener = Callable[[str, float], Answer]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def urllib_opener() -> Opener:
    """The real :data:`Opener`, on urllib (environment proxies honoured)."""
    opener = urllib.request.build_opener(_NoRedirect)
    agent = f"{PROG}/{__version__}"

    def open_url(url: str, timeout: float) -> Answer:
        request = urllib.request.Request(url, headers={"User-Agent": agent})
        try:
            response = opener.open(request, timeout=timeout)
        except urllib.error.HTTPError as e:
            return Answer(e.code, e.headers, e, url)
        return Answer(response.status, response.headers, response, url)

    return open_url


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta or HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


class Backoff:
    """Exponential delays, ``first`` doubling up to ``cap``."""

    def __init__(self, first: float = 0.5, cap: float = 10.0) -> None:
        self.first = first
        self.cap = cap
        self._next = first

    def next(self, asked: float | None = None) -> float:
        """The next delay; a server's ``Retry-After`` (``asked``) wins."""
        delay = self._next
        self._next = min(self._next * 2, self.cap)
        return delay if asked is None else asked

    def reset(self) -> None:
        self._next = self.first


def _error_text(answer: Answer) -> str:
    """archiverd's ``{"error": ...}``, or the start of whatever came back."""
    try:
        raw = answer.body.read(4096)
    except (OSError, http.client.HTTPException):
        raw = b""
    try:
        return str(json.loads(raw)["error"])
    except (ValueError, KeyError, TypeError):
        text = raw.decode("utf-8", "replace").strip()
        return " ".join(text.split())[:200] or http.client.responses.get(
            answer.status, "error"
        )


# -- the client --------------------------------------------------------------


@dataclass
class Env:
    """What the client touches outside itself, injectable for tests."""

    opener: Opener = field(default_factory=urllib_opener)
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    stderr: IO[str] = field(default_factory=lambda: sys.stderr)
    isatty: bool | None = None  # None: ask stderr

    def say(self, message: str) -> None:
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

    def _open(self, url: str) -> Answer:
        self._check_deadline()
        try:
            return self.env.opener(url, min(SOCKET_TIMEOUT, self._remaining()))
        except (OSError, http.client.HTTPException) as e:
            reason = getattr(e, "reason", None) or e
            raise _Transient(f"cannot reach {_origin(url)}: {reason}") from e

    # -- locating --------------------------------------------------------

    def locate(self) -> Located:
        """Ask for the archive until it is stored: follow 302, poll 202."""
        backoff = Backoff()
        failures = 0
        url = self.archive_url
        while True:
            try:
                located, url, asked = self._step(url)
            except _Transient as e:
                failures += 1
                self._last = str(e)
                if failures > self.retries:
                    raise FetchError(str(e)) from e
                self._wait(backoff.next(e.asked))
                continue
            if located is not None:
                return located
            failures = 0
            self._wait(backoff.next(asked))

    def _step(self, url: str) -> tuple[Located | None, str, float | None]:
        """One request: the archive's place, or the URL to ask next and when."""
        answer = self._open(url)
        try:
            asked = retry_after(answer.header("Retry-After"))
            code = answer.status
            if code == 503 and asked is not None:
                # archiverd's task table is full: not a failure, just wait.
                self._last = f"server busy: {_error_text(answer)}"
                self.env.say(f"{self._last}; asking again in {asked:g} s")
                return None, url, asked
            if code >= 500:
                error = f"server answered {code}: {_error_text(answer)}"
                raise _Transient(error, asked)
            if code >= 400:
                error = f"server refused the request ({code}): {_error_text(answer)}"
                raise UsageError(error)
            location = answer.header("Location")
            if code in REDIRECTS and location:
                return Located(urljoin(url, location)), url, None
            if code == 202 and location:
                self._last = "waiting for the archive"
                return None, urljoin(url, location), asked
            if code == 200 and url != self.archive_url:
                return self._polled(answer, url, asked)
            raise _Transient(f"unexpected answer {code} from {_origin(url)}")
        finally:
            answer.close()

    def _polled(
        self, answer: Answer, url: str, asked: float | None
    ) -> tuple[Located | None, str, float | None]:
        try:
            result = json.loads(answer.body.read())["result"]
            state = result.get("state", "")
            status = result.get("status", "")
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise _Transient(f"unreadable status from {_origin(url)}") from e
        if state == "SUCCESS":
            urls = result.get("s3_urls") or {}
            target = urls.get(self.region) or next(iter(urls.values()), None)
            if not target:
                raise FetchError(f"the task succeeded but named no URL: {status}")
            return Located(urljoin(url, target), result.get("sha256")), url, None
        if state == "FAILURE":
            raise FetchError(f"archiverd could not fetch the archive: {status}")
        if state == "PENDING" and status == UNKNOWN_STATUS:
            # archiverd forgot the task (it restarted): ask again, which
            # starts a new one or redirects to what was stored meanwhile.
            self._last = "archiverd forgot the task; asking again"
            return None, self.archive_url, asked
        if status and status != self._last:
            self.env.say(f"{state.lower() or 'waiting'}: {status}")
        self._last = status or state
        return None, url, asked

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
                error = f"storage answered {answer.status}: {_error_text(answer)}"
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
        backoff = Backoff()
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


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _check_sha256(
    actual: str, status: str | None, stored: str | None, env: Env
) -> None:
    expected = [s.strip().lower() for s in (status, stored) if s]
    if not expected:
        env.say("warning: archiverd gave no sha256 for this archive; not checked")
    for wanted in expected:
        if wanted != actual:
            raise FetchError(f"sha256 mismatch: expected {wanted}, got {actual}")


# -- progress ----------------------------------------------------------------


class Progress:
    """One updating line on a terminal; else a quiet line every tenth."""

    def __init__(self, env: Env, total: int | None) -> None:
        self.env = env
        self.total = total
        tty = env.isatty
        if tty is None:
            tty = bool(getattr(env.stderr, "isatty", lambda: False)())
        self.tty = tty
        self.started = env.clock()
        self._shown_at = self.started
        self._tenth = 0

    def _describe(self, done: int) -> str:
        elapsed = max(self.env.clock() - self.started, 1e-6)
        rate = done / elapsed
        text = _size(done)
        if self.total:
            text += f" / {_size(self.total)} ({100 * done // self.total}%)"
        text += f", {rate / MIB:.1f} MiB/s"
        if self.total and rate > 0 and done < self.total:
            eta = int((self.total - done) / rate)
            text += f", ETA {eta // 3600}:{eta // 60 % 60:02d}:{eta % 60:02d}"
        return text

    def update(self, done: int) -> None:
        if self.tty:
            now = self.env.clock()
            if now - self._shown_at >= 0.2:
                self._shown_at = now
                self.env.stderr.write(f"\r{PROG}: {self._describe(done)}\x1b[K")
                self.env.stderr.flush()
        elif self.total:
            tenth = 10 * done // self.total
            if tenth > self._tenth and tenth < 10:
                self._tenth = tenth
                self.env.say(f"downloaded {self._describe(done)}")

    def finish(self, done: int) -> None:
        if self.tty:
            self.env.stderr.write(f"\r{PROG}: {self._describe(done)}\x1b[K\n")
            self.env.stderr.flush()
        else:
            self.env.say(f"downloaded {self._describe(done)}")


def _size(nbytes: int) -> str:
    """Bytes for people: ``512 B``, ``3.5 KiB``, ``12.0 MiB``, ``1.2 GiB``."""
    if nbytes < 1024:
        return f"{nbytes} B"
    if nbytes < MIB:
        return f"{nbytes / 1024:.1f} KiB"
    if nbytes < 1024 * MIB:
        return f"{nbytes / MIB:.1f} MiB"
    return f"{nbytes / (1024 * MIB):.1f} GiB"


# -- the command line -------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """Usage errors exit 1, as the old client's did (argparse says 2)."""
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Fetch a repository archive through archiverd, check its "
        "sha256, and save it (-o) or extract it (--dest).",
        epilog="Exit codes: 0 done, 1 usage, 3 infrastructure error.",
    )
    p.add_argument("--server", required=True, help="archiverd's base URL")
    p.add_argument("source", metavar="SOURCE", help="e.g. hgmo")
    p.add_argument("repo", metavar="REPO", help="e.g. mozilla-central")
    p.add_argument("rev", metavar="REV", help="changeset id, tag, bookmark, branch")
    p.add_argument("--subdir", default="", help="only this folder of the repo")
    p.add_argument("--suffix", default="tar.gz", choices=SUFFIXES)
    p.add_argument("--region", default="", help="preferred storage region")
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--dest", metavar="DIR", help="extract the archive here")
    out.add_argument("-o", "--output", metavar="FILE", help="save the archive here")
    p.add_argument(
        "--timeout", type=float, default=3600.0, help="give up after this many s"
    )
    p.add_argument(
        "--retries",
        type=int,
        default=5,
        help="attempts after a connection error or 5xx, in a row (default 5)",
    )
    return p


def main(argv: list[str] | None = None, env: Env | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = parser().parse_args(argv)
    env = env or Env()
    try:
        return _run(args, env)
    except UsageError as e:
        env.say(f"error: {e}")
        return EXIT_USAGE
    except (FetchError, UnsafeArchive) as e:
        env.say(str(e))
        return EXIT_INFRA
    except OSError as e:
        env.say(f"{e.filename or 'error'}: {e.strerror or e}")
        return EXIT_INFRA
    except KeyboardInterrupt:
        env.say("interrupted")
        return 130


def _run(args: argparse.Namespace, env: Env) -> int:
    if urlsplit(args.server).scheme not in ("http", "https"):
        raise UsageError(f"--server must be an http(s) URL, not {args.server!r}")
    if args.timeout <= 0 or args.retries < 0:
        raise UsageError("--timeout must be positive and --retries at least 0")
    client = Client(
        args.server,
        args.source,
        args.repo,
        args.rev,
        subdir=args.subdir,
        suffix=args.suffix,
        region=args.region,
        timeout=args.timeout,
        retries=args.retries,
        env=env,
    )
    if args.output:
        target = Path(args.output)
        if target.is_dir():
            raise UsageError(f"-o {args.output}: is a folder (use --dest to extract)")
        if not target.parent.is_dir():
            raise UsageError(f"-o {args.output}: no such folder {target.parent}")
        partial = client.fetch(target.parent)
        try:
            os.replace(partial, target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        env.say(f"saved {target}")
        return EXIT_OK
    dest = Path(args.dest)
    if dest.exists() and not dest.is_dir():
        raise UsageError(f"--dest {args.dest}: not a folder")
    dest.mkdir(parents=True, exist_ok=True)
    partial = client.fetch(dest)
    try:
        count = extract(partial, dest, args.suffix, _subdir_in_archive(args))
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as e:
        raise FetchError(f"cannot read the archive: {e}") from e
    finally:
        partial.unlink(missing_ok=True)
    env.say(f"extracted {count} entries into {dest}")
    return EXIT_OK


def _subdir_in_archive(args: argparse.Namespace) -> str:
    """The folder the archive holds the subdir under, below its top folder."""
    return posixpath.normpath(args.subdir).strip("/") if args.subdir else ""


if __name__ == "__main__":
    sys.exit(main())
