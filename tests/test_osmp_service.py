"""
The OSMP service without HTTP: L{OSMPService} on the real test database with
a C{task.Clock}, its requests parsed by L{smartyd.osmp.protocol}.

These pin the one mapping of outcomes to result codes (DESIGN §4) at the
service's own interface; tests/test_osmp.py drives the same through the
endpoint as terminals do.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from smartyd import ledger, payments
from smartyd.db import Database
from smartyd.metrics import Metrics
from smartyd.osmp.protocol import OSMPRequest, format_txn_date, parse_request
from smartyd.osmp.service import OSMPService
from conftest import captured_events, make_config

T0 = 1_772_366_400  # 2026-03-01 12:00:00 UTC


def make_service(db, osmp_cfg: dict | None = None, metrics: Metrics | None = None,
                 hooks: list | None = None, ready=None) -> OSMPService:
    clock = task.Clock()
    clock.advance(T0)
    cfg = make_config(osmp=osmp_cfg or {}).osmp
    return OSMPService(cfg, db, clock, metrics or Metrics(),
                       hooks=hooks if hooks is not None else [], ready=ready)


def args(**params) -> dict[bytes, list[bytes]]:
    return {k.encode(): [v.encode()] for k, v in params.items()}


def request(service: OSMPService, command: str, account: str, sum: str | None = "10.00",
            txn_id: str = "1", txn_date: str | None = None, offset: float = 0) -> OSMPRequest:
    params = {"command": command, "txn_id": txn_id, "account": account}
    if sum is not None:
        params["sum"] = sum
    if command == "pay":
        params["txn_date"] = txn_date or format_txn_date(service.clock.seconds() + offset)
    return parse_request(args(**params), service.cfg.account)


async def account(db, login: str, account_id: int) -> ledger.Account:
    return await db.run(ledger.create_account, login, account_id=account_id)


async def counts(db) -> tuple[int, int]:
    rows = await db.fetchall("SELECT (SELECT count(*) FROM payments), (SELECT count(*) FROM ledger)")
    return tuple(rows[0])


@pytest.fixture
def events():
    """Log events of smartyd.osmp (the namespace admins filter on)."""
    with captured_events("smartyd.osmp") as captured:
        yield captured


@pytest_twisted.ensureDeferred
async def test_check_outcomes_and_a_check_never_writes(db):
    a = await account(db, "alice", 42)
    await db.run(ledger.credit, a.id, "12.34", "payment", "test", "seed")
    closed = await account(db, "bob", 99)
    await db.execute("UPDATE accounts SET payments_allowed = false WHERE id = %s", (closed.id,))
    blocked = await account(db, "carol", 123)
    await db.run(ledger.set_status, blocked.id, "blocked")
    before = await counts(db)
    s = make_service(db, {"min_sum": "5.00", "max_sum": "100.00"})

    ok = await s.check(request(s, "check", "426", txn_id="7"))
    assert (ok.result, ok.txn_id, ok.fields) == (0, "7", (("balance", "12.34"),))
    assert (await s.check(request(s, "check", "11"))).result == 5
    assert (await s.check(request(s, "check", "998"))).result == 7
    assert (await s.check(request(s, "check", "1236"))).result == 79
    assert (await s.check(request(s, "check", "426", "4.99"))).result == 241
    assert (await s.check(request(s, "check", "426", "100.01"))).result == 242
    assert (await s.check(request(s, "check", "426", "0.00"))).result == 0
    assert (await s.check(request(s, "check", "426", None))).result == 0

    strict = make_service(db, {"forbid_blocked": True})
    assert (await strict.check(request(strict, "check", "1236"))).result == 7
    assert await counts(db) == before


@pytest_twisted.ensureDeferred
async def test_pay_credits_once_and_a_repeat_returns_the_same_prv_txn(db, events):
    a = await account(db, "alice", 42)
    metrics = Metrics()
    s = make_service(db, metrics=metrics)
    req = request(s, "pay", "426", "10.45", txn_id="1234567")
    first = await s.pay(req)
    assert (first.result, first.txn_id, first.sum) == (0, "1234567", Decimal("10.45"))
    assert first.prv_txn == (await db.run(payments.get, "osmp", "1234567")).id
    assert await s.pay(req) == first
    # Leading zeros name the same transaction.
    again = await s.pay(request(s, "pay", "426", "10.45", txn_id="001234567"))
    assert (again.prv_txn, again.result) == (first.prv_txn, 0)
    assert await counts(db) == (1, 1)
    assert (await db.run(ledger.get_account, a.id)).balance == Decimal("10.45")
    assert metrics.registry.get_sample_value(
        "smartyd_payments_total", {"provider": "osmp"}) == 1
    assert sum(1 for e in events if e.get("repeat")) == 2


@pytest_twisted.ensureDeferred
async def test_a_txn_id_accepted_with_another_sum_or_account_is_a_conflict_300(db, events):
    await account(db, "alice", 42)
    await account(db, "bob", 99)
    s = make_service(db)
    first = await s.pay(request(s, "pay", "426", "10.00", txn_id="31337"))
    assert first.result == 0
    for other in (request(s, "pay", "426", "10.01", txn_id="31337"),
                  request(s, "pay", "998", "10.00", txn_id="31337")):
        refused = await s.pay(other)
        assert (refused.result, refused.prv_txn, refused.comment) \
            == (300, None, "txn_id was accepted with another account or sum")
    conflicts = [e for e in events if e.get("reason") == "conflict"]
    assert [e["prv_txn"] for e in conflicts] == [first.prv_txn] * 2
    assert await counts(db) == (1, 1)


@pytest_twisted.ensureDeferred
async def test_txn_date_window_applies_to_new_money_only(db):
    a = await account(db, "alice", 42)
    s = make_service(db, {"max_txn_age": 3600})
    old = await s.pay(request(s, "pay", "426", offset=-3601, txn_id="1"))
    future = await s.pay(request(s, "pay", "426", offset=+3601, txn_id="2"))
    assert (old.result, old.comment) == (300, "txn_date is too old")
    assert (future.result, future.comment) == (300, "txn_date is in the future")
    assert (await s.pay(request(s, "pay", "426", offset=-3600, txn_id="3"))).result == 0
    assert (await s.pay(request(s, "pay", "426", offset=+3600, txn_id="4"))).result == 0
    assert await counts(db) == (2, 2)

    # An accepted pay repeated after its date left the window (its first
    # answer was lost) is answered from the stored payment, even if the
    # account was blocked meanwhile.
    req = request(s, "pay", "426", txn_id="5")
    first = await s.pay(req)
    await db.run(ledger.set_status, a.id, "blocked")
    s.clock.advance(2 * 3600)
    assert await s.pay(req) == first
    assert (await s.pay(request(s, "pay", "426", txn_id="6", txn_date=req.txn_date_text))
            ).result == 300
    assert await counts(db) == (3, 3)


@pytest_twisted.ensureDeferred
async def test_database_down_answers_1_to_check_and_pay(tmp_path, events):
    # A pool whose server is not there: nothing listens on this socket directory.
    down = Database(f"host={tmp_path} port=5 dbname=smartyd user=smartyd", reactor, size=1)
    try:
        s = make_service(down)
        check = await s.check(request(s, "check", "426", txn_id="10"))
        pay = await s.pay(request(s, "pay", "426", txn_id="11"))
        label, handled = await s.handle(args(command="check", txn_id="12", account="426"))
    finally:
        down.close()
    assert (check.result, check.txn_id) == (1, "10")
    assert (pay.result, pay.txn_id) == (1, "11")
    assert (label, handled.result) == ("check", 1)
    warned = [e for e in events if e.get("result") == 1]
    assert [(e["command"], e["txn_id"]) for e in warned] \
        == [("check", "10"), ("pay", "11"), ("check", "12")]
    assert all(e["log_level"].name == "warn" for e in warned)


@pytest_twisted.ensureDeferred
async def test_a_pay_rolled_back_for_concurrency_answers_90_then_credits_once(db, make_db):
    await account(db, "alice", 42)
    b = await account(db, "bob", 99)

    async def hook(tx, payment):
        await tx.execute("SET LOCAL lock_timeout = '20ms'")
        await tx.execute("SELECT 1 FROM accounts WHERE id = %s FOR UPDATE", (b.id,))

    s = make_service(db, hooks=[hook])
    locker = await make_db(size=1)
    locked, release = defer.Deferred(), defer.Deferred()

    async def hold(tx):
        await tx.execute("SELECT 1 FROM accounts WHERE id = %s FOR UPDATE", (b.id,))
        locked.callback(None)
        await release

    held = locker.run(hold)
    await locked
    req = request(s, "pay", "426", txn_id="900")
    assert (await s.pay(req)).result == 90
    assert await counts(db) == (0, 0)
    release.callback(None)
    await held
    assert (await s.pay(req)).result == 0
    assert await counts(db) == (1, 1)


@pytest_twisted.ensureDeferred
async def test_unexpected_errors_answer_1_to_a_pay_and_300_to_a_check(db, events,
                                                                    observe_errors):
    await account(db, "alice", 42)

    async def broken(tx, payment):
        raise RuntimeError("a bug in a payment hook")

    s = make_service(db, hooks=[broken])
    assert (await s.pay(request(s, "pay", "426", txn_id="13"))).result == 1
    assert await counts(db) == (0, 0)  # rolled back: retrying is safe
    # A login the driver cannot send (the parser never lets one through).
    req = request(s, "check", "426", txn_id="14")
    nul = OSMPRequest(req.command, req.txn_id, req.external_id, req.account, "al\x00ice",
                      req.sum, req.txn_date, req.txn_date_text)
    assert (await s.check(nul)).result == 300
    assert [(e["command"], e["txn_id"], e["result"]) for e in events if e.get("log_failure")] \
        == [("pay", "13", 1), ("check", "14", 300)]
    # log.failure is how the unexpected is reported; it is expected here.
    observe_errors[:] = [e for e in observe_errors if e.get("log_namespace") != "smartyd.osmp"]


@pytest_twisted.ensureDeferred
async def test_result_8_when_the_ledger_cannot_book_the_amount(db):
    a = await account(db, "alice", 42)
    await db.run(ledger.credit, a.id, "999999999990.00", "adjustment", "test", "nearly-full")
    s = make_service(db)
    assert (await s.pay(request(s, "pay", "426", "15.00", txn_id="808"))).result == 8
    assert await counts(db) == (0, 1)


@pytest_twisted.ensureDeferred
async def test_while_starting_check_answers_243_and_pay_1(db):
    await account(db, "alice", 42)
    ready = [False]
    s = make_service(db, ready=lambda: ready[0])
    assert (await s.check(request(s, "check", "426"))).result == 243
    assert (await s.pay(request(s, "pay", "426", txn_id="1"))).result == 1
    assert await counts(db) == (0, 0)
    ready[0] = True
    assert (await s.pay(request(s, "pay", "426", txn_id="1"))).result == 0


@pytest_twisted.ensureDeferred
async def test_handle_parses_dispatches_and_labels(db, events):
    await account(db, "alice", 42)
    s = make_service(db)
    label, reply = await s.handle({b"command": [b"refund"], b"txn_id": [b"9"]})
    assert (label, reply.result, reply.txn_id, reply.comment) == ("other", 300, "9",
                                                                  "unknown command")
    label, reply = await s.handle(args(command="pay", txn_id="77", account="427", sum="1.00",
                                       txn_date=format_txn_date(T0)))
    assert (label, reply.result, reply.txn_id) == ("pay", 4, "77")
    assert [(e["command"], e["txn_id"], e["account_field"]) for e in events
            if e.get("result") == 4] == [("pay", "77", "427")]
    label, reply = await s.handle(args(command="check", txn_id="78", account="426"))
    assert (label, reply.result, reply.txn_id) == ("check", 0, "78")
    assert await counts(db) == (0, 0)
