"""
A fake Dreamkas Kabinet API (Klein, in-process) speaking the real JSON wire format.

  POST /api/receipts         -> 202 Operation {id, externalId, createdAt, status: PENDING, data}
                                (400 for a receipt Dreamkas would refuse, 401 without the
                                bearer token, 409 for an externalId it has seen)
  GET  /api/operations/<id>  -> the Operation; it reaches SUCCESS (data.receiptId) or ERROR
                                (data.error{code, message}) after ``polls_until_done`` polls
  GET  /api/operations       -> operations, oldest first, paged as the Kabinet lists page
                                (``limit``, default 10 and capped at 1000, and ``offset``;
                                a bare array); filtered by ?externalId= unless
                                ``filters_external_id`` is off (the public docs do not
                                promise that filter); with ``honours_paging`` off,
                                ``limit`` and ``offset`` are ignored: every page is the
                                whole list (Ubilling's notes: the filters are ignored)
  GET  /api/devices          -> devices       } paged like /api/operations (and
  GET  /api/v2/products      -> positions     } ``honours_paging`` alike)

Knobs for the tests: ``post_modes`` (a queue: "500", "hang" -- the POST never
reaches Dreamkas and never answers --, "accept-hang" -- Dreamkas creates the
operation, the answer never comes), ``polls_until_done``, ``errors`` (per
externalId), ``hold_polls`` (answers to status polls wait for L{release}),
``filters_external_id``, ``honours_paging``; L{add_operation} lists an operation posted by someone else.

L{in_memory_client} is a StubTreq whose connections are pumped whenever a
response finishes, so handlers that answer later (Deferreds) need no manual
``flush()``; the test that waits for them is then the one that spins the reactor.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter

from klein import Klein
from treq.testing import StubTreq
from twisted.internet import defer, reactor

from fakes import in_memory_client  # noqa: F401  (re-exported for the tests)

TAX_MODES = {"DEFAULT", "SIMPLE", "SIMPLE_WO", "ENVD", "AGRICULT", "PATENT"}
RECEIPT_TYPES = {"SALE", "REFUND", "OUTFLOW", "OUTFLOW_REFUND"}
PAYMENT_TYPES = {"CASH", "CASHLESS", "PREPAID", "CREDIT", "CONSIDERATION"}


def _body(request, data: bytes) -> bytes:
    # Sized, not chunked, as the real API answers.  (PartnerHTTP reads chunked
    # answers as well: tests/test_partners.py.)
    request.setHeader(b"content-length", str(len(data)).encode())
    return data


def _json(request, code: int, payload) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    return _body(request, json.dumps(payload, ensure_ascii=False).encode("utf-8"))


class FakeDreamkas:
    app = Klein()

    def __init__(self, token: str = "fake-token"):
        self.token = token
        self.devices = [{"id": 109266, "name": "Касса 1", "groupId": 1, "sort": 0,
                         "timezoneOffset": 180}]
        self.products = [
            {"id": "5c3c6a8a-8c3f-4b4e-9b8e-3a1f0a6d2e11", "name": "Интернет",
             "type": "SERVICE", "departmentId": 1, "quantity": 1000, "isMarked": False,
             "prices": [{"deviceId": 109266, "value": 50000}], "barcodes": [],
             "tax": "NDS_20"},
        ]
        self.operations: dict[str, dict] = {}
        self.bodies: dict[str, dict] = {}  # operation id -> the receipt POSTed
        self.by_external: dict[str, str] = {}
        self.posts: Counter = Counter()  # POSTs per externalId, accepted or not
        self.gets: Counter = Counter()  # status polls per operation
        self.requests: list[tuple[str, str]] = []
        self.post_modes: list[str] = []
        self.polls_until_done = 0
        self.errors: dict[str, tuple[str, str]] = {}
        self.hold_polls = False
        self.filters_external_id = True
        self.honours_paging = True
        self.list_pages: list[tuple[int, int]] = []  # (limit, offset) of each list request
        self.list_reads: Counter = Counter()  # path -> lists read (their offset-0 pages)
        self.held: list[tuple[defer.Deferred, object]] = []
        self.hung: list[defer.Deferred] = []
        self._waiters: dict[str, list[defer.Deferred]] = {"post": [], "poll": []}
        self._ids = itertools.count(1)

    def client(self) -> StubTreq:
        return in_memory_client(self.app.resource())

    # -- what the tests look at -------------------------------------------------------------
    def receipts(self) -> list[dict]:
        """Receipts printed: the bodies of SUCCESS operations."""
        return [self.bodies[i] for i, op in self.operations.items() if op["status"] == "SUCCESS"]

    def receipts_per_external_id(self) -> Counter:
        return Counter(b["externalId"] for b in self.receipts())

    def operation_for(self, external_id: str) -> dict | None:
        op_id = self.by_external.get(external_id)
        return None if op_id is None else self.operations[op_id]

    def complete(self, op_id: str, receipt_id: bool = True) -> dict:
        """
        Let the operation finish now (as the cash device prints it); ``receipt_id``
        False: SUCCESS without ``data.receiptId`` yet (L{give_receipt_id} adds it).
        """
        op = self.operations[op_id]
        if op["status"] in ("SUCCESS", "ERROR"):
            return op
        error = self.errors.get(op["externalId"])
        op["completedAt"] = "2024-05-01T10:00:05.000Z"
        if error is None:
            op["status"] = "SUCCESS"
            op["data"] = {"receiptId": f"rcpt-{op_id}"} if receipt_id else {}
        else:
            op["status"] = "ERROR"
            op["data"] = {"error": {"code": error[0], "message": error[1]}}
        return op

    def give_receipt_id(self, op_id: str) -> dict:
        op = self.operations[op_id]
        op["data"] = {**op.get("data", {}), "receiptId": f"rcpt-{op_id}"}
        return op

    def add_operation(self, external_id: str, status: str = "SUCCESS") -> dict:
        """An operation of another receipt (another shop system, the Kabinet UI)."""
        op_id = f"{next(self._ids):024x}"
        op = {"id": op_id, "externalId": external_id, "createdAt": "2024-05-01T09:00:00.000Z",
              "status": status, "data": {"receiptId": f"rcpt-{op_id}"}}
        self.operations[op_id] = op
        self.bodies[op_id] = {"externalId": external_id}
        self.by_external[external_id] = op_id
        return op

    def webhook_body(self, op_id: str, action: str = "UPDATE") -> bytes:
        return json.dumps({"action": action, "type": "OPERATION",
                           "data": self.operations[op_id]}).encode("utf-8")

    def arrival(self, what: str) -> defer.Deferred:
        """Fires (on the next reactor turn) when the next "post" or "poll" arrives."""
        d = defer.Deferred()
        self._waiters[what].append(d)
        return d

    def _arrived(self, what: str, value) -> None:
        waiters, self._waiters[what] = self._waiters[what], []
        for d in waiters:
            reactor.callLater(0, d.callback, value)

    def release(self) -> None:
        held, self.held = self.held, []
        for d, payload in held:
            d.callback(payload)

    # -- the API ---------------------------------------------------------------------------------
    def _authorized(self, request) -> bool:
        return request.getHeader(b"authorization") == f"Bearer {self.token}".encode()

    @app.route("/api/receipts", methods=["POST"])
    def post_receipt(self, request):
        self.requests.append(("POST", "/api/receipts"))
        if not self._authorized(request):
            return _json(request, 401, {"message": "Unauthorized"})
        if not (request.getHeader(b"content-type") or b"").startswith(b"application/json"):
            return _json(request, 400, {"message": "Content-Type must be application/json"})
        try:
            body = json.loads(request.content.read())
        except ValueError:
            return _json(request, 400, {"message": "Bad JSON"})
        problem = self._validate(body)
        self._arrived("post", body.get("externalId") if isinstance(body, dict) else None)
        if problem:
            return _json(request, 400, {"message": "Validation failed", "data": {"errors": [
                {"message": problem}]}})
        external_id = body.get("externalId")
        self.posts[external_id] += 1
        mode = self.post_modes.pop(0) if self.post_modes else "ok"
        if mode == "500":
            return _json(request, 500, {"message": "Internal Server Error"})
        if mode == "hang":  # lost on the way: Dreamkas never saw it
            d = defer.Deferred(lambda _: None)
            self.hung.append(d)
            return d
        if external_id in self.by_external:
            return _json(request, 409, {"message": f"Operation with externalId {external_id}"
                                                   " already exists"})
        op_id = f"{next(self._ids):024x}"
        op = {"id": op_id, "externalId": external_id, "createdAt": "2024-05-01T10:00:00.000Z",
              "status": "PENDING", "data": None}
        self.operations[op_id] = op
        self.bodies[op_id] = body
        self.by_external[external_id] = op_id
        if mode == "accept-hang":  # created; the answer is lost
            d = defer.Deferred(lambda _: None)
            self.hung.append(d)
            return d
        return _json(request, 202, op)

    def _validate(self, body) -> str | None:
        if not isinstance(body, dict):
            return "body is not an object"
        if not isinstance(body.get("deviceId"), int):
            return "deviceId is required"
        if body.get("type") not in RECEIPT_TYPES:
            return "type is invalid"
        if body.get("taxMode") not in TAX_MODES:
            return "taxMode is invalid"
        positions, payments = body.get("positions"), body.get("payments")
        if not positions or not payments:
            return "positions and payments are required"
        total = 0
        for p in positions:
            if not p.get("name") or not isinstance(p.get("price"), int) \
                    or not isinstance(p.get("quantity"), int) or p["quantity"] <= 0:
                return "position is invalid"
            if p.get("priceSum") != p["price"] * p["quantity"] or not p.get("tax"):
                return "position sum or tax is invalid"
            total += p["priceSum"]
        if any(pay.get("type") not in PAYMENT_TYPES for pay in payments):
            return "payment type is invalid"
        if sum(pay.get("sum", 0) for pay in payments) != total:
            return "payments do not sum to the positions"
        if (body.get("total") or {}).get("priceSum") != total:
            return "total.priceSum is wrong"
        attributes = body.get("attributes") or {}
        if not attributes.get("phone") and not attributes.get("email"):
            return "attributes: phone or email is required"
        return None

    @app.route("/api/operations/<op_id>", methods=["GET"])
    def get_operation(self, request, op_id):
        self.requests.append(("GET", "/api/operations/{id}"))
        if not self._authorized(request):
            return _json(request, 401, {"message": "Unauthorized"})
        op = self.operations.get(op_id)
        if op is None:
            return _json(request, 404, {"message": "Not found"})
        self.gets[op_id] += 1
        if self.gets[op_id] > self.polls_until_done:
            self.complete(op_id)
        elif op["status"] == "PENDING" and self.gets[op_id] > 1:
            op["status"] = "IN_PROGRESS"
        self._arrived("poll", op_id)
        request.setHeader(b"content-type", b"application/json")
        answer = _body(request, json.dumps(op).encode("utf-8"))
        if self.hold_polls:
            d = defer.Deferred()
            self.held.append((d, answer))
            return d
        return answer

    def _page(self, request, items: list) -> bytes:
        """
        One page of a Kabinet list: ``limit`` (default 10, capped at 1000) from
        ``offset``; ``list_pages`` records the operation list's pages,
        ``list_reads`` counts each list's first pages (offset 0).
        """
        try:
            limit = min(int(request.args.get(b"limit", [b"10"])[0]), 1000)
            offset = int(request.args.get(b"offset", [b"0"])[0])
        except ValueError:
            return _json(request, 400, {"message": "limit and offset are numbers"})
        if limit < 1 or offset < 0:
            return _json(request, 400, {"message": "limit and offset are out of range"})
        path = request.path.decode()
        if path == "/api/operations":
            self.list_pages.append((limit, offset))
        if offset == 0:
            self.list_reads[path] += 1
        if not self.honours_paging:
            return _json(request, 200, items)
        return _json(request, 200, items[offset:offset + limit])

    @app.route("/api/operations", methods=["GET"])
    def list_operations(self, request):
        self.requests.append(("GET", "/api/operations"))
        if not self._authorized(request):
            return _json(request, 401, {"message": "Unauthorized"})
        wanted = request.args.get(b"externalId", [None])[0]
        ops = [op for op in self.operations.values()
               if wanted is None or not self.filters_external_id
               or op["externalId"] == wanted.decode()]
        return self._page(request, ops)

    @app.route("/api/devices", methods=["GET"])
    def list_devices(self, request):
        self.requests.append(("GET", "/api/devices"))
        if not self._authorized(request):
            return _json(request, 401, {"message": "Unauthorized"})
        return self._page(request, self.devices)

    @app.route("/api/v2/products", methods=["GET"])
    def list_products(self, request):
        self.requests.append(("GET", "/api/v2/products"))
        if not self._authorized(request):
            return _json(request, 401, {"message": "Unauthorized"})
        return self._page(request, self.products)
