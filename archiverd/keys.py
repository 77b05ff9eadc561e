"""What a request names: validation, storage keys and task ids.

A storage key is ``{repo}-{rev}.{suffix}``, plus ``/{subdir}`` when a subdir is
given, as the service archiverd replaces named them:
``projects/ash-42bf8560b395.tar.gz/testing/mozharness``. ``rev`` is the rev in
the form the client asked for it, as hgweb names the archive's top folder
after it: a 12-digit id keeps the old key; a 40-digit id (which the old
service cut to 12, so that its clients found no folder they knew) has its own
key, ``ash-<40 hex>.tar.gz``. A name (branch, tag, bookmark) adds the
changeset it named when asked: ``projects/ash-default@42bf8560b395.tar.gz``.
``tip`` is asked for as its changeset's 12 digits.

A task id is the key with ``/`` replaced by ``_``:
``projects_ash-42bf8560b395.tar.gz_testing_mozharness``. So that a task id
never names two archives, the characters ``_`` and ``~`` in a key are escaped
first, as ``~5F`` and ``~7E``. After escaping, ``_`` only ever stands for ``/``
and ``~`` only ever starts an escape, so every task id maps back to exactly
one key (:func:`key_for_task_id`); a key without ``_`` or ``~`` keeps exactly
the old form.

The ``hgmo`` source keeps the old key form. Every other source's keys start
with ``@{source}/``, and no repo may start with ``@``, so two sources never
share a key: ``@github/mozilla/gecko-dev-<40 hex>.tar.gz``.
"""

from __future__ import annotations

import dataclasses
import functools
import posixpath
import re
import unicodedata
from dataclasses import dataclass

from archiverd.errors import BadRequest
from archiverd.wire import SUFFIXES

_MEDIA_TYPES = {
    "tar.gz": "application/gzip",
    "tar.bz2": "application/x-bzip2",
    "zip": "application/zip",
}
if set(_MEDIA_TYPES) != set(SUFFIXES):
    # The client offers wire's suffixes: a suffix there without a type here
    # would be a 500, one here without wire's a choice no client can make.
    raise RuntimeError("archiverd.keys: a Content-Type for each of wire.SUFFIXES")
#: Archive suffixes upstream serves (:data:`archiverd.wire.SUFFIXES`, in its
#: order), with the Content-Type of each.
CONTENT_TYPES = {suffix: _MEDIA_TYPES[suffix] for suffix in SUFFIXES}

MAX_NAME_LENGTH = 256
SHORT_REV_LENGTH = 12
FULL_REV_LENGTH = 40
#: The source whose keys keep the old service's form (no ``@source/`` prefix).
LEGACY_SOURCE = "hgmo"
_HEX = re.compile(r"[0-9a-f]+\Z")
_ESCAPES = {"_": "~5F", "~": "~7E"}
_UNESCAPES = {v: k for k, v in _ESCAPES.items()}
_ESCAPED = re.compile(r"~(5F|7E)")


def _check_name(field: str, value: str, *, path: bool) -> None:
    """Refuse what could escape a path, reach a header, or smuggle a URL."""
    if len(value) > MAX_NAME_LENGTH:
        raise BadRequest(f"{field} is longer than {MAX_NAME_LENGTH} characters")
    plain = value.isascii() and value.isprintable()  # the usual case, fast
    if not plain and any(
        unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in value
    ):
        raise BadRequest(f"{field} contains control characters")
    if "\\" in value:
        raise BadRequest(f"{field} contains a backslash")
    if value.startswith("/"):
        raise BadRequest(f"{field} starts with '/'")
    if value.startswith("@") and path:
        raise BadRequest(f"{field} starts with '@'")
    segments = value.split("/")
    if not path and len(segments) > 1:
        raise BadRequest(f"{field} contains '/'")
    for segment in segments:
        if segment in (".", ".."):
            raise BadRequest(f"{field} contains a '{segment}' segment")
        if segment == "":
            raise BadRequest(f"{field} contains an empty path segment")


def is_changeset_id(rev: str) -> bool:
    """True for a (possibly abbreviated) hexadecimal changeset id.

    A short string of decimal digits is not one: Mercurial reads it as a
    local revision number first, which differs from clone to clone.
    """
    if rev.isdecimal() and len(rev) < SHORT_REV_LENGTH:
        return False
    return bool(_HEX.match(rev))


@dataclass(frozen=True)
class ArchiveRequest:
    """A validated request for one archive of one source.

    ``rev`` is the rev as the client asked for it: a changeset id (of any
    length, kept whole: hgweb names the archive's top folder after it), or a
    symbolic name (tag, bookmark, branch) that must be resolved
    (:meth:`with_rev`) before the request names an archive. A resolved name
    keeps its form, and ``node`` holds the 12 digits of the changeset it named
    when it was asked: its key is ``{repo}-{name}@{node}.{suffix}``, so a
    name's archive holds hgweb's ``<basename>-<name>/`` folder and is never
    served stale (the next push makes another key).
    """

    source: str
    repo: str
    rev: str
    suffix: str = "tar.gz"
    subdir: str = ""
    #: For a rev asked for by name: the changeset it named (12 hex digits).
    node: str = ""

    @classmethod
    def parse(
        cls,
        source: str,
        repo: str,
        rev: str,
        suffix: str = "tar.gz",
        subdir: str = "",
    ) -> ArchiveRequest:
        """Validate raw input; raise :class:`BadRequest` with a clear message."""
        if suffix not in CONTENT_TYPES:
            raise BadRequest(
                f"unsupported suffix {suffix!r}: use one of "
                + ", ".join(sorted(CONTENT_TYPES))
            )
        if not repo:
            raise BadRequest("repo is empty")
        if not rev:
            raise BadRequest("rev is empty")
        _check_name("repo", repo, path=True)
        _check_name("rev", rev, path=False)
        # A trailing slash names the same folder: one archive, not two.
        subdir = subdir.rstrip("/") if subdir.strip("/") else subdir
        if subdir:
            _check_name("subdir", subdir, path=True)
        return cls(source, repo, rev, suffix, subdir)

    @property
    def is_symbolic(self) -> bool:
        """True when ``rev`` names a moving target not yet resolved."""
        return not self.node and not is_changeset_id(self.rev)

    def with_rev(self, node: str) -> ArchiveRequest:
        """The request pinned to the changeset its name names now.

        ``tip`` becomes the changeset's 12 digits (hgweb names tip's folder
        after them, so its archive is the 12-digit one); any other name
        keeps its form, with ``node`` set.
        """
        if not is_changeset_id(node) or len(node) < SHORT_REV_LENGTH:
            raise ValueError(f"not a changeset id: {node!r}")
        short = node[:SHORT_REV_LENGTH]
        if self.rev == "tip":
            return dataclasses.replace(self, rev=short, node="")
        return dataclasses.replace(self, node=short)

    @functools.cached_property
    def key(self) -> str:
        """The storage key, as the old service named it (see the module);
        made once (a poll asks for it: ~1% of one, made each time)."""
        rev = f"{self.rev}@{self.node}" if self.node else self.rev
        key = f"{self.repo}-{rev}.{self.suffix}"
        if self.source and self.source != LEGACY_SOURCE:
            key = f"@{self.source}/{key}"
        return f"{key}/{self.subdir}" if self.subdir else key

    @property
    def task_id(self) -> str:
        return task_id_for_key(self.key)

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.suffix]

    @property
    def filename(self) -> str:
        """The file name a browser saves the archive under."""
        name = f"{posixpath.basename(self.repo)}-{self.rev}"
        if self.subdir:
            name += "-" + self.subdir.replace("/", "-")
        return f"{name}.{self.suffix}"


def task_id_for_key(key: str) -> str:
    """The task id of a key: escape ``~`` and ``_``, then ``/`` becomes ``_``."""
    escaped = "".join(_ESCAPES.get(c, c) for c in key)
    return escaped.replace("/", "_")


def key_for_task_id(task_id: str) -> str:
    """The one key a task id stands for (the inverse of :func:`task_id_for_key`).

    Raises :class:`ValueError` for a string that no key maps to.
    """
    unslashed = task_id.replace("_", "/")
    key = _ESCAPED.sub(lambda m: _UNESCAPES[m.group(0)], unslashed)
    if task_id_for_key(key) != task_id:
        raise ValueError(f"not a task id: {task_id!r}")
    return key


_AFTER_REPO = re.compile(
    r"(?:(?P<name>[^/]+)@(?P<node>[0-9a-f]{12})|(?P<rev>[0-9a-f]{1,40}))"
    r"\.(?P<suffix>"
    + "|".join(re.escape(suffix) for suffix in SUFFIXES)
    + r")(?:/(?P<subdir>.+))?\Z",
    re.DOTALL,
)
_PREFIX = re.compile(r"@(?P<source>[a-z0-9][a-z0-9_-]*)/")


def parse_key(key: str) -> ArchiveRequest | None:
    """The archive a storage key names, or None for a key no request makes.

    The source is ``hgmo`` for a key without an ``@source/`` prefix.
    """
    source, start = LEGACY_SOURCE, 0
    prefix = _PREFIX.match(key)
    if prefix is not None:
        source, start = prefix["source"], prefix.end()
    for dash in (i for i, c in enumerate(key) if c == "-" and i > start):
        match = _AFTER_REPO.match(key, dash + 1)
        if match is None:
            continue
        try:
            request = ArchiveRequest.parse(
                source,
                key[start:dash],
                match["name"] or match["rev"],
                match["suffix"],
                match["subdir"] or "",
            )
            if match["node"]:
                request = request.with_rev(match["node"])
        except (BadRequest, ValueError):
            continue
        if request.key == key and not request.is_symbolic:
            return request
    return None
