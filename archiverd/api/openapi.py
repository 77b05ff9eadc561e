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
from archiverd.api.openapi_paths import (
    BAD_URL,
    HOOK,
    PAGE,
    PREFER,
    PREFERENCE_APPLIED,
    archive_parameters,
    archive_responses,
    error_answer,
    file_operations,
    json_answer,
    operations,
)
from archiverd.api.openapi_schemas import ref, schemas

OPENAPI_PATH = "/archiver/openapi.json"


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
    archive_params = archive_parameters(sources, regions)
    paths: dict[str, Any] = {
        "/archiver/{source}/{repo}/{rev}": operations(
            "An archive of a repo at a rev",
            "302 to a signed storage URL when stored, else 202 and a task.",
            archive_responses(),
            [*archive_params, PREFER],
            operation_id="getArchive",
        ),
        "/archiver/{source}/{repo}/": operations(
            "An archive with an empty rev (always refused)",
            "The archive route with nothing after the last slash: a 400.",
            {
                code: response
                for code, response in archive_responses().items()
                if code in ("400", "403", "404")
            },
            [p for p in archive_params if p["name"] != "rev"],
            operation_id="getArchiveWithoutRev",
        ),
        "/archiver/status/{task_id}": operations(
            "A task's state",
            "For a task id this process does not know: SUCCESS with fresh "
            "URLs if the archive is stored in every region, otherwise "
            "PENDING with `no status available at this point.`",
            {
                "200": json_answer(
                    ref("Status"),
                    "The task's state (with `Prefer: wait=N`, once it finishes "
                    "or N seconds pass). Clients whose User-Agent matches "
                    "`tasks.legacy_clients` see a permanent FAILURE as "
                    "SUCCESS with empty `s3_urls`, as the old service answered.",
                    **{"Preference-Applied": PREFERENCE_APPLIED},
                )
                | {
                    "content": {
                        "application/json": {"schema": ref("Status")},
                        **PAGE["content"],
                    }
                },
                "400": error_answer(BAD_URL),
                "404": error_answer(
                    "The path matches no route (a `/` in the task id)."
                ),
                "503": error_answer(
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
            [status_id, PREFER],
            operation_id="getStatus",
        ),
        "/archiver/files/{region}/{key}": file_operations(regions),
        "/archiver/hooks/{source}": {"post": HOOK},
        **{
            path: operations(
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
        OPENAPI_PATH: operations(
            "This document",
            "The OpenAPI 3.1 description of this daemon, as configured.",
            {"200": json_answer({"type": "object"}, "The document.")},
            operation_id="getOpenAPI",
        ),
        "/__lbheartbeat__": operations(
            "Load balancer heartbeat",
            "200 whenever the process serves; no checks.",
            {
                "200": json_answer(
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
        "/__heartbeat__": operations(
            "Heartbeat",
            "Checks each region's storage and each upstream host, at once.",
            {
                "200": json_answer(ref("Heartbeat"), "Every check passed."),
                "500": json_answer(ref("Heartbeat"), "A check failed; see details."),
            },
            operation_id="getHeartbeat",
        ),
        "/__version__": operations(
            "Version",
            "Source, version and commit, written at build time.",
            {"200": json_answer(ref("Version"), "The version object.")},
            operation_id="getVersion",
        ),
        "/metrics": operations(
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
