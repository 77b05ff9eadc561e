"""Reading a request's arguments and writing JSON answers: the two things
every route does."""

from __future__ import annotations

import json

from twisted.web.iweb import IRequest

from archiverd.errors import BadRequest


def json_body(request: IRequest, body: object, code: int = 200) -> bytes:
    """``body`` as JSON, with the status and Content-Type set."""
    request.setResponseCode(code)
    request.setHeader("Content-Type", "application/json")
    return json.dumps(body).encode()


def arg(request: IRequest, name: str, default: str = "") -> str:
    """A query argument as text; 400 unless given once, in UTF-8, without
    control characters (a repeated one could be read one way here and another
    by a proxy or cache in front)."""
    values = request.args.get(name.encode())
    if not values:
        return default
    if len(values) > 1:
        raise BadRequest(f"{name} is given more than once")
    try:
        value: str = values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(f"{name} is not valid UTF-8") from None
    if not value.isprintable():
        raise BadRequest(f"{name} contains control characters")
    return value
