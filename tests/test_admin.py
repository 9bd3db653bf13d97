"""smartyd-admin, run as operators run it: a separate process on the same database."""

import json
import subprocess
import sys

import pytest
import pytest_twisted

from smartyd import ledger


@pytest.fixture
def admin(tmp_path, pg_dsn):
    cfg = tmp_path / "smartyd.toml"
    cfg.write_text(f'[database]\ndsn = "{pg_dsn}"\n[log]\nfile = "{tmp_path}/smartyd.jsonl"\n')

    def run(*args):
        proc = subprocess.run(
            [sys.executable, "-m", "smartyd.admin", "--config", str(cfg), *args],
            capture_output=True, text=True, timeout=60,
        )
        out = json.loads(proc.stdout) if proc.returncode == 0 else None
        return proc.returncode, out, proc.stderr

    run.log_file = tmp_path / "smartyd.jsonl"
    return run


@pytest_twisted.ensureDeferred
async def test_account_lifecycle(db, admin):
    code, out, _ = admin("account", "create", "--login", "alice", "--password", "pw", "--id", "5907")
    assert code == 0
    assert out["id"] == 5907 and out["ppc"] == "59071" and out["login"] == "alice"
    assert out["status"] == "active" and out["balance"] == "0.00"
    stored = await db.run(ledger.get_account, 5907)
    assert ledger.verify_password("pw", stored.password_hash)

    await db.run(ledger.credit, 5907, "12.34", "payment", "t", "k")
    code, out, _ = admin("account", "show", "5907")
    assert code == 0 and out["balance"] == "12.34" and out["ledger_sum"] == "12.34"

    code, out, _ = admin("account", "block", "5907")
    assert code == 0 and out["status"] == "blocked"
    assert (await db.run(ledger.get_account, 5907)).status == "blocked"
    code, out, _ = admin("account", "unblock", "5907")
    assert code == 0 and out["status"] == "active"


@pytest_twisted.ensureDeferred
async def test_errors_are_one_line_and_non_zero(db, admin):
    assert admin("account", "create", "--login", "bob")[0] == 0
    for args, message in [
        (("account", "create", "--login", "bob"), "exists already"),
        (("account", "show", "999"), "no account 999"),
        (("account", "block", "999"), "no account 999"),
        (("account", "create", "--login", "has space"), "login must be"),
        (("payment", "show", "--provider", "osmp", "--txn-id", "1"), "no osmp payment 1"),
        (("tariff", "assign", "1", "77"), "no tariff 77"),
    ]:
        code, out, err = admin(*args)
        assert code != 0 and out is None, args
        assert err.startswith("smartyd-admin: ") and message in err, err
        assert err.count("\n") == 1 and "Traceback" not in err


@pytest_twisted.ensureDeferred
async def test_channels_tariffs_and_payment_show(db, admin):
    code, ch, _ = admin("channel", "create", "--name", "ch1", "--url-mask",
                        "http://streamer:8080/ch1/?token=$token")
    assert code == 0 and ch["id"] == 1
    code, tariff, _ = admin("tariff", "create", "--name", "Basic", "--price", "300",
                            "--channel", str(ch["id"]))
    assert code == 0 and tariff["price"] == "300.00" and tariff["channels"] == [ch["id"]]
    _, acc, _ = admin("account", "create", "--login", "carol")
    # The built-in billing charges the first period on assignment: carol can pay it.
    await db.run(ledger.credit, acc["customer_id"], "300.00", "payment", "t", "carol-seed")
    code, out, _ = admin("tariff", "assign", str(acc["id"]), str(tariff["id"]))
    assert code == 0 and out["changed"] is True
    assert admin("tariff", "assign", str(acc["id"]), str(tariff["id"]))[1]["changed"] is False
    _, shown, _ = admin("account", "show", str(acc["id"]))
    assert shown["tariffs"] == [tariff["id"]] and shown["channels"] == [ch["id"]]
    assert admin("tariff", "remove", str(acc["id"]), str(tariff["id"]))[1]["changed"] is True

    from smartyd import payments

    await db.run(payments.accept, "osmp", "1234567", acc["id"], "10.45")
    code, out, _ = admin("payment", "show", "--provider", "osmp", "--txn-id", "1234567")
    assert code == 0
    assert out["amount"] == "10.45" and out["account_id"] == acc["id"]
    assert out["ledger_entry"]["amount"] == "10.45"
    assert out["ledger_entry"]["idem_key"] == "payment:osmp:1234567"


def test_migrate_reports_the_version(admin, pg_dsn):
    code, out, _ = admin("migrate")
    assert code == 0 and out["applied"] == [] and out["version"] >= 1


def test_logs_grep_and_render(admin):
    admin.log_file.write_text(
        '{"time": "2026-11-22T10:00:00.000000Z", "level": "info", "ns": "smartyd.osmp",'
        ' "event": "credited 1.00 to 5", "txn_id": "7"}\n'
        '{"time": "2026-11-22T10:00:01.000000Z", "level": "warn", "ns": "smartyd.osmp",'
        ' "event": "refused", "txn_id": "8"}\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "smartyd.admin", "logs", "--file", str(admin.log_file),
         "--grep", "txn_id=8"], capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 0
    assert proc.stdout.splitlines() == [
        "2026-11-22 10:00:01.000 WARN     refused  [smartyd.osmp] txn_id=8"
    ]


def test_bad_config_is_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[osmp]\nmax_sum = 5\nmin_sum = '10'\n")
    proc = subprocess.run([sys.executable, "-m", "smartyd.admin", "--config", str(bad), "migrate"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert proc.stderr == "smartyd-admin: [osmp] min_sum: 10 is above max_sum 5\n"


def test_admin_never_stops_the_cluster_of_a_running_daemon(pg_root):
    import os
    import shutil

    from smartyd.db.embedded import EmbeddedCluster, lock_state_dir

    state = pg_root / f"admin-state-{os.getpid()}"
    cfg = pg_root / f"admin-{os.getpid()}.toml"
    cfg.write_text(f'[state]\ndir = "{state}"\n[log]\nfile = "{state}/smartyd.jsonl"\n')
    cluster = EmbeddedCluster.in_state_dir(state)

    def admin(*args):
        proc = subprocess.run(
            [sys.executable, "-m", "smartyd.admin", "--config", str(cfg), *args],
            capture_output=True, text=True, timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    try:
        cluster.ensure_running()
        cluster.stop()
        daemon_lock = lock_state_dir(state)  # a daemon runs (its cluster is down)
        try:
            assert admin("migrate")["version"] >= 1
            assert cluster.running() is not None  # the daemon's cluster stays up
            admin("account", "create", "--login", "beside-the-daemon")
            assert cluster.running() is not None
        finally:
            os.close(daemon_lock)
        # No daemon: a running cluster is left running, a stopped one stopped again.
        admin("migrate")
        assert cluster.running() is not None
        cluster.stop()
        admin("migrate")
        assert cluster.running() is None
    finally:
        cluster.stop(mode="immediate")
        shutil.rmtree(state, ignore_errors=True)
        cfg.unlink()
