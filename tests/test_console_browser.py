"""
The operator console in a real browser: Debian's ``chromium`` driven by
Playwright (``executable_path``), as tests/test_widgets_browser.py does.  The
console's own site (the feature's listener's) is served on a loopback port;
the daemon's fast token listener and entitlement snapshot run beside it.

Each role logs in and does what it may and is refused what it may not; a
support agent finds a customer by payment code and blocks the account, and
its stream token is then refused on the fast listener, sets the account's
device limit, sees its device's TV session (ended by the block), and retries a failed
receipt; an admin credits
100.00 with a reason and sees it in the balance, the statement and the audit
trail; a viewer reconciles a registry with one missing, one extra and one
different amount and sees exactly those three (its columns remembered for
no one: a viewer changes nothing); a form without its CSRF token
is refused; a customer named
``<script>...`` is shown as text (no dialog ever opens).

``SMARTYD_CONSOLE_SCREENSHOTS=DIR`` keeps the screenshots in DIR (docs/console).
"""

from __future__ import annotations

import os
import shutil
import time
from datetime import datetime, timezone

import pytest_twisted
from playwright.sync_api import sync_playwright
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.threads import deferToThread

from conftest import make_config
from smartyd import catalog, ledger, operators, payments, ppc
from smartyd.fiscal import jobs as fiscal_jobs
from smartyd.streams import make_codec
from streams_world import connect, get, within
from testapp import build

CHROMIUM = os.environ.get("SMARTYD_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
EVIL = "<script>alert('pwned')</script> Ivanov"
PASSWORD = "correct-horse-1"
REGISTRY_DAY = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)
# r1 matches, r2's amount differs, r9 is only in the registry, r3 only ours.
REGISTRY = "txn;date;account;amount\nr1;30.11.2026;payer;10.00\nr2;30.11.2026;payer;25.00\n" \
    "r9;30.11.2026;someone;9.00\n"


def browse(console: str, shots: str, profile: str, customer: int, account: int,
           registry: str) -> dict:
    """In a worker thread (Playwright's sync API blocks): what each operator sees."""
    seen: dict = {"dialogs": []}
    code = ppc.encode(customer)

    def shot(page, name):
        page.screenshot(path=os.path.join(shots, name), full_page=True)

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=FLAGS,
            viewport={"width": 1200, "height": 900}, locale="en-US")
        try:
            page = context.new_page()
            page.on("dialog", lambda d: (seen["dialogs"].append(d.message), d.dismiss()))

            def login(who):
                page.goto(f"{console}/login")
                page.get_by_label("Login").fill(who)
                page.get_by_label("Password").fill(PASSWORD)
                page.get_by_role("button", name="Log in").click()
                page.locator("#whoami").wait_for(timeout=15000)
                return page.locator("#whoami").inner_text()

            def logout():
                page.get_by_role("button", name="Log out").click()
                page.locator("#login").wait_for(timeout=15000)

            # -- a viewer reads, and is refused a block and the operators page ---------------------
            page.goto(f"{console}/login")
            shot(page, "login.png")
            seen["viewer"] = login("vera")
            page.locator("header input[name=q]").fill("+7 900 111-22-33")
            page.locator("header").get_by_role("button", name="Find").click()
            seen["viewer_name"] = page.locator("#name").inner_text(timeout=15000)
            row = page.locator("#accounts tr", has_text="ivan-tv").locator("form").first
            row.locator("input[name=reason]").fill("just looking")
            row.get_by_role("button", name="Block").click()
            seen["viewer_block"] = page.locator(".message").inner_text(timeout=15000)
            shot(page, "refused.png")
            seen["viewer_nav"] = page.locator("header nav").inner_text()
            response = page.goto(f"{console}/operators")
            seen["viewer_operators"] = (response.status, page.locator(".message").inner_text())
            # The bookkeeper's reconciliation: one missing, one extra, one different amount.
            page.goto(f"{console}/journals/reconcile")
            page.get_by_label("Provider").fill("osmp")
            page.get_by_label("Day").fill("2026-11-30")
            page.get_by_label("Registry file (CSV)").set_input_files(registry)
            page.get_by_role("button", name="Compare").click()
            seen["summary"] = page.locator("#summary").inner_text(timeout=15000)
            seen["layout_once"] = page.locator("p.notice[role=status]").inner_text()
            for part in ("mismatched", "only-registry", "only-ours", "matched"):
                seen[part] = page.locator(f"#{part} tbody tr").all_inner_texts()
            shot(page, "reconcile.png")
            page.goto(f"{console}/journals/payments")
            seen["per_day"] = page.locator("#totals").inner_text(timeout=15000)
            shot(page, "payments.png")
            logout()

            # -- support: by payment code, blocks; refused money; a form without CSRF --------------
            seen["support"] = login("sam")
            page.goto(f"{console}/search")
            page.locator("#search input[name=q]").fill(code)
            shot(page, "search.png")
            page.locator("#search").get_by_role("button", name="Find").click()
            page.locator("#ppc").wait_for(timeout=15000)
            seen["support_url"] = page.url
            seen["tv_sessions"] = page.locator("#tv-sessions tbody tr").all_inner_texts()
            form = page.locator("#accounts tr", has_text="ivan-tv").locator("form").first
            form.locator("input[name=csrf]").evaluate("e => e.remove()")
            form.locator("input[name=reason]").fill("no token")
            form.get_by_role("button", name="Block").click()
            seen["no_csrf"] = page.locator(".message").inner_text(timeout=15000)
            page.goto(f"{console}/customers/{customer}")
            row = page.locator("#accounts tr", has_text="ivan-tv").locator("form").first
            row.locator("input[name=reason]").fill("stolen set-top box")
            row.get_by_role("button", name="Block").click()
            seen["blocked"] = page.locator(".notice").inner_text(timeout=15000)
            seen["status"] = page.locator("#accounts tr", has_text="ivan-tv").inner_text()
            page.locator("#money input[name=amount]").fill("5.00")
            page.locator("#money input[name=reason]").fill("try")
            page.locator("#money").get_by_role("button", name="Post").click()
            seen["support_money"] = page.locator(".message").inner_text(timeout=15000)
            # The account's own limit of devices in session; the TV session on the card.
            page.goto(f"{console}/customers/{customer}")
            limits = page.locator("#accounts tr", has_text="ivan-tv").locator("form.limits")
            limits.locator("input[name=devices]").fill("2")
            limits.locator("input[name=reason]").fill("two set-top boxes")
            limits.get_by_role("button", name="Set limits").click()
            seen["limits"] = page.locator(".notice").inner_text(timeout=15000)
            seen["tv_sessions_blocked"] = page.locator("#tv-sessions tbody tr").count()
            seen["zone"] = page.locator("#zone").inner_text()
            # A failed receipt handed back to the worker.
            page.goto(f"{console}/journals/receipts")
            page.locator("#receipts tr", has_text="r1").get_by_role("button",
                                                                    name="Retry").click()
            seen["retried"] = page.locator(".notice").inner_text(timeout=15000)
            seen["receipts"] = page.locator("#receipts").inner_text()
            shot(page, "receipts.png")
            page.goto(f"{console}/journals/health")
            seen["health"] = page.locator("#receipt-counts").inner_text(timeout=15000)
            shot(page, "health.png")
            logout()

            # -- admin: credits 100.00 with a reason; statement, audit, journal, operators ---------
            seen["admin"] = login("boss")
            page.locator("header input[name=q]").fill(str(customer))
            page.locator("header").get_by_role("button", name="Find").click()
            seen["balance_before"] = page.locator("#balance").inner_text(timeout=15000)
            page.locator("#money select[name=direction]").select_option("credit")
            page.locator("#money input[name=amount]").fill("100.00")
            page.locator("#money input[name=reason]").fill("refund for the outage")
            page.locator("#money").get_by_role("button", name="Post").click()
            seen["credited"] = page.locator(".notice").inner_text(timeout=15000)
            seen["balance_after"] = page.locator("#balance").inner_text()
            seen["statement"] = page.locator("#statement").inner_text()
            seen["closing"] = page.locator("#closing").inner_text()
            seen["audit"] = page.locator("#audit").inner_text()
            seen["name"] = page.locator("#name").inner_text()
            shot(page, "card.png")
            page.goto(f"{console}/audit")
            page.get_by_label("Action").fill("money.credit")
            page.get_by_role("button", name="Filter").click()
            seen["journal"] = page.locator("#journal").inner_text(timeout=15000)
            shot(page, "audit.png")
            page.goto(f"{console}/operators")
            seen["operators"] = page.locator("#operators").inner_text(timeout=15000)
            shot(page, "operators.png")
            page.goto(f"{console}/catalog")
            seen["catalog"] = page.locator("#tariffs").inner_text(timeout=15000)
            shot(page, "catalog.png")
            logout()
        finally:
            context.close()
    return seen


async def fast_check(port: int, token: str, channel: str) -> int:
    c = await connect(port)
    c.send(get(f"/streams/check?token={token}&name={channel}"))
    [answer] = await c.wait(1)
    await c.close()
    return answer["status"]


@pytest_twisted.ensureDeferred
async def test_roles_block_reaches_the_fast_listener_and_a_credit_is_seen(db, tmp_path):
    assert os.access(CHROMIUM, os.X_OK), (
        f"{CHROMIUM} is missing: apt-get install chromium (./smartyd-dev test does)")
    cfg = make_config(console={"enabled": True, "listen": "tcp:0:interface=127.0.0.1"},
                      tokens={"fast_listen": "tcp:0:interface=127.0.0.1"})
    app = build(cfg, reactor, db)

    async def seed(tx):
        cid = await ledger.create_customer(tx, EVIL, "+79001112233", "ivan@example.com")
        a = await ledger.create_account(tx, "ivan-tv", customer_id=cid)
        ch = await catalog.create_channel(tx, "news", "http://s.example/news/index.m3u8")
        t = await catalog.create_tariff(tx, "Basic", "0.00", [ch["id"]])
        await catalog.assign_tariff(tx, a.id, t["id"])
        await tx.execute("INSERT INTO devices (uid, account_id, model) VALUES"
                         " ('STB-00AA', %s, 'MAG250')", (a.id,))
        await tx.execute(
            "INSERT INTO tvmw_sessions (key_hash, account_id, client_id, device_uid, device,"
            " ip, created, last_seen) VALUES (%s, %s, 'c1', 'STB-00AA', 'stb', '203.0.113.7',"
            " %s, %s)", (bytes(32), a.id, REGISTRY_DAY, REGISTRY_DAY))
        await payments.accept(tx, "osmp", "8800555", a.id, "50.00")
        payer = await ledger.create_account(tx, "payer")
        for txn, amount in (("r1", "10.00"), ("r2", "20.00"), ("r3", "30.00")):
            await payments.accept(tx, "osmp", txn, payer.id, amount, external_date=REGISTRY_DAY)
        job, _ = await fiscal_jobs.enqueue(tx, (await payments.get(tx, "osmp", "r1")).id,
                                           "osmp", "r1")
        await fiscal_jobs.fail(tx, job.id, "Dreamkas: the device is offline")
        for login, role in (("vera", "viewer"), ("sam", "support"), ("boss", "admin")):
            await operators.create(tx, login, role, pw)
        return cid, a.id, ch["id"]

    pw = await deferToThread(ledger.hash_password, PASSWORD)
    customer, account, channel = await db.run(seed)
    entitlements = app.app.features["streams"].handle
    [listener] = app.app.features["console"].services
    fast = [s for s in app.services if getattr(s, "name", "") == "fast-listener"][0]
    started = [entitlements, fast]
    for service in started:
        service.startService()
    # The feature's own site (what its listener serves), on a port the test can learn.
    console_port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        listener.factory)
    try:
        await within(entitlements.when_loaded(), 10)
        token = make_codec(cfg).mint(account, channel, int(time.time()) + 3600, ip="127.0.0.1")
        fast_port = fast.port.getHost().port
        before = await fast_check(fast_port, token, "news")
        shots = os.environ.get("SMARTYD_CONSOLE_SCREENSHOTS") or str(tmp_path)
        os.makedirs(shots, exist_ok=True)
        registry = tmp_path / "osmp-2026-11-30.csv"
        registry.write_text(REGISTRY)
        seen = await deferToThread(browse, f"http://127.0.0.1:{console_port.getHost().port}",
                                   shots, str(tmp_path / "chromium-profile"), customer, account,
                                   str(registry))
        after = await fast_check(fast_port, token, "news")
        if after != 403:  # the NOTIFY's reload may still be on its way
            await within(entitlements.next_reload(), 10)
            after = await fast_check(fast_port, token, "news")
    finally:
        await console_port.stopListening()
        for service in reversed(started):
            await service.stopService()
        shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)

    assert seen["dialogs"] == []  # the <script> name never ran
    assert seen["viewer"] == "vera (viewer)" and seen["viewer_name"] == EVIL
    assert "your role (viewer) may not do this; it needs the support role" in seen["viewer_block"]
    assert "Operators" not in seen["viewer_nav"]
    assert seen["viewer_operators"][0] == 403 and "admin" in seen["viewer_operators"][1]
    assert seen["summary"] == ("osmp, 2026-11-30: 1 match, 1 only in the registry, 1 only ours,"
                               " 1 amount mismatches.")
    assert [r.split("\t")[:3] for r in seen["mismatched"]] == [["r2", "25.00", "20.00"]]
    assert [r.split("\t")[:2] for r in seen["only-registry"]] == [["r9", "9.00"]]
    assert [r.split("\t")[:2] for r in seen["only-ours"]] == [["r3", "30.00"]]
    assert [r.split("\t")[:2] for r in seen["matched"]] == [["r1", "10.00"]]
    assert "osmp" in seen["per_day"] and "110.00" in seen["per_day"]
    assert seen["support_url"].endswith(f"/customers/{customer}")
    assert "did not come from this console" in seen["no_csrf"]
    assert seen["blocked"] == f"Account {account} is blocked." and "blocked" in seen["status"]
    assert "it needs the admin role" in seen["support_money"]
    assert "a viewer's upload remembers no layout" in seen["layout_once"]
    assert seen["limits"] == f"Limits of account {account}: sessions tariffs decide, devices 2."
    assert [r.split("\t") for r in seen["tv_sessions"]] == [
        ["STB-00AA", str(account), "stb", "203.0.113.7", "2026-11-30 15:00:00",
         "2026-11-30 15:00:00"]]
    assert seen["tv_sessions_blocked"] == 0  # the block ended the TV session
    assert seen["zone"] == "Times and days in UTC+03:00."
    assert "is handed back to the worker" in seen["retried"] and "posting" in seen["receipts"]
    assert "posting: 1" in seen["health"]
    assert before == 200 and after == 403  # the stream token is refused now
    assert seen["balance_before"] == "50.00" and seen["balance_after"] == "150.00"
    assert "100.00 posted; the balance is now 150.00." in seen["credited"]
    assert "100.00" in seen["statement"] and "operator boss: refund for the outage" in \
        seen["statement"] and seen["closing"] == "150.00"
    assert "money.credit" in seen["audit"] and "refund for the outage" in seen["audit"]
    assert "account.block" in seen["audit"] and "stolen set-top box" in seen["audit"]
    assert "money.credit" in seen["journal"] and "account.block" not in seen["journal"]
    assert all(name in seen["operators"] for name in ("vera", "sam", "boss"))
    assert "Basic" in seen["catalog"] and "news" in seen["catalog"]
    assert seen["name"] == EVIL
    # Nothing the refused ones tried was done: one block, one credit; the viewer's
    # reconciliation remembered no layout.
    rows = await db.run(operators.audit_rows)
    assert sorted(r["action"] for r in rows) == ["account.block", "account.limit",
                                                 "money.credit", "receipt.retry"]
    assert not (await db.run(ledger.get_account, account)).active
    for name in ("login.png", "search.png", "card.png", "refused.png", "audit.png",
                 "operators.png", "reconcile.png", "payments.png", "catalog.png",
                 "receipts.png", "health.png"):
        assert os.path.getsize(os.path.join(shots, name)) > 1000
