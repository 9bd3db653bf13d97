"""
Time from SIGKILL of the embedded postmaster to a 200 on /health again, with
the daemon left running (its supervisor restarts the cluster).  Also prints,
from the daemon's log, when the supervisor noticed and how long pg_ctl took.
Usage: python bench/pg_restart.py [--runs N]
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path

from smartyd.db.embedded import PostmasterInfo

TWISTD = str(Path(sys.executable).with_name("twistd"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(port) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def wait(predicate, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            lines = proc.stderr.read().decode().strip().splitlines() or ["no output"]
            raise SystemExit(f"the daemon exited with status {proc.returncode}: {lines[-1]}")
        if predicate():
            return time.monotonic()
        time.sleep(0.01)  # polling another process's readiness (benchmark, not a test)
    raise SystemExit("timed out")


def log_time(record) -> float:
    return datetime.strptime(record["time"], "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="smartyd-bench-"))
    state, port = base / "var", free_port()
    log = state / "log" / "smartyd.jsonl"
    cfg = base / "bench.toml"
    cfg.write_text(f'[http]\nlisten = "tcp:{port}:interface=127.0.0.1"\n[state]\ndir = "{state}"\n'
                   f'[log]\nfile = "{log}"\n[tokens]\nfast_listen = ""\n')
    proc = subprocess.Popen([TWISTD, "-n", "--pidfile=", "smartyd", "--config", str(cfg)],
                            cwd=base, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    totals, noticed, restart = [], [], []
    try:
        wait(lambda: healthy(port), proc)
        for _ in range(args.runs):
            old = PostmasterInfo.read(state / "pgdata")
            lines_before = len(log.read_text().splitlines())
            killed_wall, killed = time.time(), time.monotonic()
            os.kill(old.pid, signal.SIGKILL)

            def back():
                info = PostmasterInfo.read(state / "pgdata")
                return info is not None and info.pid != old.pid and healthy(port)

            totals.append(wait(back, proc) - killed)

            def logged():  # /health may answer 200 just before the supervisor logs
                records = [json.loads(l) for l in log.read_text().splitlines()[lines_before:]]
                down = [r for r in records if r["event"].startswith("embedded PostgreSQL is not")]
                up = [r for r in records if r["event"].startswith("embedded PostgreSQL is running")]
                return (down, up) if down and up else None

            down, up = logged() or wait(logged, proc, timeout=10) and logged()
            if down and up:
                noticed.append(log_time(down[0]) - killed_wall)
                restart.append(up[0]["seconds"])
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        shutil.rmtree(base, ignore_errors=True)

    def fmt(v):
        s = sorted(v)
        return f"min {s[0]:.3f}  median {s[len(s) // 2]:.3f}  max {s[-1]:.3f}" if s else "-"

    print(f"postmaster SIGKILL -> /health 200 ({args.runs} runs, seconds):")
    print(f"  total          {fmt(totals)}")
    print(f"  noticed after  {fmt(noticed)}")
    print(f"  restart took   {fmt(restart)}")
    print(json.dumps({"total_s": [round(t, 3) for t in totals],
                      "noticed_s": [round(t, 3) for t in noticed],
                      "restart_s": restart}))


if __name__ == "__main__":
    main()
