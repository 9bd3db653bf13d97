"""
``/tvmiddleware/api/<method>/`` on the wire: GET (or a POSTed form), the
parameters in the query, the trailing slash optional.

Answers are ``200`` with the spec's fields and an integer ``error`` (0 = ok),
in JSON, or in XML for the ``device`` types of ``[tvmw] xml_devices``: the
same fields under an ``<rss>`` root, a list as repeated ``<item>`` elements
(``<rss><channels><item><id>5</id>...</item></channels><error>0</error></rss>``),
text escaped by lxml.

Choices where the spec is silent, kept:

- An unknown, malformed, ended or expired ``authkey`` (from the query, else
  the ``authkey`` cookie) answers **error -1** ("authorization required")
  with ``status: 1`` on every method that needs a session.  The spec gives
  no code for it and each method's positive codes mean something of its
  own (1 is "sort not found" for ChannelList, "tariff not available" for
  CustomerTariffSubscribe ...), so a negative code no method uses is the
  one an app can always read as "log in again"; ``status: 1`` is
  AccountStatus's own "session not found, not authorized".
- Parameter errors answer the method's code for them (1 unless the spec
  names another) with ``error_messages: {"<name>": "<why>"}``; a value over
  1,024 characters, a name over 64, more than 64 parameters, a body that is
  not a form, or bytes that are not UTF-8 are refused that way before the
  method runs: nothing is written by a refused call.
- A method of the spec smartyd does not serve answers ``404`` JSON
  ``{"error": -2, "error_message": "... not served ..."}`` (also for XML
  devices: an app developer reads it); a path that is no method of the
  spec, ``404 {"error": -2, "error_message": "no such method"}``.
- A database outage answers ``503 {"error": -3}``; never a 500 for input.
- ``redirect`` (ChannelUrl, VideoUrl; default 1) answers ``302`` to the
  stream, so ``.../channel/url/?cid=5&authkey=...`` is an M3U entry; an
  error then answers ``403`` with the JSON body (a player must not play it);
  a success without an address (VideoUrl's empty ``uri``) the usual body.
- ``Login`` sets the ``authkey`` cookie (HttpOnly, path /tvmiddleware/api;
  and ``device_uid`` when it made one up) and ``Logout`` clears it.

Neither the query nor any parameter reaches a log line (the access log
drops the query string): authkeys and passwords travel in it.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Any, Mapping

from lxml import etree
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from smartyd.db import DatabaseUnavailable
from smartyd.http.addresses import client_ip, public_origin
from smartyd.http.handlers import endpoint, shielded
from smartyd.tvmw.call import Call, Session
from smartyd.tvmw.errors import TvmwError
from smartyd.tvmw.registry import SPEC_METHODS, Registry
from smartyd.util.text import one_line

log = Logger()

PREFIX = "/tvmiddleware/api"
_PREFIX = PREFIX.encode()
AUTH_REQUIRED = -1
NOT_SERVED = -2
UNAVAILABLE = -3
MAX_PARAMS = 64
MAX_NAME = 64
MAX_VALUE = 1024
COOKIE = b"authkey"
_FORM = (b"", b"application/x-www-form-urlencoded", b"multipart/form-data")


def read_params(request: Request) -> dict[str, str]:
    """
    The query (and a POSTed form) as text, one value per name (the last);
    raises L{TvmwError} 1 with ``error_messages`` when refused.
    """
    content_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    if request.method == b"POST" and content_type not in _FORM:
        raise TvmwError(1, "parameters are a query string or a form",
                        error_messages={"body": "must be a form, not " + content_type.decode(
                            "latin-1")[:64]})
    args = request.args or {}
    if len(args) > MAX_PARAMS:
        raise TvmwError(1, "too many parameters", error_messages={"query": "too many parameters"})
    params: dict[str, str] = {}
    for raw_name, values in args.items():
        try:
            name = raw_name.decode("utf-8")
            value = values[-1].decode("utf-8") if values else ""
        except UnicodeDecodeError:
            raise TvmwError(1, "parameters must be UTF-8",
                            error_messages={"query": "parameters must be UTF-8"})
        if len(name) > MAX_NAME or not name.isprintable():
            raise TvmwError(1, "bad parameter name", error_messages={"query": "bad parameter name"})
        if len(value) > MAX_VALUE:
            raise TvmwError(1, f"bad parameter {name}: too long",
                            error_messages={name: f"at most {MAX_VALUE} characters"})
        if "\x00" in value:
            raise TvmwError(1, f"bad parameter {name}: NUL",
                            error_messages={name: "must not contain NUL"})
        params[name] = value
    return params


# -- answers --------------------------------------------------------------------------------
def _xml_text(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if value is None:
        return ""
    text = str(value)
    # Characters XML 1.0 cannot carry are dropped (the rest lxml escapes).
    return "".join(c for c in text if c in "\t\n\r" or (" " <= c and c not in "\ufffe\uffff"
                                                            and not "\ud800" <= c <= "\udfff"))


_XML_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")


def _xml_fill(element, value: Any) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            key = str(key)
            if _XML_NAME.match(key) and not key.lower().startswith("xml"):
                child = etree.SubElement(element, key)
            else:  # not an element name (e.g. a parameter name a device sent)
                child = etree.SubElement(element, "item", name=_xml_text(key))
            _xml_fill(child, item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _xml_fill(etree.SubElement(element, "item"), item)
    else:
        element.text = _xml_text(value)


def to_xml(answer: Mapping[str, Any]) -> bytes:
    root = etree.Element("rss")
    _xml_fill(root, answer)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def _json_default(value: Any) -> Any:
    return str(value)  # Decimal money: exact, as text


class TvmwWeb:
    """
    The TV Middleware API's resource.

    Not a Klein app, unlike the other surfaces: every path under the prefix
    is one route (the method name is looked up in the L{Registry}, which is
    the router), and Klein's per-request URL map match and adapters cost
    about a third of a zap's CPU (bench/tvmw.py).  The one error mapping of
    L{endpoint} and its request counting are kept.
    """

    def __init__(self, registry: Registry, *, store, db, cfg, reactor, metrics, deps: Mapping,
                 trusted_proxies: tuple = ()):
        self.registry = registry
        self.store = store
        self.db = db
        self.cfg = cfg
        self.reactor = reactor
        self.metrics = metrics
        self.deps = deps
        self.trusted_proxies = trusted_proxies
        self.xml_devices = frozenset(cfg.tvmw.xml_devices)
        self._counters: dict = {}  # (method, error) -> its counter (a zap resolves no labels)

    def resource(self) -> Resource:
        return _TvmwResource(self)

    @endpoint("tvmw")
    async def answer(self, request: Request) -> bytes:
        if request.method not in (b"GET", b"HEAD", b"POST"):
            return self._json(request, 405, {"error": NOT_SERVED,
                                             "error_message": "GET (or a POSTed form) only"})
        try:
            method = request.path[len(_PREFIX):].decode("utf-8").strip("/")
        except UnicodeDecodeError:
            method = "\x00"
        return await shielded(self._answer(request, method),
                              "tvmw call failed after the client left")

    async def _answer(self, request: Request, method: str) -> bytes:
        fn = self.registry.methods.get(method)
        if fn is None:
            why = (f"method {method} is not served by this server" if method in SPEC_METHODS
                   else "no such method")
            self._count(method if method in SPEC_METHODS else "unknown", NOT_SERVED)
            return self._json(request, 404, {"error": NOT_SERVED, "error_message": why})
        redirect_field = self.registry.redirects.get(method)
        xml = False
        redirect = False
        try:
            params = read_params(request)
            xml = params.get("device", "") in self.xml_devices
            if redirect_field is not None:
                redirect = params.get("redirect", "1") != "0"
            call = await self._call(request, method, params)
            answer = await fn(call)
            answer = dict(answer)
            answer.setdefault("error", 0)
        except TvmwError as e:
            answer = {"error": e.code, "error_message": e.message, **e.extra}
        except DatabaseUnavailable as e:
            log.warn("tvmw {method}: database unavailable ({error})", method=method,
                     error=one_line(e))
            self._count(method, UNAVAILABLE)
            return self._json(request, 503, {"error": UNAVAILABLE,
                                             "error_message": "temporarily unavailable, retry"})
        self._count(method, answer["error"])
        for name, value in answer.pop("_cookies", {}).items():
            request.addCookie(name.encode("ascii"), value.encode("ascii"), path=_PREFIX,
                              httpOnly=True, sameSite="lax",
                              **({} if value else {"max_age": b"0"}))
        if redirect:
            if answer["error"] == 0 and answer.get(redirect_field):
                request.setResponseCode(302)
                request.setHeader(b"location", str(answer[redirect_field]).encode("utf-8"))
                request.setHeader(b"cache-control", b"no-store")
                return b""
            if answer["error"] != 0:
                return self._json(request, 403, answer)
            # Granted, but no address to send a player to (VideoUrl for a device of no
            # MEGOGO class): the body, as with redirect=0 -- never a 403 saying error 0.
        if xml:
            request.setHeader(b"content-type", b"application/xml; charset=utf-8")
            request.setHeader(b"cache-control", b"no-store")
            return to_xml(answer)
        return self._json(request, 200, answer)

    async def _call(self, request: Request, method: str, params: dict[str, str]) -> Call:
        now = self.reactor.seconds()
        session = None
        ip = client_ip(request, self.trusted_proxies)
        extra: dict[str, Any] = {}
        if method not in self.registry.no_session:
            authkey = params.get("authkey") or _cookie(request, COOKIE)
            live = await self.store.validate(authkey)
            if live is None:
                raise TvmwError(AUTH_REQUIRED, "authorization required", status=1)
            session = Session(account_id=live.account_id, customer_id=live.customer_id,
                              abonement=live.abonement, device_uid=live.device_uid,
                              device=live.device, ip=live.ip)
            # "origin": how the device addressed us, for links it is to follow itself
            # (ChannelList's ``url``: this API's own ChannelUrl entry).
            extra = {"authkey": authkey, "live": live,
                     "origin": public_origin(request, self.trusted_proxies)}
        else:
            uid = _cookie(request, b"device_uid")
            if uid is not None and len(uid) <= 128 and uid.isprintable():
                extra = {"cookie_device_uid": uid}
            # Whether the client has gone (a login delayed by the rate limit is then not checked).
            left: list = []
            request.notifyFinish().addErrback(lambda _: left.append(True))
            extra["client_left"] = lambda: bool(left)
        deps = dict(self.deps)
        deps.update(extra)
        return Call(params=params, session=session, ip=ip,
                    now=datetime.fromtimestamp(now, timezone.utc), reactor=self.reactor,
                    db=self.db, cfg=self.cfg, metrics=self.metrics, deps=deps)

    def _count(self, method: str, error: int) -> None:
        if self.metrics is not None:
            counter = self._counters.get((method, error))
            if counter is None:
                counter = self._counters[method, error] = self.metrics.tvmw_answers.labels(
                    method, str(error))
            counter.inc()

    @staticmethod
    def _json(request: Request, status: int, payload: Mapping) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(payload, ensure_ascii=False, default=_json_default).encode("utf-8")


class _TvmwResource(Resource):
    """Every path under the prefix, answered by L{TvmwWeb.answer}."""

    isLeaf = True

    def __init__(self, web: TvmwWeb):
        super().__init__()
        self.web = web

    def render(self, request: Request):
        d = Deferred.fromCoroutine(self.web.answer(request))
        gone: list = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def write(body: bytes) -> None:
            if not gone:
                request.write(body)
                request.finish()

        d.addCallback(write).addErrback(
            lambda f: log.failure("tvmw: answer could not be written", f))
        return NOT_DONE_YET


def _cookie(request: Request, name: bytes) -> str | None:
    raw = request.getCookie(name)
    if not raw:
        return None
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        return None
