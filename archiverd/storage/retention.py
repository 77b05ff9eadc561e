"""Retention for the file backend: what to evict, and evicting it safely.

Blocking code, run on the storage thread pool by :mod:`archiverd.storage.sweeper`.
A pass looks at every object under the root (one ``scandir`` per folder and
one ``stat`` per file: see bench's retention row for what it costs):

- an object's **mtime** is when it was stored (or refreshed): past
  ``expire_after`` it is evicted ("expired");
- its metadata's mtime is when it was **last used** (stored, or redirected
  to: archiverd writes uses in batches, see :func:`save_uses`): unused for
  ``max_age`` it is evicted ("age");
- then, while the bytes under the root (uploads in progress included) exceed
  ``max_bytes``, the least recently used objects are evicted ("size") until
  they are at :data:`LOW_WATER` of it. Objects used within ``min_idle``
  seconds are never evicted for size (a client may hold a URL to them), nor
  are uploads in progress (they are not objects yet).

An eviction is said before it is done: the keys chosen are written to the
root's eviction journal (``<root>/.evictions/``), which every daemon sharing
the root reads every second and forgets them from its cache of stored keys.
Then, after a grace period longer than a use takes to be written out, each
object is checked again under the region's lock (a use since, or a newer
copy put in place, spares it) and deleted; the journal is written again.
A client already downloading an evicted file finishes: its file stays open.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from archiverd.storage.files import PARTIAL, FileStorage
from archiverd.storage.limits import LOW_WATER, limit_bytes

JOURNAL = ".evictions"
#: Seconds a journal file is kept (every daemon reads it within a second).
JOURNAL_KEEP = 600.0


@dataclass(slots=True)
class Held:
    """One object on disk."""

    region: str
    path: Path
    size: int
    #: When it was stored (the object's mtime), wall clock.
    stored_at: float
    #: When it was last used (its metadata's mtime, or stored_at).
    used_at: float
    key: str = ""
    reason: str = ""


@dataclass
class Plan:
    """What a pass found and chose."""

    used: dict[str, int] = field(default_factory=dict)
    limit: int | None = None
    objects: int = 0
    victims: list[Held] = field(default_factory=list)
    #: Seconds the look took (scan and choice).
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.used.values())


def scan(files: FileStorage) -> tuple[list[Held], dict[str, int]]:
    """Every object under the root, and the bytes held per region (uploads
    in progress included)."""
    held: list[Held] = []
    used: dict[str, int] = {}
    for region in files.regions:
        folder = files.root / region
        total = 0
        for entry in _entries(folder / PARTIAL):
            total += _size(entry)
        for sub in _entries(folder):
            if len(sub.name) != 2 or not sub.is_dir(follow_symlinks=False):
                continue
            metas: dict[str, tuple[float, int]] = {}
            objects: list[tuple[os.DirEntry[str], os.stat_result]] = []
            for entry in _entries(Path(sub.path)):
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    continue  # evicted meanwhile
                if entry.name.endswith(".json"):
                    metas[entry.name[:-5]] = (info.st_mtime, info.st_size)
                    total += info.st_size
                elif not entry.name.startswith("."):
                    objects.append((entry, info))
            for entry, info in objects:
                total += info.st_size
                meta_used, meta_size = metas.get(entry.name, (0.0, 0))
                used_at = max(meta_used, info.st_mtime)
                size = info.st_size + meta_size  # both go when it is evicted
                held.append(
                    Held(region, Path(entry.path), size, info.st_mtime, used_at)
                )
        used[region] = total
    return held, used


def choose(
    held: list[Held],
    total: int,
    now: float,
    *,
    limit: int | None,
    max_age: float = 0.0,
    expire_after: float = 0.0,
    min_idle: float = 0.0,
) -> list[Held]:
    """The objects to evict, each with its reason."""
    victims = []
    kept = []
    for one in held:
        if expire_after > 0 and one.stored_at + expire_after <= now:
            one.reason = "expired"
        elif max_age > 0 and one.used_at + max_age <= now:
            one.reason = "age"
        else:
            kept.append(one)
            continue
        victims.append(one)
        total -= one.size
    if limit is not None and total > limit:
        kept.sort(key=lambda one: one.used_at)
        for one in kept:
            if total <= limit * LOW_WATER or one.used_at > now - min_idle:
                break
            one.reason = "size"
            victims.append(one)
            total -= one.size
    return victims


def plan(
    files: FileStorage,
    now: float,
    *,
    max_bytes: str = "",
    max_age: float = 0.0,
    expire_after: float = 0.0,
    min_idle: float = 0.0,
) -> Plan:
    """Look, choose, and say in the journal what will be evicted."""
    started = time.monotonic()
    held, used = scan(files)
    limit = limit_bytes(max_bytes, files.root)
    result = Plan(used, limit, len(held))
    result.victims = choose(
        held,
        sum(used.values()),
        now,
        limit=limit,
        max_age=max_age,
        expire_after=expire_after,
        min_idle=min_idle,
    )
    for victim in result.victims:
        victim.key = _key_of(victim.path)
    result.seconds = time.monotonic() - started
    write_journal(files.root, now, result.victims)
    return result


def evict(files: FileStorage, victims: list[Held], now: float) -> list[Held]:
    """Delete what was chosen and is unchanged since (no use, no newer copy),
    under each region's lock; the journal says it again. The ones deleted."""
    deleted = []
    for region in {v.region for v in victims}:
        with files.locked(region):
            for victim in (v for v in victims if v.region == region):
                if _unchanged(victim):
                    victim.path.with_suffix(".json").unlink(missing_ok=True)
                    victim.path.unlink(missing_ok=True)
                    deleted.append(victim)
    write_journal(files.root, now, deleted)
    return deleted


def _unchanged(victim: Held) -> bool:
    try:
        info = os.stat(victim.path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if info.st_mtime != victim.stored_at:
        return False  # a newer copy, or refreshed
    try:
        used_at = os.stat(victim.path.with_suffix(".json"), follow_symlinks=False)
    except FileNotFoundError:
        return True
    return max(used_at.st_mtime, info.st_mtime) <= victim.used_at


# -- the journal every daemon sharing the root reads ---------------------------


def write_journal(root: Path, now: float, victims: Iterable[Held]) -> None:
    lines = "".join(f"{v.region}\t{v.key}\n" for v in victims if v.key)
    if not lines:
        return
    folder = root / JOURNAL
    folder.mkdir(exist_ok=True)
    name = f"{int(now * 1e9):020d}-{uuid.uuid4().hex}"
    temporary = folder / f".{name}"
    temporary.write_text(lines)
    os.replace(temporary, folder / name)  # readers skip names with a dot
    for entry in _entries(folder):
        written = entry.name.split("-", 1)[0]
        if written.isdigit() and int(written) / 1e9 < now - JOURNAL_KEEP:
            Path(entry.path).unlink(missing_ok=True)


def read_journal(root: Path, seen: set[str]) -> list[tuple[str, str]]:
    """(region, key) of the journal files not in ``seen`` (which is updated)."""
    found = []
    present = set()
    for entry in _entries(root / JOURNAL):
        if entry.name.startswith("."):
            continue
        present.add(entry.name)
        if entry.name in seen:
            continue
        try:
            text = Path(entry.path).read_text()
        except OSError:
            continue
        for line in text.splitlines():
            region, _, key = line.partition("\t")
            if key:
                found.append((region, key))
    seen.intersection_update(present)
    seen.update(present)
    return found


def save_uses(files: FileStorage, uses: dict[tuple[str, str], float]) -> int:
    """Write each use as its object's metadata mtime (never moved back):
    one ``utime`` per object used, however many hits it had. How many."""
    saved = 0
    for (region, key), when in uses.items():
        meta = files.object_path(region, key).with_suffix(".json")
        try:
            if os.stat(meta, follow_symlinks=False).st_mtime < when:
                os.utime(meta, (when, when), follow_symlinks=False)
                saved += 1
        except (OSError, KeyError):
            continue  # evicted, or a region no longer configured
    return saved


def _key_of(path: Path) -> str:
    """The key an object's metadata names ("" if unreadable)."""
    try:
        with open(path.with_suffix(".json"), "rb") as f:
            meta = json.loads(f.read(64 * 1024))
    except (OSError, ValueError):
        return ""
    key = meta.get("key") if isinstance(meta, dict) else None
    return key if isinstance(key, str) else ""


def _entries(folder: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except OSError:
        return []


def _size(entry: os.DirEntry[str]) -> int:
    try:
        return entry.stat(follow_symlinks=False).st_size
    except OSError:
        return 0
