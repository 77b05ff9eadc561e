"""Configuration: a TOML file, the old service's environment settings, defaults.

Every problem is a :class:`ConfigError` whose message is one line naming the
key, so that start-up fails with one clear line.
"""

from __future__ import annotations

import json
import re
import string
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

MiB = 1024 * 1024
DEFAULT_LISTEN = "tcp:8010:interface=127.0.0.1"
DEFAULT_URL_TEMPLATE = "https://hg.mozilla.org/{repo}/archive/{rev}.{suffix}/{subdir}"
TEMPLATE_FIELDS = {"repo", "rev", "suffix", "subdir"}
MIN_PART_SIZE = 5 * MiB
MAX_PART_SIZE = 5 * 1024 * MiB
_REGION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")
#: Segments of printable characters other than "/" and "\\", joined by "/".
_REPO_PATTERN = re.compile(r"[^/\\\s]+(/[^/\\\s]+)*\Z")


class ConfigError(Exception):
    """A configuration problem; the message names the key."""


@dataclass(frozen=True)
class SourceConfig:
    """An upstream VCS host that serves archives."""

    name: str
    url_template: str = DEFAULT_URL_TEMPLATE
    #: Where symbolic revs are resolved; default: beside the archive URL.
    rev_url_template: str = ""
    #: Seconds to wait for upstream's response headers.
    headers_timeout: float = 60.0
    #: Seconds without a byte from upstream, mid-body, before giving up.
    #: (Time spent paused for storage to catch up does not count.)
    idle_timeout: float = 60.0
    #: Seconds a whole transfer may take.
    total_timeout: float = 3600.0
    #: Further attempts after a connection failure, a reset or a 5xx.
    retries: int = 3
    #: First retry delay in seconds; doubled each time, with jitter.
    retry_backoff: float = 1.0
    #: Larger archives are refused.
    max_archive_bytes: int = 5 * 1024 * MiB
    #: "hgweb": Mercurial's hgweb (symbolic revs resolved through json-rev);
    #: "template": any archive URL template (revs are full commit ids).
    kind: str = "hgweb"
    #: kind "template": also take symbolic revs (branches, tags), cached
    #: under their name, so they can be served stale.
    allow_symbolic: bool = False
    #: Repo patterns served ("*" within a path segment, "**" across them);
    #: empty: every repo.
    repos: tuple[str, ...] = ()

    @property
    def host(self) -> str:
        return urlsplit(self.url_template).hostname or ""

    @property
    def resolved_rev_url_template(self) -> str:
        if self.rev_url_template:
            return self.rev_url_template
        prefix = self.url_template[: self.url_template.index("{repo}")]
        return prefix + "{repo}/json-rev/{rev}"


@dataclass(frozen=True)
class S3Config:
    buckets: Mapping[str, str] = field(default_factory=dict)
    endpoint_url: str | None = None
    #: "path" or "virtual"; None lets botocore choose.
    addressing_style: str | None = None
    #: botocore's retry attempts for each call (standard retry mode).
    max_attempts: int = 5
    #: "crc32": S3 checks every request's bytes against a CRC32 (cheap);
    #: "none": no per-request checksum (the sha256 in metadata remains).
    checksum: str = "crc32"
    #: Also sign each body's sha256 into the request (a second full hash).
    sign_payload: bool = False


@dataclass(frozen=True)
class FileConfig:
    root: str = "archiverd-data"
    regions: tuple[str, ...] = ("local",)
    #: HMAC key for signed file URLs; default: generated and kept under root.
    secret: str | None = None


@dataclass(frozen=True)
class StorageConfig:
    backend: str = "file"
    signed_url_expiry: int = 300
    #: Threads that run blocking storage calls (botocore, file writes).
    threads: int = 16
    #: (region, key) pairs remembered as stored, so hits need no storage call.
    exists_cache_size: int = 100_000
    #: Seconds one is remembered (an object deleted behind archiverd's back
    #: is noticed after this long).
    exists_cache_ttl: float = 3600.0
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
    #: Bytes per multipart part (S3 wants at least 5 MiB).
    part_size: int = 8 * MiB
    #: Parts of one task held in memory at once, across all its regions.
    parts_in_flight: int = 4
    #: Bytes read from upstream's socket at a time (Twisted's default: 64 KiB).
    read_size: int = MiB


@dataclass(frozen=True)
class TasksConfig:
    #: Seconds a finished task stays in the table.
    keep_finished: float = 3600.0
    #: Transfers that run at once; more wait their turn as PENDING.
    max_concurrent_tasks: int = 8
    #: Tasks the table holds; when all are unfinished, requests get 503.
    max_tasks: int = 10000


@dataclass(frozen=True)
class CoordinationConfig:
    #: "memory": one daemon, its own task table; "redis": several daemons
    #: share tasks, locks and the concurrency limit through Redis.
    backend: str = "memory"
    url: str = ""
    #: Every Redis key starts with this.
    prefix: str = "archiverd:"
    #: Seconds a task's lock outlives its holder (renewed while it runs):
    #: how long a killed daemon's work waits before another takes it over.
    lock_ttl: float = 30.0
    #: Seconds each Redis call may take before it counts as unavailable.
    timeout: float = 2.0


@dataclass(frozen=True)
class Config:
    listen: str = DEFAULT_LISTEN
    public_url: str | None = None
    sources: Mapping[str, SourceConfig] = field(
        default_factory=lambda: {"hgmo": SourceConfig("hgmo")}
    )
    storage: StorageConfig = field(default_factory=StorageConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    tasks: TasksConfig = field(default_factory=TasksConfig)
    #: Seconds to finish aborting uploads on SIGTERM before exiting anyway.
    shutdown_grace: float = 10.0
    coordination: CoordinationConfig = field(default_factory=CoordinationConfig)


class _Table:
    """One TOML table being read: typed look-ups, then a check for leftovers."""

    def __init__(self, raw: Any, path: str) -> None:
        if not isinstance(raw, dict):
            raise ConfigError(f"{path or 'config'}: expected a table")
        self.raw = dict(raw)
        self.path = path

    def name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def take(self, key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        if key not in self.raw:
            return default
        value = self.raw.pop(key)
        if isinstance(value, bool) and kind in (int, float, (int, float)):
            raise ConfigError(f"{self.name(key)}: expected a number, got {value!r}")
        if not isinstance(value, kind):
            want = kind.__name__ if isinstance(kind, type) else "a number"
            raise ConfigError(f"{self.name(key)}: expected {want}, got {value!r}")
        return value

    def table(self, key: str) -> _Table:
        return _Table(self.raw.pop(key, {}), self.name(key))

    def done(self) -> None:
        for key in self.raw:
            raise ConfigError(f"{self.name(key)}: unknown key")


def _number(table: _Table, key: str, default: float, low: float, high: float) -> Any:
    value = table.take(key, (int, float), default)
    if not low <= value <= high:
        raise ConfigError(f"{table.name(key)}: must be between {low} and {high}")
    return value


def _integer(table: _Table, key: str, default: int, low: int, high: int) -> int:
    value = table.take(key, int, default)
    if not low <= value <= high:
        raise ConfigError(f"{table.name(key)}: must be between {low} and {high}")
    return int(value)


def _http_url(name: str, value: str, shown: str | None = None) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name}: expected an http(s) URL, got {shown or value!r}")
    return value


def _template(name: str, value: str, required: set[str]) -> str:
    prefix = value.split("{", 1)[0]
    _http_url(name, prefix + "x", shown=value)
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


def _region(name: str, region: Any) -> str:
    if not isinstance(region, str) or not _REGION.match(region):
        raise ConfigError(f"{name}: bad region name {region!r}")
    return region


def _source(name: str, table: _Table) -> SourceConfig:
    kind = table.take("kind", str, "hgweb")
    if kind not in ("hgweb", "template"):
        raise ConfigError(f"{table.name('kind')}: expected 'hgweb' or 'template'")
    if kind == "template" and "url_template" not in table.raw:
        raise ConfigError(f"{table.name('url_template')}: required for kind 'template'")
    template = _template(
        table.name("url_template"),
        table.take("url_template", str, DEFAULT_URL_TEMPLATE),
        {"repo", "rev"} if kind == "template" else {"repo", "rev", "suffix"},
    )
    rev_template = table.take("rev_url_template", str, "")
    if rev_template:
        if kind != "hgweb":
            raise ConfigError(
                f"{table.name('rev_url_template')}: only for kind 'hgweb'"
            )
        _template(table.name("rev_url_template"), rev_template, {"repo", "rev"})
    allow_symbolic = table.take("allow_symbolic", bool, False)
    if allow_symbolic and kind != "template":
        raise ConfigError(
            f"{table.name('allow_symbolic')}: only for kind 'template' "
            "(hgweb sources resolve symbolic revs)"
        )
    repos = table.take("repos", list, [])
    for pattern in repos:
        if not isinstance(pattern, str) or not _REPO_PATTERN.match(pattern):
            raise ConfigError(f"{table.name('repos')}: bad repo pattern {pattern!r}")
    source = SourceConfig(
        name,
        template,
        kind=kind,
        allow_symbolic=allow_symbolic,
        repos=tuple(repos),
        rev_url_template=rev_template,
        headers_timeout=float(_number(table, "headers_timeout", 60.0, 0.1, 3600)),
        idle_timeout=float(_number(table, "idle_timeout", 60.0, 0.1, 3600)),
        total_timeout=float(_number(table, "total_timeout", 3600.0, 1, 86400)),
        retries=_integer(table, "retries", 3, 0, 20),
        retry_backoff=float(_number(table, "retry_backoff", 1.0, 0, 600)),
        max_archive_bytes=_integer(
            table, "max_archive_bytes", 5 * 1024 * MiB, 1, 2**50
        ),
    )
    table.done()
    return source


def _storage(table: _Table) -> StorageConfig:
    backend = table.take("backend", str, "file")
    if backend not in ("file", "s3"):
        raise ConfigError(f"{table.name('backend')}: expected 'file' or 's3'")
    expiry = _integer(table, "signed_url_expiry", 300, 1, 7 * 24 * 3600)
    threads = _integer(table, "threads", 16, 1, 256)
    cache_size = _integer(table, "exists_cache_size", 100_000, 0, 10_000_000)
    cache_ttl = float(_number(table, "exists_cache_ttl", 3600.0, 0, 30 * 86400))

    s3 = table.table("s3")
    buckets = s3.take("buckets", dict, {})
    for region, bucket in buckets.items():
        _region(s3.name("buckets"), region)
        if not isinstance(bucket, str) or not bucket:
            raise ConfigError(f"{s3.name('buckets')}: bad bucket for {region!r}")
    endpoint_url = s3.take("endpoint_url", str, None)
    if endpoint_url is not None:
        _http_url(s3.name("endpoint_url"), endpoint_url)
    style = s3.take("addressing_style", str, None)
    if style not in (None, "path", "virtual", "auto"):
        raise ConfigError(f"{s3.name('addressing_style')}: expected path or virtual")
    attempts = _integer(s3, "max_attempts", 5, 1, 20)
    checksum = s3.take("checksum", str, "crc32")
    if checksum not in ("crc32", "none"):
        raise ConfigError(f"{s3.name('checksum')}: expected 'crc32' or 'none'")
    sign_payload = s3.take("sign_payload", bool, False)
    s3.done()

    files = table.table("file")
    root = files.take("root", str, "archiverd-data")
    if not root:
        raise ConfigError(f"{files.name('root')}: must not be empty")
    regions = files.take("regions", list, ["local"])
    for region in regions:
        _region(files.name("regions"), region)
    if len(set(regions)) != len(regions):
        raise ConfigError(f"{files.name('regions')}: a region is named twice")
    secret = files.take("secret", str, None)
    if secret is not None and len(secret) < 16:
        raise ConfigError(f"{files.name('secret')}: use at least 16 characters")
    files.done()
    table.done()

    storage = StorageConfig(
        backend,
        expiry,
        threads,
        cache_size,
        cache_ttl,
        S3Config(dict(buckets), endpoint_url, style, attempts, checksum, sign_payload),
        FileConfig(root, tuple(regions), secret),
    )
    if not storage.regions:
        where = "storage.s3.buckets" if backend == "s3" else "storage.file.regions"
        raise ConfigError(f"{where}: no regions configured")
    return storage


def parse(raw: Mapping[str, Any]) -> Config:
    """Build a :class:`Config` from a parsed TOML document."""
    top = _Table(raw, "")
    listen = top.take("listen", str, DEFAULT_LISTEN)
    public_url = top.take("public_url", str, None)
    shutdown_grace = float(_number(top, "shutdown_grace", 10.0, 0, 3600))
    if public_url is not None:
        public_url = _http_url("public_url", public_url).rstrip("/")

    sources_table = top.table("sources")
    sources = {}
    named = list(sources_table.raw)
    for name in named:
        if not re.match(r"[a-z0-9][a-z0-9_-]*\Z", name) or name in ("status", "files"):
            raise ConfigError(f"sources.{name}: bad source name")
        table = sources_table.table(name)
        enabled = table.take("enabled", bool, True)
        source = _source(name, table)
        if enabled:
            sources[name] = source
    if "hgmo" not in named:
        # hg.mozilla.org stays served unless configured otherwise.
        sources = {"hgmo": SourceConfig("hgmo"), **sources}
    if not sources:
        raise ConfigError("sources: every source is disabled")

    storage = _storage(top.table("storage"))

    pipeline = top.table("pipeline")
    part_size = _integer(pipeline, "part_size", 8 * MiB, MIN_PART_SIZE, MAX_PART_SIZE)
    in_flight = _integer(pipeline, "parts_in_flight", 4, 1, 64)
    read_size = _integer(pipeline, "read_size", MiB, 16 * 1024, 64 * MiB)
    pipeline.done()

    tasks = top.table("tasks")
    tasks_config = TasksConfig(
        keep_finished=float(_number(tasks, "keep_finished", 3600.0, 0, 30 * 86400)),
        max_concurrent_tasks=_integer(tasks, "max_concurrent_tasks", 8, 1, 1024),
        max_tasks=_integer(tasks, "max_tasks", 10000, 1, 10_000_000),
    )
    tasks.done()
    coordination = _coordination(top.table("coordination"))
    top.done()

    return Config(
        listen,
        public_url,
        sources,
        storage,
        PipelineConfig(part_size, in_flight, read_size),
        tasks_config,
        shutdown_grace,
        coordination,
    )


def _coordination(table: _Table) -> CoordinationConfig:
    backend = table.take("backend", str, "memory")
    if backend not in ("memory", "redis"):
        raise ConfigError(f"{table.name('backend')}: expected 'memory' or 'redis'")
    url = table.take("url", str, "")
    if backend == "redis" and urlsplit(url).scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(
            f"{table.name('url')}: expected redis://HOST:PORT/DB for backend 'redis'"
        )
    config = CoordinationConfig(
        backend,
        url,
        prefix=table.take("prefix", str, "archiverd:"),
        lock_ttl=float(_number(table, "lock_ttl", 30.0, 1, 3600)),
        timeout=float(_number(table, "timeout", 2.0, 0.1, 60)),
    )
    table.done()
    return config


def _subtable(raw: dict[str, Any], key: str, path: str) -> dict[str, Any]:
    """raw[key] as a table (created if absent), or a ConfigError naming path."""
    table = raw.setdefault(key, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: expected a table")
    return table


def apply_environment(raw: dict[str, Any], environ: Mapping[str, str]) -> None:
    """Honour the old service's settings, which override the file's values.

    ``ARCHIVER_S3_BUCKETS`` also selects the s3 backend, unless the file
    names a backend itself.
    """
    template = environ.get("ARCHIVER_HGMO_URL_TEMPLATE")
    if template:
        sources = _subtable(raw, "sources", "sources")
        _subtable(sources, "hgmo", "sources.hgmo")["url_template"] = template
    buckets = environ.get("ARCHIVER_S3_BUCKETS")
    if buckets:
        try:
            parsed = json.loads(buckets)
        except ValueError:
            raise ConfigError("ARCHIVER_S3_BUCKETS: not valid JSON") from None
        if not isinstance(parsed, dict):
            raise ConfigError("ARCHIVER_S3_BUCKETS: expected a JSON object")
        storage = _subtable(raw, "storage", "storage")
        storage.setdefault("backend", "s3")
        _subtable(storage, "s3", "storage.s3")["buckets"] = parsed


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
