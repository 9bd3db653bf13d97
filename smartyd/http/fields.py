"""
Request fields: a JSON object body (numbers kept exact, nesting guarded), or
form / query parameters -- one parser for every endpoint that takes either.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from twisted.web.server import Request

from smartyd.util.json_guard import MAX_JSON_DEPTH, BadJSON, JSONTooLarge, parse_json

__all__ = ["BadJSON", "BadRequest", "JSONTooLarge", "read_json", "request_fields"]


class BadRequest(Exception):
    """The request is malformed (a 400); the message says how."""


def read_json(request: Request, max_depth: int = MAX_JSON_DEPTH,
              max_size: int | None = None, empty: Any = None, **loads: Any) -> Any:
    """
    The request body parsed by L{parse_json} (``empty`` when there is none),
    or L{BadJSON}: handlers answer that with a 400.  ``max_size`` caps the
    body below the site-wide cap of L{CappedRequest} (L{JSONTooLarge}).
    """
    data = request.content.read() if max_size is None else request.content.read(max_size + 1)
    if max_size is not None and len(data) > max_size:
        raise JSONTooLarge(f"the body is larger than {max_size} bytes")
    if not data:
        return empty
    return parse_json(data, max_depth, **loads)


def request_fields(request: Request) -> dict[str, Any]:
    """
    A JSON object body (``Content-Type: application/json``; numbers as
    Decimal), or the form / query fields as text.  Raises L{BadRequest}.
    """
    content_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    if content_type == b"application/json":
        try:
            body = read_json(request, parse_float=Decimal)
        except BadJSON as e:
            raise BadRequest(str(e))
        if not isinstance(body, dict):
            raise BadRequest("the JSON body must be an object")
        return body
    fields: dict[str, Any] = {}
    for name, values in (request.args or {}).items():
        try:
            fields[name.decode("utf-8")] = values[0].decode("utf-8") if values else ""
        except UnicodeDecodeError:
            raise BadRequest("form fields must be UTF-8")
    return fields
