"""What pre-warm keeps across restarts: each watched repo's position (the
last push id seen, or the heads last seen) and the learned shapes.

Two places, chosen in ``tap.py``: a small JSON file (one daemon; written
whole, atomically, on the storage thread pool, never on the reactor), or
Redis (a fleet: the daemon that takes over a repo's watch reads the position
the last watcher left).
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from twisted.logger import Logger

from archiverd.tasks.redis_store import RedisFleet

#: Runs a blocking function off the reactor thread.
Blocking = Callable[..., Awaitable[Any]]

POSITIONS = "prewarm:positions"
LEARNED = "prewarm:learned"


def repo_key(source: str, repo: str) -> str:
    return f"{source}\t{repo}"


class KeptState(Protocol):
    async def learned(self) -> dict[str, float]:
        """The learned shapes (encoded) and when each was last asked for."""

    async def position(self, source: str, repo: str) -> Any:
        """The repo's position as last saved (by any daemon); None if none."""

    async def save_position(self, source: str, repo: str, position: Any) -> None: ...

    async def save_learned(self, changed: dict[str, float], dropped: list[str]) -> None:
        """Learned shapes seen since the last save, and those dropped."""


class FileState:
    """One JSON file: ``{"positions": {...}, "learned": {...}}``."""

    log = Logger()

    def __init__(self, path: str, blocking: Blocking) -> None:
        self.path = path
        self._blocking = blocking
        self._doc: dict[str, dict[str, Any]] | None = None
        self._writing = False
        self._dirty = False

    async def _load(self) -> dict[str, dict[str, Any]]:
        if self._doc is None:
            doc = await self._blocking(_read_json, self.path)
            self._doc = {
                "positions": dict(doc.get("positions") or {}),
                "learned": dict(doc.get("learned") or {}),
            }
        return self._doc

    async def learned(self) -> dict[str, float]:
        learned = (await self._load())["learned"]
        return {k: float(v) for k, v in learned.items() if isinstance(v, int | float)}

    async def position(self, source: str, repo: str) -> Any:
        return (await self._load())["positions"].get(repo_key(source, repo))

    async def save_position(self, source: str, repo: str, position: Any) -> None:
        (await self._load())["positions"][repo_key(source, repo)] = position
        await self._write()

    async def save_learned(self, changed: dict[str, float], dropped: list[str]) -> None:
        learned = (await self._load())["learned"]
        learned.update(changed)
        for entry in dropped:
            learned.pop(entry, None)
        await self._write()

    async def _write(self) -> None:
        """Write the document; writes asked for meanwhile make one more."""
        if self._writing:
            self._dirty = True
            return
        self._writing = True
        try:
            self._dirty = True
            while self._dirty:
                self._dirty = False
                text = json.dumps(self._doc, sort_keys=True)
                await self._blocking(_write_atomically, self.path, text)
        finally:
            self._writing = False


def _read_json(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        return {}
    except ValueError:
        return {}  # a torn or foreign file: start afresh rather than not at all
    return doc if isinstance(doc, dict) else {}


def _write_atomically(path: str, text: str) -> None:
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


class RedisState:
    """Two hashes in the fleet's Redis: positions and learned shapes."""

    def __init__(self, fleet: RedisFleet) -> None:
        self.fleet = fleet

    async def learned(self) -> dict[str, float]:
        found = await self.fleet.load_hash(LEARNED)
        kept = {}
        for entry, seen in found.items():
            try:
                kept[entry] = float(seen)
            except ValueError:
                continue
        return kept

    async def position(self, source: str, repo: str) -> Any:
        found = await self.fleet.load_hash(POSITIONS)
        text = found.get(repo_key(source, repo))
        try:
            return None if text is None else json.loads(text)
        except ValueError:
            return None

    async def save_position(self, source: str, repo: str, position: Any) -> None:
        await self.fleet.save_hash(
            POSITIONS, {repo_key(source, repo): json.dumps(position)}
        )

    async def save_learned(self, changed: dict[str, float], dropped: list[str]) -> None:
        await self.fleet.save_hash(LEARNED, {k: repr(v) for k, v in changed.items()})
        await self.fleet.drop_from_hash(LEARNED, dropped)
