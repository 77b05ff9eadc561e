"""The OpenAPI document's reusable schemas (``components.schemas``): the
bodies archiverd answers with, as data."""

from __future__ import annotations

from typing import Any


def ref(name: str) -> dict[str, str]:
    """A reference to one of :func:`schemas`."""
    return {"$ref": f"#/components/schemas/{name}"}


def schemas() -> dict[str, Any]:
    string_map = {"type": "object", "additionalProperties": {"type": "string"}}
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {"type": "string"}},
            "additionalProperties": False,
        },
        "Accepted": {
            "type": "object",
            "required": ["result"],
            "properties": {"result": {"type": "object", "additionalProperties": False}},
            "additionalProperties": False,
        },
        "Status": {
            "type": "object",
            "required": ["result"],
            "properties": {"result": ref("StatusResult")},
            "additionalProperties": False,
        },
        "StatusResult": {
            "type": "object",
            "required": ["state", "status", "src_url", "s3_urls"],
            "properties": {
                "state": {
                    "enum": ["PENDING", "STARTED", "PROGRESS", "SUCCESS", "FAILURE"]
                },
                "status": {"type": "string", "description": "A sentence for people."},
                "src_url": {"type": "string"},
                "s3_urls": {
                    **string_map,
                    "description": "On SUCCESS, a URL per region, signed at poll time.",
                },
                "bytes_received": {"type": "integer", "minimum": 0},
                "elapsed_seconds": {"type": "number", "minimum": 0},
                "regions": {"type": "array", "items": {"type": "string"}},
                "size": {"type": ["integer", "null"], "minimum": 0},
                "sha256": {"type": ["string", "null"]},
                "permanent": {
                    "type": "boolean",
                    "description": "On FAILURE: true when asking again cannot "
                    "help (upstream refused; the archive is too large).",
                },
                "prewarm": {
                    "type": "boolean",
                    "description": "Present (true) while the task was started by "
                    "pre-warm and no client has asked for its archive.",
                },
            },
            "additionalProperties": False,
        },
        "Heartbeat": {
            "type": "object",
            "required": ["status", "checks", "details"],
            "properties": {
                "status": {"enum": ["ok", "error"]},
                "checks": {
                    "type": "object",
                    "additionalProperties": {"enum": ["ok", "error"]},
                },
                "details": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "object",
                        "required": ["status", "message"],
                        "properties": {
                            "status": {"const": "error"},
                            "message": {"type": "string"},
                        },
                    },
                },
            },
        },
        "Version": {
            "type": "object",
            "required": ["source", "version", "commit"],
            "properties": {
                "source": {"type": "string"},
                "version": {"type": "string"},
                "commit": {"type": "string"},
                "build": {"type": "string"},
            },
        },
    }
