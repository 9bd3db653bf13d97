"""
The daemon as operators run it: ``twistd -n smartyd --config F`` in a
separate process, on its own embedded PostgreSQL under a temporary state dir.
"""

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import psycopg2
import pytest

from smartyd.db.embedded import EmbeddedCluster, PostmasterInfo

TWISTD = str(Path(sys.executable).with_name("twistd"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout=60.0, what="condition"):
    """Poll ``predicate`` until true (readiness of another process), or fail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def health(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
    except OSError:
        return None


class Daemon:
    def __init__(self, workdir: Path, state: Path, port: int, extra: str = ""):
        self.workdir, self.state, self.port = workdir, state, port
        self.config = workdir / f"smartyd-{port}.toml"
        self.log_file = state / "log" / "smartyd.jsonl"
        self.config.write_text(
            f'[http]\nlisten = "tcp:{port}:interface=127.0.0.1"\n'
            f'[state]\ndir = "{state}"\n[log]\nfile = "{self.log_file}"\n'
            f'[tokens]\nfast_listen = ""\n{extra}'
        )
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "smartyd", "--config", str(self.config)],
            cwd=self.workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        return self

    def wait_healthy(self):
        def ok():
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited: {self.proc.communicate()}")
            h = health(self.port)
            return h if h and h[0] == 200 else None

        return wait_until(ok, what="a healthy daemon")

    def run_to_exit(self, timeout=60):
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.communicate(timeout=60)


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    base = tmp_path_factory.mktemp("daemon")
    yield base / "var"
    EmbeddedCluster.in_state_dir(base / "var").stop(mode="immediate")


def test_start_kill_restart_reuses_the_cluster_and_stop_stops_it(state, tmp_path):
    d = Daemon(tmp_path, state, free_port()).start()
    try:
        code, body = d.wait_healthy()
        assert body["status"] == "ok" and body["db"] == "ok"
        first = PostmasterInfo.read(state / "pgdata")
        assert first is not None and first.alive()

        # SIGKILL: nothing cleans up, the cluster keeps running.
        d.proc.kill()
        d.proc.wait()
        assert PostmasterInfo.read(state / "pgdata").alive()

        d2 = Daemon(tmp_path, state, free_port()).start()
        try:
            d2.wait_healthy()
            again = PostmasterInfo.read(state / "pgdata")
            assert again.pid == first.pid  # reused, not re-initialised or restarted
            records = [json.loads(l) for l in open(d2.log_file)]
            assert any(r["event"] == "smartyd ready" for r in records)
        finally:
            d2.stop()
        # twistd re-raises the signal it stopped on (systemd counts it as a clean stop)
        assert d2.proc.returncode in (0, -signal.SIGTERM)
        assert EmbeddedCluster(state / "pgdata").running() is None  # stopped with the daemon
    finally:
        d.stop()


def test_second_daemon_on_the_same_state_dir_is_refused(state, tmp_path):
    d = Daemon(tmp_path, state, free_port()).start()
    try:
        d.wait_healthy()
        code, out, err = Daemon(tmp_path, state, free_port()).start().run_to_exit()
        assert code != 0
        assert "another smartyd daemon is running with state dir" in err
        assert "Traceback" not in err
        assert health(d.port)[0] == 200  # the first one is untouched
    finally:
        d.stop()


def test_port_in_use_is_one_line(state, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code, out, err = Daemon(tmp_path, state, port).start().run_to_exit()
    assert code != 0
    assert f"smartyd: [http] listen tcp:{port}:interface=127.0.0.1:" in err
    assert "Traceback" not in err


def test_bad_config_and_unreachable_dsn_are_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[http]\nlisten = 'tcp:99999999'\n")
    proc = subprocess.run([TWISTD, "-n", "--pidfile=", "smartyd", "--config", str(bad)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode != 0
    assert "smartyd: config: [http] listen: bad endpoint string" in proc.stderr
    assert "Traceback" not in proc.stderr

    port = free_port()  # nothing listens there
    unreachable = tmp_path / "dsn.toml"
    unreachable.write_text(
        f'[database]\ndsn = "postgresql://nobody@127.0.0.1:{port}/x"\n'
        f'[state]\ndir = "{tmp_path}/var2"\n'
    )
    proc = subprocess.run([TWISTD, "-n", "--pidfile=", "smartyd", "--config", str(unreachable)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode != 0
    assert "smartyd: [database] dsn: cannot connect:" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") <= 2


def test_sigusr1_reopens_the_log(state, tmp_path):
    d = Daemon(tmp_path, state, free_port()).start()
    try:
        d.wait_healthy()
        rotated = Path(str(d.log_file) + ".1")
        os.rename(d.log_file, rotated)
        d.proc.send_signal(signal.SIGUSR1)
        wait_until(lambda: d.log_file.exists(), what="a reopened log file")
        wait_until(lambda: "log file reopened" in d.log_file.read_text(), what="reopen event")
    finally:
        d.stop()


# -- [tokens] secret ---------------------------------------------------------------------------
MAKE_ONE = "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
EXAMPLE = Path(__file__).resolve().parent.parent / "etc" / "smartyd.example.toml"


def test_the_example_config_starts_on_a_fresh_state_dir_with_a_generated_secret(tmp_path):
    """
    A fresh checkout: the example configuration as shipped (only its ports
    moved), run from a directory with no state yet.  The token secret is
    generated in <state dir>/token-secret (0600, with a warning) and reused.
    """
    text = EXAMPLE.read_text()
    assert '\nsecret = ""\n' in text.split("[tokens]")[1].split("\n[")[0]
    http, fast = free_port(), free_port()
    text = text.replace("tcp:8080:", f"tcp:{http}:").replace("tcp:8081:", f"tcp:{fast}:")
    var = tmp_path / "var"  # the example's state dir is ./var
    secret_file = var / "token-secret"

    def start():
        d = Daemon(tmp_path, var, http)
        d.config.write_text(text)
        return d.start()

    try:
        d = start()
        try:
            d.wait_healthy()
        finally:
            d.stop()
        assert d.proc.returncode in (0, -signal.SIGTERM)
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
        secret = secret_file.read_text().strip()
        assert len(secret) == 43
        log_text = d.log_file.read_text()
        assert secret not in log_text
        warnings = [r for r in map(json.loads, log_text.splitlines())
                    if r["level"] == "warn" and "token secret" in r["event"]]
        assert len(warnings) == 1 and str(Path("var") / "token-secret") in warnings[0]["event"]
        assert "sharing one database must set the same [tokens] secret" in warnings[0]["event"]

        d2 = start()
        try:
            d2.wait_healthy()
        finally:
            d2.stop()
        assert secret_file.read_text().strip() == secret  # reused
        again = [r for r in map(json.loads, d2.log_file.read_text().splitlines())
                 if r["level"] == "warn" and "token secret" in r["event"]]
        assert len(again) == 1  # still only the first start's warning
    finally:
        EmbeddedCluster.in_state_dir(var).stop(mode="immediate")


@pytest.mark.parametrize("secret,problem", [
    ("change-me", "a known placeholder"),
    ("0123456789", "too short (10 bytes, at least 16)"),
])
def test_a_weak_token_secret_stops_start_up_with_one_line(tmp_path, secret, problem):
    d = Daemon(tmp_path, tmp_path / "var", free_port(), extra=f'secret = "{secret}"\n').start()
    try:
        code, out, err = d.run_to_exit(timeout=30)
    finally:
        d.stop(signal.SIGKILL)
    assert code != 0
    line = f"[tokens] secret: {problem}; make one with: {MAKE_ONE}"
    assert err.splitlines()[0] == f"smartyd: config: {line}"
    assert "Traceback" not in err and secret not in err
    assert not (tmp_path / "var").exists()


# -- the README's two commands -----------------------------------------------------------------
ROOT = Path(__file__).resolve().parent.parent


def test_the_readme_opens_with_the_two_commands_and_ci_runs_the_second():
    readme = (ROOT / "README.md").read_text()
    top = readme.split("\n## ")[1]  # the first section
    blocks = top.split("```")[1::2]
    assert [b.strip() for b in blocks] == ["./smartyd-dev run", "./smartyd-dev test"]
    assert readme.index("## Operating it") > readme.index("./smartyd-dev test")
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith("#")]
    assert ci[-1] == "exec ./smartyd-dev test"
    assert "set -euo pipefail" in ci
    assert os.access(ROOT / "smartyd-dev", os.X_OK)


def test_smartyd_dev_without_a_command_prints_its_usage():
    proc = subprocess.run([sys.executable, str(ROOT / "smartyd-dev"), "deploy"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr == ("smartyd-dev: usage: ./smartyd-dev run [--config FILE]"
                           " | ./smartyd-dev test [PYTEST ARGS]\n")


def osmp_pay(port, txn_id, account, amount):
    query = urllib.parse.urlencode({
        "command": "pay", "txn_id": txn_id, "account": account, "sum": amount,
        "txn_date": time.strftime("%Y%m%d%H%M%S", time.gmtime(time.time() + 3 * 3600)),
    })
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/payments/osmp?{query}",
                                timeout=10) as r:
        return int(re.search(rb"<result>(\d+)</result>", r.read()).group(1))


def test_a_killed_postmaster_is_restarted_and_a_paid_payment_stays_once(state, tmp_path):
    d = Daemon(tmp_path, state, free_port(),
               extra='[osmp]\nusername = ""\naccount = "id"\nallow = ["127.0.0.0/8"]\n').start()
    try:
        d.wait_healthy()
        pgdata = state / "pgdata"
        with psycopg2.connect(EmbeddedCluster(pgdata).dsn()) as conn, conn.cursor() as cur:
            cur.execute("INSERT INTO accounts (login) VALUES ('e2e-restart') RETURNING id")
            account = cur.fetchone()[0]
        conn.close()
        assert osmp_pay(d.port, "9100001", account, "10.00") == 0

        old = PostmasterInfo.read(pgdata)
        os.kill(old.pid, signal.SIGKILL)
        killed = time.monotonic()

        def restarted():
            info = PostmasterInfo.read(pgdata)
            if info is None or info.pid == old.pid or not info.alive():
                return None
            h = health(d.port)
            return h if h and h[0] == 200 else None

        wait_until(restarted, timeout=60, what="the embedded cluster restarted and healthy")
        print(f"postmaster SIGKILL to healthy: {time.monotonic() - killed:.2f}s")
        assert d.proc.poll() is None  # the same daemon process
        # The terminal retries the pay it already got 0 for: still 0, still once.
        # (A connection the pool held across the crash may answer 1 first --
        # "retry", which is what QIWI does -- but never a second credit.)
        assert wait_until(lambda: osmp_pay(d.port, "9100001", account, "10.00") == 0,
                          timeout=30, what="the repeated pay answered 0")
        with psycopg2.connect(EmbeddedCluster(pgdata).dsn()) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM payments WHERE provider = 'osmp'"
                        " AND external_id = '9100001'")
            assert cur.fetchone()[0] == 1
            # The money is the account's customer's (the customer has the account's id).
            cur.execute("SELECT balance, (SELECT sum(amount) FROM ledger WHERE customer_id = %s)"
                        " FROM customers WHERE id = %s", (account, account))
            assert [str(v) for v in cur.fetchone()] == ["10.00", "10.00"]
        conn.close()
        # The restart is logged when pg_ctl returns, which may be a moment after
        # the server already answers /health.
        def logged():
            events = [json.loads(l)["event"] for l in open(d.log_file)]
            return (any(e.startswith("restarting embedded PostgreSQL (attempt 1)") for e in events)
                    and any(e.startswith("embedded PostgreSQL is running again") for e in events))

        wait_until(logged, timeout=30, what="the restart in the log")
    finally:
        d.stop()


def test_the_terminal_sees_the_start_up_steps_and_warnings(state, tmp_path):
    """`twistd -n` at a console: short human lines on stderr, the JSON log as before."""
    d = Daemon(tmp_path, state, free_port(),
               extra='[osmp]\nusername = "osmp"\npassword = ""\n').start()
    try:
        d.wait_healthy()
    finally:
        d.proc.send_signal(signal.SIGTERM)
        out, err = d.proc.communicate(timeout=60)
    lines = err.splitlines()
    assert f"smartyd: listening on tcp:{d.port}:interface=127.0.0.1 (HTTP)" in lines
    assert any(l.startswith("smartyd: schema up to date") for l in lines), err
    assert "smartyd: features enabled: osmp, streams" in lines, err
    assert "smartyd: smartyd ready" in lines, err
    # warnings reach the terminal too (an OSMP username without a password)
    assert any(l.startswith("smartyd: warn: [osmp] username is set") for l in lines), err
    assert "Traceback" not in err
    records = [json.loads(l) for l in open(d.log_file)]
    ready = [r for r in records if r["event"] == "smartyd ready"]
    assert ready and "console" not in ready[-1]  # the JSON log keeps its keys
