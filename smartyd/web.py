"""
HTTP plumbing shared by every endpoint: the root resource that mounts one
Klein app per concern, a Site that caps request bodies, the client address
(``X-Forwarded-For`` trusted only from configured proxies), shielding of
money-moving work from client disconnects, guarded JSON bodies
(L{read_json}), and ``/health`` + ``/metrics``.
"""

from __future__ import annotations

import ipaddress
import json
import re
from itertools import accumulate
from typing import Any, Iterable

from klein import Klein
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from smartyd.metrics import CONTENT_TYPE

log = Logger()


# -- the root resource -----------------------------------------------------------------
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


class QuietSite(Site):
    """
    A Site whose access log is a debug-level structured event without the
    query string (queries carry tokens, passwords and payment data).
    """

    displayTracebacks = False
    noisy = False
    access_log = Logger(namespace="smartyd.access")

    def log(self, request):
        self.access_log.debug(
            "{method} {path} {code}",
            method=request.method.decode("ascii", "replace"),
            path=_SECRET_PATH.sub(rb"\1***", request.path).decode("utf-8", "replace"),
            code=request.code,
            peer=peer_ip(request),
        )


def make_site(root: Resource, max_body: int, reactor=None) -> Site:
    request_class = type("Request", (CappedRequest,), {"max_body": max_body})
    return QuietSite(root, requestFactory=request_class, reactor=reactor)


# -- addresses ---------------------------------------------------------------------------
def peer_ip(request: Request) -> str:
    peer = request.getClientAddress()
    return getattr(peer, "host", None) or "0.0.0.0"


def client_ip(request: Request, trusted_proxies: tuple = ()) -> str:
    """
    The client's address: the peer, or -- when the peer is a trusted proxy --
    the nearest untrusted address in ``X-Forwarded-For``.
    """
    ip = peer_ip(request)
    if not trusted_proxies or not in_networks(ip, trusted_proxies):
        return ip
    header = request.getHeader(b"x-forwarded-for")
    if not header:
        return ip
    if isinstance(header, bytes):
        try:
            header = header.decode("ascii")
        except UnicodeDecodeError:
            return ip
    hops = [h.strip() for h in header.split(",") if h.strip()]
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return ip  # garbage in the header: do not trust any of it
        if not in_networks(hop, trusted_proxies):
            return hop
    return hops[0] if hops else ip


def in_networks(ip: str, networks: tuple) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr in net for net in networks if net.version == addr.version)


# -- cancellation --------------------------------------------------------------------------
def shielded(coro, on_error_log: str = "shielded work failed") -> Deferred:
    """
    Run ``coro`` to completion even if the caller's Deferred is cancelled.

    Klein cancels a handler's Deferred when the client disconnects; work that
    moves money must then still finish (or roll back) as a whole.  The
    returned Deferred may be cancelled; the inner work goes on and its outcome
    is logged if nobody is left to receive it.
    """
    inner = ensureDeferred(coro)
    outer: Deferred = Deferred(lambda d: None)

    def deliver(result):
        if not outer.called:
            outer.callback(result)
        elif isinstance(result, Exception) or hasattr(result, "raiseException"):
            log.failure(on_error_log, result)
        return None

    inner.addBoth(deliver)
    return outer


def json_body(request: Request, status: int, payload: Any) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(payload).encode()


# -- JSON bodies ---------------------------------------------------------------------------
MAX_JSON_DEPTH = 32

# A JSON string (escapes included), or an unterminated one up to the end: always
# a match, never a backtrack, so cutting strings out is linear in the body.
_JSON_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+(?:"|\Z)', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_NESTING = tuple(1 if b in b"[{" else -1 if b in b"]}" else 0 for b in range(256))


class BadJSON(ValueError):
    """A body we refuse as JSON: nested too deep, not UTF-8 or not JSON (a 400)."""


class JSONTooLarge(BadJSON):
    """A body over the endpoint's own size cap (a 413)."""


def parse_json(data: bytes, max_depth: int = MAX_JSON_DEPTH, **loads: Any) -> Any:
    """
    ``data`` parsed as JSON, or L{BadJSON}.

    ``json.loads`` recurses once per nesting level: a body of a few thousand
    ``[`` raises RecursionError, which no ``except ValueError`` catches (a 500
    and a traceback per request).  So the depth is measured first, without
    recursion and at C speed: strings are cut out (their brackets are text),
    everything but brackets is dropped, and the running sum of +1 per opening
    and -1 per closing bracket is the depth.  Unbalanced input is left to
    ``json.loads`` to refuse.
    """
    structure = _JSON_STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    if structure and max(accumulate(map(_NESTING.__getitem__, structure))) > max_depth:
        raise BadJSON(f"JSON nested deeper than {max_depth} levels")
    try:
        return json.loads(data.decode("utf-8"), **loads)
    except UnicodeDecodeError:
        raise BadJSON("the body is not UTF-8")
    except RecursionError:  # not reached after the depth check; never a 500 though
        raise BadJSON(f"JSON nested deeper than {max_depth} levels")
    except ValueError:
        raise BadJSON("the body is not JSON")


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


# -- /health and /metrics ----------------------------------------------------------------
class Health:
    """``GET /health`` (200 / 503 by a live DB probe) and ``GET /metrics``."""

    app = Klein()

    def __init__(self, db, metrics, reactor, started: float, extra=None, ready=None):
        self.db = db
        self.ready = ready or (lambda: True)
        self.metrics = metrics
        self.reactor = reactor
        self.started = started
        self.extra = extra or (lambda: {})

    def resource(self):
        return self.app.resource()

    @app.route("/health", methods=["GET", "HEAD"])
    async def health(self, request):
        db_ok = self.db is not None and await self.db.ping()
        self.metrics.db_up.set(1 if db_ok else 0)
        ready = self.ready()
        ok = db_ok and ready
        payload = {
            "status": "ok" if ok else ("starting" if db_ok else "unavailable"),
            "db": "ok" if db_ok else "down",
            "uptime": round(self.reactor.seconds() - self.started, 3),
        }
        payload.update(self.extra())
        self.metrics.http_requests.labels("health", "200" if ok else "503").inc()
        return json_body(request, 200 if ok else 503, payload)

    @app.route("/metrics", methods=["GET"])
    def metrics_page(self, request):
        request.setHeader(b"content-type", CONTENT_TYPE.encode())
        return self.metrics.render()
