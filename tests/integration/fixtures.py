"""Real components for the integration tests, used by ``conftest.py``.

Everything here is blocking and reactor-free on purpose: pytest-twisted runs
a global Twisted reactor in the test process, so the servers below live in
subprocesses (hgweb) or plain threads (moto, the breaking upstream), and the
helper methods use the stdlib (``urllib``, ``subprocess``) or boto3.

Only loopback addresses are ever bound or contacted.
"""

from __future__ import annotations

import http.server
import io
import json
import os
import random
import re
import socket
import struct
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Self

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

LOOPBACK = "127.0.0.1"
MIB = 1024 * 1024

#: Path of an archive below a server's base URL, as hgweb spells it.
ARCHIVE_PATH_TEMPLATE = "/{repo}/archive/{rev}.{suffix}/{subdir}"

#: The ``hg`` installed next to the interpreter running the tests.
HG = Path(sys.executable).parent / "hg"

#: Environment for every ``hg`` process: no user/system config, plain output,
#: a fixed committer; together with fixed commit dates this makes changeset
#: ids (and therefore archives) identical from run to run.
HG_ENV = {
    "HGRCPATH": "",
    "HGPLAIN": "1",
    "HGUSER": "archiverd tests <tests@example.invalid>",
    "HGENCODING": "utf-8",
    "LANG": "C",
    "LC_ALL": "C",
    "TZ": "UTC",
}

#: Commit date (seconds since the epoch, UTC) of a repo's first commit; each
#: further commit made through :class:`HgwebServer` is one minute later.
BASE_COMMIT_DATE = 1_700_000_000

#: Seed for all the random (incompressible) payloads.
RANDOM_SEED = 20240101

#: Regions :class:`S3Buckets` makes a bucket in, us-east-1 first.
S3_REGIONS = ("us-east-1", "us-west-2")

#: Fake credentials exported for the whole session by the ``moto_server``
#: fixture, and variables removed so nothing real can leak in.
MOTO_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
MOTO_ENV_REMOVED = ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE")

_COMMITTED_RE = re.compile(rb"^committed changeset \d+:([0-9a-f]{40})$", re.M)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    Inherently racy (someone else may grab it before you bind); prefer
    binding port 0 yourself where the server allows it.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def random_bytes(size: int, seed: int = RANDOM_SEED) -> bytes:
    """Return ``size`` incompressible bytes, the same for the same seed."""
    return random.Random(seed).randbytes(size)


def http_get(url: str, timeout: float = 60) -> bytes:
    """GET ``url`` with urllib, bypassing any proxy, and return the body.

    Raises ``urllib.error.HTTPError`` for non-2xx answers and
    ``http.client.IncompleteRead`` (or another ``OSError``/``HTTPException``)
    when the body is cut short.
    """
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as response:
        return response.read()


def hg(args: list[str], cwd: Path | None = None) -> bytes:
    """Run ``hg ARGS`` (with :data:`HG_ENV`) and return its stdout.

    Raises ``RuntimeError`` carrying hg's output if it fails.
    """
    env = {**_base_env(), **HG_ENV}
    proc = subprocess.run(
        [str(HG), *args], cwd=cwd, env=env, capture_output=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"hg {' '.join(args)} failed ({proc.returncode}):\n"
            f"{proc.stdout.decode(errors='replace')}"
            f"{proc.stderr.decode(errors='replace')}"
        )
    return proc.stdout


def _base_env() -> dict[str, str]:
    """The few variables child processes inherit from ours."""
    keep = ("PATH", "HOME", "TMPDIR", "SYSTEMROOT")
    return {k: os.environ[k] for k in keep if k in os.environ}


class HgwebServer:
    """Mercurial repositories served by a real ``hg serve --web-conf``.

    Layout under ``workdir``: ``repos/`` (served as ``/``), ``web.conf``,
    ``access.log``, ``error.log`` and ``stdout.log``.

    hgweb writes and flushes an access-log line as soon as it sends a
    response's status and headers (before the body), so by the time a client
    has seen any response, its line is already in the log; no polling needed.
    The log's ``size`` field is always ``-`` (hgweb streams without
    Content-Length).
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.root = self.workdir / "repos"
        self.conf = self.workdir / "web.conf"
        self.access_log = self.workdir / "access.log"
        self.error_log = self.workdir / "error.log"
        self.stdout_log = self.workdir / "stdout.log"
        self.base_url: str | None = None
        self._process: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._commit_counts: dict[str, int] = {}
        self.root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"<HgwebServer {self.base_url or 'not running'} root={self.root}>"

    # -- lifecycle ---------------------------------------------------------

    def start(self, timeout: float = 20) -> None:
        """Start ``hg serve`` on an ephemeral port and wait until it listens.

        ``refreshinterval = 0`` makes hgweb rescan ``repos/`` on every
        request, so repos created after start-up are served at once.
        """
        self.conf.write_text(
            "[paths]\n"
            f"/ = {self.root}/**\n"
            "[web]\n"
            "allow-archive = gz zip bz2\n"
            "refreshinterval = 0\n"
        )
        self.access_log.touch()
        args = [
            str(HG), "serve", "--web-conf", str(self.conf),
            "-a", LOOPBACK, "-p", "0",
            "--accesslog", str(self.access_log),
            "--errorlog", str(self.error_log),
        ]  # fmt: skip
        with self.stdout_log.open("wb") as out:
            self._process = subprocess.Popen(
                args,
                cwd=self.workdir,
                env={**_base_env(), **HG_ENV},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(
                rb"bound to 127\.0\.0\.1:(\d+)", self.stdout_log.read_bytes()
            )
            if match:
                self.base_url = f"http://{LOOPBACK}:{int(match.group(1))}"
                return
            if self._process.poll() is not None:
                break
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(
            "hg serve did not start:\n"
            + self.stdout_log.read_text(errors="replace")
            + (
                self.error_log.read_text(errors="replace")
                if self.error_log.exists()
                else ""
            )
        )

    def stop(self) -> None:
        """Terminate the ``hg serve`` process (idempotent)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> HgwebServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- URLs and fetching -------------------------------------------------

    @property
    def url_template(self) -> str:
        """``base_url + "/{repo}/archive/{rev}.{suffix}/{subdir}"``."""
        return self.base_url + ARCHIVE_PATH_TEMPLATE

    def archive_url(
        self, repo: str, rev: str, suffix: str = "tar.gz", subdir: str = ""
    ) -> str:
        """The hgweb URL of an archive."""
        return self.url_template.format(
            repo=repo, rev=rev, suffix=suffix, subdir=subdir
        )

    def archive(
        self, repo: str, rev: str, suffix: str = "tar.gz", subdir: str = ""
    ) -> bytes:
        """Fetch an archive straight from hgweb (what a client would get).

        Archives are deterministic: same changeset, type and subdir give the
        same bytes (timestamps come from the changeset date). The top folder
        is named after the rev *as requested*, so ``tip`` and its hash differ.
        """
        return http_get(self.archive_url(repo, rev, suffix, subdir))

    def json_rev(self, repo: str, rev: str) -> dict:
        """hgweb's ``/<repo>/json-rev/<rev>`` answer, decoded."""
        return json.loads(http_get(f"{self.base_url}/{repo}/json-rev/{rev}"))

    # -- access log --------------------------------------------------------

    def requests(self, substring: str) -> list[str]:
        """Access-log lines whose request line contains ``substring``.

        The request line is the quoted ``"GET /path HTTP/1.1"`` part; the
        log is append-only for the whole session, so compare counts taken
        before and after the action under test.
        """
        lines = self.access_log.read_text(errors="replace").splitlines()
        return [line for line in lines if substring in _request_line(line)]

    def count(self, substring: str) -> int:
        """``len(self.requests(substring))``."""
        return len(self.requests(substring))

    # -- repositories ------------------------------------------------------

    def repo_path(self, repo: str) -> Path:
        """Working directory of ``repo`` (a path like ``projects/ash``)."""
        return self.root / repo

    def node(self, repo: str, rev: str) -> str:
        """Full 40-hex changeset id of ``rev`` (hash, tag, bookmark, ...)."""
        return hg(["log", "-r", rev, "-T", "{node}"], self.repo_path(repo)).decode()

    def cat(self, repo: str, rev: str, path: str) -> bytes:
        """Content of ``path`` at ``rev``, as hg stores it."""
        return hg(["cat", "-r", rev, "--", path], self.repo_path(repo))

    def commit(self, repo: str, files: dict[str, bytes | None], message: str) -> str:
        """Write ``files`` into ``repo`` and commit them; return the new node.

        Creates the repository (and hgweb serves it immediately) if it does
        not exist yet. A ``None`` value deletes that file. Commits on the
        default branch, moving ``default``/``tip`` (not bookmarks). Commit
        dates are deterministic: one minute apart from
        :data:`BASE_COMMIT_DATE`, per repo.
        """
        path = self.repo_path(repo)
        if not (path / ".hg").is_dir():
            path.mkdir(parents=True, exist_ok=True)
            hg(["init"], path)
        for name, content in files.items():
            target = path / name
            if content is None:
                target.unlink()
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
        out = hg(
            ["commit", "--debug", "-A", "-m", message, "-d", self._next_date(repo)],
            path,
        )
        return _COMMITTED_RE.search(out).group(1).decode()

    def tag(self, repo: str, rev: str, name: str) -> str:
        """Tag ``rev`` as ``name`` (this commits .hgtags); return the new node."""
        hg(["tag", "-r", rev, "-d", self._next_date(repo), name], self.repo_path(repo))
        return self.node(repo, "tip")

    def bookmark(self, repo: str, rev: str, name: str) -> None:
        """Point bookmark ``name`` at ``rev`` (creating or moving it)."""
        hg(["bookmark", "--force", "-r", rev, name], self.repo_path(repo))

    def _next_date(self, repo: str) -> str:
        """Deterministic ``hg -d`` value for the next commit in ``repo``."""
        with self._lock:
            index = self._commit_counts.get(repo, 0)
            self._commit_counts[repo] = index + 1
        return f"{BASE_COMMIT_DATE + 60 * index} 0"


def _request_line(log_line: str) -> str:
    """The quoted request line of an access-log line ('' if none)."""
    start = log_line.find('"')
    end = log_line.find('"', start + 1)
    return log_line[start + 1 : end] if start >= 0 and end > start else ""


def build_standard_repos(server: HgwebServer) -> None:
    """Create the repositories the integration tests rely on.

    - ``projects/ash``: rev 0 (tag ``v1.0``) has README, mozharness files,
      ``some_dir/file_with_underscore.txt``, ``browser/app.js`` and a 2 MiB
      random ``testing/mozharness/blob.bin``; rev 1 (bookmark ``feature``)
      modifies README, run.py and app.js; rev 2 (tip/default) adds the tag.
    - ``mozilla-central``: one commit, two files.
    - ``big/repo``: one commit with 12 MiB of random ``data/blob.bin``.

    The three repos are built concurrently (each is independent).
    """
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = [
            pool.submit(_build_ash, server),
            pool.submit(_build_mozilla_central, server),
            pool.submit(_build_big_repo, server),
        ]
        for future in futures:
            future.result()


def _build_ash(server: HgwebServer) -> None:
    """``projects/ash``: see :func:`build_standard_repos`."""
    repo = "projects/ash"
    first = server.commit(
        repo,
        {
            "README": b"ash: a test repository\n",
            "testing/mozharness/mozharness/__init__.py": b"version = (1, 0)\n",
            "testing/mozharness/scripts/run.py": b"print('run v1')\n",
            "testing/mozharness/blob.bin": random_bytes(2 * MIB, RANDOM_SEED + 1),
            "some_dir/file_with_underscore.txt": b"underscore\n",
            "browser/app.js": b"console.log('v1');\n",
        },
        "initial ash commit",
    )
    second = server.commit(
        repo,
        {
            "README": b"ash: a test repository, revised\n",
            "testing/mozharness/scripts/run.py": b"print('run v2')\n",
            "browser/app.js": b"console.log('v2');\n",
        },
        "second ash commit",
    )
    server.tag(repo, first, "v1.0")
    server.bookmark(repo, second, "feature")


def _build_mozilla_central(server: HgwebServer) -> None:
    """``mozilla-central``: see :func:`build_standard_repos`."""
    server.commit(
        "mozilla-central",
        {"README.txt": b"mozilla-central\n", "mach": b"#!/usr/bin/env python3\n"},
        "initial mozilla-central commit",
    )


def _build_big_repo(server: HgwebServer) -> None:
    """``big/repo``: see :func:`build_standard_repos`."""
    server.commit(
        "big/repo",
        {"data/blob.bin": random_bytes(12 * MIB, RANDOM_SEED + 2)},
        "big blob",
    )


class _LoopbackS3:
    """What moto and radosgw have in common: started and stopped (also as a
    context manager), and reached with the fake keys of :data:`MOTO_ENV`."""

    access_key = MOTO_ENV["AWS_ACCESS_KEY_ID"]
    secret_key = MOTO_ENV["AWS_SECRET_ACCESS_KEY"]

    def __init__(self) -> None:
        self.endpoint_url: str | None = None
        self._clients: dict[str, object] = {}

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def client(self, region: str = "us-east-1"):
        """A (cached, thread-safe) boto3 S3 client for ``region``, path-style."""
        if region not in self._clients:
            self._clients[region] = boto3.session.Session().client(
                "s3",
                region_name=region,
                endpoint_url=self.endpoint_url,
                aws_access_key_id=self.access_key,
                aws_secret_access_key=self.secret_key,
                config=Config(s3={"addressing_style": "path"}),
            )
        return self._clients[region]


class MotoS3(_LoopbackS3):
    """A moto S3 server in a thread of this process, on 127.0.0.1.

    moto keeps its state in this process's global backends: a unit test using
    ``moto.mock_aws`` in the same session resets them (and patches botocore
    while active).
    """

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        super().__init__()
        self._server = ThreadedMotoServer(ip_address=LOOPBACK, port=0)

    def __repr__(self) -> str:
        return f"<MotoS3 {self.endpoint_url or 'not running'}>"

    def start(self) -> None:
        """Start the server and learn its real port."""
        self._server.start()
        port = self._server._server.server_port
        self.endpoint_url = f"http://{LOOPBACK}:{port}"

    def stop(self) -> None:
        """Stop the server."""
        self._server.stop()


class S3Buckets:
    """One fresh, uniquely named bucket per region in :data:`S3_REGIONS`."""

    def __init__(self, moto: MotoS3, regions: tuple[str, ...] = S3_REGIONS):
        self._moto = moto
        suffix = uuid.uuid4().hex[:12]
        self.buckets: dict[str, str] = {
            region: f"archiverd-{region}-{suffix}" for region in regions
        }

    def __repr__(self) -> str:
        return f"<S3Buckets {self.buckets}>"

    @property
    def endpoint_url(self) -> str:
        """The moto server's URL (the same for every region)."""
        return self._moto.endpoint_url

    def client(self, region: str):
        """The boto3 S3 client for ``region``."""
        return self._moto.client(region)

    def create(self) -> None:
        """Create the buckets (with a LocationConstraint outside us-east-1)."""
        for region, bucket in self.buckets.items():
            kwargs = {}
            if region != "us-east-1":
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
            self.client(region).create_bucket(Bucket=bucket, **kwargs)

    def destroy(self) -> None:
        """Abort pending uploads, delete every object, delete the buckets.

        Best effort for the bucket itself: if a straggling write re-fills it,
        it is left behind (moto is in-memory, names are unique).
        """
        for region, bucket in self.buckets.items():
            client = self.client(region)
            for upload in self.pending_uploads(region):
                client.abort_multipart_upload(
                    Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                )
            for key in self.keys(region):
                client.delete_object(Bucket=bucket, Key=key)
            try:
                client.delete_bucket(Bucket=bucket)
            except ClientError:
                pass  # a write raced us (BucketNotEmpty); moto is in-memory

    def __enter__(self) -> S3Buckets:
        self.create()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.destroy()

    def keys(self, region: str) -> list[str]:
        """All object keys in ``region``'s bucket, sorted."""
        paginator = self.client(region).get_paginator("list_objects_v2")
        return sorted(
            obj["Key"]
            for page in paginator.paginate(Bucket=self.buckets[region])
            for obj in page.get("Contents", [])
        )

    def get(self, region: str, key: str) -> bytes:
        """The body of ``key`` in ``region``'s bucket."""
        response = self.client(region).get_object(Bucket=self.buckets[region], Key=key)
        return response["Body"].read()

    def head(self, region: str, key: str) -> dict:
        """boto3's ``head_object`` response for ``key``."""
        return self.client(region).head_object(Bucket=self.buckets[region], Key=key)

    def pending_uploads(self, region: str) -> list[dict]:
        """Multipart uploads started but neither completed nor aborted."""
        response = self.client(region).list_multipart_uploads(
            Bucket=self.buckets[region]
        )
        return response.get("Uploads", [])


class _BreakingHandler(http.server.BaseHTTPRequestHandler):
    """Answers any GET with a chunked body that is cut off mid-stream."""

    protocol_version = "HTTP/1.1"
    server: _BreakingHTTPServer

    def do_GET(self) -> None:  # noqa: N802 (stdlib naming)
        upstream = self.server.upstream
        upstream._record(self.path)
        nbytes, chunk_size = upstream.nbytes, upstream.chunk_size
        payload = random_bytes(nbytes, RANDOM_SEED + 3)
        self.close_connection = True
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/x-gzip")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for start in range(0, nbytes, chunk_size):
                chunk = payload[start : start + chunk_size]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.flush()
            # No terminating b"0\r\n\r\n": end the stream abruptly.
            if upstream.reset:
                linger = struct.pack("ii", 1, 0)  # on, 0 s: close sends RST
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                self.connection.close()
            else:
                self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # the client went away first; that's fine too

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        """Stay quiet (the default logs every request to stderr)."""


class _BreakingHTTPServer(http.server.ThreadingHTTPServer):
    """ThreadingHTTPServer that knows its :class:`BreakingUpstream`."""

    daemon_threads = True

    def __init__(self, upstream: BreakingUpstream) -> None:
        super().__init__((LOOPBACK, 0), _BreakingHandler)
        self.upstream = upstream

    def handle_error(self, request: object, client_address: object) -> None:
        """Ignore errors from connections the handler broke on purpose."""


class BreakingUpstream:
    """An hgweb stand-in whose archives always die mid-transfer.

    Every GET gets ``200``, ``Transfer-Encoding: chunked`` and ``nbytes``
    random bytes in ``chunk_size`` chunks, then the connection ends without
    the terminating zero-length chunk: a clean FIN by default (clients see
    ``http.client.IncompleteRead``), or a TCP RST when ``reset`` is true
    (clients typically see ``ConnectionResetError``, possibly before all
    data has been read).
    """

    def __init__(self, nbytes: int = 7 * MIB, chunk_size: int = 64 * 1024):
        self.nbytes = nbytes
        self.chunk_size = chunk_size
        self.reset = False
        self.paths: list[str] = []
        self._lock = threading.Lock()
        self._httpd: _BreakingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.base_url: str | None = None

    def __repr__(self) -> str:
        return f"<BreakingUpstream {self.base_url or 'not running'}>"

    @property
    def requests(self) -> int:
        """How many GETs have been received so far."""
        with self._lock:
            return len(self.paths)

    @property
    def url_template(self) -> str:
        """``base_url + "/{repo}/archive/{rev}.{suffix}/{subdir}"``."""
        return self.base_url + ARCHIVE_PATH_TEMPLATE

    def _record(self, path: str) -> None:
        """Note one request (called from handler threads)."""
        with self._lock:
            self.paths.append(path)

    def start(self) -> None:
        """Bind 127.0.0.1:0 and serve in a daemon thread."""
        self._httpd = _BreakingHTTPServer(self)
        self.base_url = f"http://{LOOPBACK}:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="breaking-upstream",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)
            self._httpd = None

    def __enter__(self) -> BreakingUpstream:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


#: ``scripts/radosgw.sh`` of this checkout: installs, starts and stops radosgw.
RADOSGW_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "radosgw.sh"


class Radosgw(_LoopbackS3):
    """A throwaway Ceph radosgw: a real S3 server on 127.0.0.1.

    ``scripts/radosgw.sh start`` runs one monitor, one memstore OSD and
    radosgw under ``workdir`` (all of it removed by :meth:`stop`), with no
    Ceph authentication. The S3 user's keys are the fake ones of
    :data:`MOTO_ENV`, so the daemon under test, which takes botocore's
    credential chain, reaches moto or radosgw with the same environment. If
    this process dies without calling :meth:`stop`, the script's watchdog
    stops the cluster.
    """

    def __init__(self, workdir: Path) -> None:
        super().__init__()
        self.workdir = Path(workdir)
        self.start_seconds: float | None = None

    def __repr__(self) -> str:
        return f"<Radosgw {self.endpoint_url or 'not running'} in {self.workdir}>"

    @staticmethod
    def unavailable() -> str | None:
        """Why radosgw cannot run on this machine, or ``None`` if it can."""
        proc = subprocess.run(
            [str(RADOSGW_SCRIPT), "check"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode == 0:
            return None
        reason = (proc.stdout + proc.stderr).strip().removeprefix("radosgw: ")
        return reason or f"{RADOSGW_SCRIPT} check exited {proc.returncode}"

    def start(self, timeout: float = 300) -> None:
        """Start the cluster (about 2 s) and check the S3 keys work."""
        started = time.monotonic()
        env = {
            **_base_env(),
            "RADOSGW_ACCESS_KEY": self.access_key,
            "RADOSGW_SECRET_KEY": self.secret_key,
            "RADOSGW_OWNER_PID": str(os.getpid()),
        }
        try:
            # A second try, on other ports, if one was taken meanwhile.
            for attempt in (1, 2):
                proc = subprocess.run(
                    [str(RADOSGW_SCRIPT), "start", str(self.workdir), str(free_port())],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    text=True,
                    timeout=timeout,
                    check=False,
                )
                match = re.search(r"^endpoint_url=(\S+)$", proc.stdout, re.M)
                if match and proc.returncode == 0:
                    break
                if attempt == 1 and "Address already in use" in proc.stderr:
                    continue
                raise RuntimeError(
                    f"{RADOSGW_SCRIPT} start failed ({proc.returncode}):\n"
                    f"{proc.stdout}{proc.stderr}"
                )
            self.endpoint_url = match.group(1)
            self.client().list_buckets()
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - started

    def stop(self) -> None:
        """Kill every process of the cluster and remove ``workdir``."""
        subprocess.run(
            [str(RADOSGW_SCRIPT), "stop", str(self.workdir)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
            check=False,
        )


class RadosgwBuckets(S3Buckets):
    """:class:`S3Buckets` on a :class:`Radosgw` (same methods and names).

    radosgw has a single zonegroup and accepts a bucket's LocationConstraint
    only if it equals that zonegroup's ``api_name``, so every bucket is made
    without one. A "region" is then just what archiverd's config says
    (``storage.s3.buckets`` maps region -> bucket) and the SigV4 scope its
    clients sign with, which radosgw does not check against the bucket. That
    still exercises archiverd's per-region clients and buckets end to end.

    After an abort, radosgw's ``list_parts`` answers NoSuchKey (AWS and moto:
    NoSuchUpload); :meth:`pending_uploads` (ListMultipartUploads) agrees on
    both, so tests assert with that.
    """

    def create(self) -> None:
        """Create the buckets, all without a LocationConstraint."""
        for region, bucket in self.buckets.items():
            self.client(region).create_bucket(Bucket=bucket)


def archive_members(archive: bytes, prefix: str) -> dict[str, bytes]:
    """What the old archiver_client extracted: files under prefix, stripped."""
    out = {}
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r|gz") as tar:
        for member in tar:
            if member.isfile() and member.name.startswith(prefix):
                data = tar.extractfile(member)
                assert data is not None
                out[member.name[len(prefix) :]] = data.read()
    return out
