"""archiverd.keys: request validation, storage keys and task ids."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from archiverd.errors import BadRequest
from archiverd.keys import (
    ArchiveRequest,
    key_for_task_id,
    parse_key,
    task_id_for_key,
)

NODE = "42bf8560b395a5a9e3c2bbd6c2de2f2c6bd4ec70"


def parse(
    repo: str = "projects/ash", rev: str = NODE[:12], **kwargs: str
) -> ArchiveRequest:
    return ArchiveRequest.parse("hgmo", repo, rev, **kwargs)


# -- revs --------------------------------------------------------------------


@pytest.mark.parametrize("rev", [NODE, NODE[:12], NODE[:16], "42bf85"])
def test_a_changeset_id_keeps_the_form_it_was_asked_in(rev: str) -> None:
    """hgweb names the archive's top folder after the rev as asked: the
    old service cut every id to 12, so its clients asking with 40 found no
    folder they knew."""
    request = parse(rev=rev)
    assert request.rev == rev and request.node == ""
    assert not request.is_symbolic
    assert request.key == f"projects/ash-{rev}.tar.gz"


def test_a_12_digit_id_keeps_the_old_services_key() -> None:
    request = parse(rev=NODE[:12], subdir="testing/mozharness")
    assert request.key == "projects/ash-42bf8560b395.tar.gz/testing/mozharness"
    assert request.task_id == "projects_ash-42bf8560b395.tar.gz_testing_mozharness"


@pytest.mark.parametrize("rev", ["default", "v1.0", "tip", "FIREFOX_BETA_120_END"])
def test_symbolic_revs_are_kept_and_marked_for_resolution(rev: str) -> None:
    request = parse(rev=rev)
    assert request.rev == rev
    assert request.is_symbolic


@pytest.mark.parametrize("name", ["default", "v1.0", "my.feature", "@", "a@b", "1"])
def test_a_resolved_name_keeps_its_form_and_adds_the_changeset(name: str) -> None:
    pinned = parse(rev=name, subdir="testing/mozharness").with_rev(NODE)
    assert (pinned.rev, pinned.node) == (name, NODE[:12])
    assert not pinned.is_symbolic
    assert pinned.key == (f"projects/ash-{name}@42bf8560b395.tar.gz/testing/mozharness")
    assert parse_key(pinned.key) == pinned
    assert key_for_task_id(pinned.task_id) == pinned.key


def test_tip_resolves_to_the_12_digit_archive() -> None:
    """hgweb names tip's folder after its short hash: the same bytes as
    the 12-digit request, so the same key."""
    pinned = parse(rev="tip").with_rev(NODE)
    assert pinned == parse(rev=NODE[:12])


def test_a_name_and_its_changeset_never_share_a_key() -> None:
    by_name = parse(rev="default").with_rev(NODE)
    assert by_name.key not in (parse(rev=NODE[:12]).key, parse(rev=NODE).key)
    assert parse(rev="default").with_rev("0" * 40).key != by_name.key


def test_with_rev_refuses_a_name_that_is_not_a_changeset_id() -> None:
    with pytest.raises(ValueError):
        parse(rev="default").with_rev("tip")


# -- keys, task ids and file names -------------------------------------------


def test_key_has_the_old_service_form_with_subdir() -> None:
    request = parse(subdir="testing/mozharness")
    assert request.key == "projects/ash-42bf8560b395.tar.gz/testing/mozharness"


def test_key_without_subdir_is_repo_rev_and_suffix() -> None:
    assert parse(suffix="zip").key == "projects/ash-42bf8560b395.zip"


def test_task_id_replaces_slashes_with_underscores() -> None:
    request = parse(subdir="testing/mozharness")
    assert request.task_id == "projects_ash-42bf8560b395.tar.gz_testing_mozharness"


def test_names_without_underscore_or_tilde_keep_the_plain_task_id() -> None:
    key = "mozilla-central-0123456789ab.tar.bz2/a/b.c-d"
    assert task_id_for_key(key) == key.replace("/", "_")


def test_underscore_and_tilde_in_a_key_are_escaped_in_its_task_id() -> None:
    assert task_id_for_key("a_b/c~d") == "a~5Fb_c~7Ed"
    assert key_for_task_id("a~5Fb_c~7Ed") == "a_b/c~d"


def test_keys_differing_only_in_slash_versus_underscore_get_different_ids() -> None:
    assert task_id_for_key("a/b") != task_id_for_key("a_b")


@given(st.text())
@example("a_b/c~5F")
@example("~7E~5F_/")
def test_key_for_task_id_inverts_task_id_for_key(key: str) -> None:
    assert key_for_task_id(task_id_for_key(key)) == key


@given(st.text(), st.text())
@example("a/b", "a_b")
@example("~5F", "_")
def test_task_id_for_key_never_maps_two_keys_to_one_id(a: str, b: str) -> None:
    if a != b:
        assert task_id_for_key(a) != task_id_for_key(b)


@pytest.mark.parametrize("bogus", ["a~5", "a~", "~41", "a~5f", "x~7e"])
def test_key_for_task_id_refuses_strings_no_key_maps_to(bogus: str) -> None:
    with pytest.raises(ValueError):
        key_for_task_id(bogus)


def test_filename_joins_repo_basename_rev_and_subdir() -> None:
    request = parse(subdir="testing/mozharness", suffix="zip")
    assert request.filename == "ash-42bf8560b395-testing-mozharness.zip"
    assert parse(rev=NODE).filename == f"ash-{NODE}.tar.gz"


@pytest.mark.parametrize(
    ("suffix", "content_type"),
    [
        ("tar.gz", "application/gzip"),
        ("tar.bz2", "application/x-bzip2"),
        ("zip", "application/zip"),
    ],
)
def test_each_suffix_has_its_content_type(suffix: str, content_type: str) -> None:
    assert parse(suffix=suffix).content_type == content_type


# -- subdir ------------------------------------------------------------------


@pytest.mark.parametrize("subdir", ["testing/mozharness/", "testing/mozharness//"])
def test_a_trailing_slash_on_subdir_names_the_same_archive(subdir: str) -> None:
    assert parse(subdir=subdir) == parse(subdir="testing/mozharness")


def test_an_empty_subdir_means_the_whole_repository() -> None:
    assert parse(subdir="").key == "projects/ash-42bf8560b395.tar.gz"


# -- validation --------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["tar", "tar.xz", "ZIP", "", "zip/x", "../zip"])
def test_unsupported_suffixes_are_bad_requests(suffix: str) -> None:
    with pytest.raises(BadRequest, match="suffix"):
        parse(suffix=suffix)


BAD_INPUTS = [
    # ".." and "." segments
    {"repo": ".."},
    {"repo": "projects/../etc"},
    {"repo": "projects/.."},
    {"repo": "./ash"},
    {"rev": ".."},
    {"subdir": "../etc"},
    {"subdir": "a/../../b"},
    {"subdir": "a/./b"},
    # leading slash, empty segments, slash in rev
    {"repo": "/projects/ash"},
    {"subdir": "/etc"},
    {"subdir": "/"},
    {"repo": "projects//ash"},
    {"rev": "a/b"},
    # backslashes
    {"repo": "projects\\ash"},
    {"rev": "tip\\"},
    {"subdir": "..\\..\\etc"},
    # control characters
    {"repo": "ash\r\nX-Injected: 1"},
    {"rev": "tip\n"},
    {"subdir": "a\rb"},
    {"subdir": "a\x00b"},
    {"repo": "ash\x7f"},
    {"rev": "t\tip"},
    {"subdir": "a\u2028b"},  # line separator
    {"repo": "a\u200bb"},  # zero-width space (format character)
    # length
    {"repo": "r" * 257},
    {"rev": "v" * 257},
    {"subdir": "s" * 257},
    # empty
    {"rev": ""},
    {"repo": ""},
]


@pytest.mark.parametrize("bad", BAD_INPUTS, ids=repr)
def test_unsafe_names_are_bad_requests(bad: dict[str, str]) -> None:
    with pytest.raises(BadRequest) as e:
        parse(**bad)
    assert "\n" not in str(e.value)


def test_names_of_exactly_256_characters_are_accepted() -> None:
    request = parse(repo="r" * 256, rev="v" * 256, subdir="s" * 256)
    assert request.repo == "r" * 256


@pytest.mark.parametrize("name", ["..x", "x..", "...", ".hg", "v1..2"])
def test_dots_inside_a_name_are_not_a_dot_segment(name: str) -> None:
    assert parse(repo=f"projects/{name}", rev=name, subdir=name).repo.endswith(name)


def _is_control(c: str) -> bool:
    return unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")


#: Path-like names: mostly harmless segments, some hostile ones, some random.
segments = st.sampled_from(
    [
        "a",
        "b_c",
        "~x",
        "\u00e9",
        "v1.0",
        "..x",
        "%2e%2e",
        "..",
        ".",
        "",
        " ",
        "a\\b",
        "a\x00",
        "x\ny",
        "\r",
        "\x7f",
        "\u2028",
        "\u200b",
    ]
) | st.text(max_size=8)
names = st.lists(segments, min_size=1, max_size=4).map("/".join) | st.text(max_size=300)


@settings(max_examples=300)
@given(
    repo=names,
    rev=segments,
    subdir=names,
    suffix=st.sampled_from(["tar.gz", "tar.bz2", "zip"]),
)
def test_any_accepted_input_gives_a_safe_key(
    repo: str, rev: str, subdir: str, suffix: str
) -> None:
    try:
        request = ArchiveRequest.parse("hgmo", repo, rev, suffix, subdir)
    except BadRequest:
        return
    key = request.key
    assert ".." not in key.split("/")
    assert "." not in key.split("/")
    assert "" not in key.split("/")
    assert not key.startswith("/")
    assert "\\" not in key
    assert not any(_is_control(c) for c in key)
    assert key_for_task_id(request.task_id) == key
    assert "/" not in request.filename


# -- sources other than hgmo ---------------------------------------------------

FULL = "0123456789abcdef0123456789abcdef01234567"


def test_other_sources_keys_carry_their_name_so_sources_never_share_a_key() -> None:
    hg = ArchiveRequest.parse("hgmo", "mozilla/gecko", FULL)
    gh = ArchiveRequest.parse("github", "mozilla/gecko", FULL)
    assert hg.key == f"mozilla/gecko-{FULL}.tar.gz"
    assert gh.key == f"@github/mozilla/gecko-{FULL}.tar.gz"
    assert gh.task_id == f"@github_mozilla_gecko-{FULL}.tar.gz"
    assert key_for_task_id(gh.task_id) == gh.key


def test_no_repo_can_start_like_another_sources_key() -> None:
    with pytest.raises(BadRequest, match="repo starts with '@'"):
        ArchiveRequest.parse("hgmo", "@github/mozilla", FULL)


@pytest.mark.parametrize(
    "wanted",
    [
        ArchiveRequest.parse("github", "mozilla/gecko", FULL),
        ArchiveRequest.parse("gitlab", "a/b", FULL, "zip", "docs/x"),
        ArchiveRequest.parse("hg2", "projects/ash", FULL),
        ArchiveRequest.parse("hgmo", "projects/ash", FULL, subdir="a"),
    ],
)
def test_parse_key_names_the_source_of_a_key(wanted: ArchiveRequest) -> None:
    assert parse_key(wanted.key) == wanted


def test_parse_key_refuses_what_no_source_makes() -> None:
    assert parse_key("@Bad/x-0123456789ab.tar.gz") is None
    assert parse_key("@github/-0123456789ab.tar.gz") is None
    assert parse_key(f"@github/x-{FULL}0.tar.gz") is None
