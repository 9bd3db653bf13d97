"""
``smartyd-admin backup`` / ``restore`` as operators run them: beside a
running daemon taking OSMP pays, then into a fresh state dir.
"""

import json
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import psycopg2

from smartyd.db.embedded import EmbeddedCluster
from test_daemon import Daemon, free_port, osmp_pay

ROOT = Path(__file__).resolve().parent.parent
OSMP = '[osmp]\nusername = ""\naccount = "id"\nallow = ["127.0.0.0/8"]\n'


def admin(config, *args):
    proc = subprocess.run([sys.executable, "-m", "smartyd.admin", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=120)
    return proc.returncode, (json.loads(proc.stdout) if proc.returncode == 0 else None), \
        proc.stderr


def osmp_check(port, account):
    query = urllib.parse.urlencode({"command": "check", "txn_id": "1", "account": account,
                                    "sum": "1.00"})
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/payments/osmp?{query}",
                                timeout=10) as r:
        return r.read().decode()


class Payer(threading.Thread):
    """Pays without pause, recording (txn, result, sent, answered) for each."""

    def __init__(self, port, accounts):
        super().__init__(daemon=True)
        self.port, self.accounts = port, accounts
        self.results: list[tuple[str, int, float, float]] = []
        self.halt = threading.Event()

    def run(self):
        i = 0
        while not self.halt.is_set():
            txn = str(5_000_000 + i)
            sent = time.monotonic()
            result = osmp_pay(self.port, txn, self.accounts[i % len(self.accounts)], "10.00")
            self.results.append((txn, result, sent, time.monotonic()))
            i += 1

    def answered(self, n):
        deadline = time.monotonic() + 60
        while sum(1 for r in self.results if r[1] == 0) < n:
            assert time.monotonic() < deadline, "the daemon stopped answering pays"
            time.sleep(0.05)


def db_rows(state, sql):
    with psycopg2.connect(EmbeddedCluster.in_state_dir(state).dsn()) as conn, \
            conn.cursor() as cur:
        cur.execute(sql)
        rows = cur.fetchall()
    conn.close()
    return rows


def test_a_backup_during_pays_restores_a_consistent_snapshot_a_daemon_serves(tmp_path):
    state_a, state_b = tmp_path / "a", tmp_path / "b"
    d = Daemon(tmp_path, state_a, free_port(), extra=OSMP).start()
    restored = None
    try:
        d.wait_healthy()
        accounts = [r[0] for r in db_rows(
            state_a, "INSERT INTO accounts (login) SELECT 'bk' || g FROM generate_series(1, 5) g"
                     " RETURNING id")]
        payer = Payer(d.port, accounts)
        payer.start()
        payer.answered(20)
        started = time.monotonic()
        code, out, err = admin(d.config, "backup", str(tmp_path / "smartyd.dump"))
        finished = time.monotonic()
        payer.answered(len(payer.results) + 10)
        payer.halt.set()
        payer.join(30)
        assert code == 0, err
        assert out["tables"] > 20 and out["bytes"] > 0
        assert (tmp_path / "smartyd.dump").stat().st_mode & 0o077 == 0
        before = {r[0] for r in payer.results if r[1] == 0 and r[3] < started}
        after = {r[0] for r in payer.results if r[2] > finished}
        during = [r for r in payer.results if started < r[3] < finished]
        assert before and after and during  # pays went on while the backup ran
        d.stop()

        config_b = tmp_path / "b.toml"
        config_b.write_text(f'[state]\ndir = "{state_b}"\n[log]\nfile = "{tmp_path}/b.jsonl"\n')
        code, out, err = admin(config_b, "restore", str(tmp_path / "smartyd.dump"))
        assert code == 0, err
        assert out["tables"] > 20 and out["schema_version"] > 0

        restored = Daemon(tmp_path, state_b, free_port(), extra=OSMP).start()
        restored.wait_healthy()
        paid = {r[0] for r in db_rows(
            state_b, "SELECT external_id FROM payments WHERE provider = 'osmp'")}
        assert before <= paid and not (after & paid)
        assert db_rows(state_b,
                       "SELECT c.id FROM customers c LEFT JOIN ledger l ON l.customer_id = c.id"
                       " GROUP BY c.id, c.balance HAVING c.balance <> coalesce(sum(l.amount), 0)"
                       ) == []
        balances = dict(db_rows(state_b, "SELECT id, balance::text FROM customers"))
        assert sum(float(b) for b in balances.values()) == 10 * len(paid)
        # The restored daemon serves the snapshot: its accounts, its payments (a
        # repeated pay finds the original and credits nothing).
        assert "<result>0</result>" in osmp_check(restored.port, accounts[0])
        txn = sorted(before)[0]
        assert osmp_pay(restored.port, txn, accounts[int(txn) % 5], "10.00") == 0
        assert dict(db_rows(state_b, "SELECT id, balance::text FROM customers")) == balances

        # Never over data: not while a daemon runs, not into a restored state dir.
        code, _, err = admin(config_b, "restore", str(tmp_path / "smartyd.dump"))
        assert code != 0 and err.count("\n") == 1 and "a daemon is running" in err, err
        restored.stop()
        code, _, err = admin(config_b, "restore", str(tmp_path / "smartyd.dump"))
        assert code != 0 and err.count("\n") == 1 and "is not empty" in err, err
    finally:
        d.stop()
        if restored is not None:
            restored.stop()
        for state in (state_a, state_b):
            EmbeddedCluster.in_state_dir(state).stop(mode="immediate")


def test_restore_refuses_a_file_that_is_no_backup(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(f'[state]\ndir = "{tmp_path}/s"\n[log]\nfile = "{tmp_path}/c.jsonl"\n')
    (tmp_path / "junk.dump").write_text("not a dump")
    try:
        code, _, err = admin(config, "restore", str(tmp_path / "junk.dump"))
        assert code != 0 and "not a backup pg_restore can read" in err and err.count("\n") == 1
    finally:
        EmbeddedCluster.in_state_dir(tmp_path / "s").stop(mode="immediate")
