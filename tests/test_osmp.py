"""
OSMP (QIWI) terminal payments, through HTTP as terminals send them.

Most tests talk to the daemon's own root resource (``build_parts`` +
``build_root``) through ``StubTreq``, with a ``task.Clock`` as the clock so
txn_date windows are exact.  The races -- twenty copies of one pay on twenty
connections, a client that hangs up mid-transaction -- run on real loopback
ports, because there the socket is what is under test.
"""

from __future__ import annotations

import argparse
import base64
import itertools
from decimal import Decimal
from urllib.parse import quote_from_bytes

import pytest
import pytest_twisted
from attrs import frozen
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree
from treq.client import HTTPClient
from twisted.internet import defer, reactor, task
from twisted.protocols.policies import WrappingFactory
from twisted.web.client import Agent, HTTPConnectionPool, ResponseNeverReceived

from smartyd import admin, ledger, osmp, payments
from testapp import build as build_parts
from fakes import in_memory_client
from smartyd.metrics import Metrics
from smartyd.http.root import make_site
from conftest import captured_events, make_config

T0 = 1_772_366_400  # 2026-03-01 12:00:00 UTC, 15:00 in Moscow
USER, PASSWORD = "osmp", "s3cret"
URL = "http://smartyd/payments/osmp"
SAFE_XML = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                           huge_tree=False)
ELEMENTS = ("osmp_txn_id", "prv_txn", "sum", "result", "comment", "fields")


def basic(user: str = USER, password: str = PASSWORD) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def config(osmp_cfg: dict | None = None, http: dict | None = None):
    return make_config(osmp={"username": USER, "password": PASSWORD, **(osmp_cfg or {})},
                       http=http or {})


def make_clock(at: float = T0) -> task.Clock:
    clock = task.Clock()
    clock.advance(at)
    return clock


# -- answers --------------------------------------------------------------------------------
@frozen
class Reply:
    code: int
    headers: object
    body: bytes

    def doc(self) -> dict:
        """The answer's elements, after checking it is a well-formed OSMP answer."""
        assert self.code == 200, (self.code, self.body)
        assert self.headers.getRawHeaders("content-type") == ["text/xml; charset=utf-8"]
        assert self.body.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
        root = etree.fromstring(self.body, SAFE_XML)
        assert root.tag == "response"
        tags = [child.tag for child in root]
        assert tags == [t for t in ELEMENTS if t in tags], tags  # known, in order, once each
        doc = {child.tag: child.text for child in root if child.tag != "fields"}
        doc["result"] = int(doc["result"])
        assert doc["result"] in osmp.RESULT_CODES
        assert doc.get("comment")
        if "osmp_txn_id" in doc:
            assert doc["osmp_txn_id"].isascii() and doc["osmp_txn_id"].isdigit()
        fields = root.find("fields")
        if fields is not None:
            doc["fields"] = {f.get("name"): f.text for f in fields}
        return doc

    @property
    def result(self) -> int:
        return self.doc()["result"]


class Terminal:
    """A QIWI terminal: sends check/pay with fresh txn_ids and the clock's date."""

    _ids = itertools.count(1_000_001)

    def __init__(self, http, clock, url: str = URL, auth: str | None = basic()):
        self.http, self.clock, self.url, self.auth = http, clock, url, auth

    def txn_id(self) -> str:
        return str(next(self._ids))

    def now(self, offset: float = 0) -> str:
        return osmp.format_txn_date(self.clock.seconds() + offset)

    async def send(self, params: dict, method: str = "GET", headers: dict | None = None,
                   auth: str | None = "default") -> Reply:
        h = dict(headers or {})
        auth = self.auth if auth == "default" else auth
        if auth:
            h["Authorization"] = auth
        if method == "GET":
            r = await self.http.get(self.url, params=params, headers=h)
        else:
            r = await self.http.post(self.url, data=params, headers=h)
        return Reply(r.code, r.headers, await r.content())

    async def check(self, account, sum: str | None = "10.00", txn_id: str | None = None,
                    **kw) -> Reply:
        params = {"command": "check", "txn_id": txn_id or self.txn_id(), "account": account}
        if sum is not None:
            params["sum"] = sum
        return await self.send(params, **kw)

    async def pay(self, account, sum: str = "10.00", txn_id: str | None = None,
                  txn_date: str | None = None, **kw) -> Reply:
        params = {"command": "pay", "txn_id": txn_id or self.txn_id(), "account": account,
                  "sum": sum, "txn_date": txn_date or self.now()}
        return await self.send(params, **kw)


def serve(db, metrics=None, clock=None, osmp_cfg=None, http=None):
    """The daemon's parts and root on ``db``, and a terminal talking to them."""
    clock = clock or make_clock()
    parts = build_parts(config(osmp_cfg, http), clock, db, metrics or Metrics())
    return parts, Terminal(in_memory_client(parts.root), clock)


async def account(db, login: str, account_id: int | None = None) -> ledger.Account:
    return await db.run(ledger.create_account, login, account_id=account_id)


async def counts(db) -> tuple[int, int]:
    rows = await db.fetchall("SELECT (SELECT count(*) FROM payments), (SELECT count(*) FROM ledger)")
    return tuple(rows[0])


async def balance(db, account_id: int) -> Decimal:
    return (await db.run(ledger.get_account, account_id)).balance


def answers(metrics, command: str, result: int) -> float:
    return metrics.registry.get_sample_value(
        "smartyd_osmp_answers_total", {"command": command, "result": str(result)}) or 0


@pytest.fixture
def events():
    """Log events of smartyd.osmp."""
    with captured_events("smartyd.osmp") as captured:
        yield captured


# -- check and pay -----------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_check_answers_0_with_the_balance(db, metrics):
    a = await account(db, "alice", 5907)
    await db.run(ledger.credit, a.id, "12.34", "payment", "test", "seed")
    _, t = serve(db, metrics)
    reply = await t.check("59071", txn_id="1234567")
    assert reply.doc() == {"osmp_txn_id": "1234567", "result": 0, "comment": "OK",
                           "fields": {"balance": "12.34"}}
    assert await counts(db) == (0, 1)  # a check never credits
    assert answers(metrics, "check", 0) == 1


@pytest_twisted.ensureDeferred
async def test_pay_credits_once_and_every_repeat_gets_the_same_prv_txn(db, metrics, events):
    a = await account(db, "alice", 5907)
    _, t = serve(db, metrics)
    reply = await t.pay("59071", "10.45", txn_id="1234567")
    doc = reply.doc()
    prv_txn = doc["prv_txn"]
    assert doc == {"osmp_txn_id": "1234567", "prv_txn": prv_txn, "sum": "10.45", "result": 0,
                   "comment": "OK"}
    assert reply.body == (
        b'<?xml version="1.0" encoding="UTF-8"?>\n<response><osmp_txn_id>1234567</osmp_txn_id>'
        b"<prv_txn>" + prv_txn.encode() + b"</prv_txn><sum>10.45</sum><result>0</result>"
        b"<comment>OK</comment></response>"
    )
    for method in ("GET", "POST"):
        again = await t.pay("59071", "10.45", txn_id="1234567", method=method)
        assert again.doc() == doc
    assert await counts(db) == (1, 1)
    assert await balance(db, a.id) == Decimal("10.45")
    assert await db.run(ledger.balance_mismatches) == []

    # One structured event for the accepted payment; the repeats say so.
    credited = [e for e in events if "prv_txn" in e and not e.get("repeat")]
    assert len(credited) == 1
    assert {k: credited[0][k] for k in ("provider", "txn_id", "account", "amount", "prv_txn")} \
        == {"provider": "osmp", "txn_id": "1234567", "account": a.id,
            "amount": Decimal("10.45"), "prv_txn": int(prv_txn)}
    assert sum(1 for e in events if e.get("repeat")) == 2
    assert metrics.registry.get_sample_value(
        "smartyd_payments_total", {"provider": "osmp"}) == 1
    assert metrics.registry.get_sample_value(
        "smartyd_payment_amount_total", {"provider": "osmp"}) == 10.45
    assert answers(metrics, "pay", 0) == 3

    # The admin command shows the payment with its ledger entry.
    shown = await admin.cmd_payment(
        db, argparse.Namespace(action="show", provider="osmp", txn_id="1234567"))
    assert shown["id"] == int(prv_txn) and shown["amount"] == "10.45"
    assert shown["details"] == {"account": "59071", "txn_date": t.now()}
    assert shown["ledger_entry"]["idem_key"] == "payment:osmp:1234567"
    assert shown["ledger_entry"]["amount"] == "10.45"


@pytest_twisted.ensureDeferred
async def test_post_form_is_the_same_protocol(db):
    await account(db, "alice", 42)
    _, t = serve(db)
    assert (await t.check("426", method="POST")).result == 0
    reply = await t.pay("426", "1.00", method="POST")
    assert reply.result == 0 and reply.doc()["sum"] == "1.00"
    assert await counts(db) == (1, 1)


PPC_VECTORS = {1: "11", 10: "101", 42: "426", 99: "998", 123: "1236", 1009: "10090",
               4567: "45672", 5907: "59071"}


@pytest_twisted.ensureDeferred
async def test_payment_code_vectors_through_the_endpoint(db):
    for account_id in PPC_VECTORS:
        await account(db, f"user{account_id}", account_id)
    _, t = serve(db)
    for account_id, code in PPC_VECTORS.items():
        assert (await t.check(code)).result == 0, code
        reply = await t.pay(code, "2.00")
        assert reply.result == 0
        payment = await db.run(payments.get, "osmp", reply.doc()["osmp_txn_id"])
        assert payment.account_id == account_id
        for digit in range(10):
            wrong = code[:-1] + str(digit)
            if wrong != code:
                assert (await t.check(wrong)).result == osmp.BAD_ACCOUNT_FORMAT, wrong
                assert (await t.pay(wrong)).result == osmp.BAD_ACCOUNT_FORMAT, wrong
        # Terminals pad short numbers with zeros.
        assert (await t.check("000" + code)).result == 0
    assert await counts(db) == (len(PPC_VECTORS), len(PPC_VECTORS))


@pytest_twisted.ensureDeferred
async def test_account_modes_id_and_login(db):
    a = await account(db, "alice.b@example", 77)
    _, by_id = serve(db, osmp_cfg={"account": "id"})
    assert (await by_id.check("77")).result == 0
    assert (await by_id.check("0077")).result == 0
    assert (await by_id.check("770")).result == osmp.ACCOUNT_NOT_FOUND
    for bad in ("7a", "", "alice", "-77", "9" * 20, "0"):
        assert (await by_id.check(bad)).result == osmp.BAD_ACCOUNT_FORMAT, bad
    assert (await by_id.pay("77", "3.00")).result == 0

    _, by_login = serve(db, osmp_cfg={"account": "login"})
    assert (await by_login.check("alice.b@example")).result == 0
    assert (await by_login.check("bob")).result == osmp.ACCOUNT_NOT_FOUND
    for bad in ("alice b", "al/ice", "x" * 65, "алиса"):
        assert (await by_login.check(bad)).result == osmp.BAD_ACCOUNT_FORMAT, bad
    assert (await by_login.pay("alice.b@example", "4.00")).result == 0
    assert await balance(db, a.id) == Decimal("7.00")


# -- every result code, each by a real request -------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_result_4_and_5(db):
    await account(db, "alice", 5907)
    _, t = serve(db)
    for bad in ("59072", "5907l", "abc", "", "0", " 59071", "59071\n", "\u0665\u0669"):
        reply = await t.pay(bad, txn_id="77")
        assert reply.doc()["result"] == 4 and reply.doc()["osmp_txn_id"] == "77", bad
    assert (await t.check("11")).result == 5  # a valid code of a missing account
    assert (await t.pay("11")).result == 5
    assert await counts(db) == (0, 0)


@pytest_twisted.ensureDeferred
async def test_result_7_payments_not_allowed_or_blocked_with_forbid_blocked(db):
    a = await account(db, "alice", 42)
    b = await account(db, "bob", 99)
    await db.execute("UPDATE accounts SET payments_allowed = false WHERE id = %s", (a.id,))
    await db.run(ledger.set_status, b.id, "blocked")
    _, t = serve(db)
    assert (await t.check("426")).result == 7
    assert (await t.pay("426")).result == 7
    _, strict = serve(db, osmp_cfg={"forbid_blocked": True})
    assert (await strict.check("998")).result == 7
    assert (await strict.pay("998")).result == 7
    assert await counts(db) == (0, 0)


@pytest_twisted.ensureDeferred
async def test_result_79_blocked_account(db, events):
    a = await account(db, "alice", 42)
    await db.run(ledger.set_status, a.id, "blocked")
    _, t = serve(db)
    assert (await t.check("426")).result == 79
    reply = await t.pay("426", txn_id="555")
    assert reply.doc() == {"osmp_txn_id": "555", "result": 79,
                           "comment": "account is not active"}
    assert await counts(db) == (0, 0)
    refused = [e for e in events if e.get("txn_id") == "555"]
    assert [(e["result"], e["command"]) for e in refused] == [(79, "pay")]


@pytest_twisted.ensureDeferred
async def test_results_241_and_242_sum_limits(db):
    await account(db, "alice", 42)
    _, t = serve(db, osmp_cfg={"min_sum": "5.00", "max_sum": "100.00"})
    assert (await t.pay("426", "4.99")).result == 241
    assert (await t.pay("426", "0.00")).result == 241
    assert (await t.pay("426", "100.01")).result == 242
    assert (await t.pay("426", "999999999.99")).result == 242
    assert (await t.check("426", "4.99")).result == 241
    assert (await t.check("426", "100.01")).result == 242
    # A check may not know the sum yet.
    assert (await t.check("426", "0.00")).result == 0
    assert (await t.check("426", None)).result == 0
    assert (await t.pay("426", "5.00")).result == 0
    assert (await t.pay("426", "100.00")).result == 0
    assert (await t.pay("426", "7.5")).doc()["sum"] == "7.50"
    assert await counts(db) == (3, 3)


@pytest_twisted.ensureDeferred
async def test_result_300_for_malformed_requests(db):
    await account(db, "alice", 42)
    _, t = serve(db)
    ok = {"command": "pay", "txn_id": "9", "account": "426", "sum": "1.00",
          "txn_date": t.now()}
    cases = [
        ({}, None),
        ({**ok, "command": "refund"}, "9"),
        ({**ok, "command": "PAY"}, "9"),
        ({k: v for k, v in ok.items() if k != "command"}, "9"),
        ({k: v for k, v in ok.items() if k != "txn_id"}, None),
        ({**ok, "txn_id": "12a"}, None),
        ({**ok, "txn_id": "1" * 21}, None),
        ({**ok, "txn_id": "<x/>"}, None),
        ({**ok, "txn_id": ""}, None),
        ({k: v for k, v in ok.items() if k != "account"}, "9"),
        ({k: v for k, v in ok.items() if k != "sum"}, "9"),
        ({**ok, "sum": "10"}, "9"),
        ({**ok, "sum": "10,00"}, "9"),
        ({**ok, "sum": "10.000"}, "9"),
        ({**ok, "sum": "-1.00"}, "9"),
        ({**ok, "sum": "1234567890.00"}, "9"),
        ({k: v for k, v in ok.items() if k != "txn_date"}, "9"),
        ({**ok, "txn_date": t.now()[:-1]}, "9"),
        ({**ok, "txn_date": "20260230120000"}, "9"),  # 30 February
        ({**ok, "txn_date": "2026-03-01 12:0"}, "9"),
        ({**ok, "txn_id": ["9", "10"]}, None),  # a parameter given twice
        ({**ok, "sum": ["1.00", "1.00"]}, "9"),
        ({**ok, "command": ["pay", "check"]}, "9"),
    ]
    for params, echoed in cases:
        doc = (await t.send(params)).doc()
        assert doc["result"] == 300, params
        assert doc.get("osmp_txn_id") == echoed, params
        assert "prv_txn" not in doc and "sum" not in doc
    assert await counts(db) == (0, 0)


@pytest_twisted.ensureDeferred
async def test_result_300_for_txn_date_outside_max_txn_age_both_ways(db):
    await account(db, "alice", 42)
    _, t = serve(db, osmp_cfg={"max_txn_age": 3600})
    assert (await t.pay("426", txn_date=t.now(-3601))).result == 300
    assert (await t.pay("426", txn_date=t.now(+3601))).result == 300
    assert (await t.pay("426", txn_date=t.now(-3600))).result == 0
    assert (await t.pay("426", txn_date=t.now(+3600))).result == 0
    assert await counts(db) == (2, 2)


@pytest_twisted.ensureDeferred
async def test_txn_date_is_moscow_time(db):
    # T0 is 12:00 UTC = 15:00 in Moscow; the same instant written in UTC
    # reads as three hours ago.
    await account(db, "alice", 42)
    _, t = serve(db, osmp_cfg={"max_txn_age": 3600})
    assert t.now() == "20260301150000"
    assert (await t.pay("426", txn_date="20260301120000")).result == 300
    reply = await t.pay("426", txn_date="20260301150000")
    assert reply.result == 0
    payment = await db.run(payments.get, "osmp", reply.doc()["osmp_txn_id"])
    assert payment.external_date.timestamp() == T0


@pytest_twisted.ensureDeferred
async def test_result_300_for_a_repeat_with_another_sum_or_account(db, metrics, events):
    a = await account(db, "alice", 42)
    await account(db, "bob", 99)
    _, t = serve(db, metrics)
    first = (await t.pay("426", "10.00", txn_id="31337")).doc()
    assert first["result"] == 0
    other_sum = (await t.pay("426", "10.01", txn_id="31337")).doc()
    other_account = (await t.pay("998", "10.00", txn_id="31337")).doc()
    for doc in (other_sum, other_account):
        assert doc["result"] == 300 and "prv_txn" not in doc and doc["osmp_txn_id"] == "31337"
    conflicts = [e for e in events if e.get("reason") == "conflict"]
    assert len(conflicts) == 2
    assert all(e["log_level"].name == "warn" and e["prv_txn"] == int(first["prv_txn"])
               for e in conflicts)
    assert await counts(db) == (1, 1)
    assert await balance(db, a.id) == Decimal("10.00")
    # Leading zeros name the same transaction: never a second credit.
    assert (await t.pay("426", "10.00", txn_id="0031337")).doc()["prv_txn"] == first["prv_txn"]
    assert await counts(db) == (1, 1)


@pytest_twisted.ensureDeferred
async def test_a_repeat_of_an_accepted_pay_is_answered_whatever_changed_since(db):
    # The first answer may have been lost; QIWI retries for up to a day.
    a = await account(db, "alice", 42)
    parts, t = serve(db, osmp_cfg={"max_txn_age": 3600})
    date = t.now()
    first = (await t.pay("426", "10.00", txn_id="4242", txn_date=date)).doc()
    await db.run(ledger.set_status, a.id, "blocked")
    t.clock.advance(2 * 3600)
    again = (await t.pay("426", "10.00", txn_id="4242", txn_date=date)).doc()
    assert again == first
    # ...but not a new pay under the same conditions.
    assert (await t.pay("426", "10.00", txn_date=date)).result == 300
    assert (await t.pay("426", "10.00")).result == 79
    assert await counts(db) == (1, 1)


@pytest_twisted.ensureDeferred
async def test_result_1_while_the_database_is_down_then_exactly_one_credit(own_cluster, make_db):
    # One connection, so no idle pool connection can be left over from before
    # an outage.
    db = await make_db(size=1, dsn=own_cluster.dsn())
    a = await account(db, "alice", 42)
    parts, t = serve(db)

    # The database is down before the request.
    own_cluster.stop(mode="immediate")
    assert (await t.pay("426", "10.00", txn_id="100")).result == 1
    assert (await t.check("426")).result == 1
    own_cluster.start()
    first = (await t.pay("426", "10.00", txn_id="100")).doc()
    assert first["result"] == 0
    assert (await t.pay("426", "10.00", txn_id="100")).doc() == first

    # The database goes down in the middle of the pay's transaction.
    stopped = []

    async def outage(tx, payment):
        if not stopped:
            stopped.append(payment.id)
            own_cluster.stop(mode="immediate")

    parts.payment_hooks.append(outage)
    assert (await t.pay("426", "5.00", txn_id="200")).result == 1
    assert stopped
    own_cluster.start()
    second = (await t.pay("426", "5.00", txn_id="200")).doc()
    assert second["result"] == 0
    assert (await t.pay("426", "5.00", txn_id="200")).doc() == second
    assert await counts(db) == (2, 2)
    assert await balance(db, a.id) == Decimal("15.00")
    assert await db.run(ledger.balance_mismatches) == []


@pytest_twisted.ensureDeferred
async def test_result_8_when_the_ledger_cannot_book_the_amount(db, events):
    a = await account(db, "alice", 42)
    await db.run(ledger.credit, a.id, "999999999990.00", "adjustment", "test", "nearly-full")
    _, t = serve(db)
    reply = await t.pay("426", "15.00", txn_id="808")
    assert reply.doc()["result"] == 8
    assert await counts(db) == (0, 1)
    assert await db.run(payments.get, "osmp", "808") is None
    assert any(e.get("txn_id") == "808" and e.get("result") == 8 for e in events)


@pytest_twisted.ensureDeferred
async def test_result_90_when_the_transaction_loses_a_lock_race_then_one_credit(db, make_db):
    a = await account(db, "alice", 42)
    b = await account(db, "bob", 99)
    parts, t = serve(db)

    # A payment hook (the fiscal queue is one) that needs a row someone else
    # holds, and gives up quickly.
    async def hook(tx, payment):
        await tx.execute("SET LOCAL lock_timeout = '20ms'")
        await tx.execute("SELECT 1 FROM accounts WHERE id = %s FOR UPDATE", (b.id,))

    parts.payment_hooks.append(hook)
    locker = await make_db(size=1)
    locked, release = defer.Deferred(), defer.Deferred()

    async def hold(tx):
        await tx.execute("SELECT 1 FROM accounts WHERE id = %s FOR UPDATE", (b.id,))
        locked.callback(None)
        await release

    held = locker.run(hold)
    await locked
    reply = await t.pay("426", "10.00", txn_id="900")
    assert reply.doc()["result"] == 90
    assert await counts(db) == (0, 0)
    release.callback(None)
    await held
    assert (await t.pay("426", "10.00", txn_id="900")).result == 0
    assert await counts(db) == (1, 1)
    assert await balance(db, a.id) == Decimal("10.00")


@pytest_twisted.ensureDeferred
async def test_result_243_check_and_1_pay_while_smartyd_is_starting(db):
    await account(db, "alice", 42)
    parts, t = serve(db)
    parts.ready = False
    assert (await t.check("426")).result == 243
    assert (await t.pay("426", txn_id="1")).result == 1
    assert await counts(db) == (0, 0)
    parts.ready = True
    assert (await t.check("426")).result == 0
    assert (await t.pay("426", txn_id="1")).result == 0


@pytest_twisted.ensureDeferred
async def test_an_unexpected_error_is_a_result_not_a_500(db, observe_errors):
    await account(db, "alice", 42)
    parts, t = serve(db)

    async def broken(tx, payment):
        raise RuntimeError("a bug in a payment hook")

    parts.payment_hooks.append(broken)
    assert (await t.pay("426", txn_id="13")).result == 1  # rolled back: retrying is safe
    assert await counts(db) == (0, 0)
    # log.failure is how the unexpected is reported; it is expected here.
    observe_errors[:] = [e for e in observe_errors if e.get("log_namespace") != "smartyd.osmp"]


# -- access ---------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_403_for_an_address_outside_allow_before_anything_else(db, metrics, events):
    await account(db, "alice", 42)
    _, t = serve(db, metrics, osmp_cfg={"allow": ["79.142.16.0/20"]})
    for reply in (await t.pay("426", txn_id="403"), await t.check("426"),
                  await t.send({"garbage": "x"}, auth=None)):
        assert reply.code == 403 and reply.body == b""
    assert await counts(db) == (0, 0)
    assert metrics.registry.get_sample_value(
        "smartyd_osmp_refused_requests_total", {"reason": "address"}) == 3
    assert not any(s.value for m in metrics.registry.collect()
                   if m.name == "smartyd_osmp_answers" for s in m.samples)
    assert not any("txn_id" in e for e in events)


@pytest_twisted.ensureDeferred
async def test_x_forwarded_for_is_trusted_only_from_configured_proxies(db):
    await account(db, "alice", 42)
    allow = {"allow": ["79.142.16.0/20"]}
    _, proxied = serve(db, osmp_cfg=allow, http={"trusted_proxies": ["127.0.0.1/32"]})

    async def pay(terminal, xff):
        return await terminal.pay("426", "1.00",
                                  headers={"X-Forwarded-For": xff} if xff else None)

    assert (await pay(proxied, "79.142.16.7")).result == 0
    assert (await pay(proxied, None)).code == 403  # the proxy itself is not a terminal
    assert (await pay(proxied, "8.8.8.8")).code == 403
    # A client cannot prepend an allowed address: the nearest untrusted hop counts.
    assert (await pay(proxied, "79.142.16.7, 8.8.8.8")).code == 403
    assert (await pay(proxied, "not-an-address")).code == 403

    _, direct = serve(db, osmp_cfg=allow)  # no trusted proxies: the header is ignored
    assert (await pay(direct, "79.142.16.7")).code == 403
    assert await counts(db) == (1, 1)


@pytest_twisted.ensureDeferred
async def test_401_for_missing_or_wrong_basic_credentials(db, metrics):
    await account(db, "alice", 42)
    _, t = serve(db, metrics)
    for auth in (None, basic(USER, "wrong"), basic("qiwi", PASSWORD), basic(USER, ""),
                 "Bearer " + PASSWORD, "Basic !!!"):
        reply = await t.pay("426", auth=auth)
        assert reply.code == 401 and reply.body == b"", auth
        assert reply.headers.getRawHeaders("www-authenticate")[0].startswith("Basic ")
    assert await counts(db) == (0, 0)
    assert metrics.registry.get_sample_value(
        "smartyd_osmp_refused_requests_total", {"reason": "credentials"}) == 6
    assert (await t.pay("426")).result == 0

    _, open_ = serve(db, osmp_cfg={"username": ""})
    assert (await open_.pay("426", auth=None)).result == 0


@pytest_twisted.ensureDeferred
async def test_disabled_osmp_is_not_mounted(db):
    _, t = serve(db, osmp_cfg={"enabled": False})
    assert (await t.check("426")).code == 404


# -- arbitrary input ------------------------------------------------------------------------------
_VALID_CODES = ("59071", "426", "998", "11")  # alice, bob, blocked carol, missing
_ABSENT = object()


@st.composite
def _field(draw, valid):
    """Mostly a valid value, else garbage text or bytes, or the field left out."""
    kind = draw(st.integers(0, 9))  # (Hypothesis favours the ends of the range)
    if kind < 7:
        return draw(valid)
    if kind == 7:
        return draw(st.text(max_size=24))
    if kind == 8:
        return _ABSENT
    return draw(st.binary(max_size=24))


_PARAMS = st.fixed_dictionaries({
    "command": _field(st.sampled_from(["check", "pay"])),
    # A small range too, so that repeats and conflicts happen.
    "txn_id": _field(st.one_of(st.integers(1, 30), st.integers(0, 10**20 - 1)).map(str)),
    "account": _field(st.sampled_from(_VALID_CODES)),
    "sum": _field(st.one_of(
        st.decimals(min_value=1, max_value=15000, places=2).map(str),
        st.from_regex(r"\A[0-9]{1,9}\.[0-9]{1,2}\Z"))),
    "txn_date": _field(st.integers(-100_000, 100_000).map(
        lambda offset: osmp.format_txn_date(T0 + offset))),
    "noise": _field(st.just("")),
}).map(lambda d: {k: v for k, v in d.items() if v is not _ABSENT})


def _encode(value) -> bytes:
    return quote_from_bytes(value if isinstance(value, bytes) else value.encode("utf-8")).encode()


@pytest_twisted.async_fixture
async def fuzz_site(db):
    for login, account_id in (("alice", 5907), ("bob", 42), ("carol", 99)):
        await account(db, login, account_id)
    await db.run(ledger.set_status, 99, "blocked")
    _, t = serve(db)
    return t


@given(params=_PARAMS, method=st.sampled_from(["GET", "POST"]),
       repeat=st.sampled_from([()] * 6 + [("txn_id",), ("account", "sum")]))
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@pytest_twisted.ensureDeferred
async def test_arbitrary_parameters_always_get_a_wellformed_answer(db, fuzz_site, params,
                                                                  method, repeat):
    t = fuzz_site
    pairs = [(k.encode(), _encode(v)) for k, v in params.items()]
    pairs += [(k.encode(), _encode(params[k])) for k in repeat if k in params]
    query = b"&".join(k + b"=" + v for k, v in pairs)
    headers = {"Authorization": basic()}
    before = await counts(db)
    if method == "GET":
        r = await t.http.get(URL.encode() + b"?" + query, headers=headers)
    else:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        r = await t.http.post(URL, data=query, headers=headers)
    doc = Reply(r.code, r.headers, await r.content()).doc()
    after = await counts(db)
    if doc["result"] == 0 and params.get("command") == "pay":
        assert after[0] - before[0] in (0, 1) and after[1] - before[1] == after[0] - before[0]
        payment = await db.run(payments.get, "osmp", str(int(params["txn_id"])))
        assert str(payment.id) == doc["prv_txn"] and f"{payment.amount:.2f}" == doc["sum"]
        assert doc["osmp_txn_id"] == params["txn_id"]
    else:
        assert after == before, doc
        assert "prv_txn" not in doc
    assert await db.run(ledger.balance_mismatches) == []


# -- races on real sockets -------------------------------------------------------------------------
class Watched(WrappingFactory):
    """A server factory that tells when a connection closes."""

    def __init__(self, factory):
        super().__init__(factory)
        self.closed: list[defer.Deferred] = []

    def next_close(self) -> defer.Deferred:
        d = defer.Deferred()
        self.closed.append(d)
        return d

    def unregisterProtocol(self, p):
        super().unregisterProtocol(p)
        waiting, self.closed = self.closed, []
        for d in waiting:
            d.callback(None)


class Loopback:
    """The daemon's root on a real 127.0.0.1 port, and a client without keep-alive."""

    def __init__(self, parts):
        self.parts = parts
        self.factory = Watched(make_site(parts.root, parts.cfg.http.max_body,
                                         reactor=reactor))
        self.port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.client = HTTPClient(Agent(reactor, pool=self.pool))
        self.url = f"http://127.0.0.1:{self.port.getHost().port}/payments/osmp"

    def pay(self, **params) -> defer.Deferred:
        return self.client.get(self.url, params={"command": "pay", **params},
                               headers={"Authorization": basic()})

    async def close(self):
        await self.pool.closeCachedConnections()
        await self.port.stopListening()


async def reply_of(response) -> Reply:
    return Reply(response.code, response.headers, await response.content())


@pytest_twisted.ensureDeferred
async def test_twenty_copies_of_a_pay_at_once_on_two_instances_credit_once(db, make_db):
    a = await account(db, "alice", 42)
    clock = make_clock()
    instances = []
    for _ in range(2):
        parts = build_parts(config(), clock, await make_db(size=10), Metrics())
        instances.append(Loopback(parts))
    try:
        params = {"txn_id": "20202020", "account": "426", "sum": "12.34",
                  "txn_date": osmp.format_txn_date(T0)}
        responses = await defer.gatherResults(
            [instances[i % 2].pay(**params) for i in range(20)], consumeErrors=True)
        docs = [(await reply_of(r)).doc() for r in responses]
    finally:
        for instance in instances:
            await instance.close()
    assert {d["result"] for d in docs} == {0}
    assert len({d["prv_txn"] for d in docs}) == 1 and {d["sum"] for d in docs} == {"12.34"}
    assert await counts(db) == (1, 1)
    assert await balance(db, a.id) == Decimal("12.34")
    credited = sum(i.parts.metrics.registry.get_sample_value(
        "smartyd_payments_total", {"provider": "osmp"}) or 0 for i in instances)
    assert credited == 1


@pytest.mark.parametrize("outcome", ["commits", "rolls back"])
@pytest_twisted.ensureDeferred
async def test_a_client_hanging_up_mid_pay_leaves_a_whole_payment_or_none(db, make_db, outcome):
    a = await account(db, "alice", 42)
    b = await account(db, "bob", 99)
    parts = build_parts(config(), make_clock(), await make_db(size=4), Metrics())
    entered, release = defer.Deferred(), defer.Deferred()

    async def hook(tx, payment):
        # First pay only: park inside the transaction (payment and ledger row
        # written, not committed) until the test lets it go; then take a row
        # lock, which fails when the test holds it.
        if not entered.called:
            entered.callback(payment.id)
            await release
        await tx.execute("SET LOCAL lock_timeout = '20ms'")
        await tx.execute("SELECT 1 FROM accounts WHERE id = %s FOR UPDATE", (b.id,))

    parts.payment_hooks.append(hook)
    locker = await make_db(size=1)
    locked, unlock = defer.Deferred(), defer.Deferred()

    async def hold(tx):
        await tx.execute("SELECT 1 FROM accounts WHERE id = %s FOR UPDATE", (b.id,))
        locked.callback(None)
        await unlock

    site = Loopback(parts)
    try:
        params = {"txn_id": "6060", "account": "426", "sum": "60.00",
                  "txn_date": osmp.format_txn_date(T0)}
        request = site.pay(**params)
        parked = await entered
        closed = site.factory.next_close()
        request.cancel()  # the terminal hangs up
        with pytest.raises((defer.CancelledError, ResponseNeverReceived)):
            await request
        await closed  # the server saw it: Klein has cancelled the handler
        if outcome == "rolls back":
            held = locker.run(hold)
            await locked
        release.callback(None)
        if outcome == "rolls back":
            # The parked transaction fails on the lock and rolls back whole.
            # A retry while the row is held is refused the same way...
            assert (await reply_of(await site.pay(**params))).result == 90
            assert await counts(db) == (0, 0)
            unlock.callback(None)
            await held
        # ...and the retry afterwards finds the payment (or makes it), once.
        doc = (await reply_of(await site.pay(**params))).doc()
        again = (await reply_of(await site.pay(**params))).doc()
    finally:
        await site.close()
    assert doc["result"] == 0 and again == doc
    if outcome == "commits":
        assert int(doc["prv_txn"]) == parked
    assert await counts(db) == (1, 1)
    assert await balance(db, a.id) == Decimal("60.00")
    assert await db.run(ledger.balance_mismatches) == []
