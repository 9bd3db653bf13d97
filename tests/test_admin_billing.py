"""The billing's admin commands, run as operators run them: separate processes."""

import json
import subprocess
import sys
from datetime import datetime, timezone

import pytest
import pytest_twisted

from smartyd import ledger, ppc
from smartyd.billing import engine
from smartyd.config import Billing

JAN1 = datetime(2024, 1, 1, tzinfo=timezone.utc)


@pytest.fixture
def admin(tmp_path, pg_dsn):
    cfg = tmp_path / "smartyd.toml"
    cfg.write_text(f'[database]\ndsn = "{pg_dsn}"\n[log]\nfile = "{tmp_path}/smartyd.jsonl"\n')

    def command(*args):
        return [sys.executable, "-m", "smartyd.admin", "--config", str(cfg), *args]

    def run(*args):
        proc = subprocess.run(command(*args), capture_output=True, text=True, timeout=60)
        out = json.loads(proc.stdout) if proc.returncode == 0 else None
        return proc.returncode, out, proc.stderr

    run.command = command
    return run


def ok(result):
    code, out, err = result
    assert code == 0, err
    return out


@pytest_twisted.ensureDeferred
async def test_customers_accounts_tariffs_and_runs(db, admin):
    c = ok(admin("customer", "create", "--name", "Ivanov", "--ext-id", "hyd-42",
                 "--phone", "+7900"))
    assert c["ppc"] == ppc.encode(c["id"]) and c["balance"] == "0.00" and c["ext_id"] == "hyd-42"
    assert admin("customer", "create", "--ext-id", "hyd-42")[0] != 0

    tv1 = ok(admin("account", "create", "--login", "tv1", "--customer", str(c["id"])))
    tv2 = ok(admin("account", "create", "--login", "tv2", "--customer", str(c["id"])))
    assert tv1["customer_id"] == tv2["customer_id"] == c["id"] and tv1["ppc"] == c["ppc"]
    solo = ok(admin("account", "create", "--login", "solo"))
    assert solo["customer_id"] == solo["id"]  # a customer of its own, with its id

    ch = ok(admin("channel", "create", "--name", "ch1", "--url-mask", "http://s/$token"))
    t = ok(admin("tariff", "create", "--name", "Month", "--price", "300", "--period-months", "1",
                 "--activation-price", "50", "--additional", "--hidden",
                 "--channel", str(ch["id"])))
    assert (t["period_months"], t["activation_price"], t["additional"], t["hidden"]) == (
        1, "50.00", True, True)

    await db.run(ledger.credit, c["id"], "1000.00", "payment", "seed", "seed-1")
    out = ok(admin("tariff", "assign", "--customer", str(c["id"]), str(t["id"]),
                   "--at", "2024-01-31T12:00:00+00:00"))
    assert out["changed"] and out["subscription"]["state"] == "active"
    shown = ok(admin("customer", "show", str(c["id"])))
    assert shown["balance"] == "650.00" and [a["id"] for a in shown["accounts"]] == [
        tv1["id"], tv2["id"]]
    [sub] = shown["subscriptions"]
    assert sub["tariff"] == t["id"] and sub["state"] == "active"
    assert sub["paid_until"].startswith("2024-02-29")
    acc = ok(admin("account", "show", str(tv2["id"])))
    assert acc["channels"] == [ch["id"]] and acc["balance"] == "650.00" and acc["active"]

    run = ok(admin("billing", "run", "--at", "2024-03-31T12:00:00+00:00"))
    assert run == {"charged": 2, "amount": "600.00", "suspended": 0, "reactivated": 0}
    again = ok(admin("billing", "run", "--at", "2024-03-31T12:00:00+00:00"))
    assert again == {"charged": 0, "amount": "0.00", "suspended": 0, "reactivated": 0}
    # Next month: 50.00 left for 300.00 -> debt.
    run = ok(admin("billing", "run", "--at", "2024-04-30T12:00:00+00:00"))
    assert run["suspended"] == 1 and run["charged"] == 0
    acc = ok(admin("account", "show", str(tv1["id"])))
    assert (acc["active"], acc["status_reason"]) == (False, "DEBT")

    p = ok(admin("customer", "promise", str(c["id"]), "--amount", "300", "--days", "3",
                 "--at", "2024-04-30T13:00:00+00:00"))
    assert p["amount"] == "300.00"
    acc = ok(admin("account", "show", str(tv1["id"])))
    assert (acc["active"], acc["status_reason"]) == (True, "ACTIVE")
    st = ok(admin("customer", "statement", str(c["id"])))
    assert [r["kind"] for r in st["rows"]] == [
        "payment", "activation", "charge", "charge", "charge", "promise", "charge"]
    assert st["closing_balance"] == "50.00" and st["rows"][1]["tariff_id"] == t["id"]
    assert st["opening_balance"] == "0.00" and st["more"] is False
    assert sum(float(r["amount"]) for r in st["rows"]) == pytest.approx(50.0)

    blocked = ok(admin("account", "block", str(tv1["id"])))
    assert (blocked["active"], blocked["status_reason"]) == (False, "BLOCK")
    back = ok(admin("account", "unblock", str(tv1["id"])))
    assert (back["active"], back["status_reason"]) == (True, "ACTIVE")
    removed = ok(admin("tariff", "remove", "--customer", str(c["id"]), str(t["id"])))
    assert removed["changed"] is True


@pytest_twisted.ensureDeferred
async def test_two_billing_runs_at_once_both_succeed_and_charge_once(db, admin):
    t = ok(admin("tariff", "create", "--name", "Day", "--price", "1", "--period-days", "1"))
    for i in range(20):
        a = await db.run(ledger.create_account, f"u{i}")
        await db.run(ledger.credit, a.customer_id, "100.00", "payment", "seed", f"s{i}")
        await db.run(engine.assign, Billing(), a.id, t["id"], at=JAN1)
    cmd = admin.command("billing", "run", "--at", "2024-01-11T00:00:00+00:00")
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=60)
        assert p.returncode == 0, stderr
        outs.append(json.loads(stdout))
    assert sum(o["charged"] for o in outs) == 20 * 10
    assert await db.run(ledger.balance_mismatches) == []
    assert await db.fetchval("SELECT sum(balance) FROM customers") == 20 * 100 - 20 * 11
