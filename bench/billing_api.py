"""
Billing API throughput: signed ``transaction/create`` over HTTP against the
same transaction straight in PostgreSQL.

Starts ``twistd -n smartyd`` on a temporary state dir (embedded PostgreSQL,
``[billing_api]`` with one client, ``[billing] mode = "full"``), creates
``--customers`` customers of that client, then runs ``--rounds`` rounds of
two phases of ``--seconds`` each on the same database:

  api     ``--clients`` concurrent billing clients, each on its own keep-alive
          connection, POSTing signed ``transaction/create`` forms (unique
          transaction ids, random customers, amount 10.00, ``comment=`` as
          the vendor's Python client sends it), each waiting for its answer;
  direct  pgbench with as many clients running the same durable transaction
          straight against the same PostgreSQL: lock the customer, the
          transaction row, the ledger row, the balance, the link, COMMIT.

It prints the rates, the ratio api/direct, latency percentiles, and checks
afterwards that every answer-0 call is exactly one transaction row with one
ledger row and that every balance equals its ledger.

    python bench/billing_api.py [--seconds 5] [--rounds 3] [--clients 16]
                                [--customers 1000] [--pool-size 16] [--warmup 1]

The last line printed is the figures as one JSON object (``api_per_s``,
``direct_tps``, ``api_over_direct``, ``consistency``).

Reuses the daemon runner and the lean HTTP/1.1 reader of ``bench/osmp.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
from collections import Counter
from pathlib import Path
from urllib.parse import urlencode

import psycopg2

sys.path.insert(0, str(Path(__file__).resolve().parent))
import osmp as osmp_bench  # noqa: E402  (bench/osmp.py: the daemon runner, HTTP reader, pgbench)

from smartyd.billing_api.signature import sign  # noqa: E402

CLIENT_ID, API_KEY = "1", "bench-billing-api-key"

PGBENCH_SCRIPT = """\
\\set c random(1, {customers})
BEGIN;
SELECT 1 FROM customers WHERE id = :c FOR UPDATE;
INSERT INTO billing_api_transactions (client_id, ext_id, customer_id, amount, comment) VALUES ('direct', gen_random_uuid()::text, :c, 10.00, '') RETURNING id AS tid \\gset
UPDATE customers SET balance = balance + 10.00, updated = now() WHERE id = :c RETURNING balance AS bal \\gset
INSERT INTO ledger (customer_id, amount, kind, cause, idem_key, balance_after) VALUES (:c, 10.00, 'transaction', 'direct', 'direct:' || :tid, :bal) RETURNING id AS lid \\gset
UPDATE billing_api_transactions SET ledger_id = :lid WHERE id = :tid;
COMMIT;
"""


class Daemon(osmp_bench.Daemon):
    """bench/osmp.py's daemon with the Billing API enabled."""

    def __init__(self, root: Path, pool_size: int):
        super().__init__(root, pool_size)
        self.config.write_text(
            self.config.read_text()
            + '[billing]\nmode = "full"\n'
            + f'[billing_api]\nenabled = true\nclients = [{{ client_id = "{CLIENT_ID}",'
            + f' api_key = "{API_KEY}" }}]\n')


_ERROR = re.compile(rb'"error":\s*(-?\d+)')


async def billing_client(port: int, next_body, deadline: float, results: Counter,
                         latencies: list) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    loop = asyncio.get_running_loop()
    try:
        while loop.time() < deadline:
            body = next_body()
            started = loop.time()
            writer.write(b"POST /billing/api/transaction/create/ HTTP/1.1\r\nHost: bench\r\n"
                         b"Content-Type: application/x-www-form-urlencoded\r\n"
                         b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            answer = await osmp_bench.read_response(reader)
            latencies.append(loop.time() - started)
            results[int(_ERROR.search(answer).group(1))] += 1
    finally:
        writer.close()


async def drive(port: int, clients: int, seconds: float, next_body):
    loop = asyncio.get_running_loop()
    results: Counter = Counter()
    latencies: list = []
    started = loop.time()
    await asyncio.gather(*[billing_client(port, next_body, started + seconds, results, latencies)
                           for _ in range(clients)])
    return results, latencies, loop.time() - started


def transaction_bodies(customer_ids: list[int], ids):
    def body() -> bytes:
        params = [("customer_id", str(random.choice(customer_ids))), ("id", str(next(ids))),
                  ("amount", "10.00"), ("comment", ""), ("client_id", CLIENT_ID)]
        return urlencode(params + [("signature", sign(params, API_KEY))]).encode()
    return body


def direct(dsn: str, clients: int, seconds: float, customers: tuple[int, int],
           workdir: Path) -> float:
    """Transactions per second of the same transaction run by pgbench."""
    script = workdir / "transaction.sql"
    lo, hi = customers
    script.write_text(PGBENCH_SCRIPT.format(customers=hi).replace("random(1,", f"random({lo},"))
    return osmp_bench.pgbench(dsn, clients, seconds, script)


def verify(dsn: str, answered_0: int) -> dict:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*), count(ledger_id) FROM billing_api_transactions"
                    " WHERE client_id = %s", (CLIENT_ID,))
        transactions, linked = cur.fetchone()
        cur.execute("SELECT count(*) FROM ledger l JOIN billing_api_transactions t"
                    " ON t.ledger_id = l.id WHERE t.client_id = %s", (CLIENT_ID,))
        ledger_rows = cur.fetchone()[0]
        cur.execute(
            "SELECT count(*) FROM (SELECT c.id FROM customers c LEFT JOIN ledger l"
            " ON l.customer_id = c.id GROUP BY c.id, c.balance"
            " HAVING c.balance <> coalesce(sum(l.amount), 0)) m")
        mismatches = cur.fetchone()[0]
    ok = transactions == linked == ledger_rows == answered_0 and mismatches == 0
    return {"ok": ok, "transactions": transactions, "ledger_rows": ledger_rows,
            "answered_0": answered_0, "balance_mismatches": mismatches}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=osmp_bench.phase_seconds, default=5.0,
                   help="per phase and round (at least 1)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--customers", type=int, default=1000)
    p.add_argument("--pool-size", type=int, default=16, help="[database] pool_size")
    p.add_argument("--warmup", type=osmp_bench.warmup_seconds, default=1.0,
                   help="seconds of calls before the rounds (0: none)")
    p.add_argument("--keep", action="store_true", help="keep the state dir")
    args = p.parse_args()

    root = Path(tempfile.mkdtemp(prefix="smartyd-bench-"))
    daemon = Daemon(root / "smartyd", args.pool_size)
    try:
        print(f"starting smartyd (state {daemon.state}) ...", flush=True)
        daemon.start()
        dsn = daemon.dsn()
        with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
            cur.execute("INSERT INTO customers (client_id, firstname) SELECT %s, 'bench' || g"
                        " FROM generate_series(1, %s) g RETURNING id",
                        (CLIENT_ID, args.customers))
            ids = sorted(r[0] for r in cur.fetchall())
        txn_ids = itertools.count(10**9)
        n, secs = args.clients, args.seconds
        if args.warmup:
            asyncio.run(drive(daemon.port, n, args.warmup, transaction_bodies(ids, txn_ids)))

        rounds, answered_0 = [], 0
        warm = verify(dsn, 0)["transactions"]
        for i in range(args.rounds):
            results, lat, took = asyncio.run(
                drive(daemon.port, n, secs, transaction_bodies(ids, txn_ids)))
            direct_tps = direct(dsn, n, secs, (ids[0], ids[-1]), root)
            answered_0 += results[0]
            r = {"api": results[0] / took, "direct": direct_tps}
            rounds.append(r)
            print(f"round {i + 1}: api {r['api']:7.1f}/s ({osmp_bench.percentiles(lat)};"
                  f" errors {dict(results)})  direct {direct_tps:7.1f} tx/s", flush=True)
        checked = verify(dsn, answered_0 + warm)

        median = {k: statistics.median(r[k] for r in rounds) for k in ("api", "direct")}
        ratio = statistics.median(r["api"] / r["direct"] for r in rounds)
        print()
        print(f"machine          {os.cpu_count()} CPUs; {n} billing clients; {args.rounds}"
              f" rounds of {secs:g} s per phase; pool_size {args.pool_size};"
              f" {args.customers} customers")
        print(f"transaction/create over HTTP {median['api']:8.1f} /s    (median of rounds)")
        print(f"direct (pgbench)             {median['direct']:8.1f} tx/s  (same transaction)")
        print(f"api/direct                   {ratio:8.2f}       (median of per-round ratios)")
        print(f"consistency      {json.dumps(checked)}")
        print(json.dumps({"api_per_s": round(median["api"], 1),
                          "direct_tps": round(median["direct"], 1),
                          "api_over_direct": round(ratio, 3), "consistency": checked}))
        if not checked["ok"]:
            raise SystemExit("inconsistent ledger after the run")
    finally:
        daemon.stop()
        if args.keep:
            print(f"state kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
