"""Push webhooks: ``POST /archiver/hooks/<source>`` from GitHub, Gitea or
GitLab, for sources with a pre-warm ``secret``.

A body is taken only when signed with the source's secret, checked in
constant time:

- GitHub: ``X-Hub-Signature-256: sha256=<HMAC-SHA256 of the body, hex>``;
- Gitea (and Forgejo, Gogs): ``X-Gitea-Signature: <the same HMAC, hex>``;
- GitLab: ``X-Gitlab-Token: <the secret itself>``.

No signature: 401; a wrong one: 403; a delivery already taken (the same
delivery id, or the same body, within a day): 403. None of them starts work.
A signed push of a watched repo claims its pre-warm tasks in the background:
the hook is answered (202) at once and never waits for an archive.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from archiverd.errors import BadRequest, NotFound
from archiverd.keys import FULL_REV_LENGTH, is_changeset_id
from archiverd.ops.metrics import Metrics
from archiverd.prewarm import Warm

#: Deliveries remembered, against replays.
REMEMBERED = 10_000
#: Seconds a delivery is remembered.
REPLAY_WINDOW = 86400.0


class HookRefused(Exception):
    """A webhook body not taken: ``code`` is 401 (unsigned) or 403."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class HookSource:
    """A source that takes webhooks: its secret and the repos it watches."""

    secret: str
    watched: Callable[[str], bool]


@dataclass(frozen=True)
class PushEvent:
    repo: str
    node: str
    ref: str = ""


class Hooks:
    """Checks webhook bodies and starts pre-warm for their pushes."""

    log = Logger()

    def __init__(
        self,
        sources: Mapping[str, HookSource],
        warm: Warm,
        now: Callable[[], float],
        metrics: Metrics,
    ) -> None:
        self.sources = dict(sources)
        self._warm = warm
        self._now = now
        self.metrics = metrics
        self._seen: OrderedDict[str, float] = OrderedDict()

    def receive(
        self, source: str, header: Callable[[str], str | None], body: bytes
    ) -> int:
        """Take one webhook delivery: how many pushes it starts pre-warm for
        (0 for other events and unwatched repos). Raises
        :class:`HookRefused`, :class:`NotFound` or :class:`BadRequest`."""
        hook = self.sources.get(source)
        if hook is None:
            raise NotFound(f"source {source!r} takes no webhooks")
        try:
            self._check_signature(hook.secret, header, body)
            self._check_fresh(source, header, body)
        except HookRefused as e:
            self.metrics.watcher_errors.labels(source).inc()
            self.log.warn(
                "pre-warm: {source}: webhook refused: {why}", source=source, why=str(e)
            )
            raise
        push = self._push(header, body)
        if push is None or not hook.watched(push.repo):
            return 0
        self.log.info(
            "pre-warm: {source}/{repo}: push to {ref}: {node}",
            source=source,
            repo=push.repo,
            ref=push.ref,
            node=push.node,
        )
        d = Deferred.fromCoroutine(self._start(source, push))
        d.addErrback(
            lambda f: self.log.failure("pre-warm: {source}: webhook", f, source=source)
        )
        return 1

    async def _start(self, source: str, push: PushEvent) -> None:
        try:
            await self._warm(source, push.repo, push.node)
        except Exception as e:
            self.metrics.watcher_errors.labels(source).inc()
            self.log.warn(
                "pre-warm: {source}/{repo}: {error}",
                source=source,
                repo=push.repo,
                error=str(e),
            )

    # -- checks ---------------------------------------------------------------

    @staticmethod
    def _check_signature(
        secret: str, header: Callable[[str], str | None], body: bytes
    ) -> None:
        key = secret.encode()
        digest = hmac.new(key, body, hashlib.sha256).hexdigest()
        github = header("X-Hub-Signature-256")
        gitea = header("X-Gitea-Signature") or header("X-Gogs-Signature")
        gitlab = header("X-Gitlab-Token")
        if github is not None:
            given = github.strip()
            ok = hmac.compare_digest(given.encode(), f"sha256={digest}".encode())
        elif gitea is not None:
            ok = hmac.compare_digest(gitea.strip().lower().encode(), digest.encode())
        elif gitlab is not None:
            ok = hmac.compare_digest(gitlab.encode(), key)
        else:
            raise HookRefused(
                401,
                "unsigned: expected X-Hub-Signature-256, X-Gitea-Signature "
                "or X-Gitlab-Token",
            )
        if not ok:
            raise HookRefused(403, "bad signature")

    def _check_fresh(
        self, source: str, header: Callable[[str], str | None], body: bytes
    ) -> None:
        """Refuse a delivery taken before (its id, or the very same body)."""
        now = self._now()
        while self._seen:
            oldest, when = next(iter(self._seen.items()))
            if now - when < REPLAY_WINDOW and len(self._seen) <= REMEMBERED:
                break
            del self._seen[oldest]
        delivery = (
            header("X-GitHub-Delivery")
            or header("X-Gitea-Delivery")
            or header("X-Gitlab-Event-UUID")
        )
        marks = [f"{source}\tbody\t{hashlib.sha256(body).hexdigest()}"]
        if delivery:
            marks.append(f"{source}\tdelivery\t{delivery}")
        if any(mark in self._seen for mark in marks):
            raise HookRefused(403, "replayed: this delivery was taken before")
        for mark in marks:
            self._seen[mark] = now

    @staticmethod
    def _push(header: Callable[[str], str | None], body: bytes) -> PushEvent | None:
        """The push a body tells of; None for other events (and deletions)."""
        event = (
            header("X-GitHub-Event")
            or header("X-Gitea-Event")
            or header("X-Gogs-Event")
            or header("X-Gitlab-Event")
            or ""
        )
        if event.lower() not in ("push", "push hook"):
            return None
        try:
            payload: Any = json.loads(body)
        except ValueError:
            raise BadRequest("the webhook body is not JSON") from None
        if not isinstance(payload, dict):
            raise BadRequest("the webhook body is not a JSON object")
        repository = payload.get("repository") or {}
        project = payload.get("project") or {}
        repo = (
            repository.get("full_name") if isinstance(repository, dict) else None
        ) or (project.get("path_with_namespace") if isinstance(project, dict) else None)
        node = payload.get("after") or payload.get("checkout_sha")
        if payload.get("deleted") or not isinstance(repo, str):
            return None
        if not isinstance(node, str) or len(node) != FULL_REV_LENGTH:
            return None
        if not is_changeset_id(node) or node == "0" * FULL_REV_LENGTH:
            return None
        return PushEvent(repo, node, str(payload.get("ref", "")))
