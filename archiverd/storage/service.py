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

import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.logger import Logger
from twisted.python.failure import Failure

from archiverd.errors import StorageError
from archiverd.storage.base import ObjectInfo, Storage
from archiverd.storage.cache import ExpiringLRU
from archiverd.storage.stored import StoredKeys
from archiverd.storage.uses import Uses
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
        expire_after: float = 0.0,
        expiry_margin: float = 0.0,
        wall: Callable[[], float] = time.time,
        metrics: Any = None,
        dates: Any = None,
    ) -> None:
        self.storage = storage
        #: What tells when an object was stored, and restarts its expiry:
        #: the backend itself, or a strategy given for it (S3: s3_dates.py).
        self.dates: Any = dates if dates is not None else storage
        self.regions = storage.regions
        self.default_region = storage.regions[0]
        self._reactor = reactor
        self.metrics = metrics
        #: (region, key) seen stored, and since when (see stored.py).
        self._known = StoredKeys(
            exists_cache_size,
            exists_cache_ttl,
            reactor.seconds,
            wall,
            expire_after=expire_after,
            margin=expiry_margin,
        )
        #: When each archive was last redirected to (see uses.py).
        self.uses = Uses(max(exists_cache_size, 1000), reactor.seconds, wall)
        self._expires_ins: set[int] = set()
        #: Archives' sha256s, for the redirects to them (see :meth:`sha256`).
        self._digests: ExpiringLRU[tuple[str, str], str] = ExpiringLRU(
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
        """Whether the key was seen stored lately and is not about to expire
        (no storage call)."""
        return self._known.known(region, key)

    @property
    def stored(self) -> StoredKeys:
        """The cache of stored keys (for the refresher)."""
        return self._known

    def cached_signed_url(self, region: str, key: str, expires_in: int) -> str | None:
        """A signed URL still fresh enough to hand out again, if any (handing
        it out is a use of the archive)."""
        url = self._signed.get((region, key, expires_in))
        if url is not None:
            self.uses.record(region, key)
        return url

    def forget(self, region: str, key: str, cause: str, bar: float = 0.0) -> None:
        """The object was found missing (``cause``: "head", "files",
        "eviction"): no redirect to it any more; the next request for it
        stores it again in the regions that lack it. With ``bar``, it counts
        as missing for that many seconds whatever storage says (it is being
        evicted), unless stored again meanwhile."""
        if self._known.drop(region, key) and self.metrics is not None:
            self.metrics.repairs.labels(cause).inc()
        if bar > 0:
            self._known.bar(region, key, bar)
        for expires_in in self._expires_ins:
            self._signed.discard((region, key, expires_in))

    async def exists(self, region: str, key: str) -> bool:
        """Whether the key is stored and may be redirected to; a yes is
        remembered (a no never is). With ``expire_after``, an object about
        to expire counts as missing (it is fetched and stored again)."""
        if self.known(region, key):
            return True
        if self._known.barred(region, key):
            return False
        stored_at = None
        if self._known.expire_after > 0 and hasattr(self.dates, "stored_at"):
            stored_at = await self.call(self.dates.stored_at, region, key)
            found = stored_at is not None
        else:
            found = await self.call(self.storage.exists, region, key)
        if not found:
            if self._known.held(region, key):
                self.forget(region, key, "head")
            return False
        if stored_at is not None and not self._known.redirectable(stored_at):
            return False
        self._known.put(region, key, stored_at)
        return True

    def cached_sha256(self, region: str, key: str) -> str | None:
        """The stored archive's sha256 if known here (no storage call)."""
        return self._digests.get((region, key))

    async def sha256(self, region: str, key: str) -> str:
        """The stored archive's sha256 ("" if it has none recorded, or is
        not stored): known since this daemon stored it, or asked of storage
        once (a tag in S3, the metadata of a file) and remembered."""
        known = self._digests.get((region, key))
        if known is not None:
            return known
        found = await self.call(self.storage.stat, region, key)
        if found:
            self._digests.put((region, key), found)
        return found or ""

    async def signed_url(self, region: str, key: str, expires_in: int) -> str:
        """A signed URL; one signed in the last ``signed_url_reuse`` seconds
        is handed out again (it then still has most of its validity)."""
        cached = self.cached_signed_url(region, key, expires_in)
        if cached is not None:
            return cached
        url = await self.call(self.storage.signed_url, region, key, expires_in)
        self._expires_ins.add(expires_in)
        self._signed.put((region, key, expires_in), url)
        self.uses.record(region, key)
        return url

    async def refresh(self, region: str, key: str) -> float | None:
        """Restart the object's expiry (see expiry.py), unless it was
        refreshed since it was seen (by another daemon); its stored time now,
        or None if it is no longer stored."""
        seen = self._known.stored_at(region, key) or self._known.wall()
        stored_at: float | None = await self.call(self.dates.refresh, region, key, seen)
        if stored_at is None:
            self.forget(region, key, "head")
        else:
            self._known.put(region, key, stored_at)
        return stored_at

    async def put(
        self, region: str, key: str, data: bytes, info: ObjectInfo, sha256: str
    ) -> None:
        await self.call(self.storage.put, region, key, data, info, sha256)
        self._known.put(region, key)
        self._digests.put((region, key), sha256)

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
        checksum: str | None = None,
    ) -> str:
        return await self.call(
            self.storage.upload_part,
            region,
            key,
            upload_id,
            number,
            offset,
            data,
            checksum,
        )

    async def part_checksum(self, data: bytes) -> str | None:
        """The checksum every region's upload of this part is sent with,
        computed once, on the pool (see ``Storage.part_checksum``)."""
        return await self.call(self.storage.part_checksum, data)

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
        self._known.put(region, key)
        self._digests.put((region, key), sha256)

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
