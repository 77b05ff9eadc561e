"""Self-test of the benchmark fixtures: what they serve, record, and how fast.

``python -m bench.check_fixtures`` starts :mod:`bench.upstream` and
:mod:`bench.sink` as subprocesses, checks bodies, headers and stats, drives
the sink with botocore (two regions, path-style, fake credentials), measures
unthrottled throughput, checks ``--rate`` and ``--latency``, prints a table
and exits 0 when every check passed.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import botocore.session
from botocore.config import Config
from botocore.exceptions import ClientError

from bench.upstream import expected_body_sha256

ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024
GIB = 1024 * MIB
REGIONS = ("us-east-1", "us-west-2")
ARCHIVE = "/bench/size-{n}/archive/0123456789ab.tar.gz/"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_TICK = os.sysconf("SC_CLK_TCK")

#: Fake credentials only, and nothing read from the user's AWS config.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "x",
    "AWS_SECRET_ACCESS_KEY": "x",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}


class Fixture:
    """A fixture subprocess: its port from the ``LISTENING`` line; SIGTERM ends it."""

    def __init__(self, module: str, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, "--port", "0", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        word, _, port = line.partition(" ")
        if word != "LISTENING":
            self.process.kill()
            raise RuntimeError(f"{module} did not start: {line!r}")
        self.url = f"http://127.0.0.1:{int(port)}"

    def cpu(self) -> float:
        """CPU seconds (user + system) the process has used so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1]
        utime, stime = fields.split()[11:13]
        return (int(utime) + int(stime)) / _TICK

    def stats(self) -> Any:
        return json.loads(get(self.url + "/__stats__"))

    def reset(self) -> None:
        get(self.url + "/__reset__")

    def stop(self) -> None:
        """SIGTERM; the process must exit 0, having printed nothing more."""
        self.process.send_signal(signal.SIGTERM)
        rest, _ = self.process.communicate(timeout=10)
        check(self.process.returncode == 0, f"exit status {self.process.returncode}")
        check(rest == "", f"more output than the LISTENING line: {rest!r}")


@contextmanager
def running(stack: ExitStack, module: str, *args: str) -> Iterator[Fixture]:
    fixture = Fixture(module, *args)
    stack.callback(fixture.process.kill)
    yield fixture
    fixture.stop()


def check(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def get(url: str) -> bytes:
    with _OPENER.open(url, timeout=30) as response:
        return response.read()


def download(url: str, digest: Any = None) -> tuple[int, float]:
    """Stream ``url`` into one reused buffer: (bytes, seconds after headers)."""
    buffer = memoryview(bytearray(MIB))
    total = 0
    with _OPENER.open(url, timeout=30) as response:
        start = time.monotonic()
        while n := response.readinto(buffer):
            if digest is not None:
                digest.update(buffer[:n])
            total += n
    return total, time.monotonic() - start


def cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(
    fixture: Fixture, work: Callable[[], int]
) -> tuple[int, float, float, float]:
    """Run ``work``: (bytes, seconds, fixture CPU seconds, our CPU seconds)."""
    cpu, own, start = fixture.cpu(), cpu_self(), time.monotonic()
    n = work()
    seconds = time.monotonic() - start
    return n, seconds, fixture.cpu() - cpu, cpu_self() - own


def s3_client(endpoint: str, region: str, sign_payload: bool = True) -> Any:
    """A botocore client as archiverd makes one, path-style, no retries."""
    s3: dict[str, Any] = {"addressing_style": "path"}
    if not sign_payload:
        s3["payload_signing_enabled"] = False
    config = Config(
        signature_version="s3v4",
        s3=s3,
        retries={"mode": "standard", "max_attempts": 1},
        max_pool_connections=8,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    session = botocore.session.get_session()
    return session.create_client(
        "s3", region_name=region, endpoint_url=endpoint, config=config
    )


# Correctness.


def check_upstream(upstream: Fixture, chunked: Fixture) -> None:
    n = 64 * MIB
    digest = hashlib.sha256()
    size, _ = download(upstream.url + ARCHIVE.format(n=n), digest)
    check(size == n, f"64 MiB body is {size} bytes")
    check(digest.hexdigest() == expected_body_sha256(n), "64 MiB body sha256")
    with _OPENER.open(upstream.url + "/r/archive/abc.zip/sub/dir") as response:
        body = response.read()
        check(len(body) == MIB, "default size is 1 MiB")
        check(response.headers["Content-Type"] == "application/zip", "zip type")
    n = 5 * MIB + 3
    digest = hashlib.sha256()
    with _OPENER.open(chunked.url + ARCHIVE.format(n=n)) as response:
        check(response.headers["Transfer-Encoding"] == "chunked", "--chunked")
        digest.update(response.read())
    check(digest.hexdigest() == expected_body_sha256(n), "chunked body sha256")
    node = json.loads(get(upstream.url + "/some/repo/json-rev/tip"))["node"]
    check(len(node) == 40, "json-rev answers a node")
    try:
        get(upstream.url + "/nothing/here")
        raise AssertionError("unknown path answered 200")
    except urllib.error.HTTPError as e:
        check(e.code == 404, "unknown path is a 404")
    stats = upstream.stats()
    check(stats["requests"] == 2, f"upstream requests: {stats}")
    check(stats["bytes_sent"] == 65 * MIB, f"upstream bytes_sent: {stats}")
    check(stats["paths"][0] == ARCHIVE.format(n=64 * MIB), "upstream paths")
    upstream.reset()
    check(upstream.stats()["requests"] == 0, "upstream reset")


def check_sink(sink: Fixture) -> None:
    part = bytes(8 * MIB)
    sha = "ab" * 32
    for region in REGIONS:
        client = s3_client(sink.url, region)
        bucket = f"bench-{region}"
        client.create_bucket(Bucket=bucket)
        upload = client.create_multipart_upload(
            Bucket=bucket,
            Key="a/x.tar.gz",
            ContentType="application/x-gzip",
            ContentDisposition="attachment; filename=x.tar.gz",
        )["UploadId"]
        etags = [
            client.upload_part(
                Bucket=bucket,
                Key="a/x.tar.gz",
                UploadId=upload,
                PartNumber=n,
                Body=part,
            )["ETag"]
            for n in (1, 2, 3)
        ]
        client.complete_multipart_upload(
            Bucket=bucket,
            Key="a/x.tar.gz",
            UploadId=upload,
            MultipartUpload={
                "Parts": [
                    {"PartNumber": n, "ETag": e} for n, e in zip((1, 2, 3), etags)
                ]
            },
        )
        head = client.head_object(Bucket=bucket, Key="a/x.tar.gz")
        check(head["ContentLength"] == 24 * MIB, f"completed size: {head}")
        check(head["Metadata"] == {}, "no metadata before the copy")
        client.copy_object(
            Bucket=bucket,
            Key="a/x.tar.gz",
            CopySource={"Bucket": bucket, "Key": "a/x.tar.gz"},
            MetadataDirective="REPLACE",
            ContentType="application/x-gzip",
            ContentDisposition="attachment; filename=x.tar.gz",
            Metadata={"sha256": sha},
        )
        head = client.head_object(Bucket=bucket, Key="a/x.tar.gz")
        check(head["ContentLength"] == 24 * MIB, "size kept by the copy")
        check(head["Metadata"] == {"sha256": sha}, f"copied metadata: {head}")
        check(head["ContentType"] == "application/x-gzip", "content type")
        check("x.tar.gz" in head["ContentDisposition"], "content disposition")
        client.put_object(
            Bucket=bucket,
            Key="b.zip",
            Body=part[:MIB],
            ContentType="application/zip",
            Metadata={"sha256": sha},
        )
        head = client.head_object(Bucket=bucket, Key="b.zip")
        check(head["ContentLength"] == MIB, "put size")
        check(head["Metadata"] == {"sha256": sha}, "put metadata")
        aborted = client.create_multipart_upload(Bucket=bucket, Key="c")["UploadId"]
        client.upload_part(
            Bucket=bucket, Key="c", UploadId=aborted, PartNumber=1, Body=part[:MIB]
        )
        client.abort_multipart_upload(Bucket=bucket, Key="c", UploadId=aborted)
        try:
            client.abort_multipart_upload(Bucket=bucket, Key="c", UploadId=aborted)
            raise AssertionError("aborted twice")
        except ClientError as e:
            check(e.response["Error"]["Code"] == "NoSuchUpload", "abort twice")
        pending = client.create_multipart_upload(Bucket=bucket, Key="d")["UploadId"]
        listed = client.list_multipart_uploads(Bucket=bucket)["Uploads"]
        check([(u["Key"], u["UploadId"]) for u in listed] == [("d", pending)], "list")
        try:
            client.head_object(Bucket=bucket, Key="missing")
            raise AssertionError("missing object found")
        except ClientError as e:
            check(e.response["Error"]["Code"] == "404", "head of a missing key")
        keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
        check(keys == ["a/x.tar.gz", "b.zip"], f"list_objects_v2: {keys}")
        got = client.get_object(Bucket=bucket, Key="b.zip")
        check(got["ResponseMetadata"]["HTTPHeaders"]["x-sink-size"] == str(MIB), "get")
        client.close()
    stats = sink.stats()
    expected = {
        "bytes_received": 26 * MIB,
        "parts": 4,
        "completed": 1,
        "puts": 1,
        "copies": 1,
        "aborted": 1,
        "tagged": 0,
        "pending": 1,
        "objects": 2,
        "head": 4,
    }
    for region in REGIONS:
        check(stats["buckets"][f"bench-{region}"] == expected, f"sink stats: {stats}")
    check(stats["requests"] == 2 * 20, f"sink requests: {stats['requests']}")
    sink.reset()
    check(sink.stats() == {"buckets": {}, "requests": 0}, "sink reset")


# Speed.


def upstream_speed(upstream: Fixture, n: int = GIB) -> tuple[int, float, float, float]:
    return measure(upstream, lambda: download(upstream.url + ARCHIVE.format(n=n))[0])


def sink_speed(
    sink: Fixture, sign_payload: bool, n: int = GIB
) -> tuple[int, float, float, float]:
    """Upload ``n`` bytes as 16 MiB parts from 4 threads, all of one bytes object."""
    part = bytes(16 * MIB)
    client = s3_client(sink.url, REGIONS[0], sign_payload)
    upload = client.create_multipart_upload(Bucket="speed", Key="k")["UploadId"]

    def send(number: int) -> int:
        client.upload_part(
            Bucket="speed", Key="k", UploadId=upload, PartNumber=number, Body=part
        )
        return len(part)

    def work() -> int:
        with ThreadPoolExecutor(4) as pool:
            return sum(pool.map(send, range(1, n // len(part) + 1)))

    result = measure(sink, work)
    client.abort_multipart_upload(Bucket="speed", Key="k", UploadId=upload)
    client.close()
    counts = sink.stats()["buckets"]["speed"]
    check(counts["bytes_received"] == n, f"sink ingest counted: {counts}")
    sink.reset()
    return result


def check_paced(upstream: Fixture, sink: Fixture) -> list[str]:
    """``--rate 50000000`` and ``--latency``: times within 20% of the expected."""
    rows = []
    start = time.monotonic()
    size, body_seconds = download(upstream.url + ARCHIVE.format(n=100_000_000))
    headers = time.monotonic() - start - body_seconds
    check(size == 100_000_000, "paced download size")
    check(0.25 <= headers < 0.45, f"--latency 0.25: headers after {headers:.2f}s")
    check(1.6 <= body_seconds <= 2.4, f"100 MB at 50 MB/s took {body_seconds:.2f}s")
    rows.append(f"upstream 100 MB at 50 MB/s: {body_seconds:.2f}s (2.0 expected)")

    with ThreadPoolExecutor(2) as pool:
        url = upstream.url + ARCHIVE.format(n=50_000_000)
        both = [s for _, s in pool.map(download, [url, url])]
    check(all(0.8 <= s <= 1.2 for s in both), f"2 x 50 MB in parallel: {both}")
    rows.append(
        "upstream 2 x 50 MB in parallel: "
        + ", ".join(f"{s:.2f}s" for s in both)
        + " (1.0 each expected: the rate is per connection)"
    )

    client = s3_client(sink.url, REGIONS[0], sign_payload=False)
    upload = client.create_multipart_upload(Bucket="paced", Key="k")["UploadId"]
    body = bytes(50_000_000)
    start = time.monotonic()
    client.upload_part(
        Bucket="paced", Key="k", UploadId=upload, PartNumber=1, Body=body
    )
    seconds = time.monotonic() - start
    client.close()
    check(1.0 * 0.8 + 0.1 <= seconds <= 1.0 * 1.2 + 0.1, f"sink paced: {seconds:.2f}s")
    rows.append(f"sink 50 MB part at 50 MB/s + 0.1s latency: {seconds:.2f}s (1.1)")
    return rows


def main() -> int:
    os.environ.update(AWS_ENV)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        os.environ.pop(name, None)
    paced = ["--rate", "50000000"]
    with ExitStack() as stack:
        upstream = stack.enter_context(running(stack, "bench.upstream"))
        chunked = stack.enter_context(running(stack, "bench.upstream", "--chunked"))
        sink = stack.enter_context(running(stack, "bench.sink"))
        slow_up = stack.enter_context(
            running(stack, "bench.upstream", *paced, "--latency", "0.25")
        )
        slow_sink = stack.enter_context(
            running(stack, "bench.sink", *paced, "--latency", "0.1")
        )

        check_upstream(upstream, chunked)
        print("upstream: 64 MiB body, chunked body, json-rev, 404, stats: ok")
        check_sink(sink)
        print("sink: botocore operations in 2 regions, stats: ok")

        table = [
            ("upstream GET, 1 urllib stream", upstream_speed(upstream)),
            ("upstream GET, --chunked", upstream_speed(chunked)),
            ("sink upload_part x4, signed payload", sink_speed(sink, True)),
            ("sink upload_part x4, UNSIGNED-PAYLOAD", sink_speed(sink, False)),
        ]
        print()
        print(f"{'1 GiB, unthrottled':40} {'MiB/s':>7} {'fixture CPU':>12} {'ours':>6}")
        for name, (n, seconds, fixture_cpu, own_cpu) in table:
            rate = n / MIB / seconds
            print(f"{name:40} {rate:7.0f} {fixture_cpu:11.2f}s {own_cpu:5.2f}s")
        print()
        for row in check_paced(slow_up, slow_sink):
            print(row)
    print("\nall fixture checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
