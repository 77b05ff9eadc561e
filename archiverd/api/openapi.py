"""The OpenAPI 3.1 description of archiverd's HTTP API, served at
``/archiver/openapi.json``.

Built from the running configuration: the ``source`` path parameter lists
the configured sources, ``preferred_region`` the configured regions, and
``servers`` names ``public_url`` when it is set (otherwise clients use the
document's own origin). ``tests/unit/test_openapi.py`` checks that every Klein
route is described here, and ``tests/integration/test_schemathesis.py`` runs
schemathesis against a running daemon with it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from archiverd import __version__
from archiverd.api.openapi_schemas import ref, schemas
from archiverd.keys import CONTENT_TYPES, MAX_NAME_LENGTH

OPENAPI_PATH = "/archiver/openapi.json"

# Characters no name may hold: C0 and C1 controls, the line and paragraph
# separators and the BMP's format characters (Unicode category Cf), as in
# keys._check_name. That also refuses the astral format characters, which
# this class leaves out (the descriptions say so), and lone surrogates, which
# UTF-8 cannot carry (and Rust's regex engine refuses to name).
_FORBIDDEN = (
    r"\u0000-\u001F\u007F-\u009F\u00AD\u0600-\u0605\u061C\u06DD\u070F"
    r"\u0890\u0891\u08E2\u180E\u200B-\u200F\u2028-\u202E\u2060-\u2064"
    r"\u2066-\u206F\uFEFF\uFFF9-\uFFFB"
)
# Written without lookarounds, which schemathesis cannot generate from.
_ANY = rf"[^/\\{_FORBIDDEN}]"
_NOT_DOT = rf"[^./\\{_FORBIDDEN}]"
#: One path segment: neither "." nor "..", no "/" nor "\\".
_SEGMENT = rf"(?:\.{{0,2}}{_NOT_DOT}|\.{{3}}){_ANY}*"
#: The first segment of a repo or subdir, which may not start with "@".
_FIRST = rf"(?:[^@./\\{_FORBIDDEN}]|\.\.?{_NOT_DOT}|\.{{3}}){_ANY}*"
#: repo: segments joined by "/" (no leading "/" or "@", no empty segment).
PATH_PATTERN = rf"^{_FIRST}(?:/{_SEGMENT})*$"
#: subdir: empty, or like a repo; trailing slashes are ignored.
SUBDIR_PATTERN = rf"^(?:{_FIRST}(?:/{_SEGMENT})*/*)?$"
#: rev: one segment.
SEGMENT_PATTERN = rf"^{_SEGMENT}$"

_NAME_RULES = (
    f"At most {MAX_NAME_LENGTH} characters; no `..` or `.` segment, no empty "
    "segment, no leading `/` (nor `@` for repo and subdir), no backslash, "
    "and no control, format (Unicode category Cf), line or paragraph "
    "separator character: otherwise 400."
)


def _json(schema: dict[str, Any], description: str, **headers: Any) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    if headers:
        response["headers"] = headers
    return response


def _error(description: str, **headers: Any) -> dict[str, Any]:
    return _json(ref("Error"), description, **headers)


#: What every query parameter must be (``web._arg``).
_QUERY_RULE = (
    "Like every query parameter, UTF-8 text of printable characters (no "
    "control, format, private-use, unassigned or separator character other "
    "than a space): otherwise 400."
)
_LOCATION = {
    "description": "An absolute URL.",
    "required": True,
    "schema": {"type": "string", "format": "uri"},
}
_BAD_URL = "The URL is not valid UTF-8."


def _operations(
    summary: str,
    description: str,
    responses: dict[str, Any],
    parameters: list[dict[str, Any]] | None = None,
    *,
    operation_id: str,
) -> dict[str, Any]:
    """A GET operation, and a HEAD one answering the same with no body."""
    get: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "description": description,
        "responses": responses,
    }
    if parameters:
        get["parameters"] = parameters
    item = {"get": get}
    item["head"] = {
        **get,
        "operationId": operation_id + "Head",
        "summary": summary + " (headers only)",
        "responses": {
            code: {k: v for k, v in response.items() if k != "content"}
            for code, response in responses.items()
        },
    }
    return item


def _archive_parameters(
    sources: Sequence[str], regions: Sequence[str]
) -> list[dict[str, Any]]:
    return [
        {
            "name": "source",
            "in": "path",
            "required": True,
            "description": "A configured source; any other name is a 404.",
            "schema": {"type": "string", "enum": list(sources)},
        },
        {
            "name": "repo",
            "in": "path",
            "required": True,
            "description": (
                "The repository, such as `mozilla-central` or `projects/ash`. "
                "A nested repo is written with literal slashes "
                "(`/archiver/hgmo/projects/ash/<rev>`); archiverd decodes each "
                "path segment before routing, so `projects%2Fash` names the "
                "same repo. The last segment of the path is always the rev. "
                + _NAME_RULES
            ),
            "schema": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_NAME_LENGTH,
                "pattern": PATH_PATTERN,
            },
            "examples": {"top": {"value": "mozilla-central"}},
        },
        {
            "name": "rev",
            "in": "path",
            "required": True,
            "description": (
                "For an hgweb source: a changeset id (of any length, kept "
                "as asked: the archive's top folder is `<repo basename>-<rev>`), "
                "or a tag, bookmark, branch or local revision number, resolved "
                "through upstream's json-rev on every request (its archive "
                "keeps the name as its folder; `tip` is its 12-digit id's "
                "archive). For a template source: a full 40-digit commit id "
                "(or, where `allow_symbolic` is set, a name, taken as it is). "
                "One path segment. " + _NAME_RULES
            ),
            "schema": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_NAME_LENGTH,
                "pattern": SEGMENT_PATTERN,
            },
            "examples": {"branch": {"value": "default"}},
        },
        {
            "name": "subdir",
            "in": "query",
            "description": (
                "Archive only this folder of the repository (trailing slashes "
                "are ignored). " + _NAME_RULES + " " + _QUERY_RULE
            ),
            "schema": {
                "type": "string",
                "maxLength": MAX_NAME_LENGTH,
                "pattern": SUBDIR_PATTERN,
            },
        },
        {
            "name": "suffix",
            "in": "query",
            "description": "The archive format; any other value is a 400.",
            "schema": {
                "type": "string",
                "enum": list(CONTENT_TYPES),
                "default": "tar.gz",
            },
        },
        {
            "name": "preferred_region",
            "in": "query",
            "description": (
                "The region to redirect to. Configured regions: "
                + ", ".join(f"`{r}`" for r in regions)
                + f"; any other value means the first (`{regions[0]}`). "
                + _QUERY_RULE
            ),
            "schema": {"type": "string", "examples": list(regions)},
        },
    ]


_PREFERENCE_APPLIED = {
    "description": "`wait=N` when a `Prefer: wait` was honoured (N capped by "
    "`tasks.max_wait`).",
    "schema": {"type": "string", "pattern": "^wait=[0-9]+$"},
}
_PREFER = {
    "name": "Prefer",
    "in": "header",
    "required": False,
    "description": "`wait=N` (RFC 7240): hold the answer until the task "
    "finishes or N seconds pass (at most `tasks.max_wait`, default 60): a "
    "long poll.",
    "schema": {"type": "string", "examples": ["wait=30"]},
}


#: The page for people (``archiverd.api.page``), for a request whose Accept
#: rates text/html above application/json.
_PAGE: dict[str, Any] = {
    "description": "The task's page for people (progress, then the download "
    "link per region), for a request whose Accept rates `text/html` above "
    "`application/json`. Other clients never get it.",
    "content": {"text/html": {"schema": {"type": "string"}}},
}


def _archive_responses() -> dict[str, Any]:
    return {
        "200": _PAGE,
        "202": _json(
            ref("Accepted"),
            "Not stored in the preferred region yet: one background task "
            "fetches it (concurrent requests join it), and the request was "
            "held up to `tasks.hold` seconds (or `Prefer: wait=N`) without "
            "it being stored. Poll the Location.",
            Location={**_LOCATION, "description": "The task's status URL."},
            **{"Preference-Applied": _PREFERENCE_APPLIED},
        ),
        "302": {
            "description": "Stored: a redirect to a signed URL for the "
            "preferred region, valid for `signed_url_expiry` seconds (also "
            "when a held request's task stored it meanwhile).",
            "headers": {
                "Location": {**_LOCATION, "description": "The signed URL."},
                "Preference-Applied": _PREFERENCE_APPLIED,
            },
            "content": {"text/html": {"schema": {"type": "string"}}},
        },
        "400": _error(
            "Bad input (suffix, repo, rev or subdir; a rev or subdir the "
            "source does not take; or a URL that is not UTF-8). Nothing is "
            "asked of upstream."
        ),
        "403": _error(
            "The source does not serve this repo (its `repos` list); or the "
            "path is `/archiver/files/...` with no valid signature."
        ),
        "404": _error(
            "An unknown source; a symbolic rev that upstream does not know "
            "(quoting upstream); or a path that matches no route."
        ),
        "502": _error("Upstream could not be reached to resolve a symbolic rev."),
        "503": _error(
            "The task table is full of unfinished tasks; or, with several "
            "daemons, Redis cannot be reached to coordinate new work.",
            **{
                "Retry-After": {
                    "description": "Seconds to wait.",
                    "required": True,
                    "schema": {"type": "integer", "minimum": 0},
                }
            },
        ),
    }


def _file_operations(regions: Sequence[str]) -> dict[str, Any]:
    archive = {
        "schema": {"type": "string", "contentMediaType": "application/octet-stream"}
    }
    body = {content_type: archive for content_type in CONTENT_TYPES.values()}
    stored = {
        "Content-Disposition": {
            "description": "`attachment` with the archive's file name.",
            "schema": {"type": "string"},
        },
        "x-amz-meta-sha256": {
            "description": "The archive's SHA-256, as S3 serves it.",
            "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        },
        "ETag": {"description": "The SHA-256, quoted.", "schema": {"type": "string"}},
    }
    return _operations(
        "An object of the local-files backend",
        "Signed URLs of the local-files backend point here. Ranges that merge "
        "into one span get 206; disjoint spans, or an If-Range naming another "
        "version, get the whole archive: never more. Other backends answer 404.",
        {
            "200": {"description": "The archive.", "headers": stored, "content": body},
            "206": {
                "description": "One span of it.",
                "headers": stored,
                "content": body,
            },
            "304": {"description": "Not modified (If-None-Match, If-Modified-Since)."},
            "400": _error(
                "The URL is not valid UTF-8, or `expires` or `signature` holds "
                "a character that is not printable."
            ),
            "403": _error("The link has expired or is not valid."),
            "404": _error("No such file, or not the local-files backend."),
            "416": {"description": "The requested range is not satisfiable."},
        },
        [
            {
                "name": "region",
                "in": "path",
                "required": True,
                "description": "Configured: " + ", ".join(regions) + ".",
                "schema": {"type": "string", "minLength": 1, "pattern": r"^[^/]+$"},
            },
            {
                "name": "key",
                "in": "path",
                "required": True,
                "description": "The storage key; may contain literal slashes.",
                "schema": {"type": "string", "minLength": 1},
            },
            {
                "name": "expires",
                "in": "query",
                "description": "Expiry, in seconds since the epoch.",
                "schema": {"type": "string"},
            },
            {
                "name": "signature",
                "in": "query",
                "description": "HMAC-SHA256 over region, key and expiry.",
                "schema": {"type": "string"},
            },
            {
                "name": "Range",
                "in": "header",
                "description": "Byte ranges, as in RFC 9110.",
                "schema": {"type": "string"},
            },
            {
                "name": "If-Range",
                "in": "header",
                "description": "An ETag or date: Range applies to that version only.",
                "schema": {"type": "string"},
            },
        ],
        operation_id="getFile",
    )


_HOOK: dict[str, Any] = {
    "operationId": "postHook",
    "summary": "A push webhook (pre-warm)",
    "description": "A GitHub, Gitea or GitLab push event for a source with a "
    "pre-warm `secret`, signed with it (`X-Hub-Signature-256`, "
    "`X-Gitea-Signature`, `X-Gitlab-Token`). Answered at once; the pushed "
    "head's archives are made in the background.",
    "parameters": [
        {
            "name": "source",
            "in": "path",
            "required": True,
            "schema": {"type": "string", "minLength": 1, "pattern": r"^[^/]+$"},
        }
    ],
    "requestBody": {"content": {"application/json": {"schema": {}}}},
    "responses": {
        "202": _json(
            {
                "type": "object",
                "required": ["pushes"],
                "properties": {"pushes": {"type": "integer", "minimum": 0}},
                "additionalProperties": False,
            },
            "Taken: `pushes` is 1 for a push of a watched repo, else 0.",
        ),
        "400": _error("A push event whose body is not a JSON object."),
        "401": _error("Unsigned: no signature header."),
        "403": _error("A wrong signature, or a delivery taken before."),
        "404": _error("The source takes no webhooks."),
        "413": _error("A body over 1 MiB."),
    },
}


def openapi_document(
    sources: Iterable[str],
    regions: Sequence[str],
    public_url: str | None = None,
) -> dict[str, Any]:
    """The OpenAPI 3.1 document for this configuration, as a dict."""
    sources = sorted(sources)
    status_id = {
        "name": "task_id",
        "in": "path",
        "required": True,
        "description": (
            "From a 202's Location. A task id never contains `/` (nor `%2F`, "
            "which would be decoded and routed as an archive request)."
        ),
        "schema": {"type": "string", "minLength": 1, "pattern": r"^[^/]+$"},
    }
    archive_params = _archive_parameters(sources, regions)
    paths: dict[str, Any] = {
        "/archiver/{source}/{repo}/{rev}": _operations(
            "An archive of a repo at a rev",
            "302 to a signed storage URL when stored, else 202 and a task.",
            _archive_responses(),
            [*archive_params, _PREFER],
            operation_id="getArchive",
        ),
        "/archiver/{source}/{repo}/": _operations(
            "An archive with an empty rev (always refused)",
            "The archive route with nothing after the last slash: a 400.",
            {
                code: response
                for code, response in _archive_responses().items()
                if code in ("400", "403", "404")
            },
            [p for p in archive_params if p["name"] != "rev"],
            operation_id="getArchiveWithoutRev",
        ),
        "/archiver/status/{task_id}": _operations(
            "A task's state",
            "For a task id this process does not know: SUCCESS with fresh "
            "URLs if the archive is stored in every region, otherwise "
            "PENDING with `no status available at this point.`",
            {
                "200": _json(
                    ref("Status"),
                    "The task's state (with `Prefer: wait=N`, once it finishes "
                    "or N seconds pass). Clients whose User-Agent matches "
                    "`tasks.legacy_clients` see a permanent FAILURE as "
                    "SUCCESS with empty `s3_urls`, as the old service answered.",
                    **{"Preference-Applied": _PREFERENCE_APPLIED},
                )
                | {
                    "content": {
                        "application/json": {"schema": ref("Status")},
                        **_PAGE["content"],
                    }
                },
                "400": _error(_BAD_URL),
                "404": _error("The path matches no route (a `/` in the task id)."),
                "503": _error(
                    "With several daemons: Redis cannot be reached and the "
                    "archive is not stored, so the state is unknown; or, for "
                    "a client matching `tasks.legacy_clients`, a transient "
                    "FAILURE (so that it asks for the archive again).",
                    **{
                        "Retry-After": {
                            "description": "Seconds to wait.",
                            "required": True,
                            "schema": {"type": "integer", "minimum": 0},
                        }
                    },
                ),
            },
            [status_id, _PREFER],
            operation_id="getStatus",
        ),
        "/archiver/files/{region}/{key}": _file_operations(regions),
        "/archiver/hooks/{source}": {"post": _HOOK},
        **{
            path: _operations(
                "The page for people",
                "What this daemon is and does: version, sources, storage per "
                "region, the tasks in flight and queued, the last finished, "
                "hits and misses. HTML for every client.",
                {
                    "200": {
                        "description": "The page.",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
                operation_id=operation_id,
            )
            for path, operation_id in (
                ("/", "getPage"),
                ("/archiver/", "getArchiverPage"),
            )
        },
        OPENAPI_PATH: _operations(
            "This document",
            "The OpenAPI 3.1 description of this daemon, as configured.",
            {"200": _json({"type": "object"}, "The document.")},
            operation_id="getOpenAPI",
        ),
        "/__lbheartbeat__": _operations(
            "Load balancer heartbeat",
            "200 whenever the process serves; no checks.",
            {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["status"],
                        "properties": {"status": {"const": "ok"}},
                        "additionalProperties": False,
                    },
                    "Serving.",
                )
            },
            operation_id="getLbHeartbeat",
        ),
        "/__heartbeat__": _operations(
            "Heartbeat",
            "Checks each region's storage and each upstream host, at once.",
            {
                "200": _json(ref("Heartbeat"), "Every check passed."),
                "500": _json(ref("Heartbeat"), "A check failed; see details."),
            },
            operation_id="getHeartbeat",
        ),
        "/__version__": _operations(
            "Version",
            "Source, version and commit, written at build time.",
            {"200": _json(ref("Version"), "The version object.")},
            operation_id="getVersion",
        ),
        "/metrics": _operations(
            "Prometheus metrics",
            "Prometheus' text exposition format; every name starts with `archiverd_`.",
            {
                "200": {
                    "description": "The metrics.",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
            operation_id="getMetrics",
        ),
    }
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "archiverd",
            "version": __version__,
            "description": (
                "An archive cache for CI fleets, compatible with RelengAPI's "
                'archiver. Errors are JSON `{"error": "..."}`.'
            ),
        },
        "paths": paths,
        "components": {"schemas": schemas()},
    }
    if public_url:
        document["servers"] = [{"url": public_url}]
    return document
