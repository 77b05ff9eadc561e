"""Pre-warm as one service: a watcher per hgweb source that pre-warms, the
webhooks of the others, the shapes, and what is kept across restarts.

:func:`build_prewarm` is what ``tap.py`` calls; it returns None when no
source has a ``[sources.NAME.prewarm]`` table with ``repos``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from archiverd.archives import Archives
from archiverd.config import Config, ConfigError, SourceConfig
from archiverd.errors import FleetUnavailable
from archiverd.ops.metrics import Metrics
from archiverd.prewarm.feeds import HgwebFeed
from archiverd.prewarm.hooks import Hooks, HookSource
from archiverd.prewarm.shapes import Shapes, decode, encode
from archiverd.prewarm.state import Blocking, FileState, KeptState, RedisState
from archiverd.prewarm.warm import Prewarmer
from archiverd.prewarm.watcher import Watcher, WatchLock
from archiverd.tasks.redis_store import RedisFleet
from archiverd.transfer.sources import repo_matcher

#: Seconds between saves of the learned shapes (and at stop).
SAVE_EVERY = 60.0


class PrewarmService(MultiService):
    """The watchers, the hooks, and the learned shapes' keeping."""

    log = Logger()

    def __init__(
        self,
        sources: Mapping[str, SourceConfig],
        archives: Archives,
        clock: IReactorTime,
        metrics: Metrics,
        states: Mapping[str, KeptState],
        fleet: RedisFleet | None = None,
    ) -> None:
        super().__init__()
        self._clock = clock
        self.states = dict(states)
        self.shapes = Shapes(
            {name: c.prewarm.shapes for name, c in sources.items()},
            {
                name: (c.prewarm.learn_window, c.prewarm.learn_max)
                for name, c in sources.items()
                if c.prewarm.learn
            },
            clock.seconds,
        )
        watched = {
            name: repo_matcher(c.prewarm.repos) or (lambda _: True)
            for name, c in sources.items()
        }
        self.prewarmer = Prewarmer(archives, self.shapes, watched, metrics)
        hooked = {
            name: HookSource(c.prewarm.secret, watched[name])
            for name, c in sources.items()
            if c.prewarm.secret
        }
        self.hooks = (
            Hooks(hooked, self.prewarmer.warm, clock.seconds, metrics)
            if hooked
            else None
        )
        self.watchers: dict[str, Watcher] = {}
        for name, c in sources.items():
            if c.kind != "hgweb":
                continue
            lock = None
            if fleet is not None:
                lock = WatchLock(fleet, max(3 * c.prewarm.interval, 10.0))
            watcher = Watcher(
                name,
                c.prewarm,
                HgwebFeed(archives.sources[name], clock),
                self.prewarmer.warm,
                self.states[name],
                clock,
                metrics,
                lock=lock,
            )
            watcher.setServiceParent(self)
            self.watchers[name] = watcher
        self._saving = LoopingCall(self.save)
        self._saving.clock = clock

    def startService(self) -> None:
        super().startService()
        Deferred.fromCoroutine(self._restore()).addErrback(
            lambda f: self.log.failure("pre-warm: reading the learned shapes", f)
        )
        self._saving.start(SAVE_EVERY, now=False).addErrback(
            lambda f: self.log.failure("pre-warm: saving stopped", f)
        )

    def stopService(self) -> Deferred[Any]:
        if self._saving.running:
            self._saving.stop()
        stopping = super().stopService()

        async def then_save() -> None:
            await stopping
            await self.save()

        return Deferred.fromCoroutine(then_save())

    async def _restore(self) -> None:
        for name, state in self._distinct_states():
            try:
                found = await state.learned()
            except FleetUnavailable as e:
                self.log.warn("pre-warm: learned shapes unread: {error}", error=str(e))
                continue
            entries = []
            for text, seen in found.items():
                entry = decode(text)
                if entry is not None and (name is None or entry[0] == name):
                    entries.append((entry, seen))
            self.shapes.restore(entries)

    def _distinct_states(self) -> list[tuple[str | None, KeptState]]:
        """Each state once: (its one source, or None when shared)."""
        by_state: dict[int, tuple[list[str], KeptState]] = {}
        for name, state in self.states.items():
            by_state.setdefault(id(state), ([], state))[0].append(name)
        return [
            (names[0] if len(names) == 1 else None, state)
            for names, state in by_state.values()
        ]

    async def save(self) -> None:
        """Keep what was learned since the last save, and drop what expired."""
        dropped = [encode(e) for e in self.shapes.expired()]
        changed = {encode(e): seen for e, seen in self.shapes.take_changes().items()}
        if not changed and not dropped:
            return
        for name, state in self._distinct_states():
            mine = {
                k: v
                for k, v in changed.items()
                if name is None or k.startswith(name + "\t")
            }
            gone = [k for k in dropped if name is None or k.startswith(name + "\t")]
            try:
                await state.save_learned(mine, gone)
            except Exception as e:
                self.log.warn(
                    "pre-warm: cannot keep learned shapes: {error}", error=str(e)
                )


def build_prewarm(
    config: Config,
    archives: Archives,
    clock: IReactorTime,
    metrics: Metrics,
    fleet: RedisFleet | None,
    blocking: Blocking,
) -> PrewarmService | None:
    """The pre-warm service, if any source pre-warms; its state kept in
    Redis (a fleet), else in a file per source (``prewarm.state``, by
    default under the file backend's root)."""
    sources = {n: c for n, c in config.sources.items() if c.prewarm.enabled}
    if not sources:
        return None
    states: dict[str, KeptState] = {}
    shared = RedisState(fleet) if fleet is not None else None
    for name, source in sources.items():
        if shared is not None:
            states[name] = shared
            continue
        path = source.prewarm.state
        if not path and config.storage.backend == "file":
            path = os.path.join(config.storage.file.root, f".prewarm-{name}.json")
        if not path:
            raise ConfigError(
                f"sources.{name}.prewarm.state: required with s3 storage and no "
                "Redis (a file where the watcher's position is kept)"
            )
        states[name] = FileState(path, blocking)
    return PrewarmService(sources, archives, clock, metrics, states, fleet)
