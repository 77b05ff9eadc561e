"""The ceiling for the hit path: a bare Klein route that answers a fixed 302.

Same route shape, same Site (with its access log) and same log observer as
archiverd under ``twistd -n --logfile``, so the difference measured against it
is archiverd's own work. ``python -m bench.bare --port 0 --logfile F``.
"""

from __future__ import annotations

import argparse
import sys

from klein import Klein
from twisted.internet import reactor
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.web.server import Site

LOCATION = (
    b"https://bucket.s3.example/projects/ash-42bf8560b395.tar.gz?X-Amz-Signature=x"
)


class Bare:
    app = Klein()

    @app.route("/archiver/<source>/<path:repo>/<rev>", methods=["GET"])
    def archive(self, request, source, repo, rev):
        request.redirect(LOCATION)
        request.setHeader("Content-Type", "text/html; charset=utf-8")
        return b'<p>The archive is at <a href="x">x</a>.</p>\n'

    @app.route("/archiver/status/<task_id>", methods=["GET"])
    def status(self, request, task_id):
        request.setHeader("Content-Type", "application/json")
        return b'{"result": {"state": "SUCCESS"}}'


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--logfile", default="/dev/null")
    args = parser.parse_args()
    globalLogBeginner.beginLoggingTo(
        [textFileLogObserver(open(args.logfile, "a"))], redirectStandardIO=False
    )
    port = reactor.listenTCP(
        args.port, Site(Bare().app.resource()), backlog=1024, interface="127.0.0.1"
    )
    print(f"LISTENING {port.getHost().port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    sys.exit(main())
