"""
One charging run over N customers, each with one subscription due, and the
longest reactor stall meanwhile.

    PYTHONPATH=. python bench/billing.py --customers 100000 [--dsn DSN] [--batch 500]

Without --dsn an embedded cluster is created in a temporary state dir (and
removed).  The data is written with set-based SQL (generate_series); the run
is L{smartyd.billing.engine.run} on the daemon's own pool, and a
``LoopingCall`` probe every 5 ms measures how late the reactor answers (the
stall a token check or a pay would see).  Prints one JSON line:
``{"customers", "seconds", "max_stall_ms", "charged", "batch"}``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone

import psycopg2
from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool

from smartyd.billing import engine
from smartyd.config import Billing
from smartyd.db import Database
from smartyd.db.embedded import EmbeddedCluster
from smartyd.db.migrate import migrate

AT = datetime(2024, 2, 1, tzinfo=timezone.utc)
PROBE = 0.005


def seed(dsn: str, n: int) -> None:
    """N customers with one account, 1000.00 each, and one 300.00 tariff due at AT."""
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("TRUNCATE ledger, payments, subscriptions, promises, tariff_channels,"
                    " tariffs, accounts, customers RESTART IDENTITY CASCADE")
        cur.execute("INSERT INTO tariffs (name, price, period_months) VALUES ('bench', 300, 1)")
        cur.execute("INSERT INTO customers (id, balance) SELECT g, 1000 FROM generate_series(1, %s) g",
                    (n,))
        cur.execute("INSERT INTO ledger (customer_id, amount, kind, idem_key, balance_after)"
                    " SELECT g, 1000, 'payment', 'seed:' || g, 1000 FROM generate_series(1, %s) g",
                    (n,))
        cur.execute("INSERT INTO accounts (id, login, customer_id)"
                    " SELECT g, 'u' || g, g FROM generate_series(1, %s) g", (n,))
        cur.execute("SELECT setval('accounts_id_seq', %s)", (n,))
        cur.execute("INSERT INTO subscriptions (customer_id, tariff_id, anchor, paid_until)"
                    " SELECT g, 1, %s, %s FROM generate_series(1, %s) g", (AT, AT, n))
        cur.execute("ANALYZE")


async def bench(reactor, dsn: str, n: int, batch: int) -> dict:
    db = Database(dsn, reactor, size=4)
    await migrate(db)
    await Deferred.fromCoroutine(_to_thread(reactor, seed, dsn, n))
    stall = {"max": 0.0, "last": reactor.seconds()}

    def probe():
        now = reactor.seconds()
        stall["max"] = max(stall["max"], now - stall["last"] - PROBE)
        stall["last"] = now

    loop = task.LoopingCall(probe)
    loop.start(PROBE)
    started = time.monotonic()
    result = await engine.run(db, Billing(), AT, batch=batch)
    seconds = time.monotonic() - started
    loop.stop()
    mismatches = await db.run(_mismatch_count)
    db.close()
    return {"customers": n, "seconds": round(seconds, 2),
            "max_stall_ms": round(stall["max"] * 1000, 1), "charged": result.charged,
            "batch": batch, "balance_mismatches": mismatches}


async def _mismatch_count(tx) -> int:
    return await tx.fetchval(
        "SELECT count(*) FROM customers c WHERE balance <>"
        " (SELECT coalesce(sum(amount), 0) FROM ledger l WHERE l.customer_id = c.id)")


async def _to_thread(reactor, f, *args):
    return await deferToThreadPool(reactor, reactor.getThreadPool(), f, *args)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--customers", type=int, default=10000)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--dsn")
    args = p.parse_args()
    state = None
    dsn = args.dsn
    if dsn is None:
        state = tempfile.mkdtemp(prefix="smartyd-bench-billing-")
        dsn = EmbeddedCluster.in_state_dir(state).ensure_running()
    out = {}
    try:
        def run(reactor):
            d = Deferred.fromCoroutine(bench(reactor, dsn, args.customers, args.batch))
            return d.addCallback(out.update)

        task.react(lambda reactor: run(reactor))
    except SystemExit as e:
        if e.code:
            raise
    finally:
        if state is not None:
            EmbeddedCluster.in_state_dir(state).stop(mode="immediate")
            shutil.rmtree(state, ignore_errors=True)
    print(json.dumps(out))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
