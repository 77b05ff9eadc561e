"""Clients that wait: ``python -m bench.waiters --port P --ids FILE --count N``.

Opens ``count`` connections to archiverd on loopback, each with one request
that waits for its task (``Prefer: wait=S``): long polls of the tasks'
status, and with ``--archives N`` N held requests for their archives
instead (FILE has one ``<task id> <archive path>`` a line). Prints
``READY <open>`` once every request is sent, then holds them all until
stdin closes, and prints ``ANSWERED <n>``: how many were answered before
that (none should be, while their tasks run).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys


async def _one(
    port: int, request: bytes, gate: asyncio.Semaphore, answered: list[int]
) -> asyncio.StreamWriter:
    async with gate:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        await writer.drain()

    async def watch() -> None:
        if await reader.read(1):
            answered.append(1)

    asyncio.get_running_loop().create_task(watch())
    return writer


async def _main(args: argparse.Namespace) -> None:
    lines = [line.split() for line in open(args.ids).read().splitlines() if line]
    host = f"Host: 127.0.0.1:{args.port}\r\nPrefer: wait={args.wait}\r\n\r\n"
    requests = []
    for n in range(args.count):
        task_id, path = lines[n % len(lines)]
        target = path if n < args.archives else f"/archiver/status/{task_id}"
        requests.append(f"GET {target} HTTP/1.1\r\n{host}".encode())
    gate = asyncio.Semaphore(200)  # connects in flight: within the backlog
    answered: list[int] = []
    writers = await asyncio.gather(
        *(_one(args.port, r, gate, answered) for r in requests)
    )
    print(f"READY {len(writers)}", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    print(f"ANSWERED {len(answered)}", flush=True)
    for writer in writers:
        writer.transport.abort()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ids", required=True)
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--wait", type=int, default=300)
    parser.add_argument("--archives", type=int, default=0)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
