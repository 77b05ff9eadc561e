"""Which archives of a new head to make: the configured shapes, and (with
``learn``) the shapes clients asked for in that repo lately.

A shape is what a request names besides the repo and the changeset: the
subdir, the suffix, and the length of the rev as clients write it (12 or 40
hex digits: the two are different archives, with different keys and top
folders). Learned shapes are bounded: kept ``learn_window`` seconds after a
client last asked for them, at most ``learn_max`` per repo (the latest).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from archiverd.keys import FULL_REV_LENGTH, SHORT_REV_LENGTH, ArchiveRequest


@dataclass(frozen=True, order=True)
class Shape:
    subdir: str = ""
    suffix: str = "tar.gz"
    rev_length: int = SHORT_REV_LENGTH

    @classmethod
    def of(cls, request: ArchiveRequest) -> Shape | None:
        """The shape a client's request has; None for a rev that is a name,
        or a changeset id of a length pre-warm does not make."""
        if request.node or len(request.rev) not in (SHORT_REV_LENGTH, FULL_REV_LENGTH):
            return None
        if request.is_symbolic:
            return None
        return cls(request.subdir, request.suffix, len(request.rev))

    def as_list(self) -> list[Any]:
        return [self.subdir, self.suffix, self.rev_length]


#: (source, repo, shape)
Learned = tuple[str, str, Shape]


class Shapes:
    """The shapes to make for each watched repo, per source."""

    def __init__(
        self,
        configured: Mapping[str, Iterable[Mapping[str, Any]]],
        learning: Mapping[str, tuple[float, int]],
        now: Callable[[], float],
    ) -> None:
        """``configured``: each source's configured shapes; ``learning``:
        (window, count) for each source that learns."""
        self._configured = {
            source: tuple(sorted({Shape(**s) for s in shapes}))
            for source, shapes in configured.items()
        }
        self._learning = dict(learning)
        self._now = now
        #: When a client last asked for each shape.
        self._seen: dict[Learned, float] = {}
        #: Seen since the last save.
        self.changed: dict[Learned, float] = {}

    def learns(self, source: str) -> bool:
        return source in self._learning

    def asked(self, source: str, repo: str, shape: Shape) -> None:
        """A client asked for ``shape`` in ``repo`` now (O(1): on every
        request)."""
        entry = (source, repo, shape)
        now = self._now()
        if now - self._seen.get(entry, 0.0) < 60:
            return  # noted lately: once a minute is enough for a window of days
        self._seen[entry] = now
        self.changed[entry] = now

    def for_repo(self, source: str, repo: str) -> list[Shape]:
        """The configured shapes, then the learned ones, latest first."""
        shapes = list(self._configured.get(source, ()))
        learning = self._learning.get(source)
        if learning is None:
            return shapes
        window, count = learning
        now = self._now()
        learned = sorted(
            (
                (seen, shape)
                for (s, r, shape), seen in self._seen.items()
                if s == source and r == repo and now - seen < window
            ),
            reverse=True,
        )
        for _, shape in learned[:count]:
            if shape not in shapes:
                shapes.append(shape)
        return shapes

    def expired(self) -> list[Learned]:
        """Drop what is past its window, or beyond the count for its repo;
        what was dropped."""
        now = self._now()
        by_repo: dict[tuple[str, str], list[tuple[float, Shape]]] = {}
        for (source, repo, shape), seen in self._seen.items():
            by_repo.setdefault((source, repo), []).append((seen, shape))
        dropped = []
        for (source, repo), entries in by_repo.items():
            window, count = self._learning.get(source, (0.0, 0))
            entries.sort(reverse=True)
            for rank, (seen, shape) in enumerate(entries):
                if rank >= count or now - seen >= window:
                    dropped.append((source, repo, shape))
        for entry in dropped:
            del self._seen[entry]
            self.changed.pop(entry, None)
        return dropped

    def restore(self, entries: Iterable[tuple[Learned, float]]) -> None:
        """What was learned before a restart (newer sightings win)."""
        for entry, seen in entries:
            if entry[0] in self._learning and seen > self._seen.get(entry, 0.0):
                self._seen[entry] = seen
        self.expired()

    def take_changes(self) -> dict[Learned, float]:
        changed, self.changed = self.changed, {}
        return changed


def encode(entry: Learned) -> str:
    """A learned entry as one line of text (a key in the kept state)."""
    source, repo, shape = entry
    return "\t".join([source, repo, shape.subdir, shape.suffix, str(shape.rev_length)])


def decode(text: str) -> Learned | None:
    try:
        source, repo, subdir, suffix, length = text.split("\t")
        return source, repo, Shape(subdir, suffix, int(length))
    except ValueError:
        return None
