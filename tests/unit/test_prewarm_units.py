"""Pre-warm's own logic without the network: webhook checks and parsing,
learned shapes and their bounds, the config table."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pytest
from twisted.internet.task import Clock

from archiverd.config import ConfigError, apply_environment, parse
from archiverd.errors import BadRequest, NotFound
from archiverd.keys import ArchiveRequest
from archiverd.ops.metrics import Metrics
from archiverd.prewarm.hooks import HookRefused, Hooks, HookSource
from archiverd.prewarm.shapes import Shape, Shapes, decode, encode

SECRET = "0123456789abcdef-secret"
NODE = "ab" * 20


class Warmed:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    async def __call__(self, source: str, repo: str, node: str) -> None:
        self.calls.append((source, repo, node))


def hooks(clock: Clock) -> tuple[Hooks, Warmed]:
    warm = Warmed()
    source = HookSource(SECRET, lambda repo: repo.startswith("mozilla/"))
    return Hooks({"gh": source}, warm, clock.seconds, Metrics()), warm


def headers(**given: str) -> Any:
    lowered = {k.lower().replace("_", "-"): v for k, v in given.items()}
    return lambda name: lowered.get(name.lower())


def push(repo: str = "mozilla/gecko-dev", **extra: Any) -> bytes:
    payload = {"ref": "refs/heads/main", "after": NODE, **extra}
    payload["repository"] = {"full_name": repo}
    return json.dumps(payload).encode()


def sign(body: bytes) -> str:
    return hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()


def test_a_gitlab_push_with_its_token_starts_prewarm(clock: Clock) -> None:
    hook, warm = hooks(clock)
    project = {"path_with_namespace": "mozilla/gl"}
    body = json.dumps({"checkout_sha": NODE, "project": project}).encode()
    given = headers(X_Gitlab_Event="Push Hook", X_Gitlab_Token=SECRET)
    assert hook.receive("gh", given, body) == 1
    assert warm.calls == [("gh", "mozilla/gl", NODE)]


@pytest.mark.parametrize(
    ("event", "body"),
    [
        ("ping", push()),
        ("push", push(deleted=True)),
        ("push", push(repo="other/repo")),
        (
            "push",
            json.dumps(
                {"after": "0" * 40, "repository": {"full_name": "mozilla/x"}}
            ).encode(),
        ),
    ],
)
def test_other_events_deletions_and_unwatched_repos_start_nothing(
    clock: Clock, event: str, body: bytes
) -> None:
    hook, warm = hooks(clock)
    given = headers(X_GitHub_Event=event, X_Hub_Signature_256="sha256=" + sign(body))
    assert hook.receive("gh", given, body) == 0
    assert warm.calls == []


def test_a_signed_body_that_is_not_json_is_a_bad_request(clock: Clock) -> None:
    hook, _ = hooks(clock)
    given = headers(X_GitHub_Event="push", X_Hub_Signature_256="sha256=" + sign(b"{"))
    with pytest.raises(BadRequest):
        hook.receive("gh", given, b"{")


def test_an_unknown_source_takes_no_hooks(clock: Clock) -> None:
    hook, _ = hooks(clock)
    with pytest.raises(NotFound):
        hook.receive("nope", headers(), push())


def test_a_delivery_id_seen_before_is_refused_and_forgotten_after_a_day(
    clock: Clock,
) -> None:
    hook, warm = hooks(clock)
    first, second = push(), push(ref="refs/heads/other")
    for body in (first, second):
        given = headers(X_GitHub_Event="push", X_GitHub_Delivery="d-1",
                        X_Hub_Signature_256="sha256=" + sign(body))  # fmt: skip
        if body is first:
            assert hook.receive("gh", given, body) == 1
        else:
            with pytest.raises(HookRefused) as e:
                hook.receive("gh", given, body)
            assert e.value.code == 403
    clock.advance(86401)
    assert hook.receive("gh", given, second) == 1
    assert len(warm.calls) == 2


def test_learned_shapes_are_kept_a_window_and_bounded_per_repo(clock: Clock) -> None:
    configured = {"hgmo": [{"subdir": "testing/mozharness", "suffix": "tar.gz",
                            "rev_length": 12}]}  # fmt: skip
    shapes = Shapes(configured, {"hgmo": (3600.0, 2)}, clock.seconds)
    for subdir in ("a", "b", "c"):
        clock.advance(61)
        shapes.asked("hgmo", "m-c", Shape(subdir, "zip", 40))
    found = shapes.for_repo("hgmo", "m-c")
    assert found == [
        Shape("testing/mozharness", "tar.gz", 12),
        Shape("c", "zip", 40),
        Shape("b", "zip", 40),
    ]
    assert shapes.for_repo("hgmo", "other") == found[:1]
    dropped = shapes.expired()
    assert dropped == [("hgmo", "m-c", Shape("a", "zip", 40))]
    clock.advance(3600)
    assert shapes.for_repo("hgmo", "m-c") == found[:1]


def test_learned_shapes_survive_a_restart_through_their_text_form(clock: Clock) -> None:
    shapes = Shapes({}, {"hgmo": (3600.0, 5)}, clock.seconds)
    shapes.asked("hgmo", "m-c", Shape("x/y", "tar.bz2", 12))
    saved = {encode(e): seen for e, seen in shapes.take_changes().items()}
    again = Shapes({}, {"hgmo": (3600.0, 5)}, clock.seconds)
    again.restore([(decode(text), seen) for text, seen in saved.items()])  # type: ignore[misc]
    assert again.for_repo("hgmo", "m-c") == [Shape("x/y", "tar.bz2", 12)]


def test_the_shape_of_a_request_keeps_the_revs_length() -> None:
    short = ArchiveRequest.parse("hgmo", "r", "a" * 12, "zip", "d")
    assert Shape.of(short) == Shape("d", "zip", 12)
    assert Shape.of(ArchiveRequest.parse("hgmo", "r", "a" * 40)) == Shape(
        "", "tar.gz", 40
    )
    assert Shape.of(ArchiveRequest.parse("hgmo", "r", "default")) is None
    assert Shape.of(ArchiveRequest.parse("hgmo", "r", "a" * 8)) is None


def test_the_webhook_secret_comes_from_the_environment() -> None:
    raw: dict[str, Any] = {"sources": {"gh": {
        "kind": "template", "url_template": "https://h/{repo}/{rev}.{suffix}",
        "prewarm": {"repos": ["a/*"], "secret": {"env": "HOOK_SECRET"}}}}}  # fmt: skip
    with pytest.raises(ConfigError, match="HOOK_SECRET unset"):
        apply_environment(json.loads(json.dumps(raw)), {})
    apply_environment(raw, {"HOOK_SECRET": SECRET})
    assert parse(raw).sources["gh"].prewarm.secret == SECRET


@pytest.mark.parametrize(
    ("prewarm", "error"),
    [
        ({"shapes": [{"subdir": "../x"}]}, "shapes[0]: subdir contains a '..'"),
        ({"shapes": [{"rev_length": 20}]}, "rev_length: expected 12 or 40"),
        ({"shapes": [{"suffix": 1}]}, "suffix: expected str"),
        ({"interval": 0}, "interval: must be between 1 and 3600"),
        ({"secret": "short"}, "secret: use 16 characters or more"),
    ],
)
def test_a_bad_prewarm_table_is_one_line_naming_the_key(
    prewarm: dict[str, Any], error: str
) -> None:
    with pytest.raises(ConfigError, match="sources.hgmo.prewarm.") as e:
        parse({"sources": {"hgmo": {"prewarm": prewarm}}})
    assert error in str(e.value)


def test_a_source_named_hooks_is_refused() -> None:
    with pytest.raises(ConfigError, match="sources.hooks: bad source name"):
        parse({"sources": {"hooks": {}}})
