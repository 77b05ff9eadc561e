"""Hostile paths, query strings, Range and Host headers against the API: never
a 500, errors are JSON, input that is refused never reaches upstream or starts
a task, the files route sends at most the object and only with a genuine
signature, and no Host ends up in a Location unless it names this server."""

from __future__ import annotations

import json
import re
import socket
import unicodedata
from urllib.parse import quote, unquote, urlsplit

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_hosts import raw
from test_web import ASH, BASE, INFO, REV, World
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs

from archiverd.storage.files import FileStorage

HOSTILE = [
    "..",
    ".",
    "",
    "%2e%2e",
    "%2E%2E%2F",
    "..%2f..%2fetc",
    "%00",
    "%0d%0aSet-Cookie:%20x=1",
    "%0a",
    "\\",
    "%5c",
    "%ff%fe",
    "%c0%ae",
    "a" * 300,
    "default",
    "tip",
    "42bf8560b395a5a9e3c2bbd6c2de2f2c6bd4ec70",
    "ünïcødé",
    "\u202e",
    "some_dir",
    "~5F",
    "projects/ash",
    "//",
    "?x=",
    "#frag",
    "%",
    "%zz",
]


def _part(text: str) -> str:
    """Text as it could appear in a URL: raw hostile bits or percent-encoded."""
    return quote(text, safe="%/")


def _delimiters(text: str) -> str:
    """Keep URL delimiters from ending the path or a query value early."""
    for c in "?#&=+":
        text = text.replace(c, f"%{ord(c):02X}")
    return text


segments = st.one_of(
    st.sampled_from(HOSTILE),
    st.text(max_size=40).map(_part),
    st.text(alphabet="./%\\abc0123_~-", max_size=20),
).map(_delimiters)
query_values = st.one_of(
    st.sampled_from(HOSTILE + ["tar.gz", "zip", "tar.xz", "us-east-1"]),
    st.text(max_size=40).map(lambda t: quote(t, safe="")),
).map(_delimiters)


def _bad_name(name: str, *, path: bool = True) -> bool:
    """The oracle: what the API must refuse, written apart from archiverd's."""
    if len(name) > 256 or "\\" in name or name.startswith("/"):
        return True
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in name):
        return True
    parts = name.split("/")
    return (not path and len(parts) > 1) or any(p in ("", ".", "..") for p in parts)


def _must_refuse(repo: str, rev: str, params: dict[str, str]) -> bool:
    decoded = "/".join(unquote(s, errors="strict") for s in f"{repo}/{rev}".split("/"))
    repo, _, rev = decoded.rpartition("/")
    subdir = unquote(params.get("subdir", ""))
    subdir = subdir.rstrip("/") if subdir.strip("/") else subdir
    suffix = unquote(params.get("suffix", "tar.gz"))
    return (
        _bad_name(repo)
        or _bad_name(rev, path=False)
        or (subdir != "" and _bad_name(subdir))
        or suffix not in ("tar.gz", "tar.bz2", "zip")
    )


def _check(world: World, path: str, refuse: bool = False) -> int:
    answer = world.get(path)
    if refuse:
        assert answer.code in (400, 404), (path, answer.code, answer.body)
        assert world.hgweb.requests == [], path
        assert world.runner.calls == [], path
    assert answer.code != 500, (path, answer.body)
    if answer.code >= 400:
        assert answer.header("Content-Type") == "application/json", path
        assert "error" in json.loads(answer.body), path
    if answer.code == 400:
        assert world.hgweb.requests == [], path
        assert world.runner.calls == [], path
    return answer.code


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    repo=st.lists(segments, min_size=0, max_size=4).map("/".join),
    rev=segments,
    params=st.dictionaries(
        st.sampled_from(["subdir", "suffix", "preferred_region", "x"]),
        query_values,
        max_size=3,
    ),
)
def test_hostile_archive_requests_never_crash_or_reach_upstream(repo, rev, params):
    world = World()
    query = "&".join(f"{k}={v}" for k, v in params.items())
    try:
        refuse = _must_refuse(repo, rev, params)
    except UnicodeDecodeError:
        refuse = True  # not UTF-8: refused before anything else
    path = f"/archiver/hgmo/{repo}/{rev}" + (f"?{query}" if query else "")
    _check(world, path, refuse)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(path=st.lists(segments, min_size=1, max_size=5).map("/".join))
def test_hostile_status_and_file_paths_never_crash(path):
    world = World()
    _check(world, f"/archiver/status/{path}")
    _check(world, f"/archiver/files/{path}?expires=99999999999&signature=00")
    _check(world, f"/{path}")


# -- the files route: Range headers, signatures and odd keys ------------------

BODY = bytes(range(256)) * 12  # 3,072 bytes
_SPEC = re.compile(r"\s*([0-9]*)-([0-9]*)\s*\Z")


@pytest.fixture(scope="module")
def files_world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """One World over a file store, shared by a test's examples (they only
    read, or add objects under keys of their own)."""
    clock = Clock()
    clock.advance(1_700_000_000)
    root = tmp_path_factory.mktemp("files")
    files = FileStorage(root, ("local",), secret="s" * 32, clock=clock.seconds)
    files.open()
    files.put("local", ASH.key, BODY, INFO, "ab" * 32)
    return World(files=files, clock=clock)


def _requested(header: str, size: int) -> set[int] | None:
    """The oracle: every byte offset a valid Range asks for (None if the
    header is not a valid bytes Range, which must then be ignored)."""
    unit, equals, specs = header.partition("=")
    if not equals or unit.strip().lower() != "bytes":
        return None
    wanted: set[int] = set()
    parts = [p for p in specs.split(",") if p.strip()]
    for part in parts:
        match = _SPEC.match(part)
        if not match or match.groups() == ("", ""):
            return None
        first, last = match.groups()
        if first and last and int(last) < int(first):
            return None
        if not first:
            wanted.update(range(max(0, size - int(last)), size))
        else:
            stop = size if not last else min(int(last) + 1, size)
            wanted.update(range(int(first), stop))
    return wanted if parts else None


range_specs = st.one_of(
    st.tuples(st.integers(0, 4000), st.integers(0, 4000)).map(
        lambda t: f"{min(t)}-{max(t)}"
    ),
    st.integers(0, 4000).map(lambda n: f"{n}-"),
    st.integers(0, 5000).map(lambda n: f"-{n}"),
    st.sampled_from(["0-", "-0", "5-2", "x-1", "", " 1 - 2 ", "99999999999999999999-"]),
    st.text(alphabet="0123456789-, =", max_size=12),
)
range_headers = st.one_of(
    st.lists(range_specs, max_size=30).map(lambda s: "bytes=" + ",".join(s)),
    st.integers(1, 3000).map(lambda n: "bytes=" + ",".join(["0-"] * n)),
    st.text(max_size=30).map(lambda t: "".join(c for c in t if c.isprintable())),
)


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(header=range_headers, head=st.booleans())
@pytest_twisted.ensureDeferred
async def test_any_range_header_gets_at_most_the_object_and_exactly_what_it_says(
    files_world: World, header: str, head: bool
) -> None:
    world = files_world
    url = world.get(f"/archiver/hgmo/projects/ash/{REV}").header("Location")
    if head:
        answer = world.get(url, method="HEAD", Range=header)
        assert (answer.code, answer.body) == (200, b"")
        return
    answer = await world.served(url, Range=header)
    wanted = _requested(header, len(BODY))
    assert answer.length == len(answer.body) <= len(BODY)
    if answer.code == 200:
        assert answer.body == BODY
    elif answer.code == 206:
        start, end = map(
            int, answer.header("Content-Range")[6:].split("/")[0].split("-")
        )
        assert answer.header("Content-Range").endswith(f"/{len(BODY)}")
        assert answer.body == BODY[start : end + 1]
        assert wanted is not None and wanted <= set(range(start, end + 1))
    else:
        assert answer.code == 416, answer.code
        assert wanted == set()


hexes = st.text(alphabet="0123456789abcdef", min_size=0, max_size=70)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    expires=st.one_of(st.integers(0, 10**13).map(str), query_values),
    signature=st.one_of(hexes, query_values),
    key=st.one_of(st.just(ASH.key), segments),
)
def test_forged_signatures_never_open_a_file(
    files_world: World, expires: str, signature: str, key: str
) -> None:
    world = files_world
    answer = world.get(
        f"/archiver/files/local/{key}?expires={expires}&signature={signature}"
    )
    assert answer.code in (400, 403, 404), answer.code
    assert "error" in json.loads(answer.body)


#: Keys as archiverd makes them: segments of any characters but "/" (a key
#: never has an empty segment), joined by "/".
odd_keys = st.lists(
    st.text(
        alphabet=st.characters(
            blacklist_categories=("Cc", "Cs"), blacklist_characters="/"
        ),
        min_size=1,
        max_size=12,
    ).filter(lambda s: s not in (".", "..")),
    min_size=1,
    max_size=4,
).map("/".join)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(key=odd_keys)
@pytest_twisted.ensureDeferred
async def test_any_key_signed_is_served_by_its_url_and_by_nothing_else(
    files_world: World, key: str
) -> None:
    world = files_world
    files: FileStorage = world.backend
    url = BASE + files.signed_url("local", key, 300)
    if files.exists("local", key):
        return
    assert world.get(url).code == 404, url
    files.put("local", key, key.encode(), INFO, "cd" * 32)
    answer = await world.served(url)
    assert (answer.code, answer.body) == (200, key.encode()), url
    other = files.signed_url("local", key + "x", 300)
    assert world.get(BASE + other.replace("x?", "?")).code == 403


# -- the Host header ----------------------------------------------------------

SERVED = {"archiver.example", "127.0.0.1", "localhost", socket.gethostname().lower()}
host_values = st.one_of(
    st.binary(max_size=80).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    st.lists(
        st.text(alphabet="abcxyz019-_.", min_size=0, max_size=70),
        min_size=1,
        max_size=5,
    ).map(lambda ls: ".".join(ls).encode()),
    st.sampled_from(
        [
            b"archiver.example",
            b"ARCHIVER.example:8010",
            b"localhost:1",
            b"[::1]",
            b"127.0.0.1:8010",
            b"evil.example",
            b"x..y",
            b"a" * 64,
            b"[::1]:80",
            b"",
        ]
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    host=host_values,
    public=st.booleans(),
    path=st.sampled_from(
        [
            f"/archiver/hgmo/projects/ash/{REV}",
            "/archiver/status/x",
            "/__lbheartbeat__",
            "/archiver/files/x",
            "/nothing",
        ]
    ),
)
def test_no_host_header_is_a_500_or_ends_up_in_a_location_unless_served(
    host: bytes, public: bool, path: str
) -> None:
    world = World(public_url="https://archiver.example.com" if public else None)
    request = b"GET " + path.encode() + b" HTTP/1.1\r\nHost: " + host + b"\r\n\r\n"
    with capturedLogs() as events:
        code, headers, body = raw(world, request)
    assert code != 500 and code < 500, (host, code, body)
    assert not [
        e for e in events if e["log_level"] in (LogLevel.critical, LogLevel.error)
    ]
    if code >= 400:
        assert headers["content-type"] == "application/json"
        assert "error" in json.loads(body)
    location = headers.get("location")
    if location:
        netloc = urlsplit(location).hostname or ""
        if public:
            assert location.startswith("https://archiver.example.com/")
        else:
            assert netloc.lower() in SERVED | {""}, (host, location)
