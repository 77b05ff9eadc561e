"""The parts of archiverd's OpenAPI document that describe its paths: the
patterns names must match, and each route's parameters and answers
(:mod:`archiverd.api.openapi` puts them together)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from archiverd.api.openapi_schemas import ref
from archiverd.keys import CONTENT_TYPES, MAX_NAME_LENGTH

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


def json_answer(
    schema: dict[str, Any], description: str, **headers: Any
) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    if headers:
        response["headers"] = headers
    return response


def error_answer(description: str, **headers: Any) -> dict[str, Any]:
    return json_answer(ref("Error"), description, **headers)


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
BAD_URL = "The URL is not valid UTF-8."


def operations(
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


def archive_parameters(
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


PREFERENCE_APPLIED = {
    "description": "`wait=N` when a `Prefer: wait` was honoured (N capped by "
    "`tasks.max_wait`).",
    "schema": {"type": "string", "pattern": "^wait=[0-9]+$"},
}
PREFER = {
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
PAGE: dict[str, Any] = {
    "description": "The task's page for people (progress, then the download "
    "link per region), for a request whose Accept rates `text/html` above "
    "`application/json`. Other clients never get it.",
    "content": {"text/html": {"schema": {"type": "string"}}},
}


def archive_responses() -> dict[str, Any]:
    return {
        "200": PAGE,
        "202": json_answer(
            ref("Accepted"),
            "Not stored in the preferred region yet: one background task "
            "fetches it (concurrent requests join it), and the request was "
            "held up to `tasks.hold` seconds (or `Prefer: wait=N`) without "
            "it being stored. Poll the Location.",
            Location={**_LOCATION, "description": "The task's status URL."},
            **{"Preference-Applied": PREFERENCE_APPLIED},
        ),
        "302": {
            "description": "Stored: a redirect to a signed URL for the "
            "preferred region, valid for `signed_url_expiry` seconds (also "
            "when a held request's task stored it meanwhile).",
            "headers": {
                "Location": {**_LOCATION, "description": "The signed URL."},
                "Preference-Applied": PREFERENCE_APPLIED,
            },
            "content": {"text/html": {"schema": {"type": "string"}}},
        },
        "400": error_answer(
            "Bad input (suffix, repo, rev or subdir; a rev or subdir the "
            "source does not take; or a URL that is not UTF-8). Nothing is "
            "asked of upstream."
        ),
        "403": error_answer(
            "The source does not serve this repo (its `repos` list); or the "
            "path is `/archiver/files/...` with no valid signature."
        ),
        "404": error_answer(
            "An unknown source; a symbolic rev that upstream does not know "
            "(quoting upstream); or a path that matches no route."
        ),
        "502": error_answer("Upstream could not be reached to resolve a symbolic rev."),
        "503": error_answer(
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


def file_operations(regions: Sequence[str]) -> dict[str, Any]:
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
    return operations(
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
            "400": error_answer(
                "The URL is not valid UTF-8, or `expires` or `signature` holds "
                "a character that is not printable."
            ),
            "403": error_answer("The link has expired or is not valid."),
            "404": error_answer("No such file, or not the local-files backend."),
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


HOOK: dict[str, Any] = {
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
        "202": json_answer(
            {
                "type": "object",
                "required": ["pushes"],
                "properties": {"pushes": {"type": "integer", "minimum": 0}},
                "additionalProperties": False,
            },
            "Taken: `pushes` is 1 for a push of a watched repo, else 0.",
        ),
        "400": error_answer("A push event whose body is not a JSON object."),
        "401": error_answer("Unsigned: no signature header."),
        "403": error_answer("A wrong signature, or a delivery taken before."),
        "404": error_answer("The source takes no webhooks."),
        "413": error_answer("A body over 1 MiB."),
    },
}
