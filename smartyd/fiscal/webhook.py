"""
``POST /webhooks/dreamkas/<secret>``: Dreamkas' webhook deliveries.

Dreamkas signs nothing: the webhook is registered with a URL, so the URL
carries our secret (``[dreamkas] webhook_secret``), compared in constant
time.  An empty secret disables the webhook; a wrong one gets the same 404
as an unknown path.  The body is capped, parsed defensively, and answered
at once (bodies nested too deep are refused before parsing, see
L{smartyd.http.fields.read_json}):

  ``{"action": "UPDATE", "type": "OPERATION", "data": {<operation>}}``
      -> the matching job is brought up to date (L{jobs.apply_operation}:
      the first of webhook and polling to bring SUCCESS/ERROR wins, the
      other is a no-op); 200 also when no job matches (not ours).
  ``type`` PRODUCT or DEVICE -> the cached positions/devices are refetched
      on the next run.  Any other type -> 200, ignored.
"""

from __future__ import annotations

import hmac
from typing import Any

from klein import Klein
from twisted.logger import Logger

from smartyd.db import Database, DatabaseUnavailable
from smartyd.fiscal import dreamkas_cache, jobs
from smartyd.fiscal.api import Operation
from smartyd.http.addresses import peer_ip
from smartyd.http.fields import BadJSON, JSONTooLarge, read_json
from smartyd.http.handlers import endpoint, json_body, shielded

log = Logger()

MAX_BODY = 64 * 1024
_CACHE_KINDS = {"PRODUCT": "products", "DEVICE": "devices"}


class DreamkasWebhook:
    app = Klein()

    def __init__(self, db: Database, secret: str, clock: Any, poll_interval: float = 30.0,
                 metrics: Any = None):
        self.db = db
        self._secret = secret.encode("utf-8")
        self.clock = clock
        self.poll_interval = poll_interval
        self.metrics = metrics

    def resource(self):
        return self.app.resource()

    def _authentic(self, secret: str) -> bool:
        if not self._secret:
            return False
        return hmac.compare_digest(secret.encode("utf-8"), self._secret)

    @app.route("/webhooks/dreamkas", methods=["GET", "POST", "PUT", "HEAD"])
    @endpoint("dreamkas_webhook")
    def bare(self, request):
        return json_body(request, 404, {"error": "not found"})

    @app.route("/webhooks/dreamkas/<secret>", methods=["POST"])
    @endpoint("dreamkas_webhook")
    def deliver(self, request, secret: str):
        if not self._authentic(secret):
            log.warn("dreamkas webhook with a wrong secret from {peer}", peer=peer_ip(request))
            return json_body(request, 404, {"error": "not found"})
        try:
            payload = read_json(request, max_size=MAX_BODY)
        except JSONTooLarge:
            return json_body(request, 413, {"error": "body too large"})
        except BadJSON as e:
            log.warn("dreamkas webhook: not a notification: {error}", error=str(e))
            return json_body(request, 400, {"error": "not a Dreamkas notification"})
        if not isinstance(payload, dict) or not isinstance(payload.get("type"), str):
            log.warn("dreamkas webhook: not a notification (a JSON {kind})",
                     kind=type(payload).__name__)
            return json_body(request, 400, {"error": "not a Dreamkas notification"})
        kind = payload["type"].upper()
        if kind == "OPERATION":
            try:
                op = Operation.from_json(payload.get("data"))
            except ValueError as e:
                log.warn("dreamkas webhook: bad operation: {error}", error=str(e))
                return json_body(request, 400, {"error": "bad operation"})
            return shielded(self._operation(request, op), "dreamkas webhook failed")
        if kind in _CACHE_KINDS:
            return shielded(self._invalidate(request, _CACHE_KINDS[kind]),
                            "dreamkas webhook failed")
        return json_body(request, 200, {"ok": True, "ignored": kind[:32]})

    async def _operation(self, request, op: Operation) -> bytes:
        try:
            applied = await self.db.run(
                jobs.apply_operation, op, self.clock.seconds() + self.poll_interval
            )
        except DatabaseUnavailable as e:
            log.warn("dreamkas webhook for operation {operation} not applied: {error}",
                     operation=op.id, error=str(e))
            return json_body(request, 503, {"error": "try again"})
        if applied is None:
            log.debug("dreamkas webhook: operation {operation} {status} changes nothing",
                      operation=op.id, status=op.status)
        else:
            payment_id, state = applied
            if self.metrics is not None and state in ("done", "failed"):
                self.metrics.receipts.labels(state).inc()
            log.info("receipt for payment {payment_id}: {state} by webhook (operation"
                     " {operation} {status})", payment_id=payment_id, state=state,
                     operation=op.id, status=op.status)
            if state == "failed":
                log.error("receipt for payment {payment_id} failed: {reason}",
                          payment_id=payment_id, reason=op.error)
        return json_body(request, 200, {"ok": True})

    async def _invalidate(self, request, kind: str) -> bytes:
        try:
            await self.db.run(dreamkas_cache.invalidate, kind)
        except DatabaseUnavailable:
            return json_body(request, 503, {"error": "try again"})
        return json_body(request, 200, {"ok": True})
