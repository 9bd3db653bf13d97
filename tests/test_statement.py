"""
A customer's statement (L{smartyd.ledger.statement}): a period that adds up
(opening + the rows = closing, always), cut by a limit with ``more`` and paged
backwards with ``before``; the same from ``smartyd-admin customer statement``
and in the widgets' cabinet.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
import pytest_twisted

from smartyd import ledger
from smartyd.admin.billing import parse_moment
from smartyd.admin.errors import AdminError
from test_widgets import Env as WidgetsEnv, logged_in

T0 = datetime(2025, 3, 1, tzinfo=timezone.utc)


async def busy(db, rows: int = 23) -> int:
    """A customer with ``rows`` ledger rows, one an hour from T0, credits and debits."""
    cid = await db.run(ledger.create_customer, "busy")

    async def seed(tx):
        for i in range(rows):
            amount = Decimal(100 + i) if i % 3 != 2 else Decimal(-37 - i)
            await ledger.post(tx, cid, amount, "payment" if amount > 0 else "charge",
                              f"row {i}", f"busy:{cid}:{i}", at=T0 + timedelta(hours=i))

    await db.run(seed)
    return cid


def total(rows) -> Decimal:
    return sum((r.amount for r in rows), Decimal("0.00"))


@pytest_twisted.ensureDeferred
async def test_a_busy_customer_adds_up_and_pages_back_to_the_first_row(db):
    cid = await busy(db, 23)
    balance = (await db.run(ledger.get_customer, cid)).balance
    everything = await db.run(ledger.statement, cid)
    assert len(everything.rows) == 23 and everything.more is False
    assert everything.opening_balance == 0 and everything.closing_balance == balance

    page = await db.run(ledger.statement, cid, limit=7)
    assert page.more is True and len(page.rows) == 7
    assert page.rows == everything.rows[-7:]
    assert page.closing_balance == balance
    assert page.opening_balance + total(page.rows) == page.closing_balance
    # Paging backwards: each page closes where the newer one opened; the last reaches row 1.
    seen = list(page.rows)
    while page.more:
        older = await db.run(ledger.statement, cid, limit=7, before=page.rows[0].id)
        assert older.closing_balance == page.opening_balance
        assert older.opening_balance + total(older.rows) == older.closing_balance
        seen[:0] = older.rows
        page = older
    assert seen == everything.rows and page.opening_balance == 0
    # Each row's balance_after is the running balance the statement implies.
    assert [r.balance_after for r in seen] == [
        total(seen[:i + 1]) for i in range(len(seen))]
    # limit 0: nothing shown, still adding up (to the balance), more when rows exist.
    empty = await db.run(ledger.statement, cid, limit=0)
    assert (empty.rows, empty.more) == ([], True)
    assert empty.opening_balance == empty.closing_balance == balance


@pytest_twisted.ensureDeferred
async def test_period_boundaries(db):
    cid = await busy(db, 10)
    everything = (await db.run(ledger.statement, cid)).rows
    start, end = T0 + timedelta(hours=3), T0 + timedelta(hours=7)
    period = await db.run(ledger.statement, cid, start=start, end=end)
    # [start, end): a row at start is in, a row at end is out.
    assert [r.cause for r in period.rows] == ["row 3", "row 4", "row 5", "row 6"]
    assert period.opening_balance == total(everything[:3])
    assert period.closing_balance == total(everything[:7])
    assert period.more is False
    tail = await db.run(ledger.statement, cid, start=start)
    assert tail.closing_balance == (await db.run(ledger.get_customer, cid)).balance
    head = await db.run(ledger.statement, cid, end=start)
    assert head.opening_balance == 0 and head.closing_balance == tail.opening_balance
    # A period cut by a limit pages back within the period only.
    cut = await db.run(ledger.statement, cid, start=start, end=end, limit=3)
    assert cut.more and [r.cause for r in cut.rows] == ["row 4", "row 5", "row 6"]
    back = await db.run(ledger.statement, cid, start=start, end=end, limit=3,
                        before=cut.rows[0].id)
    assert [r.cause for r in back.rows] == ["row 3"] and back.more is False
    assert back.opening_balance == period.opening_balance
    assert back.closing_balance == cut.opening_balance
    # An empty period: opening == closing, the balance at that moment.
    quiet = await db.run(ledger.statement, cid, start=T0 - timedelta(days=2),
                         end=T0 - timedelta(days=1))
    assert (quiet.rows, quiet.more, quiet.opening_balance, quiet.closing_balance) == (
        [], False, 0, 0)


@pytest_twisted.ensureDeferred
async def test_bad_arguments_are_refused(db):
    cid = await busy(db, 1)
    for kw, message in [
        ({"limit": -1}, "limit: "), ({"limit": ledger.STATEMENT_MAX_ROWS + 1}, "limit: "),
        ({"before": 0}, "before: "), ({"before": 2**63}, "before: "),
        ({"start": T0, "end": T0}, "from: must be before to"),
        ({"start": datetime(2025, 1, 1)}, "from: give a moment with its time zone"),
    ]:
        with pytest.raises(ledger.LedgerError, match=message):
            await db.run(ledger.statement, cid, **kw)
    with pytest.raises(ledger.CustomerNotFound):
        await db.run(ledger.statement, cid + 1000)


@pytest_twisted.ensureDeferred
async def test_customer_statement_command(db, admin):
    cid = await busy(db, 12)
    balance = (await db.run(ledger.get_customer, cid)).balance
    code, out, err = admin("customer", "statement", str(cid), "--limit", "5")
    assert code == 0, err
    assert set(out) == {"opening_balance", "rows", "closing_balance", "more"}
    assert out["more"] is True and len(out["rows"]) == 5
    assert Decimal(out["closing_balance"]) == balance
    assert Decimal(out["opening_balance"]) + sum(
        Decimal(r["amount"]) for r in out["rows"]) == balance
    # Backwards to the first row with --before.
    rows, page = list(out["rows"]), out
    while page["more"]:
        code, page, err = admin("customer", "statement", str(cid), "--limit", "5",
                                "--before", str(page["rows"][0]["id"]))
        assert code == 0, err
        rows[:0] = page["rows"]
    assert [r["cause"] for r in rows] == [f"row {i}" for i in range(12)]
    assert page["opening_balance"] == "0.00"
    # A period, bounds as ISO-8601 moments with a zone.
    code, out, err = admin("customer", "statement", str(cid),
                           "--from", (T0 + timedelta(hours=2)).isoformat(),
                           "--to", "2025-03-01T07:00:00+03:00")  # = 04:00 UTC
    assert code == 0, err
    assert [r["cause"] for r in out["rows"]] == ["row 2", "row 3"] and out["more"] is False
    for args, message in [
        (("--from", "yesterday"), "--from: not an ISO-8601 moment"),
        (("--to", "2025-03-01T00:00:00"), "--to: give the time zone"),
        (("--limit", "-1"), "--limit: 0..10000, not -1"),
        (("--before", "0"), "--before: a ledger row id"),
        (("--before", "99999999999999999999"), "--before: a ledger row id"),
        (("--from", "2025-03-02T00:00:00+00:00", "--to", "2025-03-01T00:00:00+00:00"),
         "--from: must be before to"),
    ]:
        code, out, err = admin("customer", "statement", str(cid), *args)
        assert code != 0 and out is None, args
        assert err.startswith("smartyd-admin: ") and message in err, err
        assert err.count("\n") == 1 and "Traceback" not in err
    code, _, err = admin("customer", "statement", str(cid + 1000))
    assert code != 0 and f"no customer {cid + 1000}" in err


def test_the_time_zone_hint_gives_a_moment_the_command_accepts():
    for text in ("2025-03-01", "2025-03-01T10:30", "2025-03-01+03:00"):
        with pytest.raises(AdminError, match="give the time zone") as e:
            parse_moment(text, "--from")
        example = re.search(r"\(e\.g\. (\S+)\)", str(e.value)).group(1)
        assert parse_moment(example, "--from").tzinfo is not None, example


@pytest_twisted.ensureDeferred
async def test_the_cabinet_shows_the_same_statement(db):
    env = WidgetsEnv(db)
    account = await db.run(ledger.create_account, "carol", ledger.hash_password("pw-carol"))
    cid = account.customer_id

    async def seed(tx):
        for i in range(25):
            await ledger.post(tx, cid, Decimal(10 + i) if i % 4 else Decimal(-3),
                              "payment", f"row {i}", f"cab:{i}", at=T0 + timedelta(hours=i))

    await db.run(seed)
    wid = await env.widget("cabinet")
    html, _ = await logged_in(env, db, wid)
    shown = await db.run(ledger.statement, cid, limit=20)
    table = re.search(r'<table id="statement">(.*?)</table>', html, re.S).group(1)
    cells = re.findall(r"<tr[^>]*><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td></tr>", table)
    # Newest first, then the balance before them: the table adds up to the balance shown.
    assert cells[:-1] == [(r.at.strftime("%Y-%m-%d %H:%M"), f"{r.amount:+.2f}", r.cause)
                          for r in reversed(shown.rows)]
    assert cells[-1][1] == f"{shown.opening_balance:.2f}" and shown.opening_balance > 0
    balance = re.search(r'id="balance">([^<]*)<', html).group(1)
    assert Decimal(balance) == shown.closing_balance == shown.opening_balance + total(shown.rows)
