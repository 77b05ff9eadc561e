"""archiverd.config: the TOML file, the old service's environment, defaults."""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, get_args, get_type_hints

import pytest

from archiverd.config import (
    DEFAULT_URL_TEMPLATE,
    Config,
    ConfigError,
    MiB,
    SourceConfig,
    apply_environment,
    load,
    parse,
    setting,
)

#: The README's sample, every key spelled out.
FULL_EXAMPLE = """
listen = "tcp:8010:interface=127.0.0.1"
public_url = "https://archiver.example.com"

[sources.hgmo]
url_template = "https://hg.mozilla.org/{repo}/archive/{rev}.{suffix}/{subdir}"
headers_timeout = 60

[storage]
backend = "s3"
signed_url_expiry = 300
threads = 16

[storage.s3]
buckets = { "us-east-1" = "archiver-us-east-1", "us-west-2" = "archiver-us-west-2" }
endpoint_url = "http://127.0.0.1:9000"
addressing_style = "path"
max_attempts = 5

[storage.file]
root = "archiverd-data"
regions = ["local"]

[pipeline]
part_size = 8388608
parts_in_flight = 4

[tasks]
keep_finished = 3600
"""


def config_error(raw: dict[str, Any]) -> str:
    """The message of the ConfigError that ``raw`` raises (one line, checked)."""
    with pytest.raises(ConfigError) as e:
        parse(raw)
    message = str(e.value)
    assert "\n" not in message and message.strip() == message
    return message


# -- defaults and the full example -------------------------------------------


def test_an_empty_config_gives_the_documented_defaults() -> None:
    config = parse({})
    assert config == Config()
    assert config.listen == "tcp:8010:interface=127.0.0.1"
    assert config.public_url is None
    assert config.storage.backend == "file"
    assert config.storage.regions == ("local",)
    assert config.storage.signed_url_expiry == 300
    assert config.tasks.keep_finished == 3600
    assert config.pipeline.part_size == 8 * MiB
    assert list(config.sources) == ["hgmo"]
    assert config.sources["hgmo"].url_template == DEFAULT_URL_TEMPLATE


def test_the_readme_example_is_read_in_full() -> None:
    config = parse(tomllib.loads(FULL_EXAMPLE))
    hgmo = config.sources["hgmo"]
    assert hgmo.url_template == (
        "https://hg.mozilla.org/{repo}/archive/{rev}.{suffix}/{subdir}"
    )
    assert hgmo.host == "hg.mozilla.org"
    assert hgmo.headers_timeout == 60.0
    assert config.public_url == "https://archiver.example.com"
    assert config.storage.backend == "s3"
    assert dict(config.storage.s3.buckets) == {
        "us-east-1": "archiver-us-east-1",
        "us-west-2": "archiver-us-west-2",
    }
    assert config.storage.s3.endpoint_url == "http://127.0.0.1:9000"
    assert config.storage.s3.addressing_style == "path"
    assert config.storage.regions == ("us-east-1", "us-west-2")
    assert config.pipeline.parts_in_flight == 4


def test_rev_url_template_defaults_to_json_rev_beside_the_archive_url() -> None:
    source = SourceConfig(
        "hgmo", "https://hg.example:8443/hg/{repo}/archive/{rev}.{suffix}"
    )
    assert source.resolved_rev_url_template == (
        "https://hg.example:8443/hg/{repo}/json-rev/{rev}"
    )


def test_public_url_loses_its_trailing_slash() -> None:
    assert parse({"public_url": "https://a.example/"}).public_url == "https://a.example"


# -- unknown keys and wrong types --------------------------------------------


@pytest.mark.parametrize(
    ("raw", "dotted"),
    [
        ({"listn": "tcp:1"}, "listn"),
        ({"storage": {"s3": {"bucket": {}}}}, "storage.s3.bucket"),
        ({"storage": {"file": {"root": "x", "region": ["a"]}}}, "storage.file.region"),
        ({"storage": {"threds": 2}}, "storage.threds"),
        ({"sources": {"hgmo": {"url": "https://x/"}}}, "sources.hgmo.url"),
        ({"pipeline": {"part_sise": 6 * MiB}}, "pipeline.part_sise"),
        ({"tasks": {"keep": 1}}, "tasks.keep"),
    ],
)
def test_an_unknown_key_is_named_by_its_dotted_path(
    raw: dict[str, Any], dotted: str
) -> None:
    assert config_error(raw) == f"{dotted}: unknown key"


@pytest.mark.parametrize(
    ("raw", "dotted"),
    [
        ({"listen": 8010}, "listen"),
        ({"storage": {"signed_url_expiry": "300"}}, "storage.signed_url_expiry"),
        ({"storage": {"signed_url_expiry": True}}, "storage.signed_url_expiry"),
        ({"storage": {"threads": 2.5}}, "storage.threads"),
        ({"storage": {"s3": {"buckets": ["a"]}}}, "storage.s3.buckets"),
        ({"storage": {"s3": {"buckets": {"r": 1}}}}, "storage.s3.buckets"),
        ({"storage": {"file": {"regions": "local"}}}, "storage.file.regions"),
        ({"storage": "s3"}, "storage"),
        ({"storage": {"s3": "x"}}, "storage.s3"),
        ({"sources": {"hgmo": "x"}}, "sources.hgmo"),
        ({"tasks": {"keep_finished": "1h"}}, "tasks.keep_finished"),
        ({"pipeline": {"parts_in_flight": 0}}, "pipeline.parts_in_flight"),
    ],
)
def test_a_wrong_type_or_range_is_named_by_its_dotted_path(
    raw: dict[str, Any], dotted: str
) -> None:
    assert config_error(raw).startswith(f"{dotted}: ")


def test_part_size_below_5_mib_is_refused() -> None:
    assert config_error({"pipeline": {"part_size": 5 * MiB - 1}}).startswith(
        "pipeline.part_size: "
    )
    assert parse({"pipeline": {"part_size": 5 * MiB}}).pipeline.part_size == 5 * MiB


@pytest.mark.parametrize(
    ("raw", "dotted"),
    [
        ({"storage": {"backend": "s3"}}, "storage.s3.buckets"),
        ({"storage": {"file": {"regions": []}}}, "storage.file.regions"),
    ],
)
def test_a_backend_with_no_regions_is_refused(raw: dict[str, Any], dotted: str) -> None:
    assert config_error(raw) == f"{dotted}: no regions configured"


def test_a_region_named_twice_is_refused() -> None:
    message = config_error({"storage": {"file": {"regions": ["a", "a"]}}})
    assert message.startswith("storage.file.regions: ")


def test_bad_backend_name_is_refused() -> None:
    assert config_error({"storage": {"backend": "gcs"}}).startswith("storage.backend: ")


# -- URL templates -----------------------------------------------------------


def hgmo(template: str, key: str = "url_template") -> dict[str, Any]:
    return {"sources": {"hgmo": {key: template}}}


@pytest.mark.parametrize(
    ("template", "words"),
    [
        ("https://hg.example/{repo}/archive/{rev}.{suffix}/{path}", "placeholder path"),
        ("https://hg.example/{repo}/{0}/{rev}.{suffix}", "placeholder 0"),
        ("https://hg.example/archive/{rev}.{suffix}", "{repo}"),
        ("https://hg.example/{repo}/archive/{rev}", "{suffix}"),
        (
            "https://hg.example/{repo}/archive/{rev.{suffix}",
            "sources.hgmo.url_template",
        ),
        ("ftp://hg.example/{repo}/archive/{rev}.{suffix}", "http(s) URL"),
        ("{repo}/archive/{rev}.{suffix}", "http(s) URL"),
        ("https://{repo}.hg.example/archive/{rev}.{suffix}", "after the host"),
    ],
)
def test_a_bad_url_template_is_refused_with_its_reason(
    template: str, words: str
) -> None:
    message = config_error(hgmo(template))
    assert message.startswith("sources.hgmo.url_template: ")
    assert words in message


def test_a_bad_rev_url_template_is_refused() -> None:
    message = config_error(
        hgmo("https://hg.example/json-rev/{rev}", "rev_url_template")
    )
    assert message == "sources.hgmo.rev_url_template: must contain {repo}"


def test_a_placeholder_with_a_conversion_is_refused_at_start_up() -> None:
    template = "https://hg.example/{repo!s}/archive/{rev}.{suffix}"
    try:
        config = parse(hgmo(template))
    except ConfigError:
        return
    # Accepted: then it must at least be usable.
    assert config.sources["hgmo"].resolved_rev_url_template


def test_source_names_must_be_lowercase_and_not_a_route() -> None:
    assert config_error({"sources": {"Hg": {}}}) == "sources.Hg: bad source name"
    assert (
        config_error({"sources": {"status": {}}}) == "sources.status: bad source name"
    )


# -- source kinds --------------------------------------------------------------

CODELOAD = "https://codeload.github.com/{repo}/{suffix}/{rev}"


def test_a_template_source_is_served_beside_hgmo() -> None:
    config = parse(
        {
            "sources": {
                "github": {
                    "kind": "template",
                    "url_template": CODELOAD,
                    "repos": ["mozilla/*"],
                    "max_archive_bytes": 1000,
                }
            }
        }
    )
    assert list(config.sources) == ["hgmo", "github"]
    github = config.sources["github"]
    assert (github.kind, github.url_template, github.repos) == (
        "template",
        CODELOAD,
        ("mozilla/*",),
    )
    assert github.max_archive_bytes == 1000
    assert not github.allow_symbolic
    assert config.sources["hgmo"].kind == "hgweb"


def test_hgmo_can_be_disabled_and_a_disabled_source_is_still_checked() -> None:
    config = parse({"sources": {"hgmo": {"enabled": False}, "hg": {}}})
    assert list(config.sources) == ["hg"]
    assert (
        config_error({"sources": {"hgmo": {"enabled": False, "tries": 3}}})
        == "sources.hgmo.tries: unknown key"
    )
    assert (
        config_error({"sources": {"hgmo": {"enabled": False}}})
        == "sources: every source is disabled"
    )


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"kind": "git"}, "sources.x.kind: expected 'hgweb' or 'template'"),
        ({"kind": "template"}, "sources.x.url_template: required for kind 'template'"),
        (
            {"kind": "template", "url_template": "https://h/{repo}.tar.gz"},
            "sources.x.url_template: must contain {rev}",
        ),
        (
            {"allow_symbolic": True},
            "sources.x.allow_symbolic: only for kind 'template' "
            "(hgweb sources resolve symbolic revs)",
        ),
        (
            {
                "kind": "template",
                "url_template": CODELOAD,
                "rev_url_template": "https://h/{repo}/{rev}",
            },
            "sources.x.rev_url_template: only for kind 'hgweb'",
        ),
        ({"repos": ["a//b"]}, "sources.x.repos: bad repo pattern 'a//b'"),
        ({"repos": [3]}, "sources.x.repos: bad repo pattern 3"),
        ({"repos": "a/*"}, "sources.x.repos: expected list, got 'a/*'"),
    ],
)
def test_a_bad_source_is_named(source: dict[str, Any], message: str) -> None:
    assert config_error({"sources": {"x": source}}) == message


# -- coordination ---------------------------------------------------------------


def test_one_daemon_needs_no_redis_and_a_fleet_names_it() -> None:
    assert parse({}).coordination.backend == "memory"
    fleet = parse(
        {"coordination": {"backend": "redis", "url": "redis://10.0.0.5:6379/2"}}
    ).coordination
    assert (fleet.backend, fleet.url, fleet.lock_ttl, fleet.prefix) == (
        "redis",
        "redis://10.0.0.5:6379/2",
        30.0,
        "archiverd:",
    )


@pytest.mark.parametrize(
    ("coordination", "message"),
    [
        ({"backend": "zk"}, "coordination.backend: expected 'memory' or 'redis'"),
        (
            {"backend": "redis"},
            "coordination.url: expected redis://HOST:PORT/DB for backend 'redis'",
        ),
        (
            {"backend": "redis", "url": "http://x"},
            "coordination.url: expected redis://HOST:PORT/DB for backend 'redis'",
        ),
        ({"lock_ttl": 0}, "coordination.lock_ttl: must be between 1 and 3600"),
        ({"locks": 1}, "coordination.locks: unknown key"),
    ],
)
def test_bad_coordination_is_named(coordination: dict[str, Any], message: str) -> None:
    assert config_error({"coordination": coordination}) == message


# -- the old service's environment -------------------------------------------


def test_archiver_hgmo_url_template_overrides_the_file() -> None:
    raw = tomllib.loads(FULL_EXAMPLE)
    template = "http://127.0.0.1:8000/{repo}/archive/{rev}.{suffix}/{subdir}"
    apply_environment(raw, {"ARCHIVER_HGMO_URL_TEMPLATE": template})
    assert parse(raw).sources["hgmo"].url_template == template


def test_archiver_s3_buckets_selects_the_s3_backend() -> None:
    config = load(
        None, {"ARCHIVER_S3_BUCKETS": '{"us-east-1": "b1", "us-west-2": "b2"}'}
    )
    assert config.storage.backend == "s3"
    assert dict(config.storage.s3.buckets) == {"us-east-1": "b1", "us-west-2": "b2"}
    assert config.storage.regions == ("us-east-1", "us-west-2")


def test_archiver_s3_buckets_replaces_the_files_buckets() -> None:
    raw = tomllib.loads(FULL_EXAMPLE)
    apply_environment(raw, {"ARCHIVER_S3_BUCKETS": '{"eu-west-1": "b"}'})
    assert parse(raw).storage.regions == ("eu-west-1",)


def test_empty_environment_settings_are_ignored() -> None:
    environ = {"ARCHIVER_S3_BUCKETS": "", "ARCHIVER_HGMO_URL_TEMPLATE": ""}
    assert load(None, environ) == Config()


@pytest.mark.parametrize("value", ["{not json", "['us-east-1']", '"b"'])
def test_bad_archiver_s3_buckets_is_a_config_error_naming_the_variable(
    value: str,
) -> None:
    with pytest.raises(ConfigError) as e:
        load(None, {"ARCHIVER_S3_BUCKETS": value})
    assert str(e.value).startswith("ARCHIVER_S3_BUCKETS: ")
    assert "\n" not in str(e.value)


def test_a_bad_template_from_the_environment_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="sources.hgmo.url_template"):
        load(None, {"ARCHIVER_HGMO_URL_TEMPLATE": "https://hg.example/{repo}"})


@pytest.mark.parametrize(
    ("toml", "environ"),
    [
        ('storage = "s3"\n', {"ARCHIVER_S3_BUCKETS": '{"us-east-1": "b"}'}),
        (
            '[sources]\nhgmo = "hg.mozilla.org"\n',
            {"ARCHIVER_HGMO_URL_TEMPLATE": DEFAULT_URL_TEMPLATE},
        ),
    ],
)
def test_a_non_table_beside_an_environment_setting_is_a_config_error(
    tmp_path: Path, toml: str, environ: dict[str, str]
) -> None:
    path = tmp_path / "archiverd.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError):
        load(str(path), environ)


# -- files -------------------------------------------------------------------


def test_load_reads_a_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "archiverd.toml"
    path.write_text(FULL_EXAMPLE)
    assert load(str(path), {}) == parse(tomllib.loads(FULL_EXAMPLE))


def test_an_unreadable_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as e:
        load(str(missing), {})
    assert str(e.value) == f"{missing}: cannot read: No such file or directory"


def test_a_directory_is_a_config_error_not_a_traceback(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load(str(tmp_path), {})


@pytest.mark.parametrize("text", ["listen = ", "[storage\n", "a = 1\na = 2\n"])
def test_invalid_toml_is_a_one_line_config_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "archiverd.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load(str(path), {})
    assert str(e.value).startswith(f"{path}: not valid TOML: ")
    assert "\n" not in str(e.value)


# -- the schema: every setting's default, type and range, from the dataclasses --


def config_tables(
    cls: Any = Config, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(path, dataclass) of every table; a table of named tables as NAME "x"."""
    yield path, cls
    hints = get_type_hints(cls)
    for spec in dataclasses.fields(cls):
        hint, args = hints[spec.name], get_args(hints[spec.name])
        if dataclasses.is_dataclass(hint):
            yield from config_tables(hint, (*path, spec.name))
        elif args and dataclasses.is_dataclass(args[-1]):
            yield from config_tables(args[-1], (*path, spec.name, "x"))


def config_settings() -> Iterator[tuple[tuple[str, ...], dataclasses.Field[Any], Any]]:
    """(table path, field, type) of every plain setting (no table, no source name)."""
    for path, cls in config_tables():
        hints = get_type_hints(cls)
        for spec in dataclasses.fields(cls):
            hint = hints[spec.name]
            tables = [hint, *get_args(hint)]
            if spec.name != "name" and not any(map(dataclasses.is_dataclass, tables)):
                yield path, spec, hint


SETTINGS = list(config_settings())


def setting_id(setting: tuple[tuple[str, ...], dataclasses.Field[Any], Any]) -> str:
    return ".".join((*setting[0], setting[1].name))


def nest(path: tuple[str, ...], key: str, value: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {key: value}
    for part in reversed(path):
        raw = {part: raw}
    return raw


def setting_of(config: Config, path: tuple[str, ...], key: str) -> Any:
    found: Any = config
    for part in path:
        found = found[part] if isinstance(found, Mapping) else getattr(found, part)
    return getattr(found, key)


def default_of(spec: dataclasses.Field[Any]) -> Any:
    if spec.default_factory is not dataclasses.MISSING:
        return spec.default_factory()
    return spec.default


def test_the_schema_covers_every_table_and_setting() -> None:
    assert [".".join(path) for path, _ in config_tables()] == [
        "",
        "sources.x",
        "sources.x.prewarm",
        "storage",
        "storage.s3",
        "storage.file",
        "pipeline",
        "tasks",
        "coordination",
    ]
    assert len(SETTINGS) == 62
    assert all(spec.name != "name" for _, spec, _ in SETTINGS)


def test_a_file_spelling_out_every_default_gives_the_defaults() -> None:
    raw: dict[str, Any] = {}
    for path, spec, _ in SETTINGS:
        value = default_of(spec)
        if value is None:  # unset; TOML has no null
            continue
        table = raw
        for part in path:
            table = table.setdefault("hgmo" if part == "x" else part, {})
        table[spec.name] = list(value) if isinstance(value, tuple) else value
    assert parse(raw) == Config()
    assert raw["sources"]["hgmo"]["retries"] == 3


@pytest.mark.parametrize(
    "setting",
    [s for s in SETTINGS if s[1].metadata.get("low") is not None],
    ids=setting_id,
)
def test_a_number_is_kept_within_its_declared_range(
    setting: tuple[tuple[str, ...], dataclasses.Field[Any], Any],
) -> None:
    path, spec, hint = setting
    low, high = spec.metadata["low"], spec.metadata["high"]
    assert low <= default_of(spec) <= high
    for value in (low, high):
        kept = setting_of(parse(nest(path, spec.name, value)), path, spec.name)
        assert kept == value and type(kept) is hint
    dotted = setting_id(setting)
    for value in (low - (1 if hint is int else 0.5), high + 1):
        assert config_error(nest(path, spec.name, value)) == (
            f"{dotted}: must be between {low} and {high}"
        )


@pytest.mark.parametrize(
    "setting", [s for s in SETTINGS if s[1].metadata.get("choices")], ids=setting_id
)
def test_a_choice_outside_its_declared_choices_is_refused(
    setting: tuple[tuple[str, ...], dataclasses.Field[Any], Any],
) -> None:
    path, spec, _ = setting
    dotted = setting_id(setting)
    assert default_of(spec) in (None, *spec.metadata["choices"])
    assert config_error(nest(path, spec.name, "nonesuch")).startswith(
        f"{dotted}: expected "
    )
    for choice in spec.metadata["choices"]:
        # Some choices need other keys too (kind "template" a url_template).
        try:
            parse(nest(path, spec.name, choice))
        except ConfigError as e:
            assert not str(e).startswith(f"{dotted}: expected ")


@pytest.mark.parametrize("setting", SETTINGS, ids=setting_id)
def test_a_value_of_the_wrong_type_is_refused_naming_its_key(
    setting: tuple[tuple[str, ...], dataclasses.Field[Any], Any],
) -> None:
    path, spec, hint = setting
    wrong = 1 if hint in (str, str | None) else "1"
    assert config_error(nest(path, spec.name, wrong)).startswith(
        f"{setting_id(setting)}: expected "
    )
    if hint in (int, float):
        assert config_error(nest(path, spec.name, True)) == (
            f"{setting_id(setting)}: expected a number, got True"
        )


def test_enabled_must_be_a_bool() -> None:
    assert (
        config_error({"sources": {"x": {"enabled": "yes"}}})
        == "sources.x.enabled: expected bool, got 'yes'"
    )


def test_a_setting_with_an_unknown_rule_is_a_programming_error() -> None:
    with pytest.raises(TypeError, match="lowest"):
        setting(1, lowest=0)
