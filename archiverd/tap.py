"""The composition root: ``twistd -n archiverd --config archiverd.toml``.

Builds every object and wires them together: the only module that touches the
global reactor, and only in :func:`makeService`. ``MultiService`` starts its
children in order but stops them all at once, so :class:`Daemon` stops them
itself, last started first: the listener, then the tasks (aborting every
upload in flight), then the storage thread pool.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import treq
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory

from archiverd import __version__
from archiverd.api.files import SignedFiles
from archiverd.api.site import ArchiverSite, access_log_formatter
from archiverd.api.web import ArchiverAPI
from archiverd.archives import Archives
from archiverd.config import Config, ConfigError, load
from archiverd.ops.health import Health
from archiverd.ops.logs import RequestLog, TimedRequest, use_json_logs
from archiverd.ops.memory import fix_mmap_threshold
from archiverd.ops.metrics import Metrics
from archiverd.storage.base import Storage
from archiverd.storage.files import FileStorage
from archiverd.storage.s3 import S3Storage
from archiverd.storage.service import StorageService
from archiverd.tasks.coordinator import Coordinator, LocalCoordinator
from archiverd.tasks.fleet import RedisCoordinator
from archiverd.tasks.redis_store import RedisFleet
from archiverd.tasks.service import TaskService
from archiverd.transfer.pipeline import Fetcher
from archiverd.transfer.sources import Source


class Options(usage.Options):
    optParameters = [
        ["config", "c", None, "TOML configuration file."],
        [
            "listen",
            "l",
            None,
            "Endpoint to serve on (overrides the config's 'listen').",
        ],
        [
            "log-format",
            None,
            "text",
            "text (twistd's lines) or json (mozlog JSON lines on stdout).",
        ],
    ]

    def opt_version(self) -> None:
        print(f"archiverd {__version__}")
        sys.exit(0)

    def postOptions(self) -> None:  # noqa: N802 (Twisted API)
        if self["log-format"] not in ("text", "json"):
            raise usage.UsageError("--log-format must be text or json")
        if self["log-format"] == "json" and self.parent is not None:
            use_json_logs(self.parent)


def build_fleet(config: Config, reactor: Any) -> RedisFleet | None:
    """The fleet's Redis client, when coordination is configured."""
    coordination = config.coordination
    if coordination.backend != "redis":
        return None
    try:
        return RedisFleet(
            coordination.url,
            reactor,
            prefix=coordination.prefix,
            timeout=coordination.timeout,
        )
    except ValueError as e:
        raise ConfigError(f"coordination.url: {e}") from None


def build_storage(config: Config) -> Storage:
    """The configured backend (not yet opened)."""
    storage = config.storage
    if storage.backend == "s3":
        return S3Storage(
            storage.s3.buckets,
            endpoint_url=storage.s3.endpoint_url,
            addressing_style=storage.s3.addressing_style,
            max_attempts=storage.s3.max_attempts,
            checksum=storage.s3.checksum,
            sign_payload=storage.s3.sign_payload,
            max_connections=storage.threads,
        )
    return FileStorage(storage.file.root, storage.file.regions, storage.file.secret)


class _QuietClientFactory(_HTTP11ClientFactory):  # type: ignore[misc]
    noisy = False


def _fail(message: str) -> SystemExit:
    return SystemExit(f"archiverd: {message}")


class Daemon(MultiService):
    """archiverd's services, in start order, and the API they serve."""

    log = Logger()

    def __init__(
        self, config: Config, reactor: Any, backend: Storage | None = None
    ) -> None:
        super().__init__()
        self.clock = reactor
        self.shutdown_grace = config.shutdown_grace
        backend = backend if backend is not None else build_storage(config)
        self.storage = StorageService(
            backend,
            reactor,
            config.storage.threads,
            exists_cache_size=config.storage.exists_cache_size,
            exists_cache_ttl=config.storage.exists_cache_ttl,
            # A reused URL keeps at least 90% of its validity.
            signed_url_reuse=config.storage.signed_url_expiry / 10,
        )
        self.files = backend if isinstance(backend, FileStorage) else None
        self.http_pool = HTTPConnectionPool(reactor)
        self.http_pool._factory = _QuietClientFactory  # no log line per connection
        client = treq.client.HTTPClient(Agent(reactor, pool=self.http_pool))
        sources = {
            name: Source(sc, client, reactor) for name, sc in config.sources.items()
        }
        self.metrics = Metrics()
        self.fleet = build_fleet(config, reactor)
        self.tasks = self._task_service(config, reactor, sources)
        self.api = self._api(config, reactor, sources)
        self.storage.setServiceParent(self)
        self.tasks.setServiceParent(self)

    def _task_service(
        self, config: Config, reactor: Any, sources: dict[str, Source]
    ) -> TaskService:
        """The task service, its runner, and the coordinator configured."""
        fetcher = Fetcher(
            sources,
            self.storage,
            config.pipeline.part_size,
            config.pipeline.parts_in_flight,
            reactor,
            read_size=config.pipeline.read_size,
            metrics=self.metrics,
        )
        coordinator: Coordinator = LocalCoordinator()
        if self.fleet is not None:
            coordinator = RedisCoordinator(
                self.fleet,
                reactor,
                keep_finished=config.tasks.keep_finished,
                lock_ttl=config.coordination.lock_ttl,
                clean=self.storage.abort_abandoned,
            )
            self.metrics.watch_fleet(self.fleet)
        tasks = TaskService(
            reactor,
            fetcher,
            config.tasks.keep_finished,
            coordinator=coordinator,
            max_concurrent=config.tasks.max_concurrent_tasks,
            max_tasks=config.tasks.max_tasks,
            metrics=self.metrics,
        )
        self.metrics.watch_tasks(tasks)
        return tasks

    def _api(
        self, config: Config, reactor: Any, sources: dict[str, Source]
    ) -> ArchiverAPI:
        """The HTTP API over the domain, with the files route when files are
        stored locally."""
        archives = Archives(
            sources,
            self.storage,
            self.tasks,
            reactor,
            signed_url_expiry=config.storage.signed_url_expiry,
        )
        files = None
        if self.files is not None:
            files = SignedFiles(self.files, self.storage.call)
        return ArchiverAPI(
            archives,
            public_url=config.public_url,
            files=files,
            health=Health(self.storage, sources, reactor, fleet=self.fleet),
            metrics=self.metrics,
        )

    def open_files(self) -> None:
        """Open local-files storage now, so a bad root fails start-up at once."""
        if self.files is not None:
            self.files.open()
            self.storage.mark_open()

    def stopService(self) -> Any:
        # One at a time, last started first: the listener stops accepting,
        # then the tasks abort their uploads (which needs the storage pool),
        # and only then does the storage pool stop. MultiService would stop
        # them all at once.
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop_in_order())

    async def _stop_in_order(self) -> None:
        deadline = self.clock.seconds() + self.shutdown_grace
        late = False
        for service in reversed(list(self)):
            if late and service is self.storage:
                # Threads may still be inside storage calls: leave them (they
                # are daemon threads) rather than wait past the grace period.
                self.storage.abandon()
                continue
            stopping = maybeDeferred(service.stopService)
            remaining = max(0.0, deadline - self.clock.seconds())
            if not await _fires_within(stopping, remaining, self.clock):
                late = True
                self.log.warn(
                    "shutdown_grace of {grace}s passed while stopping {service}; "
                    "exiting anyway",
                    grace=self.shutdown_grace,
                    service=type(service).__name__,
                )
        await self.http_pool.closeCachedConnections()


async def _fires_within(d: Deferred[Any], seconds: float, clock: Any) -> bool:
    """Whether ``d`` fires within ``seconds`` (a failure is logged, not raised).

    Unlike ``addTimeout`` this never cancels ``d``: cancelling a stop that is
    already aborting uploads would only abandon the aborts.
    """
    outcome: Deferred[bool] = Deferred()

    def fired(result: Any) -> None:
        if isinstance(result, Failure):
            Daemon.log.failure("stopping", result)
        if not outcome.called:
            outcome.callback(True)

    def expired() -> None:
        if not outcome.called:
            outcome.callback(False)

    timer = clock.callLater(seconds, expired)
    d.addBoth(fired)
    try:
        return await outcome
    finally:
        if timer.active():
            timer.cancel()


def makeService(options: Options) -> MultiService:
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString

    try:
        config = load(options["config"], os.environ)
    except ConfigError as e:
        raise _fail(f"config error: {e}") from None
    listen = options["listen"] or config.listen
    try:
        endpoint = serverFromString(reactor, listen)
    except (ValueError, TypeError, KeyError) as e:
        raise _fail(f"config error: listen: bad endpoint {listen!r}: {e}") from None

    # Part buffers above the threshold (given back when freed), socket reads
    # below it (reused from the heap without a system call each).
    fix_mmap_threshold(256 * 1024)
    try:
        daemon = Daemon(config, reactor)
    except ConfigError as e:
        raise _fail(f"config error: {e}") from None
    try:
        daemon.open_files()
    except OSError as e:
        raise _fail(
            f"config error: storage.file.root: cannot use {config.storage.file.root}: "
            f"{e.strerror or e}"
        ) from None
    if options["log-format"] == "json":
        site = ArchiverSite(
            daemon.api,
            reactor=reactor,
            request_log=RequestLog(),
            requestFactory=TimedRequest,
        )
    else:
        site = ArchiverSite(
            daemon.api, reactor=reactor, logFormatter=access_log_formatter
        )
    web = StreamServerEndpointService(endpoint, site)
    web.setServiceParent(daemon)
    return daemon
