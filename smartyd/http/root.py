"""
The HTTP root: one resource that mounts one Klein app per concern by path
prefix, a Site whose requests cap their bodies (413), and a quiet,
structured access log without query strings or secret path segments.
"""

from __future__ import annotations

import re
from typing import Iterable

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from smartyd.http.addresses import peer_ip


class Root(Resource):
    """
    Routes a request by path prefix to the resource of the concern that owns
    it, without consuming path segments: each Klein app routes absolute paths.
    """

    isLeaf = True

    def __init__(self, mounts: Iterable[tuple[str, Resource]] = ()):
        super().__init__()
        self._mounts: list[tuple[bytes, Resource]] = []
        for prefix, resource in mounts:
            self.mount(prefix, resource)

    def mount(self, prefix: str, resource: Resource) -> None:
        self._mounts.append((prefix.rstrip("/").encode(), resource))
        self._mounts.sort(key=lambda m: -len(m[0]))

    def render(self, request: Request):
        if getattr(request, "body_too_large", False):
            request.setResponseCode(413)
            request.setHeader(b"content-type", b"application/json")
            return b'{"error": "request body too large"}'
        path = request.path
        for prefix, resource in self._mounts:
            if path == prefix or path.startswith(prefix + b"/"):
                return resource.render(request)
        request.setResponseCode(404)
        request.setHeader(b"content-type", b"application/json")
        return b'{"error": "not found"}'


class CappedRequest(Request):
    """A request whose body is dropped past ``max_body`` bytes (then answered 413)."""

    max_body = 1024 * 1024
    body_too_large = False
    _body_seen = 0

    def gotLength(self, length):
        if length is not None and length > self.max_body:
            self.body_too_large = True
            length = 0
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        self._body_seen += len(data)
        if self.body_too_large or self._body_seen > self.max_body:
            self.body_too_large = True
            return
        super().handleContentChunk(data)


# Path segments that are secrets (webhook URLs authenticate by them).
_SECRET_PATH = re.compile(rb"^(/webhooks/[a-z]+/)[^/?]+")

# Module level on purpose: a Logger kept as a class attribute is a descriptor
# that renames itself after the class (``smartyd.http.root.QuietSite``).
access_log = Logger(namespace="smartyd.access")


class QuietSite(Site):
    """
    A Site whose access log is a debug-level structured event without the
    query string (queries carry tokens, passwords and payment data).
    """

    displayTracebacks = False
    noisy = False

    def log(self, request):
        access_log.debug(
            "{method} {path} {code}",
            method=request.method.decode("ascii", "replace"),
            path=_SECRET_PATH.sub(rb"\1***", request.path).decode("utf-8", "replace"),
            code=request.code,
            peer=peer_ip(request),
        )


def make_site(root: Resource, max_body: int, reactor=None) -> Site:
    request_class = type("Request", (CappedRequest,), {"max_body": max_body})
    return QuietSite(root, requestFactory=request_class, reactor=reactor)


