"""Dockerflow health and version: what load balancers and monitors ask.

- ``/__lbheartbeat__``: 200 whenever the process serves (no checks).
- ``/__heartbeat__``: each region's storage and each upstream host, checked
  at once with a short timeout; 500 when any check fails. A check still
  running from an earlier heartbeat (stuck on storage that does not answer)
  is waited for again, not started again: heartbeats never pile up calls.
- ``/__version__``: source, version and commit, from the ``version.json``
  written into the package when it is built (``setup.py``).

At start, :meth:`Health.check_at_start` checks storage and Redis once and
says what it finds: one line per check that fails.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from importlib import resources
from typing import Any

from twisted.internet.defer import Deferred, TimeoutError, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from archiverd import __version__
from archiverd.storage.base import MissingStorage
from archiverd.storage.service import StorageService
from archiverd.transfer.sources import Source
from archiverd.util.deferreds import SingleFlight

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

    log = Logger()

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
        #: Checks in progress, by name.
        self._running: SingleFlight[str, Exception | None] = SingleFlight()

    def _checks(self, upstream: bool = True) -> dict[str, Callable[[], Awaitable[Any]]]:
        checks: dict[str, Callable[[], Awaitable[Any]]] = {}
        for region in self.storage.regions:
            checks[f"storage:{region}"] = partial(self.storage.check, region)
        for name, source in self.sources.items() if upstream else ():
            checks[f"upstream:{name}"] = partial(source.check, self.timeout)
        if self.fleet is not None:
            checks["redis"] = self.fleet.ping
        return checks

    async def _run(
        self, name: str, check: Callable[[], Awaitable[Any]]
    ) -> Exception | None:
        """None when the check passes within the timeout, else what went
        wrong. A check of ``name`` still running is joined, not run again."""
        d = self._running.run(name, lambda: _failure_of(check))
        d.addTimeout(self.timeout, self.clock)
        try:
            return await d
        except TimeoutError:
            return TimeoutError(f"no answer within {self.timeout:g}s")

    async def _run_all(self, upstream: bool = True) -> dict[str, Exception | None]:
        checks = self._checks(upstream)
        errors = await gatherResults(
            [Deferred.fromCoroutine(self._run(n, c)) for n, c in checks.items()]
        )
        return dict(zip(checks, errors))

    async def heartbeat(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, Dockerflow's JSON body)."""
        results = {n: _message(e) for n, e in (await self._run_all()).items()}
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

    async def check_at_start(self) -> str | None:
        """Check storage in every region, and Redis, once, as archiverd starts.

        Each check that fails is logged in one line. Returns why archiverd
        must not run (storage that cannot be opened, a configured bucket
        that does not exist), or None: storage or Redis that cannot be
        reached only degrades it, since they may come back (the heartbeat
        answers 500, and what needs them fails, until they do).
        """
        results = await self._run_all(upstream=False)
        if self.storage.open_error is not None:
            return f"storage cannot be opened: {_message(self.storage.open_error)}"
        missing = [str(e) for e in results.values() if isinstance(e, MissingStorage)]
        for name, error in results.items():
            if error is not None and not isinstance(error, MissingStorage):
                self.log.warn(
                    "{what}: cannot be reached at start ({error}); serving "
                    "degraded: /__heartbeat__ answers 500 until it is back",
                    what=name.replace("storage:", "storage in "),
                    error=_message(error),
                )
        return "; ".join(missing) or None


async def _failure_of(check: Callable[[], Awaitable[Any]]) -> Exception | None:
    try:
        await check()
    except Exception as e:
        return e
    return None


def _message(error: BaseException | None) -> str | None:
    if error is None:
        return None
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
