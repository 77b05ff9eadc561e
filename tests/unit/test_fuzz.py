"""Hostile paths and query strings against the API: never a 500, errors are
JSON, and input that is refused never reaches upstream or starts a task."""

from __future__ import annotations

import json
import unicodedata
from urllib.parse import quote, unquote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_web import World

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
