"""A task: one archive being fetched into some regions, and its public fields.

The fields a status poll shows are defined once, here: :meth:`Task.describe`
builds them, and :func:`to_record` / :func:`from_record` carry them through a
fleet's task record (strings only) unchanged.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet.defer import Deferred

from archiverd import wire
from archiverd.keys import ArchiveRequest

SUCCESS_STATUS = wire.SUCCESS_STATUS
#: The FAILURE status of a task cut short by the daemon stopping.
CANCELLED = "cancelled: archiverd is stopping"


class Line(Protocol):
    """Where a queued task waits (:class:`archiverd.tasks.line.WaitingLine`)."""

    def ahead(self, task: Task) -> int: ...


class State(enum.Enum):
    PENDING = wire.PENDING
    STARTED = wire.STARTED
    PROGRESS = wire.PROGRESS
    SUCCESS = wire.SUCCESS
    FAILURE = wire.FAILURE


FINISHED = (State.SUCCESS, State.FAILURE)


@dataclass(eq=False)
class Task:
    """One archive being fetched into some regions."""

    request: ArchiveRequest
    src_url: str
    regions: tuple[str, ...]
    created: float
    upstream_host: str = ""
    state: State = State.PENDING
    error: str = ""
    bytes_received: int = 0
    started: float | None = None
    finished: float | None = None
    size: int | None = None
    sha256: str | None = None
    #: The length upstream said the archive has (Content-Length), if it did:
    #: what the page for people measures progress against.
    expected_size: int | None = None
    deferred: Deferred[None] | None = field(default=None, repr=False)
    #: The coordinator's claim on this archive (a fleet's lock token).
    token: str = ""
    #: Raises unless this daemon may still complete the upload; checked
    #: by the transfer just before it makes the object visible.
    fence: Callable[[], Awaitable[None]] | None = field(default=None, repr=False)
    #: Once succeeded: the status body last rendered, with the signed URLs
    #: and the base URL (for relative ones) it was made from (kept here so
    #: it lives and dies with the task).
    rendered: tuple[dict[str, str], str, bytes] | None = field(default=None, repr=False)
    #: While queued: the line it waits in (which counts who is ahead).
    line: Line | None = field(default=None, repr=False)
    #: A FAILURE that asking again cannot mend (upstream refused, too large).
    permanent: bool = False
    #: Requests held until it finishes (fired with the task when it does).
    waiters: list[Deferred[Task]] = field(default_factory=list, repr=False)
    #: Started by pre-warm, and no client has asked for it since: it takes
    #: a slot only while no client task waits for one.
    prewarm: bool = False
    #: While upstream cannot be reached: the retry under way, for people.
    retrying: str = ""

    @property
    def ahead(self) -> int:
        """While queued: how many tasks will start before this one."""
        return 0 if self.line is None else self.line.ahead(self)

    @property
    def task_id(self) -> str:
        return self.request.task_id

    @property
    def key(self) -> str:
        return self.request.key

    @property
    def done(self) -> bool:
        return self.state in FINISHED

    @property
    def status(self) -> str:
        """A sentence for people."""
        if self.state is State.PENDING:
            if self.prewarm:
                return "pre-warm: queued until a slot is free and no client waits"
            return f"queued ({self.ahead} ahead)"
        if self.state is State.STARTED:
            return self.retrying or f"Downloading archive from {self.upstream_host}"
        if self.state is State.PROGRESS:
            return f"Uploading: {self.bytes_received / 2**20:.1f} MiB so far"
        if self.state is State.SUCCESS:
            return SUCCESS_STATUS
        return self.error

    def describe(self, now: float) -> dict[str, Any]:
        """The task as the status endpoint shows it (without ``s3_urls``)."""
        end = self.finished if self.finished is not None else now
        result: dict[str, Any] = {
            "state": self.state.value,
            "status": self.status,
            "src_url": self.src_url,
            "bytes_received": self.bytes_received,
            "elapsed_seconds": round(end - self.created, 3),
            "regions": list(self.regions),
        }
        if self.state is State.SUCCESS:
            result["size"] = self.size
            result["sha256"] = self.sha256
        elif self.state is State.FAILURE:
            result["permanent"] = self.permanent
        if self.prewarm:
            result["prewarm"] = True
        return result


@dataclass(frozen=True)
class Outcome:
    size: int
    sha256: str


#: Runs a task's transfer, reporting bytes received; what the task service
#: is given to do the work (:class:`archiverd.transfer.pipeline.Fetcher`).
Runner = Callable[[Task, Callable[[int], None]], Awaitable[Outcome]]

# The public fields as a record holds them: name -> (to text, from text); a
# field missing from a record reads as "".
_FIELDS: dict[str, tuple[Callable[[Any], str], Callable[[str], Any]]] = {
    "state": (str, str),
    "status": (str, str),
    "src_url": (str, str),
    "bytes_received": (str, lambda v: int(v or 0)),
    "elapsed_seconds": (str, lambda v: float(v or 0)),
    "regions": (",".join, lambda v: [r for r in v.split(",") if r]),
}
_SUCCESS_FIELDS: dict[str, tuple[Callable[[Any], str], Callable[[str], Any]]] = {
    "size": (str, lambda v: int(v or 0)),
    "sha256": (lambda v: v or "", str),
}


_FAILURE_FIELDS: dict[str, tuple[Callable[[Any], str], Callable[[str], Any]]] = {
    "permanent": (lambda v: "1" if v else "", lambda v: v == "1"),
}
_BY_STATE = {State.SUCCESS.value: _SUCCESS_FIELDS, State.FAILURE.value: _FAILURE_FIELDS}


def to_record(described: dict[str, Any]) -> dict[str, str]:
    """:meth:`Task.describe`'s fields as text, for a fleet's task record."""
    fields = dict(_FIELDS)
    fields.update(_BY_STATE.get(described["state"], {}))
    record = {name: out(described[name]) for name, (out, _) in fields.items()}
    if described.get("prewarm"):
        record["prewarm"] = "1"
    return record


def from_record(record: dict[str, str] | None) -> dict[str, Any] | None:
    """The status fields a task record holds; None if it holds none."""
    if not record or "state" not in record:
        return None
    fields = dict(_FIELDS)
    fields.update(_BY_STATE.get(record["state"], {}))
    found = {name: back(record.get(name, "")) for name, (_, back) in fields.items()}
    if record.get("prewarm") == "1":
        found["prewarm"] = True
    return found
