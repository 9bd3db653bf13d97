"""``GET /health`` (200 / 503 by a live database probe) and ``GET /metrics``."""

from __future__ import annotations

from klein import Klein
from twisted.logger import Logger

from smartyd.http.handlers import endpoint, json_body
from smartyd.metrics import CONTENT_TYPE
from smartyd.util.text import one_line

log = Logger()


class Health:
    """
    ``GET /health`` (200 / 503 by a live DB probe) and ``GET /metrics``.

    ``sources``: the features' optional ``health`` callables (L{Feature}); each
    one's dict is merged into the body while the database answers.  They only
    inform: a source that fails is logged and left out, never a 503.
    """

    app = Klein()

    def __init__(self, db, metrics, reactor, started: float, ready=None, sources=()):
        self.db = db
        self.ready = ready or (lambda: True)
        self.metrics = metrics
        self.reactor = reactor
        self.started = started
        self.sources = tuple(sources)

    def resource(self):
        return self.app.resource()

    @app.route("/health", methods=["GET", "HEAD"])
    @endpoint("health")
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
        if db_ok:
            for source in self.sources:
                try:
                    extra = await source()
                except Exception as e:
                    log.warn("health source failed: {error}", error=one_line(e))
                    continue
                for key, value in (extra or {}).items():
                    payload.setdefault(key, value)
        return json_body(request, 200 if ok else 503, payload)

    @app.route("/metrics", methods=["GET"])
    async def metrics_page(self, request):
        # Each scrape probes the database too, so smartyd_db_up is fresh even
        # where nothing polls /health (the "database unavailable" alert).
        db_ok = self.db is not None and await self.db.ping()
        self.metrics.db_up.set(1 if db_ok else 0)
        request.setHeader(b"content-type", CONTENT_TYPE.encode())
        return self.metrics.render()
