"""The composition root: ``twistd -n archiverd --config archiverd.toml``.

Builds every object and wires them together: the only module that touches the
global reactor, and only in :func:`makeService`. ``MultiService`` starts its
children in order but stops them all at once, so :class:`Daemon` stops them
itself, last started first: the listener, then the tasks (aborting every
upload in flight), then the storage thread pool.

The process fails loudly and cleanly: a bad config, a port it cannot listen
on, storage that cannot be opened or a bucket that does not exist stop it with
one line and exit status 1 (systemd's ``Restart=on-failure`` then acts);
storage or Redis that cannot be reached at start are said once each, and the
daemon serves degraded until they are back. Its reactor keeps time on the
monotonic clock (:mod:`archiverd.util.clock`).
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Callable
from typing import Any

from twisted.application import strports
from twisted.application.service import MultiService, Service
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory

from archiverd import __version__
from archiverd.api.dashboard import Dashboard
from archiverd.api.files import SignedFiles
from archiverd.api.site import ArchiverSite, access_log_formatter
from archiverd.api.web import ArchiverAPI
from archiverd.archives import Archives
from archiverd.config import Config, ConfigError, load
from archiverd.ops.health import Health
from archiverd.ops.logs import (
    RequestLog,
    TimedRequest,
    reopen_on_sighup,
    use_json_logs,
)
from archiverd.ops.memory import fix_mmap_threshold
from archiverd.ops.metrics import Metrics
from archiverd.prewarm.service import build_prewarm
from archiverd.storage.base import Storage
from archiverd.storage.expiry import Refresher, default_window
from archiverd.storage.files import FileStorage, WeakSecret
from archiverd.storage.s3 import S3Storage
from archiverd.storage.s3_dates import S3Dates
from archiverd.storage.service import StorageService
from archiverd.storage.sweeper import Sweeper
from archiverd.tasks.coordinator import Coordinator, LocalCoordinator
from archiverd.tasks.fleet import RedisCoordinator
from archiverd.tasks.redis_store import RedisFleet
from archiverd.tasks.service import TaskService
from archiverd.transfer.client import UpstreamClient
from archiverd.transfer.pipeline import Fetcher
from archiverd.transfer.sources import Source
from archiverd.util.clock import WallDated, schedule_on_monotonic


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
            connect_timeout=storage.s3.connect_timeout,
            read_timeout=storage.s3.read_timeout,
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
        #: Called after a fatal fault is logged (makeService: stop, exit 1).
        self.on_fatal: Callable[[], None] | None = None
        self._checking: Deferred[None] | None = None
        backend = backend if backend is not None else build_storage(config)
        self.storage = StorageService(
            backend,
            reactor,
            config.storage.threads,
            exists_cache_size=config.storage.exists_cache_size,
            exists_cache_ttl=config.storage.exists_cache_ttl,
            # A reused URL keeps at least 90% of its validity.
            signed_url_reuse=config.storage.signed_url_expiry / 10,
            expire_after=config.storage.expire_after,
            # A client sent to an object can still fetch it as long as its
            # URL is valid, whatever the clock skew with S3.
            expiry_margin=config.storage.signed_url_expiry + 60,
            dates=S3Dates(backend) if isinstance(backend, S3Storage) else None,
        )
        self.files = backend if isinstance(backend, FileStorage) else None
        self.http_pool = HTTPConnectionPool(reactor)
        self.http_pool._factory = _QuietClientFactory  # no log line per connection
        # Not treq's HTTPClient: it asks for and undoes gzip content coding,
        # and archives must be stored as upstream serves them.
        client = UpstreamClient(Agent(reactor, pool=self.http_pool))
        self.metrics = Metrics()
        self.storage.metrics = self.metrics
        sources = {
            name: Source(sc, client, reactor, metrics=self.metrics)
            for name, sc in config.sources.items()
        }
        self.fleet = build_fleet(config, reactor)
        self.tasks = self._task_service(config, reactor, sources)
        self.api = self._api(config, reactor, sources)
        self.prewarm = build_prewarm(
            config, self.api.archives, reactor, self.metrics, self.fleet,
            self.storage.call,
        )  # fmt: skip
        self.storage.setServiceParent(self)
        for upkeep in self._upkeep(config, reactor):
            upkeep.setServiceParent(self)
        self.tasks.setServiceParent(self)
        if self.prewarm is not None:
            # Stopped before the tasks: no new pre-warm work while they stop.
            self.prewarm.setServiceParent(self)
            self.api.hooks = self.prewarm.hooks
            self.api.archives.observer = self.prewarm.prewarmer.asked

    def _upkeep(self, config: Config, reactor: Any) -> list[Service]:
        """The file root's retention and the refreshing of popular archives
        close to expiry, as configured."""
        storage, files = config.storage, config.storage.file
        upkeep: list[Service] = []
        if self.files is not None and (
            files.max_bytes or files.max_age or storage.expire_after
        ):
            self.sweeper: Sweeper | None = Sweeper(
                self.files,
                self.storage,
                reactor,
                max_bytes=files.max_bytes,
                max_age=files.max_age,
                expire_after=storage.expire_after,
                # A URL handed out is still valid, its use maybe unsaved.
                min_idle=storage.signed_url_expiry + 10,
                metrics=self.metrics,
            )
            upkeep.append(self.sweeper)
        if storage.expire_after:
            upkeep.append(
                Refresher(
                    self.storage,
                    reactor,
                    window=default_window(storage.expire_after),
                    metrics=self.metrics,
                )
            )
        return upkeep

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
            clean_up=self.storage.abort_abandoned,
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
            # As the storage's: a URL handed out keeps 90% of its validity.
            signed_url_reuse=config.storage.signed_url_expiry / 10,
            metrics=self.metrics,
        )
        files = None
        if self.files is not None:
            files = SignedFiles(self.files, self.storage.call, self.storage.forget)
        self.health = Health(self.storage, sources, reactor, fleet=self.fleet)
        return ArchiverAPI(
            archives,
            public_url=config.public_url,
            hosts=config.hosts,
            files=files,
            health=self.health,
            metrics=self.metrics,
            hold=config.tasks.hold,
            max_wait=config.tasks.max_wait,
            legacy_clients=config.tasks.legacy_clients,
            dashboard=Dashboard(
                archives,
                self.metrics,
                file_root=None if self.files is None else self.files.root,
                max_bytes=config.storage.file.max_bytes,
            ),
        )

    def open_files(self) -> None:
        """Open local-files storage now, so a bad root fails start-up at once."""
        if self.files is not None:
            self.files.open()
            self.storage.mark_open()

    def privilegedStartService(self) -> None:
        # The listener listens now (twistd calls this before the reactor
        # runs). Failing, it would be logged as "Unhandled Error" and the
        # process would serve nothing, forever: stop start-up instead.
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            address = f"{e.interface}:{e.port}" if e.interface else e.port
            reason = getattr(e.socketError, "strerror", None) or e.socketError
            raise _fail(f"cannot listen on {address}: {reason}") from None

    def startService(self) -> None:
        super().startService()
        self._checking = Deferred.fromCoroutine(self._check_at_start())
        self._checking.addErrback(
            lambda f: None if f.check(CancelledError) else self.log.failure("", f)
        )

    async def _check_at_start(self) -> None:
        why = await self.health.check_at_start()
        if why is not None and self.running:
            self.fatal(f"cannot start: {why}")

    def fatal(self, message: str) -> None:
        """A fault archiverd cannot serve with: one line, then stop."""
        self.log.critical("archiverd: {message}", message=message)
        if self.on_fatal is not None:
            self.on_fatal()

    def stopService(self) -> Any:
        # One at a time, last started first: the listener stops accepting,
        # then the tasks abort their uploads (which needs the storage pool),
        # and only then does the storage pool stop. MultiService would stop
        # them all at once.
        Service.stopService(self)
        if self._checking is not None:
            self._checking.cancel()
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
        closing = self.http_pool.closeCachedConnections()
        await _fires_within(
            closing, max(0.0, deadline - self.clock.seconds()), self.clock
        )


def _stop_and_exit(reactor: Any, status: int = 1) -> None:
    """Stop the reactor and, once twistd has finished (its last log line
    written, its pid file removed), exit with ``status``: twistd itself
    exits 0 whenever its reactor stops without a signal."""
    atexit.register(_exit, status)
    if reactor.running:
        reactor.stop()
    else:
        reactor.callWhenRunning(reactor.stop)


def _exit(status: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


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


def _configured(options: Options, reactor: Any) -> tuple[Config, str]:
    """The config and the endpoint to listen on; a problem is one line."""
    from twisted.internet.endpoints import serverFromString

    try:
        config = load(options["config"], os.environ)
    except ConfigError as e:
        raise _fail(f"config error: {e}") from None
    listen = options["listen"] or config.listen
    try:
        serverFromString(reactor, listen)  # a bad one is a config error
    except (ValueError, TypeError, KeyError) as e:
        raise _fail(f"config error: listen: bad endpoint {listen!r}: {e}") from None
    return config, listen


def _serve(daemon: Daemon, site: ArchiverSite, listen: str, reactor: Any) -> None:
    """Serve ``site`` on ``listen`` as the daemon's last service."""
    site.reactor = WallDated(reactor)  # the access log's dates, on the wall clock
    # strports: a failure to listen at start raises (Daemon says it in a line).
    strports.service(listen, site, reactor).setServiceParent(daemon)
    daemon.on_fatal = lambda: _stop_and_exit(reactor)


def _raise_fd_limit() -> None:
    """Open files up to the hard limit (a connection is a descriptor)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass  # a hard limit the kernel refuses as soft: keep the soft


def makeService(options: Options) -> MultiService:
    from twisted.internet import reactor

    config, listen = _configured(options, reactor)
    # Part buffers above the threshold (given back when freed), socket reads
    # below it (reused from the heap without a system call each).
    fix_mmap_threshold(256 * 1024)
    # Each open connection is a file descriptor: let max_connections (10,000
    # by default, with held requests and long polls) be reached.
    _raise_fd_limit()
    # Every deadline on the monotonic clock: before anything is scheduled,
    # and before the Daemon's caches take ``reactor.seconds`` as their clock.
    schedule_on_monotonic(reactor)
    try:
        daemon = Daemon(config, reactor)
    except ConfigError as e:
        raise _fail(f"config error: {e}") from None
    try:
        daemon.open_files()
    except WeakSecret as e:
        raise _fail(str(e)) from None
    except OSError as e:
        raise _fail(
            f"config error: storage.file.root: cannot use {config.storage.file.root}: "
            f"{e.strerror or e}"
        ) from None
    limits: dict[str, Any] = {
        "header_timeout": config.header_timeout,
        "max_connections": config.max_connections,
        "max_connections_per_client": config.max_connections_per_client,
    }
    if options["log-format"] == "json":
        site = ArchiverSite(
            daemon.api,
            reactor=reactor,
            request_log=RequestLog(),
            requestFactory=TimedRequest,
            **limits,
        )
    else:
        site = ArchiverSite(
            daemon.api,
            reactor=reactor,
            logFormatter=access_log_formatter,
            logPath=config.access_log,
            **limits,
        )
        if config.access_log:
            reopen_on_sighup(lambda: [log for log in [site.access_log] if log], reactor)
    _serve(daemon, site, listen, reactor)
    return daemon
