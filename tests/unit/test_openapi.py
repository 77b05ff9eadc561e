"""archiverd.api.openapi: the document is valid OpenAPI 3.1, describes every
route the Klein app has (and no other), and its name patterns say exactly
what archiverd's validation accepts."""

from __future__ import annotations

import json
import re
import sys
import unicodedata

from hypothesis import given
from hypothesis import strategies as st
from openapi_spec_validator import validate
from test_web import REGIONS, World

from archiverd.api.openapi import OPENAPI_PATH, openapi_document
from archiverd.api.openapi_paths import PATH_PATTERN, SEGMENT_PATTERN, SUBDIR_PATTERN
from archiverd.api.web import ArchiverAPI
from archiverd.errors import BadRequest
from archiverd.keys import ArchiveRequest

_CONVERTER = re.compile(r"<(?:[a-z]+:)?([a-z_]+)>")


def _klein_routes() -> set[tuple[str, str]]:
    """(OpenAPI path, method) for every rule of the Klein app."""
    routes = set()
    for rule in ArchiverAPI.app.url_map.iter_rules():
        path = _CONVERTER.sub(r"{\1}", rule.rule)
        for method in rule.methods or ():
            if method != "OPTIONS":
                routes.add((path, method.lower()))
    return routes


def _documented(document: dict) -> set[tuple[str, str]]:
    return {
        (path, method)
        for path, item in document["paths"].items()
        for method in item
        if method in ("get", "head", "post", "put", "delete", "patch")
    }


def _document(**kwargs) -> dict:
    return openapi_document(["hgmo", "github"], ["us-east-1", "us-west-2"], **kwargs)


def test_the_document_is_valid_openapi_3_1() -> None:
    document = _document(public_url="https://archiver.example.com")
    assert document["openapi"].startswith("3.1.")
    validate(document)


def test_every_klein_route_and_method_is_documented_and_nothing_else() -> None:
    """A new route without documentation fails here."""
    assert _documented(_document()) == _klein_routes()


def test_sources_regions_and_servers_come_from_the_configuration() -> None:
    document = _document(public_url="https://archiver.example.com/prefix")
    params = {
        p["name"]: p
        for p in document["paths"]["/archiver/{source}/{repo}/{rev}"]["get"][
            "parameters"
        ]
    }
    assert params["source"]["schema"]["enum"] == ["github", "hgmo"]
    assert params["preferred_region"]["schema"]["examples"] == [
        "us-east-1",
        "us-west-2",
    ]
    assert "`us-west-2`" in params["preferred_region"]["description"]
    assert document["servers"] == [{"url": "https://archiver.example.com/prefix"}]
    assert "servers" not in _document()


def test_the_route_serves_the_document_as_json_rendered_once() -> None:
    world = World(public_url="https://archiver.example.com")
    first = world.get(OPENAPI_PATH)
    assert first.code == 200
    document = first.json
    assert document["servers"] == [{"url": "https://archiver.example.com"}]
    source = document["paths"]["/archiver/{source}/{repo}/{rev}"]["get"]
    assert source["parameters"][0]["schema"]["enum"] == ["hgmo"]
    assert list(REGIONS)[0] in json.dumps(document)
    second = world.get(OPENAPI_PATH)
    assert second.body is first.body or second.body == first.body
    assert world.api._openapi is not None
    head = world.get(OPENAPI_PATH, method="HEAD")
    assert (head.code, head.body) == (200, b"")


def test_an_undeclared_method_is_a_405_with_allow() -> None:
    """RFC 9110: a 405 names the methods the resource has (schemathesis
    found them missing)."""
    answer = World().get("/__version__", method="POST")
    assert answer.code == 405
    assert set((answer.header("Allow") or "").split(", ")) == {"GET", "HEAD"}
    assert answer.json == {"error": "The method is not allowed for the requested URL."}


def test_werkzeugs_slash_redirect_has_a_location() -> None:
    answer = World().get("/archiver/hgmo/ash")
    assert answer.code == 308
    assert (
        answer.header("Location") == "http://archiver.example:8010/archiver/hgmo/ash/"
    )


def _matches(pattern: str, value: str) -> bool:
    # JSON Schema's "$" is the end of the string (Python's also allows a
    # trailing newline before it).
    assert pattern.startswith("^") and pattern.endswith("$")
    return re.fullmatch(pattern[1:-1], value) is not None


def _accepts(**fields: str) -> bool:
    wanted = {"repo": "ash", "rev": "default", "subdir": "", **fields}
    try:
        ArchiveRequest.parse(
            "hgmo", wanted["repo"], wanted["rev"], subdir=wanted["subdir"]
        )
    except BadRequest:
        return False
    return True


_TRICKY = st.text(
    st.sampled_from(["a", "é", ".", "/", "\\", "@", " ", "\n", "\x7f", "\u200b"]),
    max_size=10,
)


@given(_TRICKY)
def test_the_repo_pattern_matches_exactly_the_repos_archiverd_accepts(
    value: str,
) -> None:
    assert _matches(PATH_PATTERN, value) == _accepts(repo=value)


@given(_TRICKY)
def test_the_rev_pattern_matches_exactly_the_revs_archiverd_accepts(
    value: str,
) -> None:
    assert _matches(SEGMENT_PATTERN, value) == _accepts(rev=value)


@given(_TRICKY)
def test_the_subdir_pattern_matches_exactly_the_subdirs_archiverd_accepts(
    value: str,
) -> None:
    assert _matches(SUBDIR_PATTERN, value) == _accepts(subdir=value)


def test_the_patterns_refuse_exactly_the_bmp_characters_archiverd_refuses() -> None:
    """Every character of the Basic Multilingual Plane (UTF-8 carries no
    surrogates), inside a name: the pattern agrees with validation."""
    disagree = [
        f"U+{code:04X} ({unicodedata.category(chr(code))})"
        for code in range(0x10000)
        if not 0xD800 <= code <= 0xDFFF
        and _matches(SEGMENT_PATTERN, f"a{chr(code)}b")
        != _accepts(rev=f"a{chr(code)}b")
    ]
    assert not disagree, (sys.version, unicodedata.unidata_version, disagree[:20])
