"""Configuration: a TOML file, the old service's environment settings, defaults.

Each setting is declared here once, as a dataclass field with its default,
type and rules (:func:`~archiverd.schema.setting`; :mod:`archiverd.schema`
reads them). Every problem is a :class:`ConfigError` whose message is one line
naming the key, so that start-up fails with one clear line.
"""

from __future__ import annotations

import json
import operator
import re
import string
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from archiverd.prewarm.settings import PrewarmConfig
from archiverd.redact import redact_text
from archiverd.schema import REPO_PATTERN, ConfigError, Table, setting
from archiverd.storage.limits import parse_limit

__all__ = ["Config", "ConfigError", "load", "parse", "setting"]

MiB = 1024 * 1024
DEFAULT_LISTEN = "tcp:8010:interface=127.0.0.1"
DEFAULT_URL_TEMPLATE = "https://hg.mozilla.org/{repo}/archive/{rev}.{suffix}/{subdir}"
TEMPLATE_FIELDS = {"repo", "rev", "suffix", "subdir"}
MIN_PART_SIZE = 5 * MiB
MAX_PART_SIZE = 5 * 1024 * MiB
_REGION = (r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z", "bad region name")
#: Segments of printable characters other than "/" and "\\", joined by "/".
_REPO = REPO_PATTERN


# Checks: (dotted key, the value, the table's values) -> the value kept.
def _http_url(name: str, url: str, _: object = None, shown: str = "") -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        shown = redact_text(shown or repr(url))
        raise ConfigError(f"{name}: expected an http(s) URL, got {shown}")
    return url


def _access_log(name: str, path: str, _: object) -> str:
    if not path or "\0" in path:
        raise ConfigError(f"{name}: expected a file path")
    return path


def _public_url(name: str, url: str, _: object) -> str:
    return _http_url(name, url).rstrip("/")


def _template(name: str, value: str, required: set[str]) -> str:
    prefix = value.split("{", 1)[0]
    _http_url(name, prefix + "x", shown=repr(value))
    if not urlsplit(prefix).path.startswith("/"):
        raise ConfigError(f"{name}: placeholders must come after the host")
    try:
        parsed = [p for p in string.Formatter().parse(value) if p[1] is not None]
    except ValueError as e:
        raise ConfigError(f"{name}: {e}") from None
    if any(spec or conversion for _, _, spec, conversion in parsed):
        raise ConfigError(f"{name}: placeholders take no conversion or format spec")
    fields = {f for _, f, _, _ in parsed if f is not None}
    if not fields <= TEMPLATE_FIELDS:
        unknown = ", ".join(sorted(fields - TEMPLATE_FIELDS))
        raise ConfigError(f"{name}: unknown placeholder {unknown}")
    if not required <= fields:
        missing = ", ".join("{" + f + "}" for f in sorted(required - fields))
        raise ConfigError(f"{name}: must contain {missing}")
    return value


def _url_template(name: str, template: str, values: Mapping[str, Any]) -> str:
    # hgweb's archive URLs take the format; other hosts' may fix it.
    optional = {"suffix"} if values["kind"] == "template" else set()
    _template(name, template, {"repo", "rev", "suffix"} - optional)
    if "@" in urlsplit(template).netloc and "authorization" in _lower(values):
        raise ConfigError(f"{name}: credentials in the URL and an Authorization header")
    return template


def _rev_template(name: str, template: str, values: Mapping[str, Any]) -> str:
    if "@" in urlsplit(template).netloc:
        raise ConfigError(f"{name}: no credentials here (url_template's are used)")
    return template and _template(name, template, {"repo", "rev"})


def _lower(values: Mapping[str, Any]) -> set[str]:
    return {name.lower() for name in values["headers"]}


#: Headers archiverd sets itself, or that would change what upstream sends.
_OWN_HEADERS = {"host", "content-length", "transfer-encoding", "connection"}
_OWN_HEADERS |= {"accept-encoding", "range", "te", "upgrade", "expect"}


def _headers(name: str, headers: dict[str, Any], values: object) -> dict[str, str]:
    for header, value in headers.items():
        key = f"{name}.{header}"
        if not re.match(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z", header):
            raise ConfigError(f"{key}: bad header name")
        if header.lower() in _OWN_HEADERS:
            raise ConfigError(f"{key}: archiverd sets this header itself")
        if not isinstance(value, str) or re.search(r"[\r\n\0]", value):
            raise ConfigError(f"{key}: expected one line of text or {{ env = NAME }}")
    return headers


def _buckets(name: str, buckets: dict[str, Any], _: object) -> dict[str, Any]:
    for region, bucket in buckets.items():
        if not isinstance(bucket, str) or not bucket:
            raise ConfigError(f"{name}: bad bucket for {region!r}")
    return buckets


def _has_regions(name: str, backend: str, values: Mapping[str, Any]) -> str:
    if not StorageConfig(**values).regions:
        where = "s3.buckets" if backend == "s3" else "file.regions"
        raise ConfigError(f"{name.rpartition('.')[0]}.{where}: no regions configured")
    return backend


def _max_bytes(name: str, text: str, _: object) -> str:
    try:
        text and parse_limit(text)
    except ValueError as e:
        raise ConfigError(f"{name}: {e}") from None
    return text


def _expiry(name: str, seconds: float, values: Mapping[str, Any]) -> float:
    shortest = 4 * (values["signed_url_expiry"] + 60)
    if 0 < seconds < shortest:
        raise ConfigError(
            f"{name}: at least {shortest} s (4 x (signed_url_expiry + 60)), or 0"
        )
    return seconds


def _redis_url(name: str, url: str, values: Mapping[str, Any]) -> str:
    schemes = ("redis", "rediss", "unix")
    if values["backend"] == "redis" and urlsplit(url).scheme not in schemes:
        raise ConfigError(f"{name}: expected redis://HOST:PORT/DB for backend 'redis'")
    return url


def _prewarm(name: str, prewarm: PrewarmConfig, values: Mapping[str, Any]) -> Any:
    if prewarm.enabled and values["kind"] == "template" and not prewarm.secret:
        raise ConfigError(
            f"{name}.secret: required: a template source's pushes come by webhook"
        )
    return prewarm


@dataclass(frozen=True)
class SourceConfig:
    """An upstream VCS host that serves archives."""

    name: str
    url_template: str = setting(
        DEFAULT_URL_TEMPLATE, check=_url_template, required_for=("kind", "template")
    )
    #: Where symbolic revs are resolved; default: beside the archive URL.
    rev_url_template: str = setting("", only_for=("kind", "hgweb"), check=_rev_template)
    #: Seconds to wait for upstream's response headers.
    headers_timeout: float = setting(60.0, low=0.1, high=3600)
    #: Seconds without a byte from upstream, mid-body, before giving up.
    #: (Time spent paused for storage to catch up does not count.)
    idle_timeout: float = setting(60.0, low=0.1, high=3600)
    #: Seconds a whole transfer may take.
    total_timeout: float = setting(3600.0, low=1, high=86400)
    #: Further attempts after a connection failure, a reset or a 5xx.
    retries: int = setting(3, low=0, high=20)
    #: First retry delay in seconds; doubled each time, with jitter.
    retry_backoff: float = setting(1.0, low=0, high=600)
    #: Larger archives are refused.
    max_archive_bytes: int = setting(5 * 1024 * MiB, low=1, high=2**50)
    #: "hgweb": Mercurial's hgweb (symbolic revs resolved through json-rev);
    #: "template": any archive URL template (revs are full commit ids).
    kind: str = setting("hgweb", choices=("hgweb", "template"))
    #: kind "template": also take symbolic revs (branches, tags), cached
    #: under their name, so they can be served stale.
    allow_symbolic: bool = setting(
        False, only_for=("kind", "template", "hgweb sources resolve symbolic revs")
    )
    #: Repo patterns served ("*" within a path segment, "**" across them);
    #: empty: every repo.
    repos: tuple[str, ...] = setting((), each=_REPO)
    #: Sent with every request upstream (e.g. Authorization, PRIVATE-TOKEN);
    #: a value may be { env = "NAME" }. Never shown, like url_template's
    #: userinfo (sent as Basic auth) and secret query values.
    headers: Mapping[str, str] = setting(factory=dict, check=_headers)
    prewarm: PrewarmConfig = setting(factory=PrewarmConfig, check=_prewarm)

    @property
    def host(self) -> str:
        """The upstream host name (for logs and metrics, never credentials)."""
        return urlsplit(self.url_template).hostname or ""

    @property
    def resolved_rev_url_template(self) -> str:
        """Where symbolic revs are resolved: as configured, or hgweb's json-rev."""
        if self.rev_url_template:
            return self.rev_url_template
        prefix = self.url_template[: self.url_template.index("{repo}")]
        return prefix + "{repo}/json-rev/{rev}"


@dataclass(frozen=True)
class S3Config:
    """The s3 backend: a bucket per region."""

    buckets: Mapping[str, str] = setting(factory=dict, each=_REGION, check=_buckets)
    endpoint_url: str | None = setting(None, check=_http_url)
    #: "path" or "virtual"; None lets botocore choose.
    addressing_style: str | None = setting(
        None, choices=("path", "virtual", "auto"), expected="path or virtual"
    )
    #: botocore's attempts per call (standard mode); seconds to connect, per read.
    max_attempts: int = setting(5, low=1, high=20)
    connect_timeout: float = setting(5.0, low=0.1, high=600)
    read_timeout: float = setting(30.0, low=0.1, high=3600)
    #: "crc32": S3 checks every request's bytes against a CRC32 (cheap);
    #: "none": no per-request checksum (the sha256 in metadata remains).
    checksum: str = setting("crc32", choices=("crc32", "none"))
    #: Also sign each body's sha256 into the request (a second full hash).
    sign_payload: bool = False


@dataclass(frozen=True)
class FileConfig:
    """The file backend: a directory per region under one root."""

    root: str = setting("archiverd-data", refuse=(operator.not_, "must not be empty"))
    regions: tuple[str, ...] = setting(
        ("local",),
        each=_REGION,
        refuse=(lambda rs: len(set(rs)) < len(rs), "a region is named twice"),
    )
    #: HMAC key for signed file URLs; default: generated and kept under root.
    secret: str | None = setting(
        None, refuse=(lambda s: len(s.encode()) < 32, "use at least 32 characters")
    )
    #: Bytes kept under root ("200GiB", "500G", or "80%" of its file
    #: system); past it the least recently used archives are evicted down
    #: to 90% of it. "": no limit.
    max_bytes: str = setting("", check=_max_bytes)
    #: Seconds an archive may go unused before it is evicted; 0: no limit.
    max_age: float = setting(0.0, low=0, high=10 * 365 * 86400)


@dataclass(frozen=True)
class StorageConfig:
    """Where archives are kept."""

    backend: str = setting("file", choices=("file", "s3"), check=_has_regions)
    signed_url_expiry: int = setting(300, low=1, high=7 * 24 * 3600)
    #: Threads that run blocking storage calls (botocore, file writes).
    threads: int = setting(16, low=1, high=256)
    #: (region, key) pairs remembered as stored, so hits need no storage call.
    exists_cache_size: int = setting(100_000, low=0, high=10_000_000)
    #: Seconds one is remembered (an object deleted behind archiverd's back
    #: is noticed after this long).
    exists_cache_ttl: float = setting(3600.0, low=0, high=30 * 86400)
    #: Seconds after which an object is deleted once stored (the buckets'
    #: lifecycle rule; the file backend applies it itself): it is never
    #: redirected to within signed_url_expiry + 60 s of it, and a popular
    #: one is refreshed before. 0: objects never expire.
    expire_after: float = setting(0.0, low=0, high=10 * 365 * 86400, check=_expiry)
    s3: S3Config = field(default_factory=S3Config)
    file: FileConfig = field(default_factory=FileConfig)

    @property
    def regions(self) -> tuple[str, ...]:
        """Configured regions; the first is the default."""
        if self.backend == "s3":
            return tuple(self.s3.buckets)
        return self.file.regions


@dataclass(frozen=True)
class PipelineConfig:
    """How archives stream from upstream to storage."""

    #: Bytes per multipart part (S3 wants at least 5 MiB).
    part_size: int = setting(8 * MiB, low=MIN_PART_SIZE, high=MAX_PART_SIZE)
    #: Parts of one task held in memory at once, across all its regions.
    parts_in_flight: int = setting(4, low=1, high=64)
    #: Bytes read from upstream's socket at a time (Twisted's default: 64 KiB).
    read_size: int = setting(MiB, low=16 * 1024, high=64 * MiB)


@dataclass(frozen=True)
class TasksConfig:
    """The task table."""

    #: Seconds a finished task stays in the table.
    keep_finished: float = setting(3600.0, low=0, high=30 * 86400)
    #: Transfers that run at once; more wait their turn as PENDING.
    max_concurrent_tasks: int = setting(8, low=1, high=1024)
    #: Tasks the table holds; when all are unfinished, requests get 503.
    max_tasks: int = setting(10000, low=1, high=10_000_000)
    #: Seconds a request that starts or joins a task waits for it to store
    #: the archive (then 302) before the usual 202; 0: 202 at once.
    hold: float = setting(5.0, low=0, high=600)
    #: The longest ``Prefer: wait=N`` honoured, in seconds.
    max_wait: float = setting(60.0, low=0, high=3600)
    #: User-Agent patterns ("*" any run of characters) of clients that stop
    #: polling only on SUCCESS (RelengAPI's archiver_client.py): a permanent
    #: failure reaches them as SUCCESS with no s3_urls, as the old service
    #: answered, and a transient one as a 503 that makes them ask again.
    legacy_clients: tuple[str, ...] = setting(
        ("Python-urllib/2.*",), each=(r"[\x20-\x7e]{1,200}\Z", "bad pattern")
    )


@dataclass(frozen=True)
class CoordinationConfig:
    """How daemons share tasks."""

    #: "memory": one daemon, its own task table; "redis": several daemons
    #: share tasks, locks and the concurrency limit through Redis.
    backend: str = setting("memory", choices=("memory", "redis"))
    url: str = setting("", check=_redis_url)
    #: Every Redis key starts with this.
    prefix: str = "archiverd:"
    #: Seconds a task's lock outlives its holder (renewed while it runs):
    #: how long a killed daemon's work waits before another takes it over.
    lock_ttl: float = setting(30.0, low=1, high=3600)
    #: Seconds each Redis call may take before it counts as unavailable.
    timeout: float = setting(2.0, low=0.1, high=60)


def _sources(table: Table, default: dict[str, SourceConfig]) -> Mapping[str, Any]:
    """[sources.NAME] tables (each checked, even if not enabled), and defaults."""
    sources = {}
    for name in list(table.raw):
        # "status", "files" and "hooks" are the web service's own routes.
        own = ("status", "files", "hooks")
        if not re.match(r"[a-z0-9][a-z0-9_-]*\Z", name) or name in own:
            raise ConfigError(f"{table.name(name)}: bad source name")
        source = table.table(name)
        enabled = "enabled" not in source.raw or source.take("enabled", bool)
        config = source.read(SourceConfig, name=name)
        if enabled:
            sources[name] = config
    sources = {k: v for k, v in default.items() if k not in table.given} | sources
    if not sources:
        raise ConfigError(f"{table.path}: every source is disabled")
    return sources


@dataclass(frozen=True)
class Config:
    """The whole configuration."""

    listen: str = DEFAULT_LISTEN
    public_url: str | None = setting(None, check=_public_url)
    #: Host names served besides the listening address's own (public_url unset).
    hosts: tuple[str, ...] = setting((), each=(r"[\w.:\[\]-]{1,255}\Z", "bad host"))
    #: Seconds to send a whole request; connections at once (0: no limit).
    header_timeout: float = setting(30.0, low=1, high=3600)
    max_connections: int = setting(10_000, low=0, high=1_000_000)
    max_connections_per_client: int = setting(0, low=0, high=1_000_000)
    #: A file for the access log, written by archiverd a second at a time and
    #: reopened on SIGHUP or when moved (unset: through twistd's text log).
    access_log: str | None = setting(None, check=_access_log)
    #: hg.mozilla.org stays served unless configured otherwise.
    sources: Mapping[str, SourceConfig] = setting(
        factory=lambda: {"hgmo": SourceConfig("hgmo")}, read=_sources
    )
    storage: StorageConfig = field(default_factory=StorageConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    tasks: TasksConfig = field(default_factory=TasksConfig)
    #: Seconds to finish aborting uploads on SIGTERM before exiting anyway.
    shutdown_grace: float = setting(10.0, low=0, high=3600)
    coordination: CoordinationConfig = field(default_factory=CoordinationConfig)


def parse(raw: Mapping[str, Any]) -> Config:
    """Build a :class:`Config` from a parsed TOML document."""
    return Table(raw, "").read(Config)


def _subtable(raw: dict[str, Any], *keys: str) -> dict[str, Any]:
    """The table at keys (created if absent), or a ConfigError naming it."""
    for depth, key in enumerate(keys, 1):
        raw = raw.setdefault(key, {})
        if not isinstance(raw, dict):
            raise ConfigError(f"{'.'.join(keys[:depth])}: expected a table")
    return raw


def apply_environment(raw: dict[str, Any], environ: Mapping[str, str]) -> None:
    """Honour the old service's settings, which override the file's values,
    and fill in header values given as ``{ env = "NAME" }``.

    ``ARCHIVER_S3_BUCKETS`` also selects the s3 backend, unless the file
    names a backend itself.
    """
    sources = raw.get("sources", {})
    for source, table in sources.items() if isinstance(sources, dict) else ():
        prewarm = table.get("prewarm") if isinstance(table, dict) else None
        secret = prewarm.get("secret") if isinstance(prewarm, dict) else None
        if (
            isinstance(prewarm, dict)
            and isinstance(secret, dict)
            and secret.keys() == {"env"}
        ):
            variable = str(secret["env"])
            if not environ.get(variable):
                key = f"sources.{source}.prewarm.secret"
                raise ConfigError(f"{key}: environment variable {variable} unset")
            prewarm["secret"] = environ[variable]
        headers = table.get("headers") if isinstance(table, dict) else None
        if not isinstance(headers, dict):
            continue
        for header, value in headers.items():
            if isinstance(value, dict) and value.keys() == {"env"}:
                variable = str(value["env"])
                if not environ.get(variable):
                    key = f"sources.{source}.headers.{header}"
                    raise ConfigError(f"{key}: environment variable {variable} unset")
                headers[header] = environ[variable]
    template = environ.get("ARCHIVER_HGMO_URL_TEMPLATE")
    if template:
        _subtable(raw, "sources", "hgmo")["url_template"] = template
    buckets = environ.get("ARCHIVER_S3_BUCKETS")
    if buckets:
        try:
            parsed = json.loads(buckets)
        except ValueError:
            raise ConfigError("ARCHIVER_S3_BUCKETS: not valid JSON") from None
        if not isinstance(parsed, dict):
            raise ConfigError("ARCHIVER_S3_BUCKETS: expected a JSON object")
        _subtable(raw, "storage").setdefault("backend", "s3")
        _subtable(raw, "storage", "s3")["buckets"] = parsed


def load(path: str | None, environ: Mapping[str, str]) -> Config:
    """Read the config file (if any) and the environment."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                raw = tomllib.load(f)
        except OSError as e:
            raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
    apply_environment(raw, environ)
    return parse(raw)
