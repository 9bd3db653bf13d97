"""
Dreamkas fiscalization: every accepted payment gets its fiscal receipt exactly once.

The worker, the webhook and the queue run against a real PostgreSQL and a fake
Dreamkas (tests/fakes/dreamkas.py) speaking the real JSON wire format, in
memory; time is a ``task.Clock``.
"""

from __future__ import annotations

import itertools
import json
import time
from decimal import Decimal

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from conftest import captured_events, make_config
from fakes.dreamkas import FakeDreamkas, in_memory_client
from smartyd import ledger, payments
from smartyd.wiring import build_app
from smartyd.config import ConfigError
from smartyd.fiscal import POLLER_JOB, enqueue_receipt, jobs, receipt
from smartyd.admin.fiscal import cmd_receipts, register
from smartyd.fiscal.api import DreamkasAPI, Operation
from smartyd.fiscal.dreamkas_cache import DreamkasCache
from smartyd.fiscal.webhook import MAX_BODY, DreamkasWebhook
from smartyd.fiscal.worker import ReceiptWorker
from smartyd.metrics import Metrics
from smartyd.partners import HTTPClientService, PartnerHTTP, PartnerUnavailable
from smartyd.poller import Poller

API = "http://dreamkas.test/api"
TOKEN = "t0k3n-for-tests"
SECRET = "hook-s3cret-4f9a"
POLL = 30
_ids = itertools.count(1)


class Kit:
    """One smartyd instance's Dreamkas side: API client, catalog, worker, webhook."""

    def __init__(self, db, fake: FakeDreamkas, clock: Clock | None = None,
                 metrics: Metrics | None = None, secret: str = SECRET, **worker):
        self.db = db
        self.fake = fake
        self.clock = clock or Clock()
        self.metrics = metrics or Metrics()
        http = PartnerHTTP("dreamkas", fake.client(), self.clock, metrics=self.metrics,
                           timeout=30)
        self.api = DreamkasAPI(http, API, TOKEN)
        self.catalog = DreamkasCache(db, self.api, self.clock, 1800)
        self.worker = ReceiptWorker(
            db, self.api, self.catalog, self.clock, device_id=worker.pop("device_id", 0),
            tax_mode=worker.pop("tax_mode", "SIMPLE"), poll_interval=POLL,
            metrics=self.metrics, **worker,
        )
        self.webhook = DreamkasWebhook(db, secret, self.clock, POLL, self.metrics)
        self.web = in_memory_client(self.webhook.resource())

    def receipts_counted(self, state: str) -> float:
        return self.metrics.receipts.labels(state)._value.get()

    async def deliver(self, body: bytes, secret: str = SECRET):
        r = await self.web.post(f"http://smartyd/webhooks/dreamkas/{secret}", data=body,
                                headers={"content-type": "application/json"})
        content = await r.content()
        try:
            return r.code, json.loads(content)
        except ValueError:
            return r.code, None


@pytest.fixture
def fake():
    return FakeDreamkas(TOKEN)


@pytest.fixture
def kit(db, fake):
    return Kit(db, fake)


async def pay(db, amount="100.00", phone="+7 900 123-45-67", email=None, details=None,
              count=1, hooks=(enqueue_receipt,), provider="osmp"):
    """``count`` payments of one new customer, each with the hooks, in one transaction."""

    async def run(tx):
        customer = await ledger.create_customer(tx, "Иван", phone, email)
        account = await ledger.create_account(tx, f"user{next(_ids)}", customer_id=customer)
        made = []
        for _ in range(count):
            payment, created = await payments.accept(
                tx, provider, f"txn{next(_ids)}", account.id, amount, details=details,
                hooks=hooks,
            )
            assert created
            made.append(payment)
        return made

    return await db.run(run)


async def job_of(db, payment) -> jobs.Job:
    return await db.run(jobs.get_by_payment, payment.id)


async def settle(kit, rounds: int = 1):
    """Run, then let ``poll_interval`` pass and run again, ``rounds`` times."""
    await kit.worker.run()
    for _ in range(rounds):
        kit.clock.advance(POLL)
        await kit.worker.run()


def seconds(ts) -> float:
    return ts.timestamp()


# -- the receipt body (pure) --------------------------------------------------------------------
def test_receipt_body_is_the_dreamkas_wire_format():
    body = receipt.build(
        external_id="ext-1", device_id=109266, tax_mode="SIMPLE", amount=Decimal("100.45"),
        provider="osmp", details={}, phone="8 (900) 123-45-67", email=" a@example.com ",
    )
    assert body == {
        "externalId": "ext-1",
        "deviceId": 109266,
        "type": "SALE",
        "timeout": receipt.RECEIPT_TIMEOUT_MINUTES,
        "taxMode": "SIMPLE",
        "positions": [{"name": "Оплата услуг", "type": "SERVICE", "quantity": 1,
                       "price": 10045, "priceSum": 10045, "tax": "NDS_NO_TAX", "taxSum": 0}],
        "payments": [{"sum": 10045, "type": "CASHLESS"}],
        "attributes": {"phone": "+79001234567", "email": "a@example.com"},
        "total": {"priceSum": 10045},
    }


def test_position_is_chosen_by_the_service_and_priced_with_its_vat():
    products = [{"id": "p-1", "name": "Интернет", "tax": "NDS_20"},
                {"id": "p-2", "name": "Телевидение", "tax": "NDS_10"}]
    assert receipt.choose_position({"service": "интернет"}, None, products) == \
        ("Интернет", "NDS_20")
    assert receipt.choose_position({"dreamkas_product": "p-2"}, None, products) == \
        ("Телевидение", "NDS_10")
    assert receipt.choose_position({}, "Базовый", products) == ("Базовый", "NDS_NO_TAX")
    assert receipt.choose_position({"position": "x" * 300}, None, [])[0] == "x" * 128
    assert receipt.choose_position({}, None, products) == ("Оплата услуг", "NDS_NO_TAX")
    assert receipt.payment_type("cash", {}) == "CASH"
    assert receipt.payment_type("osmp", {"payment_type": "CASH"}) == "CASH"
    assert receipt.payment_type("osmp", {"payment_type": "BARTER"}) == "CASHLESS"
    # VAT included in the price: rate / (100 + rate), rounded half up.
    assert receipt.tax_sum(12000, "NDS_20") == 2000
    assert receipt.tax_sum(11000, "NDS_10_CALCULATED") == 1000
    assert receipt.tax_sum(10001, "NDS_0") == 0
    assert receipt.tax_sum(10001, "NDS_NO_TAX") == 0


@pytest.mark.parametrize("raw, phone", [
    ("+79001234567", "+79001234567"), ("89001234567", "+79001234567"),
    ("9001234567", "+79001234567"), ("+7 (900) 123-45-67", "+79001234567"),
    ("+77011234567", "+77011234567"), ("+380501234567", "+380501234567"),
    ("+7 495 123-45-67", None), ("8 800 100-00-00", None), ("123", None), ("", None),
    ("+7900123456789", None), ("phone", None), (None, None), ("٩٠٠١٢٣٤٥٦٧", None),
])
def test_phone_normalization(raw, phone):
    assert receipt.normalize_phone(raw) == phone


@given(st.one_of(st.none(), st.text(max_size=40)), st.one_of(st.none(), st.text(max_size=40)))
def test_contacts_never_crash_and_always_name_one(phone, email):
    try:
        out = receipt.contacts(phone, email)
    except receipt.NoContact:
        assert receipt.normalize_phone(phone) is None and receipt.normalize_email(email) is None
        return
    assert out and set(out) <= {"phone", "email"}
    if "phone" in out:
        assert out["phone"][0] == "+" and out["phone"][1:].isascii() and out["phone"][1:].isdigit()


@given(st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.text()),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c,
                                                                        max_size=4)))
def test_operation_parser_is_defensive(obj):
    try:
        op = Operation.from_json(obj)
    except ValueError:
        return
    assert op.id and op.status in ("PENDING", "IN_PROGRESS", "SUCCESS", "ERROR")


# -- the queue ------------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_job_is_enqueued_in_the_payment_transaction_once(db):
    [payment] = await pay(db)
    job = await job_of(db, payment)
    assert job.state == "queued" and job.attempts == 0
    assert job.external_id == jobs.external_id_for(payment.id, "osmp", payment.external_id)

    # a repeated payment credits nothing and queues nothing more
    async def repeat(tx):
        await payments.accept(tx, "osmp", payment.external_id, payment.account_id,
                              payment.amount, hooks=(enqueue_receipt,))

    await db.run(repeat)
    assert (await db.fetchval("SELECT count(*) FROM receipt_jobs")) == 1

    # a payment whose transaction rolls back leaves no job either
    class Boom(Exception):
        pass

    async def rolled_back(tx):
        account = await ledger.create_account(tx, f"user{next(_ids)}")
        await payments.accept(tx, "osmp", "rolled", account.id, "5.00", hooks=(enqueue_receipt,))
        raise Boom()

    with pytest.raises(Boom):
        await db.run(rolled_back)
    assert (await db.fetchval("SELECT count(*) FROM receipt_jobs")) == 1


# -- the worker against the fake -------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_success_posts_once_then_follows_to_success(db, kit, fake):
    [payment] = await pay(db, amount="100.45", email="ivan@example.com",
                          details={"service": "Интернет"})
    stats = await kit.worker.run()
    assert stats == {"posted": 1, "followed": 0, "stuck": 0}
    job = await job_of(db, payment)
    assert job.state == "pending" and job.operation_id == fake.operation_for(job.external_id)["id"]
    assert seconds(job.next_attempt_at) == POLL  # the first status poll, on our clock
    body = fake.bodies[job.operation_id]
    assert body == job.receipt
    assert body["externalId"] == job.external_id and body["deviceId"] == 109266
    assert body["taxMode"] == "SIMPLE" and body["type"] == "SALE"
    # the service named the Dreamkas position, which lends its VAT
    assert body["positions"] == [{"name": "Интернет", "type": "SERVICE", "quantity": 1,
                                  "price": 10045, "priceSum": 10045, "tax": "NDS_20",
                                  "taxSum": 1674}]
    assert body["payments"] == [{"sum": 10045, "type": "CASHLESS"}]
    assert body["attributes"] == {"phone": "+79001234567", "email": "ivan@example.com"}
    assert body["total"] == {"priceSum": 10045}

    assert await kit.worker.run() == {"posted": 0, "followed": 0, "stuck": 0}  # nothing due yet
    kit.clock.advance(POLL)
    assert await kit.worker.run() == {"posted": 0, "followed": 1, "stuck": 0}
    job = await job_of(db, payment)
    assert job.state == "done" and job.receipt_id == f"rcpt-{job.operation_id}"
    assert job.operation_status == "SUCCESS" and job.last_error is None
    assert fake.receipts_per_external_id() == {job.external_id: 1}
    assert fake.posts[job.external_id] == 1
    assert kit.receipts_counted("done") == 1
    assert kit.metrics.partner_requests.labels("dreamkas", "ok")._value.get() >= 3


@pytest_twisted.ensureDeferred
async def test_position_named_by_tariff(db, kit, fake):
    tariff = await db.fetchval("INSERT INTO tariffs (name, price) VALUES ('Кино+', 299)"
                               " RETURNING id")
    [payment] = await pay(db, details={"tariff_id": str(tariff)})
    await kit.worker.run()
    job = await job_of(db, payment)
    assert fake.bodies[job.operation_id]["positions"][0]["name"] == "Кино+"


@pytest_twisted.ensureDeferred
async def test_error_operation_fails_the_job_with_its_reason(db, kit, fake):
    [payment] = await pay(db)
    job = await job_of(db, payment)
    fake.errors[job.external_id] = ("DEVICE_OFFLINE", "Касса не в сети")
    await settle(kit)
    job = await job_of(db, payment)
    assert job.state == "failed" and job.operation_status == "ERROR"
    assert "DEVICE_OFFLINE" in job.last_error and "Касса не в сети" in job.last_error
    assert fake.receipts() == [] and fake.posts[job.external_id] == 1
    assert kit.receipts_counted("failed") == 1
    kit.clock.advance(3600)
    await kit.worker.run()  # a failed job is never posted again by itself
    assert fake.posts[job.external_id] == 1


@pytest_twisted.ensureDeferred
async def test_slow_operation_is_polled_every_interval_until_success(db, kit, fake):
    fake.polls_until_done = 3
    [payment] = await pay(db)
    await kit.worker.run()
    op_id = (await job_of(db, payment)).operation_id
    for polls, status in [(1, "PENDING"), (2, "IN_PROGRESS"), (3, "IN_PROGRESS")]:
        kit.clock.advance(POLL - 1)
        await kit.worker.run()
        assert fake.gets[op_id] == polls - 1  # not due a second early
        kit.clock.advance(1)
        await kit.worker.run()
        job = await job_of(db, payment)
        assert (job.state, job.operation_status, job.polls, fake.gets[op_id]) == \
            ("pending", status, polls, polls)
    kit.clock.advance(POLL)
    await kit.worker.run()
    assert (await job_of(db, payment)).state == "done" and fake.gets[op_id] == 4
    assert len(fake.receipts()) == 1


@pytest_twisted.ensureDeferred
async def test_http_500_backs_off_then_posts_once(db, kit, fake):
    fake.post_modes = ["500"]
    [payment] = await pay(db)
    await kit.worker.run()
    job = await job_of(db, payment)
    # a 5xx may have created the operation: the job stays 'posting' (outcome unknown)
    assert (job.state, job.attempts) == ("posting", 1) and "HTTP 500" in job.last_error
    assert seconds(job.next_attempt_at) == POLL
    await kit.worker.run()
    assert fake.posts[job.external_id] == 1  # backing off
    await settle(kit, rounds=2)
    job = await job_of(db, payment)
    assert job.state == "done"
    assert ("GET", "/api/operations") in fake.requests  # looked up before re-posting
    assert fake.receipts_per_external_id() == {job.external_id: 1}
    assert kit.metrics.partner_requests.labels("dreamkas", "server_error")._value.get() == 1


@pytest_twisted.ensureDeferred
async def test_timeout_after_dreamkas_accepted_is_found_not_posted_again(db, kit, fake):
    fake.post_modes = ["accept-hang"]
    [payment] = await pay(db)
    arrived = fake.arrival("post")
    running = defer.ensureDeferred(kit.worker.run())
    await arrived
    kit.clock.advance(30)  # the POST times out; Dreamkas has the operation
    await running
    job = await job_of(db, payment)
    assert (job.state, job.attempts) == ("posting", 1) and job.last_error.startswith("POST")
    kit.clock.advance(POLL)
    await kit.worker.run()
    job = await job_of(db, payment)
    assert job.state == "pending" and job.operation_id == fake.operation_for(job.external_id)["id"]
    assert fake.posts[job.external_id] == 1
    kit.clock.advance(POLL)
    await kit.worker.run()
    assert (await job_of(db, payment)).state == "done"
    assert fake.receipts_per_external_id() == {job.external_id: 1}
    # our timer fired: a time-out, whatever the cancelled request failed with
    outcomes = kit.metrics.partner_requests
    assert outcomes.labels("dreamkas", "timeout")._value.get() == 1
    assert outcomes.labels("dreamkas", "unreachable")._value.get() == 0


@pytest_twisted.ensureDeferred
async def test_post_lost_before_dreamkas_is_posted_again_with_the_same_external_id(db, kit, fake):
    fake.post_modes = ["hang"]
    [payment] = await pay(db)
    arrived = fake.arrival("post")
    running = defer.ensureDeferred(kit.worker.run())
    await arrived
    kit.clock.advance(30)
    await running
    body = (await job_of(db, payment)).receipt
    await settle(kit, rounds=2)
    job = await job_of(db, payment)
    assert job.state == "done"
    assert fake.bodies[job.operation_id] == body  # the same receipt, the same externalId
    assert fake.receipts_per_external_id() == {job.external_id: 1}


@pytest_twisted.ensureDeferred
async def test_crash_between_post_and_status_never_posts_twice(db, make_db, fake):
    # Instance A claims the job and POSTs it; Dreamkas creates the operation,
    # and A dies before it hears back: the row is left in 'posting'.
    a = Kit(db, fake)
    fake.post_modes = ["accept-hang"]
    [payment] = await pay(db)
    arrived = fake.arrival("post")
    dead = defer.ensureDeferred(a.worker.run())
    await arrived
    job = await job_of(db, payment)
    assert job.state == "posting" and job.operation_id is None
    assert fake.operation_for(job.external_id) is not None

    # Instance B (another process, its own pool and clock) starts later.
    b = Kit(await make_db(), fake)
    await b.worker.run()
    assert (await job_of(db, payment)).state == "posting"  # A's lease still holds
    b.clock.advance(b.worker.lease + 1)
    await b.worker.run()
    job = await job_of(db, payment)
    assert job.state == "pending" and job.operation_id == fake.operation_for(job.external_id)["id"]
    assert fake.requests.count(("GET", "/api/operations")) == 1  # looked up by externalId
    assert fake.posts[job.external_id] == 1  # ... and not posted again
    b.clock.advance(POLL)
    await b.worker.run()
    assert (await job_of(db, payment)).state == "done"
    assert fake.posts[job.external_id] == 1
    assert fake.receipts_per_external_id() == {job.external_id: 1}

    # A wakes up (its time-out fires): its claim is stale, it changes nothing.
    a.clock.advance(30)
    await dead
    after = await job_of(db, payment)
    assert (after.state, after.attempts, after.last_error) == ("done", 0, None)


async def post_lost_answer_among(kit, fake, before: int, after: int):
    """A POST Dreamkas accepts but whose answer is lost, listed after ``before`` other
    operations and before ``after`` more; the job is then due for its look-up."""
    fake.filters_external_id = False  # the list ignores ?externalId=: the look-up must page
    for i in range(before):
        fake.add_operation(f"earlier-{i}")
    fake.post_modes = ["accept-hang"]
    [payment] = await pay(kit.db)
    arrived = fake.arrival("post")
    running = defer.ensureDeferred(kit.worker.run())
    await arrived
    kit.clock.advance(30)  # the POST times out
    await running
    for i in range(after):
        fake.add_operation(f"later-{i}")
    assert fake.list_pages == []
    kit.clock.advance(POLL)
    return payment


@pytest_twisted.ensureDeferred
async def test_lookup_pages_through_the_operations_until_it_finds_the_earlier_post(db, kit, fake):
    kit.api.page_size = 10
    payment = await post_lost_answer_among(kit, fake, before=20, after=5)
    await kit.worker.run()
    job = await job_of(db, payment)
    assert job.state == "pending" and job.operation_id == fake.operation_for(job.external_id)["id"]
    assert fake.list_pages == [(10, 0), (10, 10), (10, 20)]  # found on page 3: no page 4
    assert fake.posts[job.external_id] == 1  # ... and not posted again
    kit.clock.advance(POLL)
    await kit.worker.run()
    assert (await job_of(db, payment)).state == "done"
    assert fake.receipts_per_external_id()[job.external_id] == 1


@pytest_twisted.ensureDeferred
async def test_lookup_reads_at_most_max_pages_then_does_not_guess(db, kit, fake):
    kit.api.page_size, kit.api.max_pages = 10, 2
    payment = await post_lost_answer_among(kit, fake, before=20, after=0)
    await kit.worker.run()
    job = await job_of(db, payment)
    assert fake.list_pages == [(10, 0), (10, 10)]
    assert fake.posts[job.external_id] == 1  # not found is not "absent": no second POST
    assert (job.state, job.attempts) == ("posting", 2) and "unknown" in job.last_error


@pytest_twisted.ensureDeferred
async def test_lookup_of_a_lost_post_pages_to_the_end_then_posts_again(db, kit, fake):
    kit.api.page_size = 2000  # more than the API gives: the page is capped at 1000
    fake.filters_external_id = False
    for i in range(1500):
        fake.add_operation(f"earlier-{i}")
    fake.post_modes = ["hang"]  # lost before Dreamkas saw it
    [payment] = await pay(db)
    arrived = fake.arrival("post")
    running = defer.ensureDeferred(kit.worker.run())
    await arrived
    kit.clock.advance(30)
    await running
    kit.clock.advance(POLL)
    await kit.worker.run()
    job = await job_of(db, payment)
    assert fake.list_pages == [(1000, 0), (1000, 1000), (1000, 1500)]  # to the empty page
    assert job.state == "pending" and fake.posts[job.external_id] == 2
    assert len(fake.bodies) == 1501


@pytest_twisted.ensureDeferred
async def test_lookup_against_a_list_that_ignores_paging_ends_and_posts_again(db, kit, fake):
    # GET /operations ignores limit, offset and externalId (Ubilling's notes):
    # every page is the same list.  A page with no id not already seen is the end.
    fake.filters_external_id = False
    fake.honours_paging = False
    for i in range(3):
        fake.add_operation(f"someone-else-{i}")
    fake.post_modes = ["500"]  # Dreamkas did not create it, but we cannot know
    [payment] = await pay(db)
    await kit.worker.run()
    job = await job_of(db, payment)
    assert (job.state, job.attempts) == ("posting", 1)
    kit.clock.advance(POLL)
    await kit.worker.run()  # look-up: the list, the same list again: not found, POST again
    job = await job_of(db, payment)
    assert fake.list_pages == [(1000, 0), (1000, 3)]
    assert job.state == "pending" and fake.posts[job.external_id] == 2
    kit.clock.advance(POLL)
    await kit.worker.run()
    job = await job_of(db, payment)
    assert job.state == "done"
    assert fake.bodies[job.operation_id]["externalId"] == job.external_id
    assert fake.receipts_per_external_id()[job.external_id] == 1
    # A later look-up finds it in the unpaged list at once: never posted a third time.
    assert (await kit.api.find_operation(job.external_id)).id == job.operation_id
    assert fake.posts[job.external_id] == 2


@pytest_twisted.ensureDeferred
async def test_a_job_is_not_sent_once_its_lease_is_too_short(db, fake):
    # lease 120 s, three requests of 30 s per job: only the claim's first
    # instant leaves room to send; what is left of the batch is handed back.
    kit = Kit(db, fake, lease=120, concurrency=1)
    fake.post_modes = ["accept-hang"]
    first, second = await pay(db, count=2)
    arrived = fake.arrival("post")
    running = defer.ensureDeferred(kit.worker.run())
    await arrived
    kit.clock.advance(30)  # the first POST times out; the second is due to be sent
    assert (await running)["posted"] == 1
    job = await job_of(db, second)
    assert (job.state, job.attempts, fake.posts[job.external_id]) == ("queued", 0, 0)
    assert seconds(job.next_attempt_at) == 30  # due again at once
    await kit.worker.run()
    assert (await job_of(db, second)).state == "pending"


@pytest_twisted.ensureDeferred
async def test_backoff_is_exponential_and_max_attempts_fail_with_reason(db, fake):
    kit = Kit(db, fake, max_attempts=3)
    fake.post_modes = ["500"] * 5
    [payment] = await pay(db)
    await kit.worker.run()
    job = await job_of(db, payment)
    assert (job.attempts, seconds(job.next_attempt_at)) == (1, 30)
    kit.clock.advance(30)
    await kit.worker.run()
    job = await job_of(db, payment)
    assert (job.attempts, seconds(job.next_attempt_at)) == (2, 30 + 60)
    kit.clock.advance(59)
    await kit.worker.run()
    assert (await job_of(db, payment)).attempts == 2
    kit.clock.advance(1)
    await kit.worker.run()
    job = await job_of(db, payment)
    assert job.state == "failed" and job.attempts == 3
    assert job.last_error.startswith("gave up after 3 attempts")
    assert job.external_id in job.last_error  # what to look up before fiscalizing by hand
    assert kit.receipts_counted("failed") == 1


@pytest_twisted.ensureDeferred
async def test_refusal_fails_without_retry_and_bad_token_retries(db, fake):
    kit = Kit(db, fake)
    [refused] = await pay(db)

    # a 4xx validation answer: not created, will not get better
    original = fake._validate
    fake._validate = lambda body: "deviceId is unknown"
    await kit.worker.run()
    fake._validate = original
    job = await job_of(db, refused)
    assert job.state == "failed" and "HTTP 400" in job.last_error

    # a wrong token: not created, may get better -> 'queued' with back-off
    [later] = await pay(db)
    fake.token = "rotated"
    await kit.worker.run()
    job = await job_of(db, later)
    assert (job.state, job.attempts) == ("queued", 1) and "HTTP 401" in job.last_error
    fake.token = TOKEN
    await settle(kit, rounds=2)
    assert (await job_of(db, later)).state == "done"


@pytest_twisted.ensureDeferred
async def test_customer_without_phone_or_email_fails_at_once_without_api_call(db, kit, fake):
    errors = []

    def observe(event):
        if event.get("log_level") is not None and event["log_level"].name == "error":
            errors.append(event)

    [payment] = await pay(db, phone="+7 495 123-45-67", email="not-an-email")
    globalLogPublisher.addObserver(observe)
    try:
        await kit.worker.run()
    finally:
        globalLogPublisher.removeObserver(observe)
    job = await job_of(db, payment)
    assert job.state == "failed"
    assert job.last_error == "customer has neither a mobile phone nor an e-mail"
    assert ("POST", "/api/receipts") not in fake.requests
    assert fake.posts == {}
    assert [e["payment_id"] for e in errors] == [payment.id]
    assert kit.receipts_counted("failed") == 1


# -- the webhook --------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_webhook_delivers_success_and_polling_is_then_a_no_op(db, kit, fake):
    [payment] = await pay(db)
    await kit.worker.run()
    job = await job_of(db, payment)
    fake.complete(job.operation_id)
    assert await kit.deliver(fake.webhook_body(job.operation_id)) == (200, {"ok": True})
    done = await job_of(db, payment)
    assert done.state == "done" and done.receipt_id == f"rcpt-{job.operation_id}"
    assert kit.receipts_counted("done") == 1
    # the same delivery again (Dreamkas retries) changes nothing
    assert (await kit.deliver(fake.webhook_body(job.operation_id)))[0] == 200
    kit.clock.advance(POLL)
    await kit.worker.run()
    assert fake.gets[job.operation_id] == 0  # nothing left to poll
    assert (await job_of(db, payment)).finished == done.finished
    assert kit.receipts_counted("done") == 1


@pytest_twisted.ensureDeferred
async def test_a_receipt_id_that_comes_after_success_is_kept(db, kit, fake):
    """SUCCESS without data.receiptId, then an update that has it: the job learns its receipt."""
    [payment] = await pay(db)
    await kit.worker.run()
    job = await job_of(db, payment)
    fake.complete(job.operation_id, receipt_id=False)
    assert (await kit.deliver(fake.webhook_body(job.operation_id)))[0] == 200
    done = await job_of(db, payment)
    assert (done.state, done.receipt_id) == ("done", None)
    fake.give_receipt_id(job.operation_id)
    assert (await kit.deliver(fake.webhook_body(job.operation_id)))[0] == 200
    later = await job_of(db, payment)
    assert (later.state, later.receipt_id) == ("done", f"rcpt-{job.operation_id}")
    assert later.finished == done.finished and kit.receipts_counted("done") == 1


@pytest_twisted.ensureDeferred
async def test_webhook_racing_polling_first_wins_the_other_is_a_no_op(db, kit, fake):
    a, b = await pay(db, count=2)
    await kit.worker.run()
    job_a, job_b = await job_of(db, a), await job_of(db, b)
    fake.errors[job_b.external_id] = ("E", "paper out")
    kit.clock.advance(POLL)
    fake.hold_polls = True

    # polls in flight; the webhook lands first
    arrived = fake.arrival("poll")
    polling = defer.ensureDeferred(kit.worker.run())
    await arrived
    fake.complete(job_a.operation_id)
    fake.complete(job_b.operation_id)
    assert (await kit.deliver(fake.webhook_body(job_a.operation_id)))[0] == 200
    assert (await kit.deliver(fake.webhook_body(job_b.operation_id)))[0] == 200
    first_a, first_b = await job_of(db, a), await job_of(db, b)
    assert (first_a.state, first_b.state) == ("done", "failed")
    fake.release()
    assert (await polling)["followed"] == 2
    assert (await job_of(db, a)).finished == first_a.finished
    assert (await job_of(db, b)).finished == first_b.finished
    assert kit.receipts_counted("done") == 1 and kit.receipts_counted("failed") == 1

    # polling lands first; the late webhook is a no-op
    [c] = await pay(db)
    fake.hold_polls = False
    await settle(kit)
    done = await job_of(db, c)
    assert done.state == "done"
    assert (await kit.deliver(fake.webhook_body(done.operation_id)))[0] == 200
    assert (await job_of(db, c)).finished == done.finished
    assert kit.receipts_counted("done") == 2


@pytest_twisted.ensureDeferred
async def test_webhook_before_the_post_answer_is_matched_by_external_id(db, kit, fake):
    fake.post_modes = ["accept-hang"]
    [payment] = await pay(db)
    arrived = fake.arrival("post")
    running = defer.ensureDeferred(kit.worker.run())
    await arrived
    op = fake.complete(fake.operation_for((await job_of(db, payment)).external_id)["id"])
    assert (await kit.deliver(fake.webhook_body(op["id"])))[0] == 200
    job = await job_of(db, payment)
    assert (job.state, job.operation_id) == ("done", op["id"])
    kit.clock.advance(30)  # the POST's answer never comes; the job is done anyway
    await running
    assert (await job_of(db, payment)).state == "done"
    kit.clock.advance(3600)
    await kit.worker.run()
    assert fake.posts[job.external_id] == 1


@pytest_twisted.ensureDeferred
async def test_webhook_authentication_and_defensive_parsing(db, kit, fake):
    [payment] = await pay(db)
    await kit.worker.run()
    op_id = (await job_of(db, payment)).operation_id
    fake.complete(op_id)
    good = fake.webhook_body(op_id)

    assert (await kit.deliver(good, secret="wrong"))[0] == 404
    assert (await kit.deliver(good, secret=SECRET[:-1]))[0] == 404
    r = await kit.web.post("http://smartyd/webhooks/dreamkas", data=good)
    assert r.code == 404
    assert (await job_of(db, payment)).state == "pending"  # nothing applied

    assert (await kit.deliver(b"x" * (MAX_BODY + 1)))[0] == 413
    for garbage in (b"", b"not json", b"[1, 2]", b'{"type": 5}', "\xff".encode("latin-1"),
                    b'{"type": "OPERATION", "data": {"id": "1", "status": "WEIRD"}}',
                    b'{"type": "OPERATION", "data": []}'):
        assert (await kit.deliver(garbage))[0] == 400, garbage
    assert await kit.deliver(b'{"action": "CREATE", "type": "SHIFT", "data": {}}') == \
        (200, {"ok": True, "ignored": "SHIFT"})
    # an operation that is not ours
    assert (await kit.deliver(json.dumps({"type": "OPERATION", "data": {
        "id": "f" * 24, "externalId": "someone-else", "status": "SUCCESS"}}).encode()))[0] == 200
    assert (await job_of(db, payment)).state == "pending"

    assert (await kit.deliver(good))[0] == 200
    assert (await job_of(db, payment)).state == "done"

    # an empty secret disables the webhook
    disabled = Kit(db, fake, secret="")
    assert (await disabled.deliver(good, secret=""))[0] == 404
    assert (await disabled.deliver(good, secret="anything"))[0] == 404


# -- scale and concurrency ------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_a_thousand_payments_get_a_thousand_receipts_none_twice(db, kit, fake):
    started = time.monotonic()
    made = await pay(db, amount="10.00", count=1000)
    await kit.worker.run()
    assert (await db.fetchval("SELECT count(*) FROM receipt_jobs WHERE state = 'pending'")) == 1000
    kit.clock.advance(POLL)
    await kit.worker.run()
    counts = await db.run(jobs.counts)
    assert counts["done"] == 1000, counts
    per_external_id = fake.receipts_per_external_id()
    assert len(per_external_id) == 1000 and set(per_external_id.values()) == {1}
    assert set(fake.posts.values()) == {1} and len(fake.posts) == 1000
    expected = {jobs.external_id_for(p.id, p.provider, p.external_id) for p in made}
    assert set(per_external_id) == expected
    assert kit.receipts_counted("done") == 1000
    assert time.monotonic() - started < 20


@pytest_twisted.ensureDeferred
async def test_two_workers_claiming_at_once_post_each_receipt_once(db, make_db, fake):
    clock = Clock()
    a = Kit(db, fake, clock=clock, batch=25)
    b = Kit(await make_db(), fake, clock=clock, batch=25)
    await pay(db, count=300)
    stats = await defer.gatherResults([defer.ensureDeferred(a.worker.run()),
                                       defer.ensureDeferred(b.worker.run())])
    assert stats[0]["posted"] + stats[1]["posted"] == 300
    assert min(stats[0]["posted"], stats[1]["posted"]) > 0  # they really did work side by side
    assert set(fake.posts.values()) == {1} and len(fake.posts) == 300
    clock.advance(POLL)
    stats = await defer.gatherResults([defer.ensureDeferred(a.worker.run()),
                                       defer.ensureDeferred(b.worker.run())])
    assert stats[0]["followed"] + stats[1]["followed"] == 300
    assert (await db.run(jobs.counts))["done"] == 300
    assert set(fake.receipts_per_external_id().values()) == {1}
    assert sum(fake.gets.values()) == 300


# -- devices and positions cache ------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_devices_and_positions_are_cached_for_cache_lifetime(db, kit, fake):
    def fetches():
        return fake.list_reads["/api/devices"], fake.list_reads["/api/v2/products"]

    await pay(db)
    await kit.worker.run()
    assert fetches() == (1, 1)
    kit.clock.advance(1799)
    await pay(db)
    await kit.worker.run()
    assert fetches() == (1, 1)
    kit.clock.advance(2)
    await pay(db)
    await kit.worker.run()
    assert fetches() == (2, 2)

    # a PRODUCT webhook makes the next run refetch the positions
    fake.products.append({"id": "p-9", "name": "Антенна", "tax": "NDS_20"})
    assert (await kit.deliver(json.dumps({"action": "CREATE", "type": "PRODUCT",
                                          "data": fake.products[-1]}).encode()))[0] == 200
    [payment] = await pay(db, details={"service": "антенна"})
    await kit.worker.run()
    assert fetches() == (2, 3)
    job = await job_of(db, payment)
    assert fake.bodies[job.operation_id]["positions"][0]["name"] == "Антенна"

    # refresh now (the admin command's work), and a failed refresh keeps the old copy
    snapshot = await kit.catalog.refresh()
    assert fetches() == (3, 4) and [d["id"] for d in snapshot.devices] == [109266]
    fake.token = "expired"
    kit.clock.advance(1801)
    snapshot = await kit.catalog.get()
    assert snapshot.stale and [p["name"] for p in snapshot.products][-1] == "Антенна"


@pytest.mark.parametrize("honours_paging", [True, False])
@pytest_twisted.ensureDeferred
async def test_positions_are_read_past_the_first_page(db, kit, fake, honours_paging):
    """
    The Kabinet lists page (a short default page, ``limit``/``offset``): a
    position past the first page still lends its name and VAT to a receipt.
    A server that ignores the paging answers the whole list each time: read once.
    """
    fake.honours_paging = honours_paging
    kit.api.page_size = 10
    fake.products = [{"id": f"p-{i}", "name": f"Услуга {i}", "tax": "NDS_NO_TAX"}
                     for i in range(25)]
    fake.products.append({"id": "p-tv", "name": "Телевидение", "tax": "NDS_20"})
    snapshot = await kit.catalog.refresh()
    assert [p["id"] for p in snapshot.products] == [p["id"] for p in fake.products]
    pages = fake.requests.count(("GET", "/api/v2/products"))
    assert pages == (4 if honours_paging else 2)  # 10 + 10 + 6 + the empty end / the same list
    kit.clock.advance(1)
    [payment] = await pay(db, details={"service": "телевидение"})
    await kit.worker.run()
    job = await job_of(db, payment)
    [position] = fake.bodies[job.operation_id]["positions"]
    assert (position["name"], position["tax"]) == ("Телевидение", "NDS_20")


@pytest_twisted.ensureDeferred
async def test_a_list_longer_than_max_pages_is_not_taken_for_the_whole(db, kit, fake):
    kit.api.page_size, kit.api.max_pages = 10, 2
    fake.products = [{"id": f"p-{i}", "name": f"Услуга {i}"} for i in range(25)]
    with pytest.raises(PartnerUnavailable, match="more than 20 items"):
        await kit.api.products()


@pytest_twisted.ensureDeferred
async def test_device_id_zero_needs_exactly_one_device(db, kit, fake):
    fake.devices.append({"id": 2, "name": "Касса 2"})
    [payment] = await pay(db)
    await kit.worker.run()  # logged as a setup error; the job waits, untouched
    job = await job_of(db, payment)
    assert (job.state, job.attempts) == ("queued", 0)
    assert ("POST", "/api/receipts") not in fake.requests
    configured = Kit(db, fake, device_id=2)
    await configured.worker.run()
    job = await job_of(db, payment)
    assert job.state == "pending" and fake.bodies[job.operation_id]["deviceId"] == 2


# -- stuck receipts: a gauge, and one warning per job and state ------------------------------------
STUCK = 600


async def rounds(kit, seconds: float, every: float = POLL) -> None:
    """A worker round every ``every`` seconds for ``seconds`` of the kit's clock."""
    for _ in range(int(seconds // every)):
        kit.clock.advance(every)
        await kit.worker.run()


def stuck_gauge(kit) -> dict:
    return {s: kit.metrics.receipts_stuck.labels(s)._value.get()
            for s in ("queued", "posting", "pending")}


def stuck_warnings(events) -> list:
    return [(e["payment_id"], e["state"]) for e in events
            if "stuck_after" in e.get("log_format", "") and e.get("log_level").name == "warn"]


@pytest_twisted.ensureDeferred
async def test_a_receipt_stuck_queued_is_counted_and_warned_once_across_restarts(db, fake):
    fake.devices.append({"id": 2, "name": "Касса 2"})  # device_id 0: which one? never posted
    kit = Kit(db, fake, stuck_after=STUCK)
    [payment] = await pay(db)
    with captured_events("smartyd.fiscal.worker") as events:
        await kit.worker.run()
        await rounds(kit, STUCK - POLL)  # claimed and handed back every round: still queued
        assert stuck_gauge(kit) == {"queued": 0, "posting": 0, "pending": 0}
        assert stuck_warnings(events) == []
        await rounds(kit, 2 * POLL)
        assert stuck_gauge(kit) == {"queued": 1, "posting": 0, "pending": 0}
        assert stuck_warnings(events) == [(payment.id, "queued")]
        await rounds(kit, 10 * POLL)
        assert stuck_warnings(events) == [(payment.id, "queued")]  # once, not every round
        # A restart (a new worker, new metrics; the same queue): counted, not warned again.
        kit = Kit(db, fake, clock=kit.clock, stuck_after=STUCK)
        await kit.worker.run()
        assert stuck_gauge(kit)["queued"] == 1
        assert stuck_warnings(events) == [(payment.id, "queued")]
        # The device is set: the receipt moves on, and is no longer stuck.
        kit = Kit(db, fake, clock=kit.clock, stuck_after=STUCK, device_id=2)
        assert (await kit.worker.run())["stuck"] == 0
        assert (await job_of(db, payment)).state == "pending"
        assert stuck_gauge(kit) == {"queued": 0, "posting": 0, "pending": 0}


@pytest_twisted.ensureDeferred
async def test_a_receipt_stuck_posting_then_pending_is_warned_once_per_state(db, kit, fake):
    kit.worker.stuck_after = STUCK
    fake.post_modes = ["500"] * 5  # tries back off 30, 60, 120, 240, 480 s: over 600 s posting
    fake.polls_until_done = 10 ** 6  # then the cash device never prints it
    [payment] = await pay(db)
    with captured_events("smartyd.fiscal.worker") as events:
        await kit.worker.run()
        await rounds(kit, 1020, every=60)
        job = await job_of(db, payment)
        assert job.state == "pending" and fake.posts[job.external_id] == 6
        assert stuck_warnings(events) == [(payment.id, "posting")]
        assert stuck_gauge(kit) == {"queued": 0, "posting": 0, "pending": 0}
        await rounds(kit, STUCK + POLL)
        assert stuck_gauge(kit) == {"queued": 0, "posting": 0, "pending": 1}
        assert stuck_warnings(events) == [(payment.id, "posting"), (payment.id, "pending")]
        await rounds(kit, 3600, every=600)  # status polls back off to hourly: still one warning
        assert stuck_warnings(events) == [(payment.id, "posting"), (payment.id, "pending")]
        fake.complete(job.operation_id)
        await rounds(kit, 3600, every=600)
    assert (await job_of(db, payment)).state == "done"
    assert stuck_gauge(kit) == {"queued": 0, "posting": 0, "pending": 0}
    assert fake.receipts_per_external_id() == {job.external_id: 1}


# -- wiring: install, the poller, the admin commands ----------------------------------------------
def dreamkas_config(**overrides):
    section = {"enabled": True, "token": TOKEN, "api_url": API, "device_id": 109266,
               "tax_mode": "SIMPLE_WO", "webhook_secret": SECRET, "poll_interval": POLL}
    section.update(overrides)
    return make_config(dreamkas=section)


@pytest_twisted.ensureDeferred
async def test_install_wires_client_poller_webhook_and_hook(db):
    app = build_app(make_config(), reactor=reactor, db=db, metrics=Metrics())
    assert not app.payments.hooks and "dreamkas" not in app.features
    assert not any(isinstance(s, HTTPClientService) for s in app.services)

    app = build_app(dreamkas_config(stuck_after=900), reactor=reactor, db=db, metrics=Metrics())
    assert app.features["dreamkas"].handle.stuck_after == 900
    [client] = [s for s in app.services if isinstance(s, HTTPClientService)]
    [poller] = app.features["dreamkas"].services
    assert isinstance(poller, Poller)
    assert (poller.job, poller.interval, poller.db) == (POLLER_JOB, POLL, None)
    assert app.payments.hooks == (enqueue_receipt,)
    [payment] = await pay(db, hooks=app.payments.hooks)
    job = await job_of(db, payment)
    # the daemon's own root routes the webhook
    stub = in_memory_client(app.root)
    op = {"id": "a" * 24, "externalId": job.external_id, "status": "SUCCESS",
          "data": {"receiptId": "r-1"}}
    r = await stub.post(f"http://smartyd/webhooks/dreamkas/{SECRET}",
                        data=json.dumps({"action": "UPDATE", "type": "OPERATION", "data": op}))
    assert r.code == 200 and (await job_of(db, payment)).state == "done"
    r = await stub.post("http://smartyd/webhooks/dreamkas/nope", data=b"{}")
    assert r.code == 404

    app = build_app(dreamkas_config(always_fiscalize=False), reactor=reactor, db=db,
                    metrics=Metrics())
    assert app.payments.hooks == ()
    with pytest.raises(ConfigError, match=r"\[dreamkas\] token"):  # (the config says so first)
        dreamkas_config(token="")


@pytest_twisted.ensureDeferred
async def test_the_poller_drives_the_worker(db, kit, fake):
    poller = Poller(POLLER_JOB, POLL, kit.worker.run, kit.clock, metrics=kit.metrics)
    [payment] = await pay(db)
    assert await poller.force() == "ok"
    assert (await job_of(db, payment)).state == "pending"
    poller.startService()  # runs now, then every poll_interval
    assert await poller.force() == "ok"
    kit.clock.advance(POLL)
    assert await poller.force() == "ok"
    assert (await job_of(db, payment)).state == "done"
    await poller.stopService()
    assert kit.clock.getDelayedCalls() == [] or all(
        not c.active() for c in kit.clock.getDelayedCalls())
    assert kit.metrics.poller_runs.labels(POLLER_JOB, "ok")._value.get() >= 3


class _Args:
    def __init__(self, **kw):
        self.action, self.state, self.payment, self.limit = None, None, None, 100
        self.__dict__.update(kw)


@pytest_twisted.ensureDeferred
async def test_admin_marks_payments_and_lists_jobs(db, kit, fake):
    cfg = dreamkas_config(always_fiscalize=False)
    [payment] = await pay(db, hooks=())
    assert await db.run(jobs.get_by_payment, payment.id) is None
    out = await cmd_receipts(db, _Args(action="fiscalize", payment=payment.id), cfg, reactor,
                             None)
    assert out["created"] is True and out["job"]["state"] == "queued"
    again = await cmd_receipts(db, _Args(action="fiscalize", payment=payment.id), cfg, reactor,
                               None)
    assert again["created"] is False and again["job"]["id"] == out["job"]["id"]
    with pytest.raises(ValueError, match="no payment 999999"):
        await cmd_receipts(db, _Args(action="fiscalize", payment=999999), cfg, reactor, None)

    await kit.worker.run()
    listed = await cmd_receipts(db, _Args(state="pending"), cfg, reactor, None)
    assert listed["counts"]["pending"] == 1
    assert [j["payment_id"] for j in listed["jobs"]] == [payment.id]
    assert listed["jobs"][0]["operation_id"] is not None
    assert (await cmd_receipts(db, _Args(state="failed"), cfg, reactor, None))["jobs"] == []
    json.dumps(listed)  # what smartyd-admin prints

    # the command line: `smartyd-admin receipts ...` parses as documented
    import argparse

    parser = argparse.ArgumentParser()
    handlers = register(parser.add_subparsers(dest="command"))
    assert set(handlers) == {"receipts"}
    args = parser.parse_args(["receipts", "--state", "failed"])
    assert (args.command, args.action, args.state) == ("receipts", None, "failed")
    args = parser.parse_args(["receipts", "fiscalize", "--payment", "7"])
    assert (args.action, args.payment) == ("fiscalize", 7)
    assert parser.parse_args(["receipts", "refresh-cache"]).action == "refresh-cache"


@pytest_twisted.ensureDeferred
async def test_smartyd_admin_receipts_command_line(db, pg_dsn, tmp_path):
    import subprocess
    import sys

    cfg = tmp_path / "smartyd.toml"
    cfg.write_text(f'[database]\ndsn = "{pg_dsn}"\n[log]\nfile = "{tmp_path}/log.jsonl"\n'
                   '[dreamkas]\nenabled = true\nalways_fiscalize = false\ntoken = "t"\n'
                   'api_url = "http://127.0.0.1:9/api"\n')

    def admin(*args):
        proc = subprocess.run([sys.executable, "-m", "smartyd.admin", "--config", str(cfg), *args],
                              capture_output=True, text=True, timeout=60)
        return proc.returncode, proc.stdout, proc.stderr

    [payment] = await pay(db, hooks=())
    code, out, err = admin("receipts", "fiscalize", "--payment", str(payment.id))
    assert code == 0, err
    job = json.loads(out)["job"]
    assert job["state"] == "queued" and job["payment_id"] == payment.id

    code, out, _ = admin("receipts", "--state", "queued")
    listed = json.loads(out)
    assert code == 0 and listed["counts"]["queued"] == 1
    assert [j["id"] for j in listed["jobs"]] == [job["id"]]

    code, out, err = admin("receipts", "fiscalize", "--payment", "999999")
    assert code == 1 and out == "" and err == "smartyd-admin: no payment 999999\n"
    code, _, err = admin("receipts", "refresh-cache")  # nothing listens there
    assert code == 1
    assert err.startswith("smartyd-admin: dreamkas: GET http://127.0.0.1:9/api/devices:")
    assert err.count("\n") == 1
