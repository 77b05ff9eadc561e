"""Watching an hgweb source's repos for new heads, every ``interval`` seconds.

Each watched repo has a position: the last push id seen (pushlog) or the
heads seen at the last poll. A repo seen for the first time is only noted
(nothing archived); after that each new push is logged in one line and its
archives are pre-warmed. The position is kept (:mod:`archiverd.prewarm.state`)
after the pushes it covers are claimed, so a restart, or a poll that failed,
misses nothing: the next poll catches up, archiving at most ``max_gap`` of
the pushes it missed (the latest).

In a fleet exactly one daemon watches each repo: the one holding the repo's
watch lock in Redis (``3 × interval`` long, renewed at each poll). A daemon
that takes the lock over reads the position its last holder kept.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from archiverd.errors import FleetUnavailable
from archiverd.ops.metrics import Metrics
from archiverd.prewarm import Warm
from archiverd.prewarm.feeds import HEADS, PUSHLOG, HgwebFeed, NotPushlog, Push
from archiverd.prewarm.settings import PrewarmConfig
from archiverd.prewarm.state import KeptState
from archiverd.tasks.redis_store import RedisFleet
from archiverd.transfer.sources import repo_matcher

#: Seconds between readings of hgweb's index, for repo patterns.
INDEX_REFRESH = 300.0


class WatchLock:
    """A fleet's lock per watched repo: exactly one daemon polls each."""

    def __init__(self, fleet: RedisFleet, ttl: float) -> None:
        self.fleet = fleet
        self.ttl = ttl
        self._tokens: dict[str, str] = {}

    async def hold(self, name: str) -> tuple[bool, bool]:
        """(held, newly taken): take or renew the lock on ``name``."""
        token = self._tokens.get(name, "")
        got = await self.fleet.acquire(f"watch:{name}", self.ttl, token=token)
        if got is None:
            self._tokens.pop(name, None)
            return False, False
        self._tokens[name] = got
        return True, not token

    async def release_all(self) -> None:
        tokens, self._tokens = self._tokens, {}
        for name, token in tokens.items():
            try:
                await self.fleet.release(f"watch:{name}", token)
            except FleetUnavailable:
                pass  # it expires


class Watcher(Service):
    """Polls one hgweb source's watched repos."""

    log = Logger()

    def __init__(
        self,
        name: str,
        config: PrewarmConfig,
        feed: HgwebFeed,
        warm: Warm,
        state: KeptState,
        clock: IReactorTime,
        metrics: Metrics,
        lock: WatchLock | None = None,
    ) -> None:
        self.source = name
        self.config = config
        self.feed = feed
        self._warm = warm
        self._state = state
        self._clock = clock
        self.metrics = metrics
        self._lock = lock
        #: Per repo: how upstream tells its pushes, and its position.
        self.modes: dict[str, str] = {}
        self.positions: dict[str, Any] = {}
        self._index: tuple[float, list[str]] | None = None
        self._loop = LoopingCall(self._tick)
        self._loop.clock = clock
        self._polling: Deferred[None] | None = None

    def startService(self) -> None:
        super().startService()
        self._loop.start(self.config.interval, now=True).addErrback(
            lambda f: self.log.failure("pre-warm watcher stopped", f)
        )

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        if self._polling is not None:
            self._polling.cancel()

        async def let_go() -> None:
            if self._lock is not None:
                await self._lock.release_all()

        return Deferred.fromCoroutine(let_go())

    def _tick(self) -> Deferred[None]:
        self._polling = Deferred.fromCoroutine(self.poll())
        self._polling.addErrback(lambda f: f.trap(CancelledError))
        return self._polling

    # -- one poll -------------------------------------------------------------

    async def poll(self) -> None:
        """Poll every watched repo once (one after another)."""
        for repo in await self.repos():
            try:
                await self._poll_repo(repo)
            except CancelledError:
                raise
            except Exception as e:
                self._error(repo, e)

    def _error(self, repo: str, error: Exception) -> None:
        self.metrics.watcher_errors.labels(self.source).inc()
        self.log.warn(
            "pre-warm: cannot poll {source}/{repo}: {error}",
            source=self.source,
            repo=repo,
            error=str(error) or type(error).__name__,
        )

    async def repos(self) -> list[str]:
        """The watched repos: patterns without ``*`` as they are, the others
        matched against hgweb's index (read again every few minutes)."""
        plain = [p for p in self.config.repos if "*" not in p]
        patterns = [p for p in self.config.repos if "*" in p]
        if not patterns:
            return plain
        now = self._clock.seconds()
        if self._index is None or now - self._index[0] >= INDEX_REFRESH:
            try:
                listed = await self.feed.index()
                self._index = (now, listed)
            except CancelledError:
                raise
            except Exception as e:
                self._error("(index)", e)
        matches = repo_matcher(tuple(patterns))
        listed = self._index[1] if self._index is not None else []
        found = [r for r in listed if matches is not None and matches(r)]
        return plain + [r for r in found if r not in plain]

    async def _poll_repo(self, repo: str) -> None:
        if self._lock is not None:
            held, fresh = await self._lock.hold(f"{self.source}/{repo}")
            if not held:
                self.positions.pop(repo, None)  # read afresh if it comes back
                return
            if fresh:
                self.positions.pop(repo, None)
        if repo not in self.positions:
            self.positions[repo] = await self._state.position(self.source, repo)
        if self.modes.get(repo) != HEADS:
            try:
                await self._poll_pushlog(repo)
                self.modes[repo] = PUSHLOG
                return
            except NotPushlog:
                self.modes[repo] = HEADS
                self.log.info(
                    "pre-warm: {source}/{repo} has no pushlog: watching the heads "
                    "of its branches and bookmarks",
                    source=self.source,
                    repo=repo,
                )
        await self._poll_heads(repo)

    async def _keep(self, repo: str, position: dict[str, Any]) -> None:
        if position != self.positions.get(repo):
            await self._state.save_position(self.source, repo, position)
            self.positions[repo] = position

    def _bounded(self, repo: str, pushes: list[Push]) -> list[Push]:
        skipped = len(pushes) - self.config.max_gap
        if skipped > 0:
            self.log.warn(
                "pre-warm: {source}/{repo}: {skipped} pushes missed are too old "
                "to archive (max_gap {max_gap})",
                source=self.source,
                repo=repo,
                skipped=skipped,
                max_gap=self.config.max_gap,
            )
            return pushes[skipped:]
        return pushes

    async def _poll_pushlog(self, repo: str) -> None:
        kept = self.positions.get(repo)
        last = kept.get(PUSHLOG) if isinstance(kept, dict) else None
        last = last if isinstance(last, int) else None
        last_id, pushes = await self.feed.pushes(repo, last)
        if last is None or last_id < last:
            self._first_seen(repo, f"push {last_id}")
            await self._keep(repo, {PUSHLOG: last_id})
            return
        for push in self._bounded(repo, pushes):
            self.log.info(
                "pre-warm: {source}/{repo}: push {push_id} by {user}: {node}",
                source=self.source,
                repo=repo,
                push_id=push.name,
                user=push.user,
                node=push.node,
            )
            await self._warm(self.source, repo, push.node)
        await self._keep(repo, {PUSHLOG: last_id})

    async def _poll_heads(self, repo: str) -> None:
        kept = self.positions.get(repo)
        known = kept.get(HEADS) if isinstance(kept, dict) else None
        heads = await self.feed.heads(repo)
        position = {HEADS: sorted(heads)}
        if not isinstance(known, list):
            self._first_seen(repo, f"{len(heads)} heads")
            await self._keep(repo, position)
            return
        seen = set(known)
        new = sorted(
            (p for n, p in heads.items() if n not in seen), key=lambda p: p.date
        )
        for push in self._bounded(repo, new):
            self.log.info(
                "pre-warm: {source}/{repo}: {name} moved to {node}",
                source=self.source,
                repo=repo,
                name=push.name,
                node=push.node,
            )
            await self._warm(self.source, repo, push.node)
        await self._keep(repo, position)

    def _first_seen(self, repo: str, where: str) -> None:
        self.log.info(
            "pre-warm: watching {source}/{repo} from {where}",
            source=self.source,
            repo=repo,
            where=where,
        )
