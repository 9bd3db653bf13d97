"""
OSMP throughput: the daemon over HTTP against PostgreSQL alone.

Starts ``twistd -n smartyd`` on a temporary state dir (embedded PostgreSQL,
OSMP without Basic auth, allowlist 127.0.0.0/8), creates accounts, then runs
``--rounds`` rounds of three phases of ``--seconds`` each, one after the
other on the same database:

  pay     ``--terminals`` concurrent terminals, each on its own keep-alive
          connection, sending ``command=pay`` with unique txn_ids to random
          accounts, each waiting for its answer before the next request;
  check   the same with ``command=check``;
  direct  pgbench with the same number of clients running the same durable
          transaction straight against the same PostgreSQL: balance update,
          ledger row, payment row linked to it, COMMIT (synchronous commit,
          as the daemon's).

It prints the rates, the ratios pay/direct and check/direct against their
targets (>= 0.25 and >= 0.5), latency percentiles, and checks afterwards that
every answer-0 pay is exactly one payment and one ledger row and that every
balance equals its ledger.

    /tmp/v/bin/python bench/osmp.py [--seconds 5] [--rounds 3] [--terminals 16]
                                    [--accounts 1000] [--pool-size 16] [--instances 1]
                                    [--warmup 1]

The last line printed is the figures as one JSON object (``pay_per_s``,
``check_per_s``, ``direct_tps``, ``pay_over_direct``, ``check_over_direct``,
``consistency``).

``--instances N`` starts N smartyd processes on the one database (as behind a
load balancer) and spreads the terminals over them.

The load generator is a lean asyncio HTTP/1.1 client, so that on a small
machine most CPU goes to the daemon and PostgreSQL rather than to the client.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import itertools
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import psycopg2

from smartyd import ppc
from smartyd.db.embedded import EmbeddedCluster
from smartyd.osmp import format_txn_date

TWISTD = str(Path(sys.executable).with_name("twistd"))
TARGETS = {"pay": 0.25, "check": 0.5}

PGBENCH_SCRIPT = """\
\\set acc random(1, {accounts})
BEGIN;
UPDATE customers SET balance = balance + 10.00, updated = now() WHERE id = :acc RETURNING balance AS bal \\gset
INSERT INTO ledger (customer_id, account_id, amount, kind, cause, idem_key, balance_after) VALUES (:acc, :acc, 10.00, 'payment', 'direct', 'direct:' || gen_random_uuid(), :bal) RETURNING id AS lid \\gset
INSERT INTO payments (provider, external_id, account_id, customer_id, amount, ledger_id) VALUES ('direct', gen_random_uuid()::text, :acc, :acc, 10.00, :lid);
COMMIT;
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bin(name: str) -> Path:
    spec = importlib.util.find_spec("pgserver")
    return Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin" / name


def last_line(text: str) -> str:
    """The last non-empty line of a process's output (its error, as a rule)."""
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"


def phase_seconds(text: str) -> float:
    """``--seconds``: at least 1, as pgbench runs whole seconds."""
    seconds = float(text)
    if seconds < 1:
        raise argparse.ArgumentTypeError(f"at least 1 (pgbench runs whole seconds): {text}")
    return seconds


def warmup_seconds(text: str) -> float:
    """``--warmup``: 0 (none) or more."""
    seconds = float(text)
    if seconds < 0:
        raise argparse.ArgumentTypeError(f"0 or more: {text}")
    return seconds


# -- the daemon ----------------------------------------------------------------------------
class Daemon:
    """
    One ``twistd -n smartyd`` process.  The first owns the embedded cluster
    under its state dir; others (``dsn`` given) share that database, as
    instances behind a load balancer do.
    """

    def __init__(self, root: Path, pool_size: int, dsn: str = ""):
        self.root = root
        self.state = root / "state"
        self.port = free_port()
        self.owns_cluster = not dsn
        self.log = self.state / "log" / "smartyd.jsonl"
        self.config = root / "smartyd.toml"
        root.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            f'[http]\nlisten = "tcp:{self.port}:interface=127.0.0.1"\n'
            f'[database]\npool_size = {pool_size}\ndsn = "{dsn}"\n'
            f'[state]\ndir = "{self.state}"\n'
            f'[log]\nfile = "{self.log}"\nlevel = "info"\n'
            f'[tokens]\nfast_listen = ""\n'
            f'[osmp]\nusername = ""\nallow = ["127.0.0.0/8"]\nmax_sum = "15000.00"\n'
        )
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "smartyd", "--config", str(self.config)],
            cwd=self.root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the daemon exited with status {self.proc.returncode}:"
                                 f" {last_line(self.proc.stderr.read().decode())}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health",
                                            timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)  # another process's readiness: polling is all there is
        raise SystemExit("the daemon did not become healthy in 120 s")

    def dsn(self) -> str:
        return EmbeddedCluster.in_state_dir(self.state).dsn()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.owns_cluster:
            # The daemon stops its embedded cluster on the way out; make sure.
            EmbeddedCluster.in_state_dir(self.state).stop(mode="immediate")


# -- the terminals ---------------------------------------------------------------------------
_RESULT = re.compile(rb"<result>(\d+)</result>")


async def read_response(reader: asyncio.StreamReader) -> bytes:
    """One HTTP/1.1 response body (Content-Length or chunked)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if status != 200:
        raise RuntimeError(f"HTTP {status}: {head!r}")
    lower = head.lower()
    m = re.search(rb"content-length:\s*(\d+)", lower)
    if m:
        return await reader.readexactly(int(m.group(1)))
    if b"transfer-encoding: chunked" not in lower:
        raise RuntimeError(f"no body framing: {head!r}")
    body = bytearray()
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return bytes(body)
        body += await reader.readexactly(size)
        await reader.readexactly(2)


async def terminal(port: int, next_path, deadline: float, results: Counter,
                   latencies: list) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    loop = asyncio.get_running_loop()
    try:
        while loop.time() < deadline:
            path = next_path()
            started = loop.time()
            writer.write(b"GET " + path + b" HTTP/1.1\r\nHost: bench\r\n\r\n")
            body = await read_response(reader)
            latencies.append(loop.time() - started)
            results[int(_RESULT.search(body).group(1))] += 1
    finally:
        writer.close()


async def drive(ports: list[int], terminals: int, seconds: float,
                next_path) -> tuple[Counter, list, float]:
    """``terminals`` terminals spread over ``ports``, for ``seconds``."""
    loop = asyncio.get_running_loop()
    results: Counter = Counter()
    latencies: list = []
    started = loop.time()
    await asyncio.gather(*[terminal(ports[i % len(ports)], next_path, started + seconds,
                                    results, latencies)
                           for i in range(terminals)])
    return results, latencies, loop.time() - started


def pay_paths(accounts: int, txn_ids):
    def path() -> bytes:
        code = ppc.encode(random.randint(1, accounts))
        return (f"/payments/osmp?command=pay&txn_id={next(txn_ids)}&account={code}"
                f"&sum=10.00&txn_date={format_txn_date(time.time())}").encode()
    return path


def check_paths(accounts: int, txn_ids):
    def path() -> bytes:
        code = ppc.encode(random.randint(1, accounts))
        return (f"/payments/osmp?command=check&txn_id={next(txn_ids)}&account={code}"
                f"&sum=10.00").encode()
    return path


# -- PostgreSQL alone -------------------------------------------------------------------------
def pgbench(dsn: str, clients: int, seconds: float, script: Path) -> float:
    """Transactions per second of ``script`` run by pgbench for ``seconds`` (whole)."""
    params = dict(kv.split("=", 1) for kv in dsn.split())
    out = subprocess.run(
        [str(pg_bin("pgbench")), "-n", "-c", str(clients), "-j", str(min(clients, os.cpu_count() or 1)),
         "-T", str(int(seconds)), "-f", str(script),
         "-h", params["host"], "-p", params["port"], "-U", params["user"], params["dbname"]],
        capture_output=True, text=True,
    )
    if out.returncode != 0:
        raise SystemExit(f"pgbench failed: {last_line(out.stderr)}")
    m = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out.stdout)
    if m is None:
        raise SystemExit(f"cannot read pgbench's output: {last_line(out.stdout)}")
    return float(m.group(1))


def direct(dsn: str, clients: int, seconds: float, accounts: int, workdir: Path) -> float:
    """Transactions per second of the same transaction run by pgbench."""
    script = workdir / "pay.sql"
    script.write_text(PGBENCH_SCRIPT.format(accounts=accounts))
    return pgbench(dsn, clients, seconds, script)


def verify(dsn: str, pays_ok: int) -> dict:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*), count(ledger_id) FROM payments WHERE provider = 'osmp'")
        payments, linked = cur.fetchone()
        cur.execute("SELECT count(*) FROM ledger WHERE idem_key LIKE 'payment:osmp:%%'")
        ledger_rows = cur.fetchone()[0]
        cur.execute(
            "SELECT count(*) FROM (SELECT c.id FROM customers c LEFT JOIN ledger l"
            " ON l.customer_id = c.id GROUP BY c.id, c.balance"
            " HAVING c.balance <> coalesce(sum(l.amount), 0)) m"
        )
        mismatches = cur.fetchone()[0]
    ok = payments == linked == ledger_rows == pays_ok and mismatches == 0
    return {"ok": ok, "payments": payments, "ledger_rows": ledger_rows,
            "answered_0": pays_ok, "balance_mismatches": mismatches}


def percentiles(latencies: list) -> str:
    if len(latencies) < 2:
        return "-"
    q = statistics.quantiles(latencies, n=100)
    return f"p50 {q[49] * 1000:.1f} ms, p99 {q[98] * 1000:.1f} ms"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=phase_seconds, default=5.0,
                   help="per phase and round (at least 1)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--terminals", type=int, default=16)
    p.add_argument("--accounts", type=int, default=1000)
    p.add_argument("--pool-size", type=int, default=16, help="[database] pool_size")
    p.add_argument("--instances", type=int, default=1,
                   help="smartyd processes on the one database (terminals spread over them)")
    p.add_argument("--warmup", type=warmup_seconds, default=1.0,
                   help="seconds of checks before the rounds (0: none)")
    p.add_argument("--keep", action="store_true", help="keep the state dir")
    args = p.parse_args()

    root = Path(tempfile.mkdtemp(prefix="smartyd-bench-"))
    daemons = [Daemon(root / "smartyd-1", args.pool_size)]
    try:
        print(f"starting smartyd (state {daemons[0].state}) ...", flush=True)
        daemons[0].start()
        dsn = daemons[0].dsn()
        for i in range(2, args.instances + 1):
            daemons.append(Daemon(root / f"smartyd-{i}", args.pool_size, dsn=dsn))
            daemons[-1].start()
        with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
            # Ids 1..N, each with its customer of the same id (the trigger of
            # migration 0006): payment codes and pgbench address customer g.
            cur.execute("INSERT INTO accounts (id, login) SELECT g, 'bench' || g"
                        " FROM generate_series(1, %s) g", (args.accounts,))
            cur.execute("SELECT setval('accounts_id_seq', %s)", (args.accounts,))
        txn_ids = itertools.count(10**9)
        port, n, secs = [d.port for d in daemons], args.terminals, args.seconds
        if args.warmup:
            asyncio.run(drive(port, n, args.warmup, check_paths(args.accounts, txn_ids)))

        # Rounds of pay, check, direct: the machine's other load (and the
        # database's growth) then weighs on all three alike.
        rounds = []
        pays_ok = 0
        for i in range(args.rounds):
            pay_results, pay_lat, pay_t = asyncio.run(
                drive(port, n, secs, pay_paths(args.accounts, txn_ids)))
            check_results, check_lat, check_t = asyncio.run(
                drive(port, n, secs, check_paths(args.accounts, txn_ids)))
            direct_tps = direct(dsn, n, secs, args.accounts, root)
            pays_ok += pay_results[0]
            r = {"pay": pay_results[0] / pay_t, "check": check_results[0] / check_t,
                 "direct": direct_tps}
            rounds.append(r)
            print(f"round {i + 1}: pay {r['pay']:7.1f}/s ({percentiles(pay_lat)};"
                  f" results {dict(pay_results)})  check {r['check']:7.1f}/s"
                  f" ({percentiles(check_lat)}; results {dict(check_results)})"
                  f"  direct {direct_tps:7.1f} tx/s", flush=True)
        checked = verify(dsn, pays_ok)

        median = {k: statistics.median(r[k] for r in rounds) for k in ("pay", "check", "direct")}
        ratios = {k: statistics.median(r[k] / r["direct"] for r in rounds) for k in TARGETS}
        print()
        print(f"machine          {os.cpu_count()} CPUs; {args.instances} smartyd process(es);"
              f" {n} terminals; {args.rounds} rounds of {secs:g} s per phase;"
              f" pool_size {args.pool_size}; {args.accounts} accounts")
        print(f"pay over HTTP    {median['pay']:8.1f} /s    (median of rounds)")
        print(f"check over HTTP  {median['check']:8.1f} /s")
        print(f"direct (pgbench) {median['direct']:8.1f} tx/s  (same transaction, {n} clients)")
        for name, ratio in ratios.items():
            verdict = "meets" if ratio >= TARGETS[name] else "MISSES"
            print(f"{name + '/direct':16} {ratio:8.2f}       {verdict} the target"
                  f" >= {TARGETS[name]} (median of per-round ratios)")
        print(f"consistency      {json.dumps(checked)}")
        print(json.dumps({"pay_per_s": round(median["pay"], 1),
                          "check_per_s": round(median["check"], 1),
                          "direct_tps": round(median["direct"], 1),
                          "pay_over_direct": round(ratios["pay"], 3),
                          "check_over_direct": round(ratios["check"], 3),
                          "consistency": checked}))
        if not checked["ok"]:
            raise SystemExit("inconsistent ledger after the run")
    finally:
        for daemon in reversed(daemons):
            daemon.stop()
        if args.keep:
            print(f"state kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
