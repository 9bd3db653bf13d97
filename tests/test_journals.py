"""
The operator's journals (smartyd/journals.py) on the real database: payments
made through the OSMP service (as terminals make them), receipts through the
worker against the fake Dreamkas, pollers' runs through the real Poller.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import date, datetime

import pytest
import pytest_twisted
from twisted.internet import reactor

from conftest import make_config
from fakes.dreamkas import FakeDreamkas
from test_dreamkas import TOKEN, Kit
from test_osmp_service import account, make_service, request
from smartyd import journals, ledger, payments
from smartyd.admin import fiscal as fiscal_admin, journals as journals_admin
from smartyd.fiscal import enqueue_receipt, jobs
from smartyd.osmp.protocol import MOSCOW
from smartyd.poller import Poller
from smartyd.vod import outbox
from smartyd.widgets.epg import POLLER_JOB as EPG_JOB


def msk(text: str) -> float:
    """``2026-03-01 23:59:58`` Moscow time as POSIX seconds."""
    return datetime.fromisoformat(text).replace(tzinfo=MOSCOW).timestamp()


async def osmp_pay(service, account_field: str, amount: str, txn_id: str, moment: str):
    """A pay through the OSMP service, QIWI's txn_date = ``moment`` (Moscow), sent at once."""
    service.clock.advance(msk(moment) - service.clock.seconds())
    answer = await service.pay(request(service, "pay", account_field, amount, txn_id=txn_id))
    assert answer.result == 0, answer
    return answer


async def day_of_payments(db):
    """Payments around Moscow midnight between 1 and 2 March 2026, one with a receipt."""
    await account(db, "alice", 42)   # payment code 426
    await account(db, "bob", 55)     # payment code 550
    s = make_service(db, hooks=[enqueue_receipt])
    await osmp_pay(s, "426", "10.45", "1001", "2026-03-01 09:00:00")
    await osmp_pay(s, "550", "20.00", "1002", "2026-03-01 23:59:58")
    # 21:00:05 UTC on 1 March, but 2 March in Moscow: QIWI's registry of the 2nd has it.
    await osmp_pay(s, "426", "5.00", "1003", "2026-03-02 00:00:05")
    plain = make_service(db, hooks=[])
    await osmp_pay(plain, "550", "7.50", "1004", "2026-02-28 23:00:00")
    # A gateway payment has no provider date: its moment is when we accepted it.
    p, _ = await db.run(payments.accept, "assist", "ord-1", 42, "100.00")
    await db.execute("UPDATE payments SET created = %s WHERE id = %s",
                     (datetime.fromisoformat("2026-03-01T22:30:00+00:00"), p.id))  # 2 Mar MSK


@pytest_twisted.ensureDeferred
async def test_payments_per_day_and_provider_count_moscow_days(db):
    await day_of_payments(db)
    out = await db.run(journals.payments_by_day, date(2026, 3, 1), date(2026, 3, 2))
    assert out["timezone"] == "UTC+03:00"
    assert out["days"] == [
        {"day": "2026-03-01", "provider": "osmp", "count": 2, "total": "30.45"},
        {"day": "2026-03-02", "provider": "assist", "count": 1, "total": "100.00"},
        {"day": "2026-03-02", "provider": "osmp", "count": 1, "total": "5.00"},
    ]
    assert out["providers"] == {"assist": {"count": 1, "total": "100.00"},
                                "osmp": {"count": 3, "total": "35.45"}}
    assert (out["count"], out["total"]) == (4, "135.45")

    only = await db.run(journals.payments_by_day, date(2026, 2, 28), date(2026, 3, 1), "osmp")
    assert [(d["day"], d["count"], d["total"]) for d in only["days"]] == [
        ("2026-02-28", 1, "7.50"), ("2026-03-01", 2, "30.45")]
    assert only["provider"] == "osmp" and only["total"] == "37.95"
    none = await db.run(journals.payments_by_day, date(2026, 3, 5), date(2026, 3, 5))
    assert (none["days"], none["count"], none["total"]) == ([], 0, "0.00")

    with pytest.raises(journals.JournalError, match="before it starts"):
        await db.run(journals.payments_by_day, date(2026, 3, 2), date(2026, 3, 1))
    with pytest.raises(journals.JournalError, match="at most 366 days"):
        await db.run(journals.payments_by_day, date(2025, 1, 1), date(2026, 1, 2))


@pytest_twisted.ensureDeferred
async def test_one_days_payments_of_a_provider_with_their_receipt_state(db):
    await day_of_payments(db)
    out = await db.run(journals.day_payments, date(2026, 3, 1), "osmp")
    assert (out["count"], out["total"], out["timezone"]) == (2, "30.45", "UTC+03:00")
    first, second = out["payments"]
    alice = await db.run(ledger.get_account, 42)
    assert first["external_id"] == "1001" and first["account"] == "426"
    assert (first["customer_id"], first["account_id"]) == (alice.customer_id, 42)
    assert first["amount"] == "10.45" and first["time"] == "2026-03-01T09:00:00+03:00"
    assert first["receipt"] == "queued" and first["receipt_job"] is not None
    assert second["external_id"] == "1002" and second["time"] == "2026-03-01T23:59:58+03:00"
    late = await db.run(journals.day_payments, date(2026, 3, 2), "osmp")
    assert [p["external_id"] for p in late["payments"]] == ["1003"]
    early = await db.run(journals.day_payments, date(2026, 2, 28), "osmp")
    assert [(p["external_id"], p["receipt"]) for p in early["payments"]] == [("1004", None)]
    gateway = await db.run(journals.day_payments, date(2026, 3, 2), "assist")
    [order] = gateway["payments"]
    assert order["account"] == "alice" and order["time"] == "2026-03-02T01:30:00+03:00"
    json.dumps([out, gateway])  # what the command line prints


@pytest_twisted.ensureDeferred
async def test_payments_commands(db):
    await day_of_payments(db)
    parser = argparse.ArgumentParser()
    handlers = journals_admin.register(parser.add_subparsers(dest="command"))

    async def admin(*argv):
        args = parser.parse_args(argv)
        return await handlers[args.command](db, args, make_config(), reactor, None)

    out = await admin("payments", "journal", "--from", "2026-03-01", "--to", "2026-03-02",
                      "--provider", "osmp")
    assert [(d["day"], d["count"]) for d in out["days"]] == [("2026-03-01", 2), ("2026-03-02", 1)]
    out = await admin("payments", "day", "--date", "2026-03-02", "--provider", "assist")
    assert [p["external_id"] for p in out["payments"]] == ["ord-1"]
    with pytest.raises(ValueError, match="not a day"):
        await admin("payments", "day", "--date", "2026-13-01", "--provider", "osmp")


# -- receipts ------------------------------------------------------------------------------------
async def receipt_payer(db):
    """Account 42 (payment code 426) of a customer with a phone for the receipt."""
    a = await account(db, "alice", 42)
    await db.run(ledger.update_customer, a.customer_id, phone="+7 900 123-45-67")


@pytest_twisted.ensureDeferred
async def test_receipt_queue_and_a_failed_receipt_retried_once_through_the_worker(db):
    fake = FakeDreamkas(TOKEN)
    kit = Kit(db, fake, max_attempts=2)
    await receipt_payer(db)
    s = make_service(db, hooks=[enqueue_receipt])
    await s.pay(request(s, "pay", "426", "10.45", txn_id="77"))
    payment = await db.run(payments.get, "osmp", "77")
    fake.post_modes = ["500"] * 2
    await kit.worker.run()
    kit.clock.advance(30)
    await kit.worker.run()
    job = await db.run(jobs.get_by_payment, payment.id)
    assert job.state == "failed" and job.last_error.startswith("gave up after 2 attempts")

    queue = await db.run(journals.receipt_queue)
    assert queue["counts"]["failed"] == 1
    [listed] = queue["jobs"]
    assert (listed["id"], listed["state"], listed["attempts"]) == (job.id, "failed", 2)
    assert listed["last_error"] == job.last_error and listed["retryable"] is True
    assert listed["since"] == job.finished.astimezone(MOSCOW).isoformat()
    assert (listed["provider"], listed["payment_external_id"], listed["amount"]) == (
        "osmp", "77", "10.45")
    assert (await db.run(journals.receipt_queue, "done"))["jobs"] == []

    retried = await db.run(journals.retry_receipt, job.id)
    assert (retried["state"], retried["attempts"]) == ("posting", 0)
    queue = await db.run(journals.receipt_queue, "posting")
    assert [j["id"] for j in queue["jobs"]] == [job.id] and queue["jobs"][0]["since"] is None
    with pytest.raises(journals.ReceiptNotRetryable, match="is posting, not failed"):
        await db.run(journals.retry_receipt, job.id)
    await kit.worker.run()  # stamps state_since, looks the externalId up, posts
    kit.clock.advance(30)
    await kit.worker.run()
    assert (await db.run(jobs.get_by_payment, payment.id)).state == "done"
    assert fake.receipts_per_external_id()[job.external_id] == 1
    with pytest.raises(journals.ReceiptNotRetryable, match="no receipt job 999999"):
        await db.run(journals.retry_receipt, 999999)


@pytest_twisted.ensureDeferred
async def test_a_receipt_given_up_while_polling_is_polled_again_on_retry(db):
    fake = FakeDreamkas(TOKEN)
    kit = Kit(db, fake, max_attempts=2)
    await receipt_payer(db)
    s = make_service(db, hooks=[enqueue_receipt])
    await s.pay(request(s, "pay", "426", "10.45", txn_id="79"))
    payment = await db.run(payments.get, "osmp", "79")
    await kit.worker.run()  # posted: pending
    fake.token = "rotated"  # every status poll is refused now
    for _ in range(3):
        kit.clock.advance(3600)
        await kit.worker.run()
    job = await db.run(jobs.get_by_payment, payment.id)
    assert job.state == "failed" and "to learn the status of operation" in job.last_error
    assert (await db.run(journals.receipt_queue, "failed"))["jobs"][0]["retryable"] is True
    fake.token = TOKEN
    retried = await db.run(journals.retry_receipt, job.id)
    assert (retried["state"], retried["operation_id"]) == ("pending", job.operation_id)
    await kit.worker.run()
    assert (await db.run(jobs.get_by_payment, payment.id)).state == "done"
    assert fake.posts[job.external_id] == 1


@pytest_twisted.ensureDeferred
async def test_a_receipt_dreamkas_failed_is_not_retried_and_the_receipts_commands(db):
    fake = FakeDreamkas(TOKEN)
    kit = Kit(db, fake)
    await receipt_payer(db)
    s = make_service(db, hooks=[enqueue_receipt])
    await s.pay(request(s, "pay", "426", "10.45", txn_id="78"))
    payment = await db.run(payments.get, "osmp", "78")
    job = await db.run(jobs.get_by_payment, payment.id)
    fake.errors[job.external_id] = ("DEVICE_OFFLINE", "Касса не в сети")
    await kit.worker.run()
    kit.clock.advance(30)
    await kit.worker.run()
    assert (await db.run(jobs.get_by_payment, payment.id)).operation_status == "ERROR"

    parser = argparse.ArgumentParser()
    handlers = fiscal_admin.register(parser.add_subparsers(dest="command"))
    cfg = make_config()

    async def admin(*argv):
        args = parser.parse_args(argv)
        return await handlers[args.command](db, args, cfg, reactor, None)

    listed = await admin("receipts", "--state", "failed")
    assert [(j["id"], j["retryable"]) for j in listed["jobs"]] == [(job.id, False)]
    assert "DEVICE_OFFLINE" in listed["jobs"][0]["last_error"]
    with pytest.raises(ValueError, match="Dreamkas failed its operation"):
        await admin("receipts", "retry", str(job.id))
    assert (await db.run(jobs.get_by_payment, payment.id)).state == "failed"
    # One the worker gave up on is handed back (the CLI warns Dreamkas is off here).
    await db.run(jobs.enqueue_payment_id,
                 (await db.run(payments.accept, "assist", "o-2", 42, "1.00"))[0].id)
    other = (await admin("receipts", "--state", "queued"))["jobs"][0]
    await db.run(jobs.fail, other["id"], "refused by Dreamkas: HTTP 400")
    out = await admin("receipts", "retry", str(other["id"]))
    assert out["job"]["state"] == "posting" and "enabled is false" in out["warning"]


# -- partner health ------------------------------------------------------------------------------
class PartnerDown(Exception):
    partner = "xmltv"
    message = "GET http://epg.test/guide.xml: HTTP 503"


@pytest_twisted.ensureDeferred
async def test_partner_health_pollers_outbox_and_epg(db):
    clock = reactor  # the pollers' job_runs times come from PostgreSQL's now()
    runs = []

    async def fails():
        runs.append(1)
        raise PartnerDown(PartnerDown.message)

    async def works():
        runs.append(1)

    assert await Poller(EPG_JOB, 3600, fails, clock, db=db).force() == "error"
    assert await Poller("billing-charge", 60, works, clock, db=db).force() == "ok"
    await db.execute("INSERT INTO channels (name, url_mask) VALUES ('c', 'http://x/$token')")
    await db.execute(
        "INSERT INTO epg_programmes (channel_id, start, stop, title) SELECT id,"
        " '2026-03-01T10:00:00Z', '2026-03-01T11:00:00Z', 'News' FROM channels")

    cid = (await db.run(ledger.create_account, "ivan")).customer_id
    stuck_id = await db.run(outbox.enqueue, "megogo", "u1", cid, "create", {})
    fresh_now = await db.fetchval("SELECT extract(epoch FROM now())::float8")
    [claimed] = await db.run(outbox.claim, float(fresh_now), float(fresh_now) + 60, 10)
    assert await db.run(outbox.finish, claimed, "failed", "HTTP 400")
    await db.run(outbox.enqueue, "tvzavr", "u2", cid, "create", {})

    now = float(fresh_now)
    health = await db.run(journals.partner_health, now)
    pollers = {p["job"]: p for p in health["pollers"]}
    assert pollers[EPG_JOB]["outcome"] == "error" and "HTTP 503" in pollers[EPG_JOB]["last_error"]
    assert pollers["billing-charge"]["outcome"] == "ok"
    assert (pollers["billing-charge"]["runs"], pollers["billing-charge"]["failures"]) == (1, 0)
    assert health["epg"]["outcome"] == "error" and health["epg"]["programmes"] == 1
    assert health["epg"]["last_sync"] == pollers[EPG_JOB]["last_finished"] is not None
    assert health["epg"]["guide_until"] == "2026-03-01T14:00:00+03:00"
    assert health["outbox"]["depth"] == {"megogo": {"failed": 1}, "tvzavr": {"queued": 1}}
    # The failed call is stuck at once; the queued one only an hour after it was made.
    assert health["outbox"]["stuck_providers"] == ["megogo"]
    assert [c["id"] for c in health["outbox"]["stuck"]] == [stuck_id]
    later = await db.run(journals.partner_health, now + 3601)
    assert later["outbox"]["stuck_providers"] == ["megogo", "tvzavr"]
    assert [c["provider"] for c in later["outbox"]["stuck"]] == ["megogo", "tvzavr"]
    assert set(health["receipts"]) == set(jobs.STATES)
    json.dumps(health)


# -- the command line, as operators run it ----------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_smartyd_admin_runs_the_journal_commands(db, pg_dsn, tmp_path):
    await day_of_payments(db)
    cfg = tmp_path / "smartyd.toml"
    cfg.write_text(f'[database]\ndsn = "{pg_dsn}"\n[log]\nfile = "{tmp_path}/log.jsonl"\n')

    def admin(*args):
        proc = subprocess.run([sys.executable, "-m", "smartyd.admin", "--config", str(cfg), *args],
                              capture_output=True, text=True, timeout=60)
        return proc.returncode, proc.stdout, proc.stderr

    code, out, err = admin("payments", "journal", "--from", "2026-03-01", "--to", "2026-03-01")
    assert code == 0, err
    assert json.loads(out)["days"] == [
        {"day": "2026-03-01", "provider": "osmp", "count": 2, "total": "30.45"}]
    code, out, err = admin("health", "partners")
    assert code == 0, err
    assert {"pollers", "outbox", "epg", "receipts"} <= set(json.loads(out))
    code, out, err = admin("payments", "journal", "--from", "2026-03-02", "--to", "2026-03-01")
    assert code == 1 and out == "" and err.count("\n") == 1 and "before it starts" in err
