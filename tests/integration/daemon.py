"""archiverd running inside the test process, on the test reactor."""

from __future__ import annotations

import json
from typing import Any

import treq
from polling import eventually
from twisted.internet import reactor

from archiverd.api.site import ArchiverSite
from archiverd.config import parse
from archiverd.tap import Daemon

MIB = 1024 * 1024


def tasks_config(**tasks: Any) -> dict[str, Any]:
    """[tasks] with ``hold = 0`` unless given: a cold request gets its 202 at
    once (the flow these tests poll), not a 302 after waiting for the task.
    Add to a built config's table (``config["tasks"].update(...)``) rather
    than replace it."""
    return {"hold": 0, **tasks}


def s3_config(
    hgweb_template: str, buckets: Any, endpoint_url: str = "", **pipeline: Any
) -> dict[str, Any]:
    """Raw config: hgweb upstream, moto S3 with the fixture's buckets."""
    return {
        "sources": {"hgmo": {"url_template": hgweb_template}},
        "storage": {
            "backend": "s3",
            "s3": {
                "endpoint_url": endpoint_url or buckets.endpoint_url,
                "buckets": dict(buckets.buckets),
                "addressing_style": "path",
            },
        },
        "pipeline": {"part_size": 5 * MIB, **pipeline},
        "tasks": tasks_config(),
    }


def file_config(hgweb_template: str, root: str, **pipeline: Any) -> dict[str, Any]:
    return {
        "sources": {"hgmo": {"url_template": hgweb_template}},
        "storage": {"backend": "file", "file": {"root": root, "regions": ["a", "b"]}},
        "pipeline": {"part_size": 5 * MIB, **pipeline},
        "tasks": tasks_config(),
    }


class InProcess:
    """A Daemon listening on a free loopback port of the test reactor."""

    def __init__(self, raw_config: dict[str, Any], backend: Any = None) -> None:
        self.config = parse(raw_config)
        self.daemon = Daemon(self.config, reactor, backend)
        self.port: Any = None
        self.base_url = ""

    async def start(self) -> None:
        self.daemon.open_files()
        self.daemon.startService()
        self.port = reactor.listenTCP(
            0, ArchiverSite(self.daemon.api, reactor=reactor), interface="127.0.0.1"
        )
        self.base_url = f"http://127.0.0.1:{self.port.getHost().port}"

    async def stop(self) -> None:
        if self.daemon.running:
            await self.port.stopListening()
            await self.daemon.stopService()

    async def get(self, path: str, **kwargs: Any) -> Any:
        url = path if path.startswith("http") else self.base_url + path
        return await treq.get(url, allow_redirects=False, **kwargs)

    async def get_json(self, path: str) -> tuple[int, Any]:
        response = await self.get(path)
        body = await response.content()
        return response.code, json.loads(body)

    async def wait(self, location: str, timeout: float = 60.0) -> dict[str, Any]:
        """Poll a status URL until the task finishes; its last ``result``."""

        async def result() -> dict[str, Any]:
            code, body = await self.get_json(location)
            assert code == 200, (code, body)
            return dict(body["result"])

        return await eventually(
            result,
            until=lambda r: r["state"] in ("SUCCESS", "FAILURE"),
            what=f"the task at {location} to finish",
            timeout=timeout,
        )
