"""
Time from `twistd -n smartyd` to a 200 on /health: cold (fresh state dir, so initdb and
migrations included), warm (cluster stopped, data kept) and after SIGKILL (cluster left
running and reused).  Usage: python bench/startup.py [--runs N]
"""

import argparse
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

TWISTD = str(Path(sys.executable).with_name("twistd"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(state: Path):
    port = free_port()
    cfg = state.parent / "bench.toml"
    cfg.write_text(f'[http]\nlisten = "tcp:{port}:interface=127.0.0.1"\n[state]\ndir = "{state}"\n'
                   f'[log]\nfile = "{state}/log/smartyd.jsonl"\n[tokens]\nfast_listen = ""\n')
    t0 = time.monotonic()
    proc = subprocess.Popen([TWISTD, "-n", "--pidfile=", "smartyd", "--config", str(cfg)],
                            cwd=state.parent, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while True:
        if proc.poll() is not None:
            lines = proc.stderr.read().decode().strip().splitlines() or ["no output"]
            raise SystemExit(f"the daemon exited with status {proc.returncode}: {lines[-1]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                if r.status == 200:
                    return proc, time.monotonic() - t0
        except OSError:
            pass
        time.sleep(0.02)  # polling another process's readiness (benchmark, not a test)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    results = {"cold": [], "warm": [], "after_sigkill": []}
    for _ in range(args.runs):
        base = Path(tempfile.mkdtemp(prefix="smartyd-bench-"))
        state = base / "var"
        try:
            proc, t = start(state)
            results["cold"].append(t)
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
            proc, t = start(state)
            results["warm"].append(t)
            proc.kill()
            proc.wait()
            proc, t = start(state)
            results["after_sigkill"].append(t)
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        finally:
            shutil.rmtree(base, ignore_errors=True)
    summary = {k: {"min_s": round(min(v), 3), "median_s": round(sorted(v)[len(v) // 2], 3),
                   "max_s": round(max(v), 3)} for k, v in results.items()}
    print("start to healthy (seconds):")
    for k, v in summary.items():
        print(f"  {k:<14} min {v['min_s']:.3f}  median {v['median_s']:.3f}  max {v['max_s']:.3f}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
