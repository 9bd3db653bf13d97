"""
``GET``/``POST /payments/osmp``: who may ask, and the answer on the wire.

Access is decided here, before the protocol sees anything: the source
address against ``[osmp] allow`` (403), then HTTP Basic credentials (401).
What passes is handed to L{smartyd.osmp.service.OSMPService}, shielded from
the terminal's disconnect, and its answer is sent as XML.
"""

from __future__ import annotations

from klein import Klein
from twisted.logger import Logger
from twisted.web.server import Request

from smartyd.config import OSMP as OSMPConfig
from smartyd.osmp.protocol import CONTENT_TYPE, PROVIDER
from smartyd.osmp.service import OSMPService
from smartyd.http.addresses import client_ip, in_networks
from smartyd.http.auth import BasicAuth
from smartyd.http.handlers import endpoint, shielded

# The namespace of every OSMP event since before the package was split:
# admins filter the JSON log on ``"ns": "smartyd.osmp"``.
log = Logger(namespace="smartyd.osmp")


REFUSALS = ("address", "credentials")  # the reasons of smartyd_osmp_refused_requests


class OSMP:
    """
    The OSMP endpoint: ``GET``/``POST /payments/osmp``.

    @param cfg: the ``[osmp]`` section (``allow``, ``username``, ``password``).
    @param service: answers the requests that pass the access checks.
    @param trusted_proxies: ``[http] trusted_proxies``, whose X-Forwarded-For
        names the client.
    """

    app = Klein()

    def __init__(self, cfg: OSMPConfig, service: OSMPService, metrics,
                 trusted_proxies: tuple = ()):
        self.cfg = cfg
        self.service = service
        self.metrics = metrics
        self.trusted_proxies = trusted_proxies
        self.auth = BasicAuth(cfg.username, cfg.password)
        # Both series exist from the start (at 0), so a dashboard and an
        # increase() see the first refusal rather than a series appearing.
        for reason in REFUSALS:
            metrics.osmp_refused.labels(reason)

    def resource(self):
        return self.app.resource()

    @app.route("/payments/osmp", methods=["GET", "POST"])
    @endpoint("osmp")
    async def answer(self, request: Request) -> bytes:
        ip = client_ip(request, self.trusted_proxies)
        if not in_networks(ip, self.cfg.allow):
            return self._refuse_access(request, 403, "address", ip)
        if not self.auth.authorized(request):
            request.setHeader(b"www-authenticate", b'Basic realm="osmp", charset="UTF-8"')
            return self._refuse_access(request, 401, "credentials", ip)
        # From here on the work must finish (or roll back) as a whole even if
        # the terminal hangs up: only the answer is lost then.  (On a hang-up
        # Klein cancels this handler: the CancelledError ends it quietly.)
        # The service never raises: every failure is already a result code.
        label, reply = await shielded(self.service.handle(request.args),
                                      "OSMP request failed after the client left")
        self.metrics.osmp_answers.labels(label, str(reply.result)).inc()
        request.setHeader(b"content-type", CONTENT_TYPE)
        request.setHeader(b"cache-control", b"no-store")
        return reply.to_xml()

    def _refuse_access(self, request: Request, code: int, reason: str, ip: str) -> bytes:
        log.info("OSMP request from {client} refused ({code}): {reason}",
                 provider=PROVIDER, client=ip, code=code, reason=reason)
        self.metrics.osmp_refused.labels(reason).inc()
        request.setResponseCode(code)
        return b""
