"""moto's S3 server as a benchmark fixture: ``python -m bench.moto_server``.

Prints ``LISTENING <port>`` once it serves, with the buckets the benchmarks
name (``bench-N`` for archiverd, ``baseline-N`` for the baselines) created.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading

import boto3
from moto.server import ThreadedMotoServer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--regions", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=args.port, verbose=False)
    server.start()
    port = server._server.server_port  # moto's own attribute for the bound port
    s3 = boto3.client(
        "s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1"
    )
    for n in range(args.regions):
        for prefix in ("bench", "baseline"):
            s3.create_bucket(Bucket=f"{prefix}-{n}")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"LISTENING {port}", flush=True)
    stop.wait()
    server.stop()


if __name__ == "__main__":
    main()
