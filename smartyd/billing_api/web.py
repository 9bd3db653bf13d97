"""
``/billing/api/<method>`` (and with the trailing slash), GET or POST: the
Billing API on the wire.

Every answer is ``200 application/json`` with ``error`` and
``error_message``, refusals included: the billings' clients raise on any
other status before they read the body (../shared/BILLING_API.md §1).  The
parameters are the query and the form body merged as Twisted merges them
(a key in both counts once, the body's), which is what the clients sign;
a POST body without a form content type (AXbills' fetcher) is read as a
form.  The work is shielded from the client's disconnect: a transaction
commits or rolls back as a whole.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qsl

from klein import Klein
from twisted.web.server import Request

from smartyd.billing_api.service import UNKNOWN, BillingAPIService
from smartyd.http.addresses import client_ip
from smartyd.http.handlers import endpoint, shielded

PREFIX = "/billing/api"
_FORM = (b"application/x-www-form-urlencoded", b"multipart/form-data")


def request_pairs(request: Request) -> list[tuple[str, str]] | None:
    """The received parameters as text pairs (None: not UTF-8)."""
    args = dict(request.args or {})
    content_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    if request.method == b"POST" and content_type not in _FORM:
        body = request.content.read()
        if body:
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:
                return None
            form: dict[bytes, list[bytes]] = {}
            for k, v in parse_qsl(text, keep_blank_values=True):
                form.setdefault(k.encode(), []).append(v.encode())
            args.update(form)
    pairs = []
    try:
        for key, values in args.items():
            name = key.decode("utf-8")
            pairs.extend((name, v.decode("utf-8")) for v in values)
    except UnicodeDecodeError:
        return None
    return pairs


class BillingAPIWeb:
    """The Klein resource of the Billing API."""

    app = Klein()

    def __init__(self, service: BillingAPIService, metrics, trusted_proxies: tuple = ()):
        self.service = service
        self.metrics = metrics
        self.trusted_proxies = trusted_proxies

    def resource(self):
        return self.app.resource()

    @app.route(PREFIX + "/<path:method>", methods=["GET", "POST"], strict_slashes=False)
    @endpoint("billing_api")
    async def answer(self, request: Request, method: str) -> bytes:
        pairs = request_pairs(request)
        if pairs is None:
            reply = {"error": UNKNOWN, "error_message": "parameters must be UTF-8"}
        else:
            reply = await shielded(
                self.service.handle(method, pairs, client_ip(request, self.trusted_proxies)),
                "billing api call failed after the client left")
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(reply, ensure_ascii=False).encode("utf-8")

    @app.route(PREFIX, methods=["GET", "POST"], strict_slashes=False)
    @endpoint("billing_api")
    def no_method(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        return json.dumps({"error": UNKNOWN, "error_message": "unknown method"}).encode()
