"""
``smartyd-admin import`` / ``export`` as operators run them: a separate
process on the test database, files in every layout of docs/IMPORT.md.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from smartyd import catalog, ledger
from smartyd.transfer import layouts
from streams_world import within

ROOT = Path(__file__).resolve().parent.parent
HASH = ("scrypt$16384$8$1$c2FsdHNhbHRzYWx0c2FsdA==$"
        "ZGlnZXN0ZGlnZXN0ZGlnZXN0ZGlnZXN0ZGlnZXN0ZGk=")

OWN = {
    "customers": "id;ext_id;name;lastname;phone;email\n"
                 ";C1;Иван;Петров;+79001234567;\n"
                 ";C2;Мария;;;m@example.com\n"
                 "900;;Walk-in;;;\n",
    "accounts": "login;customer_ext_id;customer_id;active;status_reason;password_hash\n"
                f"ivan;C1;;1;;{HASH}\n"
                "maria;C2;;0;DEBT;\n"
                "walkin;;900;;;\n"
                "solo;;;;;\n",
    "devices": "uid;account_login;serial;model\n"
               "00:1a:79:22:63:8a;ivan;042014J049672;MAG-250\n"
               "TV-1;maria;;\n",
    "subscriptions": "customer_ext_id;customer_id;account_login;tariff_id;tariff_ext_id;paid_until\n"
                     "C1;;;{basic};;\n"
                     ";;maria;;HD;2027-01-31T00:00:00+00:00\n",
    "balances": "customer_ext_id;customer_id;amount\n"
                "C1;;150.50\n"
                ";900;-20\n",
}
HYDRA_CUSTOMERS = ("50157001;1078145;{basic}\n"
                   "50476501;1200127;{basic}\n"
                   "50476501;1200127;HD\n")
HYDRA_DEVICES = ("101236301;1078145;IPTV STB-N9792;00-1A-79-22-63-8B;042014J049672\n"
                 "98688501;1200127;IPTV STB-N9780;00-1A-79-20-EC-B9;022014J038646\n")


async def tariffs(db) -> dict:
    async def make(tx):
        basic = await catalog.create_tariff(tx, "Basic", "100")
        hd = await catalog.create_tariff(tx, "HD", "50")
        # Tariffs carry the other system's id in ext_id (nothing else sets it yet).
        await tx.execute("UPDATE tariffs SET ext_id = 'HD' WHERE id = %s", (hd["id"],))
        return {"basic": basic["id"], "hd": hd["id"]}

    return await db.run(make)


async def everything(db) -> dict:
    """What an import writes, in a form to compare."""
    q = {
        "customers": "SELECT id, ext_id, name, firstname, middlename, lastname, phone, email,"
                     " contract_number, comment, balance::text FROM customers ORDER BY id",
        "accounts": "SELECT id, login, customer_id, active, status_reason, password_hash"
                    " FROM accounts ORDER BY id",
        "devices": "SELECT d.uid, a.login, d.serial, d.model FROM devices d"
                   " JOIN accounts a ON a.id = d.account_id ORDER BY uid",
        "subscriptions": "SELECT customer_id, account_id, tariff_id, paid_until::text, state"
                         " FROM subscriptions ORDER BY customer_id, tariff_id",
        "ledger": "SELECT count(*), coalesce(sum(amount), 0)::text FROM ledger",
    }
    return {k: await db.fetchall(sql) for k, sql in q.items()}


@pytest.fixture
def admin(tmp_path, pg_dsn):
    """smartyd-admin on the test database: (exit code, the JSON on stdout or None, stderr)."""
    cfg = tmp_path / "smartyd.toml"
    cfg.write_text(f'[database]\ndsn = "{pg_dsn}"\n[log]\nfile = "{tmp_path}/smartyd.jsonl"\n')

    def run(*args):
        proc = subprocess.run([sys.executable, "-m", "smartyd.admin", "--config", str(cfg), *args],
                              capture_output=True, text=True, timeout=120)
        return proc.returncode, (json.loads(proc.stdout) if proc.stdout else None), proc.stderr

    return run


def write(tmp_path, name, text, encoding="utf-8"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return str(path)


def run(admin, *args):
    return deferToThread(admin, *args)


@pytest_twisted.ensureDeferred
async def test_each_own_layout_imported_twice_changes_nothing_the_second_time(db, admin, tmp_path):
    t = await tariffs(db)
    created = {}
    for kind, text in OWN.items():
        path = write(tmp_path, f"{kind}.csv", text.format(**t))
        code, out, err = await run(admin, "import", kind, path)
        assert code == 0, err
        assert out["written"] and out["bad"] == [] and out["updated"] == {}
        created[kind] = out["created"]
    assert created == {"customers": {"customers": 3}, "accounts": {"accounts": 4},
                       "devices": {"devices": 2}, "subscriptions": {"subscriptions": 2},
                       "balances": {"balances": 2}}
    first = await everything(db)
    c1 = await db.fetchval("SELECT id FROM customers WHERE ext_id = 'C1'")
    ivan = await db.run(ledger.find_account_by_login, "ivan")
    assert ivan.customer_id == c1 and ivan.password_hash == HASH
    maria = await db.run(ledger.find_account_by_login, "maria")
    assert (maria.active, maria.status_reason) == (False, "DEBT")
    assert (await db.run(ledger.find_account_by_login, "walkin")).customer_id == 900
    # Balances came in through the ledger: opening rows, balance = ledger sum.
    assert await db.run(ledger.balance_mismatches) == []
    assert await db.fetchall("SELECT amount::text, kind, idem_key FROM ledger"
                             " WHERE customer_id = %s", (c1,)) == [
        ("150.50", "opening", f"import:opening:{c1}")]
    assert await db.fetchval("SELECT phone FROM customers WHERE id = %s", (c1,)) == "+79001234567"

    for kind, text in OWN.items():
        code, out, err = await run(admin, "import", kind, str(tmp_path / f"{kind}.csv"))
        assert code == 0, err
        assert out["created"] == {} and out["updated"] == {}, (kind, out)
        assert sum(out["unchanged"].values()) == len(text.strip().splitlines()) - 1
    assert await everything(db) == first

    # A changed file updates what changed, and only that.
    changed = write(tmp_path, "c2.csv", "ext_id;phone\nC1;+70000000000\nC2;\n")
    code, out, err = await run(admin, "import", "customers", changed)
    assert code == 0 and out["updated"] == {"customers": 1} and out["unchanged"] == {"customers": 1}
    assert await db.fetchval("SELECT phone FROM customers WHERE id = %s", (c1,)) == "+70000000000"
    assert await db.fetchval("SELECT name FROM customers WHERE id = %s", (c1,)) == "Иван"


@pytest_twisted.ensureDeferred
async def test_hydra_layouts_imported_twice_change_nothing_the_second_time(db, admin, tmp_path):
    t = await tariffs(db)
    customers = write(tmp_path, "billing_customers.csv", HYDRA_CUSTOMERS.format(**t))
    devices = write(tmp_path, "billing_devices.csv", HYDRA_DEVICES)
    code, out, err = await run(admin, "import", "subscriptions", customers, "--format", "hydra")
    assert code == 0, err
    assert out["created"] == {"customers": 2, "accounts": 2, "subscriptions": 3}
    assert out["duplicates"] == 2  # user 50476501 and account 1200127, on two lines
    code, out, err = await run(admin, "import", "devices", devices, "--format", "hydra")
    assert code == 0 and out["created"] == {"devices": 2}, err
    first = await everything(db)
    account = await db.run(ledger.find_account_by_login, "1200127")
    assert await db.fetchval("SELECT ext_id FROM customers WHERE id = %s",
                             (account.customer_id,)) == "50476501"
    assert sorted(r[0] for r in await db.fetchall(
        "SELECT tariff_id FROM subscriptions WHERE customer_id = %s AND account_id IS NULL",
        (account.customer_id,))) == sorted([t["basic"], t["hd"]])
    assert await db.fetchall("SELECT uid, serial, model FROM devices WHERE uid LIKE '%%:b9'") == [
        ("00:1a:79:20:ec:b9", "022014J038646", "IPTV STB-N9780")]

    for args in (("subscriptions", customers), ("devices", devices)):
        code, out, err = await run(admin, "import", *args, "--format", "hydra")
        assert code == 0 and out["created"] == {} and out["updated"] == {}, (args, out)
    assert await everything(db) == first

    # --skip-bad: a refused line writes nothing, not even the customer it begins with.
    mixed = write(tmp_path, "mixed.csv", f"60000001;2000001;NOPE\n60000002;2000002;{t['basic']}\n"
                                         f"60000003;1078145;{t['basic']}\n")
    code, out, err = await run(admin, "import", "subscriptions", mixed, "--format", "hydra",
                               "--skip-bad")
    assert code == 0, err
    assert out["bad"] == [{"line": 1, "reason": "no tariff with ext_id or id NOPE"},
                          {"line": 3, "reason": "login 1078145 is an account of customer"
                                                f" {(await db.run(ledger.find_account_by_login, '1078145')).customer_id}"}]
    assert out["created"] == {"customers": 1, "accounts": 1, "subscriptions": 1}
    assert await db.fetchval("SELECT count(*) FROM customers WHERE ext_id IN"
                             " ('60000001', '60000003')") == 0


@pytest_twisted.ensureDeferred
async def test_a_file_with_one_bad_line_writes_nothing_and_names_it(db, admin, tmp_path):
    await tariffs(db)
    # Line 4 is bad in the file itself; line 3's customer does not exist (found by look-up).
    path = write(tmp_path, "accounts.csv", "login;customer_ext_id\nok1;\nok2;NOPE\n"
                                           "bad login;\nok3;\n")
    code, out, err = await run(admin, "import", "accounts", path)
    assert code == 1 and err.count("\n") == 1
    assert "2 bad lines, nothing written" in err and "line 3: no customer with ext_id NOPE" in err
    assert "line 4: login 'bad login'" in err
    assert [b["line"] for b in out["bad"]] == [3, 4] and out["written"] is False
    assert await db.fetchval("SELECT count(*) FROM accounts") == 0
    assert await db.fetchval("SELECT count(*) FROM customers") == 0

    # --dry-run: the same counts, nothing written; with a good file too.
    good = write(tmp_path, "good.csv", "login\nok1\nok2\n")
    code, out, err = await run(admin, "import", "accounts", good, "--dry-run")
    assert code == 0 and out["created"] == {"accounts": 2} and out["written"] is False, err
    assert await db.fetchval("SELECT count(*) FROM accounts") == 0

    # --skip-bad: the good lines in, the bad ones listed.
    code, out, err = await run(admin, "import", "accounts", path, "--skip-bad")
    assert code == 0 and out["written"] is True, err
    assert out["created"] == {"accounts": 2} and [b["line"] for b in out["bad"]] == [3, 4]
    assert sorted(r[0] for r in await db.fetchall("SELECT login FROM accounts")) == ["ok1", "ok3"]

    # Conflicts are bad lines, never forced: a login of another customer, a
    # repeated key with other data, a second opening balance.
    code, out, err = await run(admin, "import", "customers",
                               write(tmp_path, "c.csv", "ext_id;name\nX;a\nX;b\n"))
    assert code == 1 and "line 3: customer ext/X differs from line 2" in err, err
    await run(admin, "import", "customers", write(tmp_path, "c2.csv", "ext_id\nX\n"))
    code, out, err = await run(admin, "import", "accounts",
                               write(tmp_path, "a.csv", "login;customer_ext_id\nok1;X\n"))
    assert code == 1 and "line 2: login ok1 is an account of customer" in err, err
    await run(admin, "import", "balances", write(tmp_path, "b.csv", "customer_ext_id;amount\nX;5\n"))
    code, out, err = await run(admin, "import", "balances",
                               write(tmp_path, "b2.csv", "customer_ext_id;amount\nX;7\n"))
    assert code == 1 and "has an opening balance of 5.00 already" in err, err
    assert await db.run(ledger.balance_mismatches) == []
    assert await db.fetchval("SELECT sum(amount)::text FROM ledger") == "5.00"


@pytest_twisted.ensureDeferred
async def test_cp1251_with_commas_and_a_bad_header(db, admin, tmp_path):
    path = write(tmp_path, "c.csv", 'ext_id,name,comment\nK1,"Сидоров, Пётр",тест\n',
                 encoding="cp1251")
    code, out, err = await run(admin, "import", "customers", path)
    assert code == 0, err
    assert (out["encoding"], out["delimiter"]) == ("cp1251", ",")
    assert await db.fetchall("SELECT name, comment FROM customers WHERE ext_id = 'K1'") == [
        ("Сидоров, Пётр", "тест")]
    code, _, err = await run(admin, "import", "customers",
                             write(tmp_path, "h.csv", "ext_id;nickname\nA;b\n"))
    assert code == 1 and "the header of a customers file names columns of" in err, err


@pytest_twisted.ensureDeferred
async def test_exported_files_import_back_into_an_empty_database_to_the_same_data(
        db, admin, tmp_path, pg_dsn):
    from conftest import truncate_all

    t = await tariffs(db)
    for kind, text in OWN.items():
        code, _, err = await run(admin, "import", kind,
                                 write(tmp_path, f"{kind}.csv", text.format(**t)))
        assert code == 0, err
    # And what the CLI makes: an account of its own customer, a credit.
    code, acc, err = await run(admin, "account", "create", "--login", "cli", "--name", "By hand")
    assert code == 0, err
    await db.run(ledger.credit, acc["customer_id"], "12.00", "payment", "t", "k1")
    before = await everything(db)
    for kind in layouts.KINDS:
        code, out, err = await run(admin, "export", kind, str(tmp_path / f"out-{kind}.csv"))
        assert code == 0 and out["rows"] > 0, err
    assert (tmp_path / "out-accounts.csv").stat().st_mode & 0o077 == 0

    truncate_all(pg_dsn)
    assert await tariffs(db) == t
    for kind in layouts.KINDS:
        code, out, err = await run(admin, "import", kind, str(tmp_path / f"out-{kind}.csv"))
        assert code == 0 and out["bad"] == [], err
    after = await everything(db)
    # The same data; the money as opening rows (one per customer with a balance).
    assert after["ledger"][0][1] == before["ledger"][0][1]
    for part in ("customers", "accounts", "devices", "subscriptions"):
        assert after[part] == before[part], part

    # The hydra layouts export and read back too.
    for kind in ("subscriptions", "devices"):
        code, out, err = await run(admin, "export", kind, str(tmp_path / f"h-{kind}.csv"),
                                   "--format", "hydra")
        assert code == 0, err
        code, out, err = await run(admin, "import", kind, str(tmp_path / f"h-{kind}.csv"),
                                   "--format", "hydra", "--dry-run", "--skip-bad")
        assert code == 0 and out["written"] is False, err
        # Hydra's device file holds MACs: a device with another uid does not fit it.
        assert [b["reason"] for b in out["bad"]] == (
            ["not a MAC address: 'TV-1'"] if kind == "devices" else []), out
        # Hydra's tariffs are the customer's: maria's own HD would become her customer's.
        assert out["created"] == ({"subscriptions": 1} if kind == "subscriptions" else {})
        assert sum(out["unchanged"].values()) > 0
    lines = (tmp_path / "h-devices.csv").read_text().splitlines()
    assert any(l.endswith(";MAG-250;00-1A-79-22-63-8A;042014J049672") for l in lines), lines
    code, _, err = await run(admin, "export", "balances", str(tmp_path / "x.csv"),
                             "--format", "hydra")
    assert code == 1 and "the hydra layout has no balances" in err


@pytest_twisted.ensureDeferred
async def test_an_import_reaches_a_running_snapshot(db, admin, tmp_path, entitlements, world):
    reloaded = entitlements.next_reload()
    path = write(tmp_path, "h.csv", f"7001;viewer;{world.basic}\n")
    code, out, err = await run(admin, "import", "subscriptions", path, "--format", "hydra")
    assert code == 0, err
    snapshot = await within(reloaded, 10)
    viewer = await db.run(ledger.find_account_by_login, "viewer")
    assert snapshot.channels_of(viewer.id) == frozenset({world.ch1})


def test_layouts_read_what_they_write():
    """Pure: each cell type round-trips through L{layouts.cell} and the reader."""
    import io
    from datetime import datetime, timezone
    from decimal import Decimal

    text = io.StringIO()
    w = layouts.writer(text)
    w.writerow(layouts.header("smartyd", "subscriptions"))
    at = datetime(2027, 1, 31, 12, 30, 1, 5, tzinfo=timezone.utc)
    w.writerow([layouts.cell(v) for v in (7, "E;1", "lo.gin", 3, None, at)])
    rows = list(layouts.read(io.StringIO(text.getvalue()), ";", "smartyd", "subscriptions"))
    assert rows == [(2, [("subscriptions", {
        "customer_id": 7, "customer_ext_id": "E;1", "account_login": "lo.gin", "tariff_id": 3,
        "tariff_ext_id": None, "paid_until": at})])]
    bad = list(layouts.read(io.StringIO(
        "customer_id;amount\n1;9999999999999.00\n0;5\n1;1e3\n1;10.005\n1;\n1;0x10\n"), ";",
        "smartyd", "balances"))
    assert [(b.line, b.reason.split(":")[0]) for b in bad] == [
        (2, "amount out of range"), (3, "customer_id must be positive"),
        (4, "amount '1e3'"), (5, "amount '10.005'"), (6, "amount ''"), (7, "amount '0x10'")]
    rows = list(layouts.read(io.StringIO('customer_id;amount\n1;"10,50"\n2;-3\n3;+7.5\n'), ";",
                             "smartyd", "balances"))
    assert [r[1][0][1]["amount"] for r in rows] == [
        Decimal("10.50"), Decimal("-3.00"), Decimal("7.50")]
    assert layouts.mac("00-1A-79-22-63-8A") == "00:1a:79:22:63:8a"
    assert layouts.cell(Decimal("-5.00")) == "-5.00" and layouts.cell(True) == "1"


class Terminal:
    def __init__(self, tty):
        self.tty, self.text = tty, ""

    def isatty(self):
        return self.tty

    def write(self, s):
        self.text += s

    def flush(self):
        pass


def test_progress_is_drawn_on_a_terminal_only():
    from smartyd.admin.progress import Progress

    tty = Terminal(True)
    p = Progress("import customers", 200, stream=tty, interval=0)
    p.update(50, "line 50")
    p.finish(200, "done")
    assert "\rimport customers [#######.......................] 50/200 line 50" in tty.text
    assert tty.text.endswith("[" + "#" * 30 + "] 200/200 done\x1b[K\n")
    pipe = Terminal(False)
    p = Progress("import customers", 200, stream=pipe, interval=0)
    p.update(50)
    p.finish(200)
    assert pipe.text == ""


@pytest_twisted.ensureDeferred
async def test_a_balance_imported_for_a_customer_in_debt_settles_it_as_a_payment_would(
        db, admin, tmp_path):
    from datetime import datetime, timezone

    from smartyd.billing import engine
    from smartyd.config import Billing

    account = await db.run(ledger.create_account, "debtor", "")
    cid = account.customer_id
    tariff = await db.run(catalog.create_tariff, "Basic", "100")
    await db.run(engine.assign, Billing(), account.id, tariff["id"],
                 at=datetime.now(timezone.utc))
    shown = await db.run(ledger.get_account, account.id)
    assert (shown.active, shown.status_reason) == (False, ledger.DEBT)
    path = write(tmp_path, "b.csv", f"customer_id;amount\n{cid};250.00\n")

    async def state():
        shown = await db.run(ledger.get_account, account.id)
        subs = await db.run(catalog.customer_subscriptions, cid)
        return shown.status_reason, shown.balance, [s["state"] for s in subs]

    code, out, err = await run(admin, "import", "balances", path, "--dry-run")
    assert code == 0 and out["settled"]["reactivated"] == 1, (out, err)
    assert await state() == (ledger.DEBT, 0, ["suspended"])
    # The money comes in as a payment's would: the period is charged, the DEBT lifted at once
    # (not at the charging job's next run).
    code, out, err = await run(admin, "import", "balances", path)
    assert code == 0, err
    assert out["settled"] == {"charged": 1, "amount": "100.00", "suspended": 0,
                              "reactivated": 1}, out
    assert await state() == (ledger.ACTIVE, 150, ["active"])
    code, out, err = await run(admin, "import", "balances", path)
    assert code == 0 and out["unchanged"] == {"balances": 1}, err
    assert out["settled"] == {"charged": 0, "amount": "0.00", "suspended": 0, "reactivated": 0}
    assert await state() == (ledger.ACTIVE, 150, ["active"])


@pytest_twisted.ensureDeferred
async def test_export_and_backup_onto_a_directory_are_refused_naming_it(db, admin, tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    for args in (("export", "customers", str(target)), ("backup", str(target))):
        code, out, err = await run(admin, *args)
        assert code == 1 and out is None, (args, out)
        assert err == f"smartyd-admin: {target}: is a directory, give a file name\n", err
    assert not [p.name for p in tmp_path.iterdir() if "partial" in p.name]
