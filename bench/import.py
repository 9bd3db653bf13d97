"""
Bulk import beside a running daemon, then backup and restore of the result.

    python bench/import.py [--customers 100000] [--check-rate 1000]

Starts ``twistd -n smartyd`` on a temporary state dir (embedded PostgreSQL,
fast token listener), writes four files in our own layout (docs/IMPORT.md) --
``--customers`` customers, each with an account, a device and a subscription
-- and imports them with ``smartyd-admin import`` while a client checks a
stream token against the daemon's fast listener ``--check-rate`` times a
second.  Prints the
import's time per kind and in all, the import processes' peak RSS, the
checks answered and their longest stall (the slowest answer), then the times
of ``smartyd-admin backup`` of that database and of ``restore`` into a fresh
state dir, and the rows found there.  Targets (issue 21): import <= 60 s,
peak RSS <= 300 MB.
"""

from __future__ import annotations

import argparse
import http.client
import json
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import psycopg2

from smartyd.db.embedded import EmbeddedCluster
from smartyd.streams.tokens import TokenCodec

TWISTD = str(Path(sys.executable).with_name("twistd"))
SECRET = "bench-import-secret-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(path: Path, state: Path, http_port: int = 0, fast_port: int = 0) -> Path:
    listen = f"tcp:{http_port}:interface=127.0.0.1" if http_port else "tcp:0:interface=127.0.0.1"
    fast = f"tcp:{fast_port}:interface=127.0.0.1" if fast_port else ""
    path.write_text(f'[http]\nlisten = "{listen}"\n[state]\ndir = "{state}"\n'
                    f'[log]\nfile = "{state}/log/smartyd.jsonl"\n'
                    f'[tokens]\nsecret = "{SECRET}"\nfast_listen = "{fast}"\n'
                    f'[billing]\nmode = "full"\n')
    return path


def admin(cfg: Path, *args) -> dict:
    proc = subprocess.run([sys.executable, "-m", "smartyd.admin", "--config", str(cfg), *args],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"smartyd-admin {' '.join(args)}: {proc.stderr.strip()}")
    return json.loads(proc.stdout)


def start_daemon(cfg: Path, port: int, cwd: Path) -> subprocess.Popen:
    proc = subprocess.Popen([TWISTD, "-n", "--pidfile=", "smartyd", "--config", str(cfg)],
                            cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"daemon exited: {proc.stderr.read().decode()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        time.sleep(0.05)  # polling another process's readiness (benchmark, not a test)


class Checker(threading.Thread):
    """
    One keep-alive client checking one token ``rate`` times a second (a
    streamer re-checking its sessions), records each answer's time.  Paced,
    not flat out: on a small machine a flat-out client would take a core
    from the daemon and the import it is meant to watch.
    """

    def __init__(self, port: int, token: str, rate: float):
        super().__init__(daemon=True)
        self.port, self.path = port, f"/streams/check?token={token}&name=ch1"
        self.interval = 1.0 / rate
        self.halt = threading.Event()
        self.latencies: list[float] = []
        self.codes: dict[int, int] = {}

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        due = time.monotonic()
        while not self.halt.is_set():
            due += self.interval
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)  # pacing the load (a benchmark, not a test)
            t0 = time.monotonic()
            conn.request("GET", self.path)
            r = conn.getresponse()
            r.read()
            self.latencies.append(time.monotonic() - t0)
            self.codes[r.status] = self.codes.get(r.status, 0) + 1


def write_files(d: Path, n: int, tariff: int) -> dict:
    files = {k: d / f"{k}.csv" for k in ("customers", "accounts", "devices", "subscriptions")}
    with open(files["customers"], "w") as f:
        f.write("ext_id;name;phone\n")
        f.writelines(f"X{i};Customer {i};+7900{i:07d}\n" for i in range(n))
    with open(files["accounts"], "w") as f:
        f.write("login;customer_ext_id\n")
        f.writelines(f"login{i};X{i}\n" for i in range(n))
    with open(files["devices"], "w") as f:
        f.write("uid;account_login;serial;model\n")
        f.writelines(f"00:1a:{i >> 24 & 255:02x}:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:"
                     f"{i & 255:02x};login{i};SN{i};MAG-250\n" for i in range(n))
    with open(files["subscriptions"], "w") as f:
        f.write("customer_ext_id;tariff_id\n")
        f.writelines(f"X{i};{tariff}\n" for i in range(n))
    return files


def counts(state: Path) -> dict:
    with psycopg2.connect(EmbeddedCluster.in_state_dir(state).dsn()) as conn, \
            conn.cursor() as cur:
        out = {}
        for table in ("customers", "accounts", "devices", "subscriptions"):
            cur.execute(f"SELECT count(*) FROM {table}")
            out[table] = cur.fetchone()[0]
    conn.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=100_000)
    ap.add_argument("--check-rate", type=float, default=1000.0,
                    help="token checks per second during the import (default 1000)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="smartyd-bi-"))
    state, restored = work / "var", work / "restored"
    http_port, fast_port = free_port(), free_port()
    cfg = config(work / "bench.toml", state, http_port, fast_port)
    daemon = None
    try:
        daemon = start_daemon(cfg, http_port, work)
        channel = admin(cfg, "channel", "create", "--name", "ch1", "--url-mask",
                        "http://streamer/ch1?token=$token")
        tariff = admin(cfg, "tariff", "create", "--name", "Basic", "--price", "100",
                       "--channel", str(channel["id"]))
        probe = admin(cfg, "account", "create", "--login", "probe")
        admin(cfg, "tariff", "assign", str(probe["id"]), str(tariff["id"]))
        token = TokenCodec([SECRET], bind_ip=True).mint(
            probe["id"], channel["id"], int(time.time()) + 3600, ip="127.0.0.1")
        files = write_files(work, args.customers, tariff["id"])

        checker = Checker(fast_port, token, args.check_rate)
        checker.start()
        while not checker.latencies:
            time.sleep(0.01)
        before = len(checker.latencies)
        times = {}
        t0 = time.monotonic()
        for kind, path in files.items():
            t = time.monotonic()
            out = admin(cfg, "import", kind, str(path))
            times[kind] = time.monotonic() - t
            if out["bad"] or sum(out["created"].values()) < args.customers:
                raise SystemExit(f"import {kind}: {out}")
        total = time.monotonic() - t0
        checker.halt.set()
        checker.join(30)
        rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        during = sorted(checker.latencies[before:])
        p99 = during[int(len(during) * 0.99) - 1] if during else float("nan")

        print(f"import of {args.customers:,} customers + accounts + devices + subscriptions:"
              f" {total:.1f} s (target <= 60 s)")
        print("  " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()))
        print(f"  peak RSS of the import processes: {rss:.0f} MB (target <= 300 MB)")
        print(f"  token checks during the import: {len(during):,} answered"
              f" ({len(during) / total:,.0f}/s, codes {checker.codes}),"
              f" p99 {p99 * 1000:.1f} ms, longest stall {during[-1] * 1000:.1f} ms")

        dump = work / "smartyd.dump"
        t = time.monotonic()
        admin(cfg, "backup", str(dump))
        backup_s = time.monotonic() - t
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(60)
        daemon = None
        t = time.monotonic()
        admin(config(work / "restored.toml", restored), "restore", str(dump))
        restore_s = time.monotonic() - t
        EmbeddedCluster.in_state_dir(restored).ensure_running()
        found = counts(restored)
        print(f"backup (daemon running): {backup_s:.1f} s, {dump.stat().st_size / 2**20:.1f} MB")
        print(f"restore into a fresh state dir: {restore_s:.1f} s; rows there: {found}")
        print(json.dumps({
            "customers": args.customers, "import_s": round(total, 2),
            "import_s_by_kind": {k: round(v, 2) for k, v in times.items()},
            "peak_rss_mb": round(rss), "checks_during": len(during),
            "check_codes": {str(k): v for k, v in dict(checker.codes).items()},
            "check_p99_ms": round(p99 * 1000, 2), "longest_stall_ms": round(during[-1] * 1000, 2),
            "backup_s": round(backup_s, 2), "restore_s": round(restore_s, 2),
            "restored_rows": found}), flush=True)
    finally:
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(60)
        for s in (state, restored):
            EmbeddedCluster.in_state_dir(s).stop(mode="immediate")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
