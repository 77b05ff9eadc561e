"""Runs a blocking :class:`~archiverd.storage.base.Storage` on its own thread pool.

The pool is dedicated (not the reactor's, which resolves DNS) and owned by
:class:`StorageService`, which starts it and stops it with the daemon. Every
method here is called on the reactor thread and returns an awaitable; the
storage's own code runs only on pool threads.

Signing a URL asks the storage nothing, so it runs on a small pool of its own:
when the storage pool's threads are all stuck on an endpoint that does not
answer, a hit for an archive known to be stored is still answered at once.
(Measured: an S3 presign is 240 us of CPU, a thread hop 60 us more; signing
happens once per key per reuse window, while a stuck storage call can hold a
thread for ``max_attempts x read_timeout``.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.logger import Logger
from twisted.python.failure import Failure

from archiverd.errors import StorageError
from archiverd.storage.base import ObjectInfo, Storage
from archiverd.storage.cache import ExpiringLRU
from archiverd.util.threads import BlockingPool, PoolStopped

T = TypeVar("T")

#: Threads that sign URLs (CPU only: one would do, but botocore refreshes role
#: credentials on whichever thread asks first).
SIGNING_THREADS = 2


class StorageService(Service):
    """The async face of a storage backend, and owner of its thread pool."""

    log = Logger()

    def __init__(
        self,
        storage: Storage,
        reactor: Any,
        threads: int = 16,
        *,
        exists_cache_size: int = 100_000,
        exists_cache_ttl: float = 3600.0,
        signed_url_reuse: float = 30.0,
    ) -> None:
        self.storage = storage
        self.regions = storage.regions
        self.default_region = storage.regions[0]
        self._reactor = reactor
        #: (region, key) seen stored: archives are immutable (see cache.py).
        self._known: ExpiringLRU[tuple[str, str], bool] = ExpiringLRU(
            exists_cache_size, exists_cache_ttl, reactor.seconds
        )
        #: Signed URLs, handed out again for ``signed_url_reuse`` seconds.
        self._signed: ExpiringLRU[tuple[str, str, int], str] = ExpiringLRU(
            min(exists_cache_size, 10_000), signed_url_reuse, reactor.seconds
        )
        # Daemon threads: a call stuck past the shutdown grace period does
        # not keep the process alive (see abandon()).
        self._pool = BlockingPool(reactor, "archiverd-storage", threads)
        self._signing = BlockingPool(reactor, "archiverd-sign", SIGNING_THREADS)
        self._opened = False
        self._open_error: BaseException | None = None
        self._waiters: list[Deferred[None]] = []

    def mark_open(self) -> None:
        """Say that ``storage.open()`` has already run (at start-up)."""
        self._opened = True

    @property
    def open_error(self) -> BaseException | None:
        """Why storage could not be opened, if it could not (every call then
        fails; archiverd refuses to start: see ``Health.check_at_start``)."""
        return self._open_error

    def _open_done(self, result: Any) -> None:
        if isinstance(result, Failure):
            self._open_error = result.value
        self._opened = True
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def startService(self) -> None:
        super().startService()
        self._pool.start()
        self._signing.start()
        if not self._opened:
            self._pool.run(self.storage.open).addBoth(self._open_done)

    def stopService(self) -> Deferred[None]:
        """Close the storage, then stop the pool once its calls are done."""
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        try:
            await self._pool.run(self.storage.close)
        except Exception:
            self.log.failure("closing storage")
        await self._signing.stop()
        await self._pool.stop()

    def abandon(self) -> None:
        """Stop taking work without waiting for the calls in progress."""
        Service.stopService(self)
        self._signing.abandon()
        self._pool.abandon()

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on a pool once storage is open: the storage's
        ``signed_url`` on the signing pool (it asks the storage nothing, so it
        never waits behind calls that do), anything else on the storage pool."""
        pool = self._signing if fn == self.storage.signed_url else self._pool
        if not self._opened:
            waiter: Deferred[None] = Deferred()
            self._waiters.append(waiter)
            await waiter
        if self._open_error is not None:
            raise StorageError(f"storage is not available: {self._open_error}")
        try:
            return await pool.run(fn, *args)
        except PoolStopped as e:
            raise StorageError(f"storage is stopped: {e}") from e

    async def check(self, region: str) -> None:
        """Raise if the region's storage cannot be used."""
        await self.call(self.storage.check, region)

    def known(self, region: str, key: str) -> bool:
        """Whether the key was seen stored lately (no storage call)."""
        return bool(self._known.get((region, key)))

    def cached_signed_url(self, region: str, key: str, expires_in: int) -> str | None:
        """A signed URL still fresh enough to hand out again, if any."""
        return self._signed.get((region, key, expires_in))

    async def exists(self, region: str, key: str) -> bool:
        """Whether the key is stored; a yes is remembered (a no never is)."""
        if self.known(region, key):
            return True
        found = await self.call(self.storage.exists, region, key)
        if found:
            self._known.put((region, key), True)
        return found

    async def signed_url(self, region: str, key: str, expires_in: int) -> str:
        """A signed URL; one signed in the last ``signed_url_reuse`` seconds
        is handed out again (it then still has most of its validity)."""
        cached = self.cached_signed_url(region, key, expires_in)
        if cached is not None:
            return cached
        url = await self.call(self.storage.signed_url, region, key, expires_in)
        self._signed.put((region, key, expires_in), url)
        return url

    async def put(
        self, region: str, key: str, data: bytes, info: ObjectInfo, sha256: str
    ) -> None:
        await self.call(self.storage.put, region, key, data, info, sha256)
        self._known.put((region, key), True)

    async def start_upload(self, region: str, key: str, info: ObjectInfo) -> str:
        return await self.call(self.storage.start_upload, region, key, info)

    async def upload_part(
        self,
        region: str,
        key: str,
        upload_id: str,
        number: int,
        offset: int,
        data: bytes,
    ) -> str:
        return await self.call(
            self.storage.upload_part, region, key, upload_id, number, offset, data
        )

    async def complete_upload(
        self,
        region: str,
        key: str,
        upload_id: str,
        parts: list[tuple[int, str]],
        info: ObjectInfo,
        sha256: str,
        size: int,
    ) -> None:
        await self.call(
            self.storage.complete_upload,
            region,
            key,
            upload_id,
            parts,
            info,
            sha256,
            size,
        )
        self._known.put((region, key), True)

    async def abort_upload(self, region: str, key: str, upload_id: str) -> None:
        await self.call(self.storage.abort_upload, region, key, upload_id)

    async def abort_abandoned(self, key: str, regions: Sequence[str]) -> None:
        """Abort the uploads of ``key`` left pending (by a daemon that was
        killed), in every region at once. Trouble in a region is logged, not
        raised: the bucket's lifecycle rule is the backstop."""

        async def abort(region: str) -> None:
            try:
                count = await self.call(self.storage.abort_pending, region, key)
            except CancelledError:
                raise
            except Exception as e:
                self.log.warn(
                    "{key}: cannot look for abandoned uploads in {region}: {error}",
                    key=key,
                    region=region,
                    error=f"{type(e).__name__}: {e}",
                )
                return
            if count:
                self.log.warn(
                    "{key}: aborted {n} abandoned upload(s) in {region}",
                    key=key,
                    n=count,
                    region=region,
                )

        await gatherResults([Deferred.fromCoroutine(abort(r)) for r in regions])
