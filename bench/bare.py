"""The ceilings for the hit path: a bare Klein route, or a bare twisted.web
Resource, answering a fixed 302 (and a fixed status for the poll route).

Same route shapes, the same Site with its access log (Twisted's combined
format), so the difference measured against it is archiverd's own work: with
``--access-log F``, written by the same :class:`~archiverd.ops.logs.AccessLogFile`
as archiverd's ``access_log`` setting; else, as under ``twistd -n --logfile``,
one event per request through twistd's text observer on ``--logfile``.
``python -m bench.bare --port 0 [--logfile F] [--access-log F]
[--kind klein|resource]``.
"""

from __future__ import annotations

import argparse
import resource
import sys
from typing import Any

from klein import Klein
from twisted.internet import reactor
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.python import logfile
from twisted.web.resource import Resource
from twisted.web.server import Site

from archiverd.ops.logs import AccessLogFile

LOCATION = (
    b"https://bucket.s3.example/projects/ash-42bf8560b395.tar.gz?X-Amz-Signature=x"
)
HIT_BODY = b'<p>The archive is at <a href="x">x</a>.</p>\n'
STATUS_BODY = b'{"result": {"state": "SUCCESS"}}'


class Bare:
    app = Klein()

    @app.route("/archiver/<source>/<path:repo>/<rev>", methods=["GET"])
    def archive(self, request: Any, source: str, repo: str, rev: str) -> bytes:
        request.redirect(LOCATION)
        request.setHeader("Content-Type", "text/html; charset=utf-8")
        return HIT_BODY

    @app.route("/archiver/status/<task_id>", methods=["GET"])
    def status(self, request: Any, task_id: str) -> bytes:
        request.setHeader("Content-Type", "application/json")
        return STATUS_BODY


class BareResource(Resource):
    """The same two answers from a plain Resource: no routing framework."""

    isLeaf = True

    def render_GET(self, request: Any) -> bytes:  # noqa: N802 (Twisted API)
        if request.path.startswith(b"/archiver/status/"):
            request.setHeader("Content-Type", "application/json")
            return STATUS_BODY
        request.redirect(LOCATION)
        request.setHeader("Content-Type", "text/html; charset=utf-8")
        return HIT_BODY


class BareSite(Site):
    """Twisted's Site, its access log (``logPath``) written as archiverd
    writes its own."""

    def _openLogFile(self, path: Any) -> AccessLogFile:  # noqa: N802 (Twisted API)
        return AccessLogFile(path, self.reactor)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--logfile", default="/dev/null")
    parser.add_argument("--access-log", default=None)
    parser.add_argument("--kind", choices=("klein", "resource"), default="klein")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # As twistd --logfile F does: a rotating LogFile under a text observer.
    out: Any = (
        open(args.logfile, "a")
        if args.logfile == "/dev/null"
        else logfile.LogFile.fromFullPath(args.logfile)
    )
    globalLogBeginner.beginLoggingTo(
        [textFileLogObserver(out)], redirectStandardIO=False
    )
    root = Bare().app.resource() if args.kind == "klein" else BareResource()
    site = BareSite(root, logPath=args.access_log)
    port = reactor.listenTCP(args.port, site, backlog=1024, interface="127.0.0.1")
    print(f"LISTENING {port.getHost().port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    sys.exit(main())
