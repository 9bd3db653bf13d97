"""
A charging run killed in the middle (issue 11: "balance = sum of the ledger,
checked after concurrent pays + charges + a crash mid-run").

``smartyd-admin billing run`` runs as a separate process over 1500
customers (three batches of 500).  The test holds one customer of the third
batch locked, so the run commits two batches and then waits inside the
third; the process is SIGKILLed there.  OSMP pays arrive through the daemon
meanwhile, also to customers the dead run's open transaction holds.  Then an
operator reruns the same command while more pays come in.  Afterwards every
period is charged exactly once, balance == ledger sum for every customer,
and only the customers who really lack money are suspended.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from urllib.parse import urlencode

import pytest_twisted
from twisted.internet import defer, protocol, reactor

from conftest import make_config
from fakes import in_memory_client
from holding import until
from smartyd import ledger, osmp, ppc
from smartyd.billing.engine import epoch
from testapp import build

N, BATCH = 1500, 500
HELD = 1100                      # a customer of the third batch, locked by the test
PRICE, RICH, POOR, PAY = Decimal("3.00"), Decimal("10.00"), Decimal("5.00"), Decimal("10.00")


def poor(cid: int) -> bool:
    return cid % 10 == 0         # 5.00: one day paid, then debt


def paid(cid: int) -> bool:
    return cid % 7 == 0          # an OSMP pay of 10.00 during the crash and the rerun


class Run(protocol.ProcessProtocol):
    """A ``smartyd-admin`` process: its output and its end."""

    def __init__(self):
        self.out, self.err = [], []
        self.ended = defer.Deferred()

    def outReceived(self, data):
        self.out.append(data)

    def errReceived(self, data):
        self.err.append(data)

    def processEnded(self, reason):
        self.ended.callback(reason.value)


def admin_run(cfg_path, at: datetime) -> tuple[Run, object]:
    run = Run()
    args = [sys.executable, "-m", "smartyd.admin", "--config", str(cfg_path),
            "billing", "run", "--at", at.isoformat()]
    transport = reactor.spawnProcess(run, sys.executable, args, env=dict(os.environ))
    return run, transport


async def seed(tx, t0: datetime) -> None:
    """N customers (id = account id), 10.00 each (5.00 the poor), a 3.00 daily tariff due at t0."""
    await tx.execute("INSERT INTO tariffs (name, price, period_days) VALUES ('day', %s, 1)",
                     (PRICE,))
    await tx.execute(
        "INSERT INTO customers (id, balance) SELECT g, CASE WHEN g %% 10 = 0 THEN %s ELSE %s END"
        " FROM generate_series(1, %s) g", (POOR, RICH, N))
    await tx.execute(
        "INSERT INTO ledger (customer_id, amount, kind, cause, idem_key, balance_after)"
        " SELECT id, balance, 'payment', 'seed', 'seed:' || id, balance FROM customers")
    await tx.execute("INSERT INTO accounts (id, login, customer_id)"
                     " SELECT g, 'u' || g, g FROM generate_series(1, %s) g", (N,))
    await tx.execute("SELECT setval('accounts_id_seq', %s)", (N,))
    await tx.execute(
        "INSERT INTO subscriptions (customer_id, tariff_id, anchor, paid_until)"
        " SELECT g, (SELECT id FROM tariffs), %s, %s FROM generate_series(1, %s) g",
        (t0, t0, N))


@pytest_twisted.ensureDeferred
async def test_a_run_killed_mid_batch_then_rerun_charges_each_period_once(
        db, make_db, pg_dsn, tmp_path):
    # The run's moment is now (to the minute): the pays' own settlement (at
    # the payment's time, a little later) sees the same three days due.
    at = datetime.fromtimestamp(int(time.time()) // 60 * 60, timezone.utc)
    t0 = at - timedelta(days=2)
    await db.run(seed, t0)
    cfg_path = tmp_path / "smartyd.toml"
    cfg_path.write_text(f'[database]\ndsn = "{pg_dsn}"\n'
                        f'[log]\nfile = "{tmp_path}/smartyd.jsonl"\n')

    pays_db = await make_db(size=12, timeout=60, acquire_timeout=60)
    app = build(make_config(osmp={"username": "", "allow": ["127.0.0.0/8"]}), reactor, pays_db)
    http = in_memory_client(app.root)

    async def pay(cid: int, txn: int) -> None:
        query = urlencode({"command": "pay", "txn_id": str(txn), "account": ppc.encode(cid),
                           "sum": str(PAY), "txn_date": osmp.format_txn_date(time.time())})
        body = await (await http.get(f"http://127.0.0.1/payments/osmp?{query}")).content()
        assert b"<result>0</result>" in body, (cid, body)

    # The test's own transaction holds customer HELD until `release` fires.
    release, holding = defer.Deferred(), defer.Deferred()
    locker = await make_db(size=1, timeout=120)

    async def hold(tx):
        await tx.execute("SELECT 1 FROM customers WHERE id = %s FOR UPDATE", (HELD,))
        holding.callback(await tx.fetchval("SELECT pg_backend_pid()"))
        await release

    held = locker.run(hold)
    locker_pid = await holding

    run, transport = admin_run(cfg_path, at)

    async def blocked_backend():
        return await db.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
            (locker_pid,))

    run_pid = await until(blocked_backend, "the run to wait on the held customer")

    # Two batches are committed, the third is open in the run's transaction.
    async def charged_customers():
        return [r[0] for r in await db.fetchall(
            "SELECT DISTINCT customer_id FROM ledger WHERE kind = 'charge' ORDER BY 1")]
    assert await charged_customers() == list(range(1, 2 * BATCH + 1))

    # Pays meanwhile: to committed customers, to ones the run's open batch
    # holds (they wait for it), to the held one and to ones after it.
    payees = [c for c in range(1, N + 1) if paid(c)]
    first = [c for c in payees if c <= HELD + 100]
    pays = [defer.ensureDeferred(pay(c, 10_000 + c)) for c in first]

    transport.signalProcess("KILL")
    await run.ended
    release.callback(None)
    await held
    # The killed run's backend finds its client gone and rolls the batch back.
    await until(lambda: db.fetchval(
        "SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = %s)", (run_pid,)),
        "the killed run's backend to end")
    await defer.gatherResults(pays)
    assert not [c for c in await charged_customers()
                if c > 2 * BATCH and not paid(c)], "the killed batch committed"

    # The operator reruns the same command while the remaining pays come in.
    rerun, _ = admin_run(cfg_path, at)
    pays = [defer.ensureDeferred(pay(c, 10_000 + c)) for c in payees if c not in first]
    await defer.gatherResults(pays)
    await rerun.ended
    out = json.loads(b"".join(rerun.out))
    assert out["charged"] > 0, b"".join(rerun.err)

    # Nothing twice, nothing lost.
    assert await db.run(ledger.balance_mismatches) == []
    assert await db.fetchval("SELECT count(*) FROM payments") == len(payees)
    assert await db.fetchval("SELECT count(*) FROM ledger WHERE kind = 'payment'") \
        == N + len(payees)
    rows = await db.fetchall(
        "SELECT c.id, c.balance, s.state, s.anchor, s.paid_until, a.active, a.status_reason,"
        " (SELECT array_agg(l.idem_key ORDER BY l.id) FROM ledger l"
        "   WHERE l.customer_id = c.id AND l.kind = 'charge')"
        " FROM customers c JOIN subscriptions s ON s.customer_id = c.id"
        " JOIN accounts a ON a.customer_id = c.id ORDER BY c.id")
    assert len(rows) == N
    sid_of = dict(await db.fetchall("SELECT customer_id, id FROM subscriptions"))
    for cid, balance, state, anchor, paid_until, active, reason, keys in rows:
        start = (POOR if poor(cid) else RICH) + (PAY if paid(cid) else 0)
        assert balance == start - PRICE * len(keys), cid
        assert len(set(keys)) == len(keys), cid
        first_days = [f"charge:{sid_of[cid]}:{epoch(t0)}:{k}" for k in range(3)]
        if not poor(cid):                      # three days, each once, never in debt
            assert keys == first_days, cid
            assert (state, paid_until, active, reason) == (
                "active", at + timedelta(days=1), True, "ACTIVE"), cid
        elif not paid(cid):                    # one day, then debt: rightly suspended
            assert keys == first_days[:1], cid
            assert (state, active, reason) == ("suspended", False, "DEBT"), cid
        else:                                  # debt (or not) ended by the pay
            assert keys[0] == first_days[0], cid
            assert (state, active, reason) == ("active", True, "ACTIVE"), cid
            assert paid_until > at and balance >= 0, cid
