"""
Registry reconciliation (smartyd/reconcile.py): a provider's daily registry
against payments made through the OSMP service on the real database.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import subprocess
import sys
from datetime import date
from decimal import Decimal

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor

from conftest import make_config
from test_journals import osmp_pay
from test_osmp_service import account, make_service
from smartyd import reconcile
from smartyd.admin import journals as journals_admin

DAY = date(2026, 3, 1)
LAYOUT = "txn_id,date,account,amount"


async def a_day_of_osmp(db):
    """Four QIWI payments on 1 March (Moscow), one on the 2nd."""
    await account(db, "alice", 42)   # payment code 426
    await account(db, "bob", 55)     # payment code 550
    s = make_service(db)
    await osmp_pay(s, "426", "10.00", "5001", "2026-03-01 08:00:00")
    await osmp_pay(s, "550", "20.00", "5002", "2026-03-01 12:00:00")
    await osmp_pay(s, "426", "30.00", "5003", "2026-03-01 18:00:00")
    await osmp_pay(s, "550", "40.00", "5004", "2026-03-01 23:59:59")
    await osmp_pay(s, "426", "50.00", "5005", "2026-03-02 00:00:01")


# 5004 missing, 5009 extra, 5003 with another amount; 5001 written with leading zeros.
REGISTRY = (
    "txn_id;date;account;amount\n"
    "0005001;2026-03-01 08:00:00;426;10.00\n"
    "5002;2026-03-01 12:00:00;550;20,00\n"
    "5003;2026-03-01 18:00:00;426;30.50\n"
    "5009;2026-03-01 20:00:00;550;15.00\n"
)


@pytest_twisted.ensureDeferred
async def test_a_registry_with_one_missing_one_extra_and_one_different_amount(db):
    await a_day_of_osmp(db)
    out = await reconcile.reconcile_registry(db, "osmp", DAY, REGISTRY.encode(), LAYOUT)
    assert (out["encoding"], out["delimiter"], out["header"]) == ("utf-8", ";", True)
    assert [m["txn_id"] for m in out["matched"]] == ["0005001", "5002"]
    [only_registry] = out["only_registry"]
    assert (only_registry["txn_id"], only_registry["line"], only_registry["amount"]) == (
        "5009", 5, "15.00")
    assert only_registry["our_day"] is None
    [only_ours] = out["only_ours"]
    assert (only_ours["external_id"], only_ours["amount"], only_ours["account"]) == (
        "5004", "40.00", "550")
    [different] = out["amount_mismatch"]
    assert (different["txn_id"], different["registry_amount"], different["our_amount"],
            different["difference"], different["line"]) == ("5003", "30.50", "30.00", "0.50", 4)
    assert out["account_mismatch"] == [] and out["other_days"] == []
    t = out["totals"]
    assert t["registry"] == {"count": 4, "total": "75.50"}
    assert t["ours"] == {"count": 4, "total": "100.00"}
    assert t["matched"] == {"count": 2, "total": "30.00"}
    assert t["only_registry"] == {"count": 1, "total": "15.00"}
    assert t["only_ours"] == {"count": 1, "total": "40.00"}
    assert t["amount_mismatch"] == {"count": 1, "registry_total": "30.50", "our_total": "30.00"}
    assert t["difference"] == "-24.50"
    json.dumps(out)

    exported = list(csv.reader(io.StringIO(reconcile.to_csv(out).decode("utf-8-sig")),
                               delimiter=";"))
    assert exported[0] == list(reconcile.CSV_HEADER)
    assert [(r[0], r[1]) for r in exported[1:]] == [
        ("matched", "0005001"), ("matched", "5002"), ("amount_mismatch", "5003"),
        ("only_registry", "5009"), ("only_ours", "5004")]
    assert exported[3][-1] == "0.50" and exported[5][-1] == "-40.00"


@pytest_twisted.ensureDeferred
async def test_cp1251_comma_delimited_other_column_order_and_no_header(db):
    await a_day_of_osmp(db)
    # amount, account, id, date (dd.mm.yyyy); "10,00" quoted; cp1251 comments in a skipped column
    text = (
        '"10,00",426,5001,01.03.2026 08:00,Оплата\n'
        '"20,00",550,5002,01.03.2026 12:00,Оплата\n'
        '30.00,999,5003,01.03.2026 18:00,Оплата\n'
        '40.00,550,5004,01.03.2026 23:59,Оплата\n'
        '50.00,426,5005,02.03.2026 00:00,Оплата\n'
    )
    layout = "amount,account,txn_id,date,-"
    out = await reconcile.reconcile_registry(db, "osmp", DAY, text.encode("cp1251"), layout)
    assert (out["encoding"], out["delimiter"], out["header"]) == ("cp1251", ",", False)
    assert [m["txn_id"] for m in out["matched"]] == ["5001", "5002", "5003", "5004"]
    assert out["only_registry"] == out["only_ours"] == out["amount_mismatch"] == []
    [acc] = out["account_mismatch"]
    assert (acc["txn_id"], acc["registry_account"], acc["our_account"]) == ("5003", "999", "426")
    [other] = out["other_days"]
    assert (other["txn_id"], other["date"]) == ("5005", "2026-03-02")
    assert out["totals"]["difference"] == "0.00"
    # The next day's registry lists 5005; a payment of ours on another day says so.
    nxt = await reconcile.reconcile_registry(
        db, "osmp", date(2026, 3, 2), "5005;50.00\n5004;40.00\n".encode(), "txn_id,amount")
    assert [m["txn_id"] for m in nxt["matched"]] == ["5005"]
    assert [(r["txn_id"], r["our_day"]) for r in nxt["only_registry"]] == [("5004", "2026-03-01")]

    exported = reconcile.to_csv(out).decode("utf-8-sig")
    assert "account_mismatch;5003" in exported and "other_day;5005" in exported


@pytest_twisted.ensureDeferred
async def test_columns_for_one_run_only_are_not_remembered(db):
    """``remember=False`` (a console viewer's upload): the columns serve that run only."""
    await a_day_of_osmp(db)
    out = await reconcile.reconcile_registry(db, "osmp", DAY, REGISTRY.encode(), LAYOUT,
                                             remember=False)
    assert [m["txn_id"] for m in out["matched"]] == ["0005001", "5002"]
    assert await db.run(reconcile.get_layout, "osmp") is None
    with pytest.raises(reconcile.RegistryError, match="no column layout remembered"):
        await reconcile.reconcile_registry(db, "osmp", DAY, REGISTRY.encode())
    await reconcile.reconcile_registry(db, "osmp", DAY, REGISTRY.encode(), LAYOUT)
    assert await db.run(reconcile.get_layout, "osmp") == reconcile.parse_layout(LAYOUT)


@pytest_twisted.ensureDeferred
async def test_a_bad_row_is_reported_by_line_and_nothing_is_remembered(db):
    await a_day_of_osmp(db)
    bad = (
        "txn_id;date;account;amount\n"
        "5001;2026-03-01;426;10.00\n"
        "5002;2026-03-01;550;20.0.0\n"       # line 3: not an amount
        "5003;2026-03-01;426\n"               # line 4: a field missing
        "5004;2026-02-30;550;40.00\n"         # line 5: no such date
        "5001;2026-03-01;426;10.00\n"         # line 6: a repeat
        ";2026-03-01;426;1.00\n"              # line 7: no id
        "5006;2026-03-01;426;-5.00\n"         # line 8: negative
    )
    with pytest.raises(reconcile.RegistryError) as e:
        await reconcile.reconcile_registry(db, "osmp", DAY, bad.encode(), LAYOUT)
    assert [n for n, _ in e.value.lines] == [3, 4, 5, 6, 7, 8]
    message = str(e.value)
    assert "line 3: amount '20.0.0' is not a positive amount" in message
    assert "line 4: 3 fields, the layout has 4" in message
    assert "line 6: transaction 5001 repeats line 2" in message
    assert "\n" not in message
    assert await db.run(reconcile.get_layout, "osmp") is None

    for layout, why in [("txn_id,date,account", "lacks amount"),
                        ("txn_id,amount,sum", "unknown column 'sum'"),
                        ("txn_id,amount,amount", "named twice")]:
        with pytest.raises(reconcile.RegistryError, match=why):
            await reconcile.reconcile_registry(db, "osmp", DAY, b"", layout)


@pytest_twisted.ensureDeferred
async def test_the_layout_is_remembered_per_provider(db):
    await a_day_of_osmp(db)
    with pytest.raises(reconcile.RegistryError, match="no column layout remembered for osmp"):
        await reconcile.reconcile_registry(db, "osmp", DAY, REGISTRY.encode())
    first = await reconcile.reconcile_registry(db, "osmp", DAY, REGISTRY.encode(), LAYOUT)
    assert await db.run(reconcile.get_layout, "osmp") == tuple(LAYOUT.split(","))
    again = await reconcile.reconcile_registry(db, "osmp", DAY, REGISTRY.encode())
    assert again == first
    assert await db.run(reconcile.get_layout, "assist") is None
    await reconcile.reconcile_registry(db, "osmp", DAY, b"5001;10.00\n", "txn_id,amount")
    assert await db.run(reconcile.get_layout, "osmp") == ("txn_id", "amount")


@given(st.decimals(min_value=Decimal("0.01"), max_value=Decimal("999999999.99"), places=2),
       st.sampled_from([".", ","]))
def test_amounts_read_as_the_registry_writes_them(amount, mark):
    assert reconcile.parse_amount(f"{amount:.2f}".replace(".", mark)) == amount
    assert reconcile.parse_amount(f" {amount:.2f} ") == amount


@given(st.text(alphabet="0123456789.,- \u00a0e+", max_size=16))
def test_an_amount_is_never_guessed(text):
    """Either exactly the number written (one mark, at most two decimals) or None."""
    parsed = reconcile.parse_amount(text)
    if parsed is None:
        return
    written = text.strip()
    assert written.count(".") + written.count(",") <= 1
    assert len(written.replace(",", ".").partition(".")[2]) <= 2
    assert parsed == Decimal(written.replace(",", ".")) and parsed.as_tuple().exponent == -2


@pytest_twisted.ensureDeferred
async def test_registry_reconcile_command_line_remembers_columns(db, pg_dsn, tmp_path):
    await a_day_of_osmp(db)
    registry = tmp_path / "qiwi-2026-03-01.csv"
    registry.write_bytes(REGISTRY.encode("cp1251"))
    cfg = tmp_path / "smartyd.toml"
    cfg.write_text(f'[database]\ndsn = "{pg_dsn}"\n[log]\nfile = "{tmp_path}/log.jsonl"\n')

    def admin(*args):
        proc = subprocess.run([sys.executable, "-m", "smartyd.admin", "--config", str(cfg), *args],
                              capture_output=True, text=True, timeout=60)
        return proc.returncode, proc.stdout, proc.stderr

    out_csv = tmp_path / "out.csv"
    code, out, err = admin("registry", "reconcile", "--provider", "osmp", "--date", "2026-03-01",
                           str(registry), "--columns", LAYOUT, "--csv", str(out_csv))
    assert code == 0, err
    result = json.loads(out)
    assert [r["txn_id"] for r in result["only_registry"]] == ["5009"]
    assert result["csv"] == str(out_csv) and out_csv.read_bytes() == reconcile.to_csv(
        {k: v for k, v in result.items() if k != "csv"})
    code, out, err = admin("registry", "reconcile", "--provider", "osmp", "--date", "2026-03-01",
                           str(registry))
    assert code == 0, err
    assert json.loads(out)["layout"] == LAYOUT.split(",")
    assert [r["external_id"] for r in json.loads(out)["only_ours"]] == ["5004"]
    code, out, err = admin("registry", "reconcile", "--provider", "osmp", "--date", "2026-03-01",
                           str(tmp_path / "nope.csv"))
    assert code == 1 and err.count("\n") == 1 and "nope.csv" in err


@pytest_twisted.ensureDeferred
async def test_registry_command_in_process(db, tmp_path):
    await a_day_of_osmp(db)
    parser = argparse.ArgumentParser()
    handlers = journals_admin.register(parser.add_subparsers(dest="command"))
    registry = tmp_path / "r.csv"
    registry.write_bytes(b"5001;10.00\n5002;20.00\n5003;30.00\n5004;40.00\n")
    args = parser.parse_args(["registry", "reconcile", "--provider", "osmp", "--date",
                              "2026-03-01", "--columns", "txn_id,amount", str(registry)])
    out = await handlers[args.command](db, args, make_config(), reactor, None)
    assert len(out["matched"]) == 4 and out["totals"]["difference"] == "0.00"
