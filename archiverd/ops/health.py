"""Dockerflow health and version: what load balancers and monitors ask.

- ``/__lbheartbeat__``: 200 whenever the process serves (no checks).
- ``/__heartbeat__``: each region's storage and each upstream host, checked
  at once with a short timeout; 500 when any check fails.
- ``/__version__``: source, version and commit, from the ``version.json``
  written into the package when it is built (``setup.py``).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from importlib import resources
from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime

from archiverd import __version__
from archiverd.storage.service import StorageService
from archiverd.transfer.sources import Source

CHECK_TIMEOUT = 5.0


def version_info() -> dict[str, str]:
    """Dockerflow's version object; the commit is "unknown" outside a build."""
    info = {"source": "", "version": __version__, "commit": "unknown", "build": ""}
    try:
        built = json.loads(
            resources.files("archiverd").joinpath("version.json").read_text()
        )
    except (OSError, ValueError):
        return info
    info.update({k: str(v) for k, v in built.items() if k in info})
    return info


class Health:
    """Runs the heartbeat's checks."""

    def __init__(
        self,
        storage: StorageService,
        sources: Mapping[str, Source],
        clock: IReactorTime,
        timeout: float = CHECK_TIMEOUT,
        fleet: Any = None,
    ) -> None:
        #: The fleet's Redis (a RedisFleet), when there is one.
        self.fleet = fleet
        self.storage = storage
        self.sources = sources
        self.clock = clock
        self.timeout = timeout

    def _checks(self) -> dict[str, Callable[[], Awaitable[Any]]]:
        checks: dict[str, Callable[[], Awaitable[Any]]] = {}
        for region in self.storage.regions:
            checks[f"storage:{region}"] = partial(self.storage.check, region)
        for name, source in self.sources.items():
            checks[f"upstream:{name}"] = partial(source.check, self.timeout)
        if self.fleet is not None:
            checks["redis"] = self.fleet.ping
        return checks

    async def _run(self, check: Callable[[], Awaitable[Any]]) -> str | None:
        """None when the check passes, else what went wrong."""
        d = Deferred.fromCoroutine(_awaited(check()))
        d.addTimeout(self.timeout, self.clock)
        try:
            await d
        except Exception as e:
            return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        return None

    async def heartbeat(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, Dockerflow's JSON body)."""
        checks = self._checks()
        errors = await gatherResults(
            [Deferred.fromCoroutine(self._run(check)) for check in checks.values()]
        )
        results = dict(zip(checks, errors))
        healthy = all(error is None for error in results.values())
        return healthy, {
            "status": "ok" if healthy else "error",
            "checks": {n: "ok" if e is None else "error" for n, e in results.items()},
            "details": {
                n: {"status": "error", "message": e}
                for n, e in results.items()
                if e is not None
            },
        }


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable
