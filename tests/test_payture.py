"""
Payture: notifications are verified with GetState before anything is
credited; an order credits once however often (and however concurrently) its
notification comes; forged, mismatched or unconfirmable notifications credit
nothing; Payture down, slow or answering garbage -> 503 so it repeats, and
nothing credited.
"""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from conftest import make_config
from fakes.assist import in_memory_client
from fakes.payture import FakePayture
from smartyd import ledger
from smartyd.gateways import orders
from smartyd.gateways import payture as P
from smartyd.partners import PartnerProtocolError
from smartyd.wiring import build_app

KEY = "MerchantPay"
SETTINGS = {"enabled": True, "host": "https://sandbox3.payture.com",
            "merchant_pay_key": KEY, "password": "payture-pass"}
NOTIFY = "/payments/payture/notify"
LEGACY_NOTIFY = "/billing/payment/payture/validate_notify/"


# -- the wire format -----------------------------------------------------------------------------------
def test_parse_get_state():
    answer = P.parse_answer(
        b'<GetState Success="True" OrderId="5f63838d" State="Charged" Forwarded="False"'
        b' MerchantContract="Merchant" Amount="12480" RRN="003770024290"/>',
        ("GetState", "PayStatus"))
    state = P.State.from_answer(answer)
    assert state == P.State(True, "5f63838d", "Charged", 12480, None)
    missing = P.State.from_answer(P.parse_answer(
        b'<GetState Success="False" OrderId="x" State="" ErrCode="ORDER_NOT_FOUND"/>',
        ("GetState",)))
    assert not missing.success and missing.err_code == "ORDER_NOT_FOUND"
    old = P.parse_answer(b'<PayStatus Success="True" OrderId="x" State="New" Amount="1"/>',
                         ("GetState", "PayStatus"))
    assert P.State.from_answer(old).state == "New"


@pytest.mark.parametrize("body", [
    b"<html><body><h1>502 Bad Gateway</h1></body></html>",
    b"",
    b"OK",
    b'<Init Success="True" SessionId="x"/>',  # another command's answer
    b'<GetState OrderId="x" State="Charged"/>',  # no Success
    b'<GetState Success="True" State="Charged"',  # cut off
    b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY e "Charged">]><GetState Success="True"'
    b' State="&e;"/>',
])
def test_answers_that_are_not_get_state(body):
    try:
        answer = P.parse_answer(body, ("GetState", "PayStatus"))
    except PartnerProtocolError:
        return
    # an entity is never expanded into a state that could credit
    assert P.State.from_answer(answer).state != "Charged"


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200) | st.builds(
    lambda a: f"<GetState {a}/>".encode(), st.text(max_size=80)))
def test_answer_parser_never_crashes(body):
    try:
        state = P.State.from_answer(P.parse_answer(body, ("GetState", "PayStatus")))
    except PartnerProtocolError:
        return
    assert state.amount_kop is None or state.amount_kop >= 0


def test_parse_notification():
    n = P.parse_notification(FakePayture().notification("e83f0323", 12677))
    assert (n.notification, n.order_id, n.success, n.amount_kop, n.err_code) == (
        "EngineChargeSuccess", "e83f0323", True, 12677, "NONE")
    assert n.claims_payment
    assert not P.parse_notification({"Notification": "EngineBlockSuccess", "OrderId": "1",
                                     "Success": "True"}).claims_payment
    assert not P.parse_notification({"Notification": "EnginePaySuccess", "OrderId": "1",
                                     "Success": "False"}).claims_payment
    for bad in [{}, {"Notification": "EnginePaySuccess"},
                {"Notification": "EnginePaySuccess", "OrderId": "a b"},
                {"Notification": "EnginePaySuccess", "OrderId": "x" * 51},
                {"Notification": "Engine Pay", "OrderId": "1"},
                {"Notification": "EnginePaySuccess", "OrderId": "1", "Amount": "12.50"},
                {"Notification": "EnginePaySuccess", "OrderId": "1", "Amount": "-1"}]:
        with pytest.raises(P.BadNotification):
            P.parse_notification(bad)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(["Notification", "OrderId", "Amount", "Success",
                                        "ErrCode", "MerchantContract", "Other"]),
                       st.text(max_size=60)))
def test_notification_parser_never_crashes(form):
    try:
        n = P.parse_notification(form)
    except P.BadNotification:
        return
    assert 1 <= len(n.order_id) <= 50 and "\x00" not in n.order_id


# -- against the fake gateway ----------------------------------------------------------------------------
class Env:
    def __init__(self, db, metrics, fake, clock, **over):
        cfg = make_config(payture={**SETTINGS, **over})
        self.db, self.metrics, self.fake, self.clock = db, metrics, fake, clock
        self.app = build_app(cfg, reactor=clock, db=db, metrics=metrics,
                             http_client=fake.client(), ready=True)
        self.service = self.app.features["payture"].handle
        self.web = in_memory_client(self.app.root)

    async def order(self, amount="124.80", login="alice"):
        account = await self.db.run(ledger.create_account, login, "")
        order = await self.db.run(orders.create, "payture", account.id, amount)
        self.fake.register(order.order_number, ledger.kopecks(order.amount))
        return account, order

    async def notify(self, form, path=NOTIFY):
        response = await self.web.post("http://smartyd" + path, data=form)
        return response.code, (await response.content()).decode()

    async def balance(self, account_id):
        return (await self.db.run(ledger.get_account, account_id)).balance

    async def payments(self):
        return await self.db.fetchval("SELECT count(*) FROM payments WHERE provider = 'payture'")

    async def outcomes(self):
        rows = await self.db.fetchall("SELECT outcome FROM payture_notifications ORDER BY id")
        return [r[0] for r in rows]

    async def status(self, number):
        return (await self.db.run(orders.get, "payture", number)).status


@pytest.fixture
def fake():
    return FakePayture(KEY)


@pytest.fixture
def env(db, metrics, fake):
    return Env(db, metrics, fake, Clock())


@pytest.fixture
def log_events():
    seen = []
    globalLogPublisher.addObserver(seen.append)
    yield seen
    globalLogPublisher.removeObserver(seen.append)


def gw_events(metrics, event):
    return metrics.gateway_events.labels("payture", event)._value.get()


@pytest_twisted.ensureDeferred
async def test_verified_notification_credits_once_under_20_repeats(env, fake, metrics):
    account, order = await env.order("124.80")
    fake.set_state(order.order_number, "Charged")
    form = fake.notification(order.order_number)
    answers = await defer.gatherResults([
        defer.ensureDeferred(env.notify(form, NOTIFY if i % 2 else LEGACY_NOTIFY))
        for i in range(20)
    ])
    assert answers == [(200, "OK")] * 20
    assert await env.payments() == 1 and await env.balance(account.id) == Decimal("124.80")
    outcomes = await env.outcomes()
    assert len(outcomes) == 20 and outcomes.count("credited") == 1
    assert set(outcomes) == {"credited", "duplicate"}
    assert await env.status(order.order_number) == "paid"
    assert metrics.payments.labels("payture")._value.get() == 1
    assert metrics.payment_amount.labels("payture")._value.get() == 124.8
    # later repeats do not even ask Payture again
    asked = fake.gets[order.order_number]
    assert (await env.notify(form)) == (200, "OK")
    assert fake.gets[order.order_number] == asked
    payment = await env.db.fetchall("SELECT external_id, account_id, amount FROM payments")
    assert payment == [(order.order_number, account.id, Decimal("124.80"))]


@pytest_twisted.ensureDeferred
async def test_the_old_billing_url_without_its_slash(env, fake):
    account, order = await env.order("10.00")
    fake.set_state(order.order_number, "Charged")
    assert await env.notify(fake.notification(order.order_number),
                            LEGACY_NOTIFY.rstrip("/")) == (200, "OK")
    assert await env.balance(account.id) == Decimal("10.00")


@pytest.mark.parametrize("state, code, outcome, status", [
    ("Rejected", 200, "not_charged", "declined"),
    ("Voided", 200, "not_charged", "reversed"),
    ("Refunded", 200, "not_charged", "reversed"),
    ("New", 503, "in_progress", "new"),  # may still come true: Payture should repeat
    ("Authorized", 503, "in_progress", "new"),
])
@pytest_twisted.ensureDeferred
async def test_not_charged_at_payture_credits_nothing(env, fake, metrics, state, code, outcome,
                                                      status):
    account, order = await env.order()
    fake.set_state(order.order_number, state)
    got, _ = await env.notify(fake.notification(order.order_number))
    assert got == code
    assert await env.payments() == 0 and await env.balance(account.id) == 0
    assert await env.outcomes() == [outcome]
    assert await env.status(order.order_number) == status
    assert gw_events(metrics, "not_charged") == 1


@pytest_twisted.ensureDeferred
async def test_forged_notifications_credit_nothing(env, fake, metrics, log_events):
    account, order = await env.order("124.80")
    # our order, but Payture never saw it
    del fake.payments[order.order_number]
    assert await env.notify(fake.notification(order.order_number, 12480)) == (200, "OK")
    assert await env.outcomes() == ["forged"] and gw_events(metrics, "forged") == 1
    # Payture charged another amount
    fake.set_state(order.order_number, "Charged", 100)
    assert (await env.notify(fake.notification(order.order_number, 12480)))[0] == 200
    assert await env.status(order.order_number) == "mismatch"
    loud = [e for e in log_events if e.get("reason") == "amount_mismatch"]
    assert len(loud) == 1 and loud[0]["log_level"].name == "error"
    # the notification names another amount than the order: not even asked
    fake.set_state(order.order_number, "Charged", 12480)
    asked = fake.gets[order.order_number]
    assert (await env.notify(fake.notification(order.order_number, 1)))[0] == 200
    assert fake.gets[order.order_number] == asked
    # not ours at all: not asked either
    assert await env.notify(fake.notification("deadbeef", 12480)) == (200, "OK")
    assert fake.gets["deadbeef"] == 0 and gw_events(metrics, "unknown_order") == 1
    assert await env.payments() == 0 and await env.balance(account.id) == 0
    assert await env.outcomes() == ["forged", "amount_mismatch", "amount_mismatch"]
    assert gw_events(metrics, "amount_mismatch") == 2


@pytest.mark.parametrize("err_code", ["API_NOT_ALLOWED", "ACCESS_DENIED", "INTERNAL_ERROR", None])
@pytest_twisted.ensureDeferred
async def test_a_getstate_refusal_that_is_not_about_the_order_is_retried(
        env, fake, metrics, log_events, err_code):
    """
    Payture answers GetState Success="False" for our IP, our Key or its own
    fault (https://payture.com/docs/error-codes): the genuine notification is
    answered 503 (Payture repeats it), loudly, and credited once GetState works.
    """
    account, order = await env.order("124.80")
    fake.set_state(order.order_number, "Charged")
    fake.state_errors.append(err_code)
    assert await env.notify(fake.notification(order.order_number, 12480)) == (503, "RETRY")
    assert await env.payments() == 0 and gw_events(metrics, "forged") == 0
    assert gw_events(metrics, "gateway_error") == 1
    loud = [e for e in log_events if e.get("reason") == "state_refused"]
    assert len(loud) == 1 and loud[0]["log_level"].name == "error"
    assert loud[0]["err_code"] == err_code
    # Payture repeats the notification; GetState answers now
    assert await env.notify(fake.notification(order.order_number, 12480)) == (200, "OK")
    assert await env.payments() == 1 and await env.balance(account.id) == Decimal("124.80")
    assert await env.outcomes() == ["gateway_error", "credited"]


@pytest_twisted.ensureDeferred
async def test_get_state_answered_for_another_order_credits_nothing(env, fake, metrics,
                                                                    log_events):
    # Payture's answer names another order, Charged for our very amount: it
    # says nothing about ours (issue 24: without the OrderId check it was credited).
    account, order = await env.order("124.80")
    fake.register("a1b2c3d4", 12480, "Charged")
    fake.answers_for[order.order_number] = "a1b2c3d4"
    assert await env.notify(fake.notification(order.order_number, 12480)) == (200, "OK")
    assert fake.gets[order.order_number] == 1
    assert await env.payments() == 0 and await env.balance(account.id) == 0
    assert await env.outcomes() == ["forged"]
    assert await env.status(order.order_number) == "new"
    assert gw_events(metrics, "forged") == 1 and gw_events(metrics, "credited") == 0
    [loud] = [e for e in log_events if e.get("answered_order") is not None]
    assert (loud["log_level"].name, loud["order"], loud["answered_order"], loud["reason"]) \
        == ("error", order.order_number, "a1b2c3d4", "forged")
    # Once Payture answers about our order, the repeat credits it.
    del fake.answers_for[order.order_number]
    fake.set_state(order.order_number, "Charged")
    assert await env.notify(fake.notification(order.order_number, 12480)) == (200, "OK")
    assert await env.balance(account.id) == Decimal("124.80")


@pytest_twisted.ensureDeferred
async def test_notifications_that_claim_no_payment_are_noted(env, fake):
    account, order = await env.order()
    fake.set_state(order.order_number, "Charged")  # even so: these never credit
    for form in (fake.notification(order.order_number, kind="EngineBlockSuccess"),
                 fake.notification(order.order_number, kind="EnginePayFail", success=False),
                 fake.notification(order.order_number, kind="EnginePaySuccess", success=False)):
        assert await env.notify(form) == (200, "OK")
    assert fake.gets[order.order_number] == 0
    assert await env.payments() == 0 and await env.outcomes() == ["noted"] * 3


@pytest_twisted.ensureDeferred
async def test_malformed_notification(env, metrics):
    assert (await env.notify({"Notification": "EnginePaySuccess"}))[0] == 400
    assert (await env.notify({"OrderId": "1", "Notification": "x y"}))[0] == 400
    response = await env.web.get("http://smartyd" + NOTIFY)
    assert response.code == 405
    await response.content()
    assert metrics.http_requests.labels("payture_notify", "400")._value.get() == 2


@pytest.mark.parametrize("mode", ["500", "html", "garbage", "wrong-element"])
@pytest_twisted.ensureDeferred
async def test_payture_down_or_garbage_means_retry_and_no_credit(env, fake, metrics, mode):
    account, order = await env.order()
    fake.set_state(order.order_number, "Charged")
    form = fake.notification(order.order_number)
    fake.modes = [mode]
    assert await env.notify(form) == (503, "RETRY")
    assert await env.payments() == 0 and await env.balance(account.id) == 0
    assert gw_events(metrics, "gateway_error") == 1
    assert await env.outcomes() == []
    assert await env.notify(form) == (200, "OK")  # Payture repeats; now it answers
    assert await env.balance(account.id) == Decimal("124.80")


@pytest_twisted.ensureDeferred
async def test_payture_slow_times_out_on_the_clock(env, fake, metrics):
    account, order = await env.order()
    fake.set_state(order.order_number, "Charged")
    fake.modes = ["hang"]
    arrived = fake.arrival()
    answer = defer.ensureDeferred(env.notify(fake.notification(order.order_number)))
    await arrived
    env.clock.advance(14)
    assert not answer.called
    env.clock.advance(1)  # PAYTURE_TIMEOUT, on the injected clock
    assert await answer == (503, "RETRY")
    assert await env.payments() == 0
    assert gw_events(metrics, "gateway_error") == 1


@pytest_twisted.ensureDeferred
async def test_database_down_means_retry(make_db, metrics, fake):
    broken = await make_db()
    broken.close()
    env = Env(broken, metrics, fake, Clock())
    fake.register("abc", 100, "Charged")
    assert await env.notify(fake.notification("abc")) == (503, "RETRY")
    assert fake.gets["abc"] == 0


@pytest_twisted.ensureDeferred
async def test_check_uses_the_configured_key_and_credits(db, metrics, fake):
    env = Env(db, metrics, fake, Clock(), merchant_pay_key="WrongKey")
    account, order = await env.order()
    fake.set_state(order.order_number, "Charged")
    handled = await env.service.verify_and_credit(order.order_number)
    # ACCESS_DENIED: our key, not the order -- retried, never taken for a forgery
    assert (handled.code, handled.outcome) == (503, "gateway_error")
    assert await env.payments() == 0
    right = Env(db, metrics, fake, Clock())
    assert (await right.service.verify_and_credit(order.order_number)).outcome == "credited"
    assert (await right.service.verify_and_credit(order.order_number)).outcome == "duplicate"
    assert await env.balance(account.id) == Decimal("124.80")


# -- orders ---------------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_order_endpoint_opens_a_session(env, fake, db):
    account = await db.run(ledger.create_account, "bob", ledger.hash_password("pw"))
    response = await env.web.post(
        "http://smartyd/payments/payture/order",
        data=json.dumps({"login": "bob", "password": "pw", "amount": "124.80",
                         "ip": "203.0.113.7"}).encode(),
        headers={"content-type": "application/json"})
    assert response.code == 200
    out = json.loads(await response.content())
    number = out["order"]["order_number"]
    assert out["order"]["account_id"] == account.id and len(number) == 32
    session = out["url"].split("SessionId=")[1]
    assert out["url"].startswith("https://sandbox3.payture.com/apim/Pay?")
    assert fake.sessions[session] == number
    assert fake.payments[number] == {"amount": 12480, "state": "New"}

    response = await env.web.post("http://smartyd/payments/payture/order",
                                  data={"login": "bob", "password": "bad", "amount": "1"})
    assert response.code == 403
    await response.content()
    wrong = Env(db, env.metrics, fake, Clock(), merchant_pay_key="WrongKey")
    response = await wrong.web.post("http://smartyd/payments/payture/order",
                                    data={"login": "bob", "password": "pw", "amount": "1"})
    assert response.code == 502
    assert json.loads(await response.content()) == {"error": "Payture refused: ACCESS_DENIED"}


@pytest.mark.parametrize("ip", ["203.0.113.7;Amount=1", "203.0.113.7;Url=https://evil.example",
                                "not an address"])
@pytest_twisted.ensureDeferred
async def test_order_ip_must_be_an_address_never_more_data_fields(env, fake, db, ip):
    """``ip`` travels in Init's Data="k=v;k=v": a ';' would add fields (an Amount of 1)."""
    await db.run(ledger.create_account, "bob", ledger.hash_password("pw"))
    response = await env.web.post(
        "http://smartyd/payments/payture/order",
        data=json.dumps({"login": "bob", "password": "pw", "amount": "124.80",
                         "ip": ip}).encode(),
        headers={"content-type": "application/json"})
    assert response.code == 400
    assert "ip must be an IP address" in (await response.content()).decode()
    assert fake.inits == [] and fake.payments == {}


def test_client_repr_never_shows_the_key():
    client = P.PaytureClient(None, "https://x", "SuperSecretKey")
    assert "SuperSecretKey" not in repr(client)
