"""
The operator console through its resource (an in-memory client, as a browser
without JavaScript): login, lock-out, idle time-out, CSRF, roles, escaping,
redirects, search, blocking and hand-made credits with their audit rows; the
``operator`` admin commands; and that the console's listener and the HTTP
root share no path or session.  The real browser is tests/test_console_browser.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from html import unescape

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import Clock
from twisted.internet.error import CannotListenError
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import Site
from treq.client import HTTPClient

from conftest import make_config
from fakes import in_memory_client
from smartyd import catalog, ledger, operators, payments, ppc, reconcile
from smartyd.admin import console as console_admin
from smartyd.billing import engine
from smartyd.console.web import ConsoleWeb
from smartyd.fiscal import jobs as fiscal_jobs
from testapp import build

BASE = "http://console"
NOW = 1_780_000_000.0


def console_config(**billing):
    return make_config(console={"enabled": True, "listen": "tcp:0:interface=127.0.0.1"},
                       billing=billing or {})


class Env:
    """The console of an app built by the composition root, with a Clock for its time."""

    def __init__(self, db, cfg=None):
        self.db = db
        self.cfg = cfg or console_config()
        self.clock = Clock()
        self.clock.advance(NOW)
        self.app = build(self.cfg, reactor, db)
        web = self.app.app.features["console"].handle
        # The same pages with the test's clock (idle time-out, lock-out).
        self.web = ConsoleWeb(self.cfg, db, self.clock, web.key)
        self.browser = in_memory_client(self.web.resource())

    def another_browser(self):
        return in_memory_client(self.web.resource())

    async def get(self, path, browser=None, **kw):
        r = await (browser or self.browser).get(BASE + path, allow_redirects=False, **kw)
        return r, (await r.content()).decode("utf-8")

    async def post(self, path, data, browser=None, **kw):
        r = await (browser or self.browser).post(BASE + path, data=data, allow_redirects=False,
                                                 **kw)
        return r, (await r.content()).decode("utf-8")

    async def hidden(self, path, form_id=None, browser=None):
        _, html = await self.get(path, browser)
        if form_id:
            html = html[html.index(f'id="{form_id}"') - 300:]
        return {k: unescape(v) for k, v in re.findall(
            r'<input type="hidden" name="([a-z_]+)" value="([^"]*)"', html)}

    async def operator(self, login, role, password="correct-horse-1"):
        pw = ledger.hash_password(password)
        return await self.db.run(operators.create, login, role, pw)

    async def login(self, login, password="correct-horse-1", browser=None, next_=None):
        hidden = await self.hidden("/login" + (f"?next={next_}" if next_ else ""),
                                   browser=browser)
        return await self.post("/login", {**hidden, "login": login, "password": password},
                               browser)

    async def csrf(self, browser=None):
        return (await self.hidden("/search", browser=browser))["csrf"]


async def customer_world(db, name="Ivan Petrov"):
    async def seed(tx):
        cid = await ledger.create_customer(tx, name, "+7 (900) 111-22-33", "ivan@example.com")
        a = await ledger.create_account(tx, "ivan-tv", customer_id=cid)
        await tx.execute("INSERT INTO devices (uid, account_id, model) VALUES (%s, %s, %s)",
                         ("STB-00AA", a.id, "MAG250"))
        await payments.accept(tx, "osmp", "777000111", a.id, "50.00")
        return cid, a.id

    return await db.run(seed)


async def audit(db, **kw):
    return await db.run(operators.audit_rows, **kw)


# -- login, lock-out, idle time-out ---------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_login_sets_a_strict_httponly_cookie_and_logout_ends_the_session(db):
    env = Env(db)
    await env.operator("anna", "viewer")
    r, html = await env.get("/search")
    assert r.code == 303 and r.headers.getRawHeaders("location")[0].startswith("/login?next=")
    r, html = await env.get("/login")
    assert r.code == 200 and 'name="csrf"' in html
    csp = r.headers.getRawHeaders("content-security-policy")[0]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "<script" not in html
    r, _ = await env.login("anna")
    assert r.code == 303 and r.headers.getRawHeaders("location") == ["/search"]
    [cookie] = [c for c in r.headers.getRawHeaders("set-cookie")
                if c.startswith("smartyd_console=")]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie
    sid = cookie.split(";")[0].split("=", 1)[1]
    # Only the hash of the id is stored.
    assert await db.fetchval("SELECT count(*) FROM console_sessions WHERE id_hash = %s",
                             (operators.session_hash(sid),)) == 1
    assert sid.encode() not in bytes(await db.fetchval("SELECT id_hash FROM console_sessions"))
    r, html = await env.get("/search")
    assert r.code == 200 and "anna (viewer)" in html
    r, _ = await env.login("anna")  # again in the same browser: a new id, the old one gone
    assert await db.fetchval("SELECT count(*) FROM console_sessions") == 1
    assert await db.fetchval("SELECT count(*) FROM console_sessions WHERE id_hash = %s",
                             (operators.session_hash(sid),)) == 0
    r, _ = await env.post("/logout", {"csrf": await env.csrf()})
    assert r.code == 303
    assert await db.fetchval("SELECT count(*) FROM console_sessions") == 0
    r, _ = await env.get("/search")
    assert r.code == 303


@pytest_twisted.ensureDeferred
async def test_secure_cookies_mark_the_session_cookie_secure(db):
    cfg = make_config(console={"enabled": True, "secure_cookies": True,
                               "listen": "tcp:0:interface=127.0.0.1"})
    env = Env(db, cfg)
    await env.operator("anna", "viewer")
    r = await env.browser.get("https://console/login")
    html = (await r.content()).decode()
    assert all("Secure" in c for c in r.headers.getRawHeaders("set-cookie"))
    csrf = re.search(r'name="csrf" value="([^"]+)"', html).group(1)
    r = await env.browser.post("https://console/login", allow_redirects=False, data={
        "csrf": csrf, "login": "anna", "password": "correct-horse-1"})
    assert r.code == 303
    [session] = [c for c in r.headers.getRawHeaders("set-cookie")
                 if c.startswith("smartyd_console=")]
    assert "Secure" in session and "SameSite=Strict" in session and "HttpOnly" in session


@pytest_twisted.ensureDeferred
async def test_wrong_passwords_lock_the_operator_and_the_lock_ends(db):
    env = Env(db)
    await env.operator("anna", "support")
    for _ in range(operators.MAX_FAILURES):
        r, html = await env.login("anna", "wrong-password")
        assert r.code == 401 and "Wrong login or password" in html
    # Locked: the right password is refused too, with the same message.
    r, html = await env.login("anna")
    assert r.code == 401 and "Wrong login or password" in html
    env.clock.advance(operators.LOCK_SECONDS + 1)
    r, _ = await env.login("anna")
    assert r.code == 303
    op = await db.run(operators.get, "anna")
    assert op.failed_attempts == 0 and op.locked_until is None
    # An unknown login and a disabled operator are refused alike.
    r, html = await env.login("nobody")
    assert r.code == 401 and "Wrong login or password" in html
    await db.run(operators.disable, "anna")
    r, _ = await env.get("/search")
    assert r.code == 303  # its session ended with it
    r, _ = await env.login("anna")
    assert r.code == 401


@pytest_twisted.ensureDeferred
async def test_an_idle_session_ends(db):
    env = Env(db)
    await env.operator("anna", "viewer")
    await env.login("anna")
    env.clock.advance(operators.IDLE_TIMEOUT - 5)
    r, _ = await env.get("/search")
    assert r.code == 200  # each request restarts the idle clock
    env.clock.advance(operators.IDLE_TIMEOUT - 5)
    r, _ = await env.get("/search")
    assert r.code == 200
    env.clock.advance(operators.IDLE_TIMEOUT + 1)
    r, _ = await env.get("/search")
    assert r.code == 303 and "/login" in r.headers.getRawHeaders("location")[0]
    assert await db.fetchval("SELECT count(*) FROM console_sessions") == 0


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/",
                                    "/\\evil.example", "javascript:alert(1)"])
@pytest_twisted.ensureDeferred
async def test_login_never_redirects_off_the_console(db, target):
    env = Env(db)
    await env.operator("anna", "viewer")
    r, _ = await env.login("anna", next_=target.replace("/", "%2F").replace(":", "%3A"))
    assert r.code == 303 and r.headers.getRawHeaders("location") == ["/search"]


@pytest_twisted.ensureDeferred
async def test_login_goes_back_to_the_page_asked_for(db):
    env = Env(db)
    await env.operator("anna", "viewer")
    r, _ = await env.get("/customers/5")
    target = r.headers.getRawHeaders("location")[0].split("next=")[1]
    r, _ = await env.login("anna", next_=target)
    assert r.headers.getRawHeaders("location") == ["/customers/5"]


# -- CSRF ------------------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_forms_without_a_valid_csrf_token_are_refused_and_change_nothing(db):
    env = Env(db)
    cid, aid = await customer_world(db)
    await env.operator("boss", "admin")
    # The login form too: without its token (a login forced from another site).
    r, html = await env.post("/login", {"login": "boss", "password": "correct-horse-1"})
    assert r.code == 403 and "did not come from this console" in html
    await env.login("boss")
    token = await env.csrf()
    for data in ({}, {"csrf": token + "x"}):
        r, html = await env.post(f"/customers/{cid}/accounts/{aid}/block",
                                 {**data, "reason": "fraud"})
        assert r.code == 403 and "did not come from this console" in html
    # Another browser with its own session and a token lifted from this one.
    other = env.another_browser()
    await env.login("boss", browser=other)
    r, _ = await env.post(f"/customers/{cid}/money", {"csrf": token, "amount": "5",
                                                      "direction": "credit", "reason": "x",
                                                      "key": "k" * 20}, browser=other)
    assert r.code == 403
    assert (await db.run(ledger.get_account, aid)).active
    assert (await db.run(ledger.get_customer, cid)).balance == Decimal("50.00")
    assert await audit(db) == []


# -- roles -----------------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_roles_are_refused_with_a_visible_403(db):
    env = Env(db)
    cid, aid = await customer_world(db)
    await env.operator("vera", "viewer")
    await env.operator("sam", "support")
    await env.login("vera")
    r, html = await env.get(f"/customers/{cid}")
    assert r.code == 200 and "Ivan Petrov" in html  # a viewer reads
    token = await env.csrf()
    r, html = await env.post(f"/customers/{cid}/accounts/{aid}/block",
                             {"csrf": token, "reason": "asked"})
    assert r.code == 403 and "your role (viewer) may not do this; it needs the support" in html
    r, html = await env.get("/operators")
    assert r.code == 403 and "needs the admin role" in html
    assert "/operators" not in html.split("<main>")[0]  # no link to a page it may not open

    sam = env.another_browser()
    await env.login("sam", browser=sam)
    token = await env.csrf(sam)
    r, html = await env.post(f"/customers/{cid}/money", {
        "csrf": token, "amount": "100", "direction": "credit", "reason": "gift",
        "key": "a" * 20}, browser=sam)
    assert r.code == 403 and "it needs the admin role" in html
    assert (await db.run(ledger.get_customer, cid)).balance == Decimal("50.00")
    r, html = await env.post(f"/customers/{cid}/accounts/{aid}/block",
                             {"csrf": token, "reason": "asked by phone"}, browser=sam)
    assert r.code == 200 and f"Account {aid} is blocked." in html
    assert not (await db.run(ledger.get_account, aid)).active
    [row] = await audit(db)
    assert (row["actor"], row["action"], row["customer_id"], row["reason"]) == (
        "sam", "account.block", cid, "asked by phone")
    assert row["before"]["active"] is True and row["after"]["active"] is False
    assert row["after"]["status_reason"] == "BLOCK"
    # A reason is required: a visible message, nothing changed.
    r, html = await env.post(f"/customers/{cid}/accounts/{aid}/unblock",
                             {"csrf": token, "reason": "  "}, browser=sam)
    assert r.code == 400 and "Give a reason" in html
    assert not (await db.run(ledger.get_account, aid)).active
    # Another customer's account is not reached through this card.
    other_cid, other_aid = await db.run(lambda tx: _other(tx))
    r, html = await env.post(f"/customers/{cid}/accounts/{other_aid}/block",
                             {"csrf": token, "reason": "x"}, browser=sam)
    assert r.code == 400 and "No such account" in html
    assert (await db.run(ledger.get_account, other_aid)).active


async def _other(tx):
    a = await ledger.create_account(tx, "other")
    return a.customer_id, a.id


# -- escaping, search ------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_a_customer_named_script_is_shown_as_text(db):
    env = Env(db)
    evil = "<script>alert('x')</script>"
    cid, aid = await customer_world(db, name=evil)
    await env.operator("boss", "admin")
    await env.login("boss")
    r, html = await env.get(f"/customers/{cid}")
    assert r.code == 200 and "<script>" not in html
    assert "&lt;script&gt;alert('x')&lt;/script&gt;" in html
    r, html = await env.get("/search?q=" + "%3Cscript%3E")
    assert "<script>" not in html and "&lt;script&gt;" in html
    # A reason with markup, posted and shown in the audit trail: text again.
    token = await env.csrf()
    await env.post(f"/customers/{cid}/accounts/{aid}/block",
                   {"csrf": token, "reason": "<b onmouseover=x>"})
    r, html = await env.get("/audit")
    assert "<b onmouseover" not in html and "&lt;b onmouseover=x&gt;" in html


@pytest_twisted.ensureDeferred
async def test_search_finds_the_card_by_every_kind_of_reference(db):
    env = Env(db)
    cid, aid = await customer_world(db)

    async def order(tx):
        await tx.execute("INSERT INTO gateway_orders (provider, order_number, account_id, amount)"
                         " VALUES ('assist', '900123', %s, 10)", (aid,))
        await tx.execute("INSERT INTO gateway_orders (provider, order_number, account_id, amount)"
                         " VALUES ('payture', 'pt-55', %s, 10)", (aid,))

    await db.run(order)
    await env.operator("vera", "viewer")
    await env.login("vera")
    for q in (str(cid), ppc.encode(cid), "ivan-tv", "+79001112233", "IVAN@example.com",
              "STB-00AA", "777000111", "900123", "pt-55"):
        r, _ = await env.get(f"/search?q={q.replace('+', '%2B')}")
        assert r.code == 303 and r.headers.getRawHeaders("location") == [f"/customers/{cid}"], q
    r, html = await env.get("/search?q=nothing-like-it")
    assert r.code == 200 and "Nothing found" in html
    r, html = await env.get(f"/customers/{cid}")
    assert "STB-00AA" in html and "777000111" in html and "no receipt" in html
    assert re.search(r'id="balance">50.00<', html)


# -- money ---------------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_an_admin_credit_with_a_reason_moves_the_balance_once_and_is_audited(db):
    env = Env(db)
    cid, aid = await customer_world(db)
    await env.operator("boss", "admin")
    await env.login("boss")
    form = await env.hidden(f"/customers/{cid}", "money")
    r, html = await env.post(f"/customers/{cid}/money", {**form, "amount": "100.00",
                                                         "direction": "credit", "reason": ""})
    assert r.code == 400 and "Give a reason" in html
    for bad in ("0", "-5", "1.001", "abc", "1e3", "NaN"):
        r, html = await env.post(f"/customers/{cid}/money", {
            **form, "amount": bad, "direction": "credit", "reason": "r"})
        assert r.code == 400 and "The amount must be positive" in html, bad
    assert (await db.run(ledger.get_customer, cid)).balance == Decimal("50.00")
    data = {**form, "amount": "100.00", "direction": "credit", "reason": "refund of a fault"}
    r, html = await env.post(f"/customers/{cid}/money", data)
    assert r.code == 200 and "100.00 posted; the balance is now 150.00." in html
    r, html = await env.post(f"/customers/{cid}/money", data)  # submitted twice
    assert r.code == 200 and "nothing was posted again" in html
    customer = await db.run(ledger.get_customer, cid)
    assert customer.balance == Decimal("150.00")
    assert await db.run(ledger.ledger_sum, cid) == Decimal("150.00")
    entry = (await db.run(ledger.statement, cid)).rows[-1]
    assert (entry.kind, entry.amount, entry.cause) == (
        "manual", Decimal("100.00"), "operator boss: refund of a fault")
    [row] = await audit(db, customer_id=cid)
    assert (row["actor"], row["action"], row["reason"]) == ("boss", "money.credit",
                                                           "refund of a fault")
    assert row["before"] == {"balance": "50.00"}
    assert row["after"] == {"balance": "150.00", "amount": "100.00", "ledger_id": entry.id}
    r, html = await env.get(f"/customers/{cid}")
    assert "operator boss: refund of a fault" in html and "money.credit" in html
    # A debit is the same path with the sign turned.
    form = await env.hidden(f"/customers/{cid}", "money")
    r, html = await env.post(f"/customers/{cid}/money", {
        **form, "amount": "30", "direction": "debit", "reason": "double credit"})
    assert "-30.00 posted; the balance is now 120.00." in html
    assert (await db.run(ledger.get_customer, cid)).balance == Decimal("120.00")


@pytest_twisted.ensureDeferred
async def test_a_credit_settles_a_debt_and_reactivates_the_account_in_its_transaction(db):
    cfg = console_config(mode="builtin")
    env = Env(db, cfg)
    at = engine.utc(NOW)

    async def seed(tx):
        a = await ledger.create_account(tx, "debtor")
        t = await catalog.create_tariff(tx, "TV", "80.00", [])
        await engine.assign(tx, cfg.billing, a.id, t["id"], at=at)  # no money: DEBT
        return a

    account = await db.run(seed)
    account = await db.run(ledger.get_account, account.id)
    assert not account.active and account.status_reason == "DEBT"
    await env.operator("boss", "admin")
    await env.login("boss")
    form = await env.hidden(f"/customers/{account.customer_id}", "money")
    r, html = await env.post(f"/customers/{account.customer_id}/money", {
        **form, "amount": "100.00", "direction": "credit", "reason": "paid at the office"})
    assert r.code == 200
    after = await db.run(ledger.get_account, account.id)
    assert after.active and after.balance == Decimal("20.00")  # the charge of 80 taken


# -- the journal, operators ------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_the_audit_journal_filters(db):
    env = Env(db)
    cid, aid = await customer_world(db)
    await env.operator("boss", "admin")
    await env.login("boss")
    token = await env.csrf()
    await env.post(f"/customers/{cid}/accounts/{aid}/block", {"csrf": token, "reason": "r1"})
    await env.post(f"/customers/{cid}/accounts/{aid}/unblock", {"csrf": token, "reason": "r2"})
    r, html = await env.get("/audit?action=account.unblock")
    assert r.code == 200 and "r2" in html and ">r1<" not in html
    r, html = await env.get("/audit?actor=nobody")
    assert "account.block" not in html
    r, html = await env.get("/audit?since=2999-01-01")
    assert "account.block" not in html
    r, html = await env.get("/audit?since=yesterday")
    assert r.code == 400 and "YYYY-MM-DD" in html
    # The audit log is append-only.
    with pytest.raises(Exception, match="append-only"):
        await db.execute("UPDATE audit_log SET reason = 'x'")


@pytest_twisted.ensureDeferred
async def test_an_admin_creates_and_disables_operators(db):
    env = Env(db)
    await env.operator("boss", "admin")
    await env.login("boss")
    token = await env.csrf()
    r, html = await env.post("/operators", {"csrf": token, "login": "new-one",
                                            "role": "support"})
    assert r.code == 200
    password = re.search(r"shown this once\): (\S+)</p>", html).group(1)
    other = env.another_browser()
    r, _ = await env.login("new-one", unescape(password), browser=other)
    assert r.code == 303
    r, html = await env.post("/operators", {"csrf": token, "login": "bad login!",
                                            "role": "support"})
    assert r.code == 400 and "Check the form" in html
    r, html = await env.post("/operators/new-one/disable", {"csrf": token})
    assert r.code == 200 and "new-one is disabled" in html
    r, _ = await env.get("/search", browser=other)
    assert r.code == 303
    actions = [r["action"] for r in await audit(db)]
    assert actions == ["operator.disable", "operator.create"]


# -- one listener, one surface ------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_the_console_and_the_http_root_share_no_path_and_no_session(db):
    cfg = make_config(console={"enabled": True, "listen": "tcp:0:interface=127.0.0.1"},
                      widgets={"enabled": True, "allowed_origins": ["https://isp.example"]})
    env = Env(db, cfg)
    await env.operator("boss", "admin")
    r, _ = await env.login("boss")
    sid = [c for c in r.headers.getRawHeaders("set-cookie")
           if c.startswith("smartyd_console=")][0].split(";")[0].split("=", 1)[1]
    # The console serves nothing else.
    for path in ("/health", "/metrics", "/streams/check?token=x", "/widgets/api/get/1",
                 "/payments/osmp?command=check"):
        r, _ = await env.get(path)
        assert r.code == 404, path
    # The HTTP root has no console page, and a console session opens nothing there.
    main = in_memory_client(env.app.root)
    for path in ("/login", "/search", "/customers/1", "/audit", "/operators"):
        r = await main.get(BASE + path, cookies={"smartyd_console": sid})
        assert r.code == 404, path
    # A widget session's cookie is no console session.
    r, _ = await env.get("/search", env.another_browser(), cookies={"smartyd_widget": sid})
    assert r.code == 303
    # And the feature's listener is a service of its own on [console] listen, whose site
    # serves the console only, with the body cap.
    [listener] = env.app.app.features["console"].services
    assert listener.endpoint._interface == "127.0.0.1"
    assert listener.factory.resource is not env.app.root
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(listener.factory)
    try:
        base = f"http://127.0.0.1:{port.getHost().port}"
        client = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
        r = await client.get(base + "/health")
        assert r.code == 404
        await r.content()
        r = await client.get(base + "/login")
        assert r.code == 200 and b'name="csrf"' in await r.content()
        r = await client.post(base + "/journals/reconcile", data=b"x" * (cfg.http.max_body + 1),
                              headers={"content-type": "multipart/form-data; boundary=b"})
        assert r.code == 413
        await r.content()
    finally:
        await port.stopListening()


# -- smartyd-admin operator ----------------------------------------------------------------------
@pytest.fixture
def admin(tmp_path, pg_dsn):
    cfg = tmp_path / "smartyd.toml"
    cfg.write_text(f'[database]\ndsn = "{pg_dsn}"\n[log]\nfile = "{tmp_path}/smartyd.jsonl"\n')

    def run(*args, stdin=""):
        proc = subprocess.run([sys.executable, "-m", "smartyd.admin", "--config", str(cfg),
                               "operator", *args], input=stdin, capture_output=True, text=True,
                              timeout=60)
        return proc.returncode, json.loads(proc.stdout) if proc.returncode == 0 else None, \
            proc.stderr

    return run


@pytest_twisted.ensureDeferred
async def test_operator_commands(db, admin):
    code, out, err = admin("create", "--login", "boss", "--role", "admin")
    assert code == 0, err
    assert out["role"] == "admin" and len(out["password"]) >= 16
    op = await db.run(operators.get, "boss")
    assert ledger.verify_password(out["password"], op.password_hash)
    code, out, err = admin("create", "--login", "sam", "--role", "support", "--password-stdin",
                           stdin="a-long-password\n")
    assert code == 0 and "password" not in out
    assert ledger.verify_password("a-long-password",
                                  (await db.run(operators.get, "sam")).password_hash)
    code, _, err = admin("create", "--login", "x", "--role", "viewer", "--password-stdin",
                         stdin="short\n")
    assert code != 0 and "at least 10 characters" in err
    code, _, err = admin("create", "--login", "boss", "--role", "viewer")
    assert code != 0 and "exists already" in err
    code, _, err = admin("create", "--login", "x", "--role", "root")
    assert code != 0
    code, out, _ = admin("list")
    assert [(o["login"], o["role"], o["disabled"]) for o in out["operators"]] == [
        ("boss", "admin", False), ("sam", "support", False)]
    code, out, _ = admin("password", "sam")
    assert code == 0 and ledger.verify_password(
        out["password"], (await db.run(operators.get, "sam")).password_hash)
    code, out, _ = admin("disable", "sam")
    assert code == 0 and out["disabled"] is True
    code, _, err = admin("disable", "nobody")
    assert code != 0 and "no operator" in err
    rows = await audit(db)
    assert [(r["actor"], r["action"]) for r in rows] == [
        ("cli", "operator.disable"), ("cli", "operator.password"),
        ("cli", "operator.create"), ("cli", "operator.create")]
    assert all("password" not in json.dumps(r["after"]) or r["action"] != "operator.create"
               for r in rows)


# -- support's other actions -----------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_support_grants_a_promise_assigns_and_removes_tariffs_resets_a_password_unbinds(db):
    cfg = console_config(mode="builtin", promise_max="500.00")
    env = Env(db, cfg)
    cid, aid = await customer_world(db)
    tariff = (await db.run(catalog.create_tariff, "Sport", "30.00", []))["id"]
    device = await db.fetchval("SELECT id FROM devices WHERE uid = 'STB-00AA'")
    await env.operator("sam", "support")
    await env.operator("vera", "viewer")
    await env.login("sam")
    token = await env.csrf()
    base = f"/customers/{cid}"

    r, html = await env.post(f"{base}/promise", {"csrf": token, "amount": "900", "days": "5",
                                                 "reason": "asked"})
    assert r.code == 400 and "Not done: a promised payment is at most 500.00" in html
    r, html = await env.post(f"{base}/promise", {"csrf": token, "amount": "100", "days": "5",
                                                 "reason": "asked"})
    assert r.code == 200 and "A promised payment of 100.00 is granted until" in html
    assert (await db.run(ledger.get_customer, cid)).balance == Decimal("150.00")

    r, html = await env.post(f"{base}/tariffs/assign", {"csrf": token, "account": str(aid),
                                                        "tariff": str(tariff), "reason": "r"})
    assert r.code == 200 and f"Tariff {tariff} is assigned." in html
    assert await db.run(catalog.account_tariffs, aid) == [tariff]
    assert (await db.run(ledger.get_customer, cid)).balance == Decimal("120.00")  # charged
    r, html = await env.post(f"{base}/tariffs/remove", {"csrf": token, "account": str(aid),
                                                        "tariff": str(tariff), "reason": "r"})
    assert r.code == 200 and await db.run(catalog.account_tariffs, aid) == []

    r, html = await env.post(f"{base}/accounts/{aid}/password", {"csrf": token,
                                                                 "reason": "forgot it"})
    password = re.search(r'id="new-password">The new password of ivan-tv \(shown this once\): '
                         r'(\S+)</p>', html).group(1)
    account = await db.run(ledger.get_account, aid)
    assert ledger.verify_password(unescape(password), account.password_hash)
    r, html = await env.get(base)
    assert password not in html  # shown once

    # The device's TV Middleware session is on the card (never its key); unbinding ends it.
    key_hash = bytes(range(32))
    await db.execute(
        "INSERT INTO tvmw_sessions (key_hash, account_id, client_id, device_uid, device, ip,"
        " created, last_seen) VALUES (%s, %s, 'c1', 'STB-00AA', 'stb <MAG>', '203.0.113.7',"
        " %s, %s)", (key_hash, aid, day_at(30, 21), day_at(30, 22)))
    r, html = await env.get(base)
    tv = html[html.index('id="tv-sessions"'):]
    tv = tv[:tv.index("</table>")]
    assert re.search(r"<td>STB-00AA</td><td>\d+</td><td>stb &lt;MAG&gt;</td>"
                     r"<td>203.0.113.7</td><td>2026-12-01 00:00:00</td>"
                     r"<td>2026-12-01 01:00:00</td>", tv), tv
    assert key_hash.hex() not in html and "key_hash" not in html
    r, html = await env.post(f"{base}/devices/{device}/unbind", {"csrf": token,
                                                                 "reason": "sold it"})
    assert r.code == 200 and "Device STB-00AA is unbound; TV sessions ended: 1." in html
    assert await db.fetchval("SELECT count(*) FROM devices") == 0
    assert await db.fetchval("SELECT count(*) FROM tvmw_sessions") == 0
    assert 'class="empty" id="tv-sessions"' in html
    r, html = await env.post(f"{base}/devices/{device}/unbind", {"csrf": token,
                                                                 "reason": "again"})
    assert r.code == 400 and "No such device" in html

    actions = [(r["actor"], r["action"]) for r in await audit(db, customer_id=cid)]
    assert actions == [("sam", "device.unbind"), ("sam", "account.password"),
                       ("sam", "tariff.remove"), ("sam", "tariff.assign"),
                       ("sam", "promise.grant")]
    [pw_row] = await audit(db, action="account.password")
    assert pw_row["after"] == {"account": aid}
    [unbind_row] = await audit(db, action="device.unbind")
    assert unbind_row["before"]["uid"] == "STB-00AA" \
        and unbind_row["after"] == {"sessions_ended": 1}

    # A viewer may do none of it.
    viewer = env.another_browser()
    await env.login("vera", browser=viewer)
    vtoken = await env.csrf(viewer)
    for path in (f"{base}/promise", f"{base}/tariffs/assign", f"{base}/accounts/{aid}/password",
                 f"{base}/devices/{device}/unbind"):
        r, html = await env.post(path, {"csrf": vtoken, "amount": "1", "days": "1",
                                        "tariff": str(tariff), "reason": "x"}, browser=viewer)
        assert r.code == 403 and "it needs the support role" in html, path
    assert len(await audit(db, customer_id=cid)) == 5


@pytest_twisted.ensureDeferred
async def test_support_sets_an_accounts_own_session_and_device_limits_audited(db):
    env = Env(db)
    cid, aid = await customer_world(db)
    other_aid = (await db.run(ledger.create_account, "other-tv")).id
    await env.operator("sam", "support")
    await env.operator("vera", "viewer")
    await env.login("sam")
    token = await env.csrf()
    base = f"/customers/{cid}"

    def limits_form(html):
        form = html[html.index(f'action="{base}/accounts/{aid}/limits"'):]
        return form[:form.index("</form>")]

    _, html = await env.get(base)
    assert 'name="sessions" value=""' in limits_form(html)
    r, html = await env.post(f"{base}/accounts/{aid}/limits", {
        "csrf": token, "sessions": "2", "devices": "1", "reason": "two TVs"})
    assert r.code == 200 and f"Limits of account {aid}: sessions 2, devices 1." in html
    assert 'name="sessions" value="2"' in limits_form(html) \
        and 'name="devices" value="1"' in limits_form(html)
    assert (await db.fetchall("SELECT max_sessions, max_devices FROM accounts WHERE id = %s",
                              (aid,)))[0] == (2, 1)
    for bad in ({"sessions": "0"}, {"devices": "x"}, {"sessions": "-1"}, {"reason": ""}):
        r, html = await env.post(f"{base}/accounts/{aid}/limits", {
            "csrf": token, "sessions": "5", "devices": "5", "reason": "r", **bad})
        assert r.code == 400 and ("A limit is a whole number" in html
                                  or "Give a reason" in html), bad
    r, html = await env.post(f"{base}/accounts/{other_aid}/limits", {
        "csrf": token, "sessions": "5", "devices": "5", "reason": "r"})
    assert r.code == 400 and "No such account of this customer" in html
    # Empty: the account's own limit cleared (its tariffs decide), as the CLI's 0.
    r, html = await env.post(f"{base}/accounts/{aid}/limits", {
        "csrf": token, "sessions": "", "devices": "3", "reason": "sold one"})
    assert r.code == 200
    assert (await db.fetchall("SELECT max_sessions, max_devices FROM accounts WHERE id = %s",
                              (aid,)))[0] == (None, 3)
    assert await db.fetchval("SELECT max_sessions FROM accounts WHERE id = %s",
                             (other_aid,)) is None
    rows = await audit(db, action="account.limit")
    assert [(r["actor"], r["customer_id"], r["reason"], r["before"], r["after"])
            for r in reversed(rows)] == [
        ("sam", cid, "two TVs", {"account": aid, "max_sessions": None, "max_devices": None},
         {"account": aid, "max_sessions": 2, "max_devices": 1}),
        ("sam", cid, "sold one", {"account": aid, "max_sessions": 2, "max_devices": 1},
         {"account": aid, "max_sessions": None, "max_devices": 3})]
    viewer = env.another_browser()
    await env.login("vera", browser=viewer)
    r, html = await env.post(f"{base}/accounts/{aid}/limits", {
        "csrf": await env.csrf(viewer), "sessions": "9", "devices": "9", "reason": "x"},
        browser=viewer)
    assert r.code == 403 and "it needs the support role" in html
    assert len(await audit(db, action="account.limit")) == 2


@pytest_twisted.ensureDeferred
async def test_the_console_counts_days_and_shows_times_in_the_journals_zone(db):
    """One operator day: the statement's and the audit's days are Moscow days, as the journals'."""
    env = Env(db)
    cid = await db.run(ledger.create_customer, "Zone", None, None)
    late = datetime(2026, 11, 1, 22, 30, tzinfo=timezone.utc)  # 2 Nov 01:30 in Moscow

    async def seed(tx):
        await ledger.post(tx, cid, Decimal("10.00"), "manual", "late", "z1", at=late)
        await ledger.post(tx, cid, Decimal("5.00"), "manual", "noon", "z2", at=day_at(2))
        await operators.audit(tx, "cli", "zone.test", at=late, customer_id=cid)

    await db.run(seed)
    await env.operator("vera", "viewer")
    await env.login("vera")
    r, html = await env.get(f"/customers/{cid}?from=2026-11-02&to=2026-11-02")
    assert r.code == 200 and "Times and days in UTC+03:00." in html
    part = html[html.index('id="statement-section"'):]
    assert re.findall(r"<td>(late|noon)</td>", part) == ["late", "noon"]
    assert "<td>2026-11-02 01:30:00</td>" in part
    assert re.search(r'id="opening">0.00<', part) and re.search(r'id="closing">15.00<', part)
    r, html = await env.get(f"/customers/{cid}?from=2026-11-01&to=2026-11-01")
    part = html[html.index('id="statement-section"'):]
    assert "late" not in part and re.search(r'id="closing">0.00<', part)
    r, text = await env.get(f"/customers/{cid}/statement.csv?from=2026-11-02&to=2026-11-02")
    assert text.splitlines()[2].startswith("2026-11-02T01:30:00+03:00,10.00,manual,late")
    r, html = await env.get("/audit?since=2026-11-02&until=2026-11-02")
    assert "zone.test" in html and "2026-11-02 01:30:00" in html
    r, html = await env.get("/audit?since=2026-11-01&until=2026-11-01")
    assert "zone.test" not in html
    for page in ("/search", "/journals/payments", "/journals/reconcile", "/journals/receipts",
                 "/journals/health", "/catalog", "/audit"):
        r, html = await env.get(page)
        assert r.code == 200 and "Times and days in UTC+03:00." in html, page


# -- journals -------------------------------------------------------------------------------------
DAY = datetime(2026, 11, 30, 10, 0, tzinfo=timezone.utc)


async def day_of_payments(db):
    async def seed(tx):
        a = await ledger.create_account(tx, "payer")
        for txn, amount, when in (("t1", "100.00", DAY), ("t2", "200.00", DAY),
                                  ("t3", "300.00", DAY), ("t4", "40.00", DAY),
                                  ("late", "5.00", DAY + timedelta(days=1))):
            await payments.accept(tx, "osmp", txn, a.id, amount, external_date=when)
        await payments.accept(tx, "assist", "b1", a.id, "70.00")
        return a.customer_id

    return await db.run(seed)


REGISTRY = ("txn;date;account;amount\n"
            "t1;30.11.2026;payer;100,00\n"
            "t2;30.11.2026;payer;250.00\n"      # a different amount
            "t3;30.11.2026;payer;300.00\n"
            "x9;30.11.2026;nobody;9.00\n")     # only in the registry; t4 is only ours


def multipart(fields: dict, filename: str, data: bytes) -> tuple[bytes, str]:
    """A multipart/form-data body, as a browser sends a form with a file."""
    boundary = "----console-test-boundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
             .encode() for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="registry";'
                 f' filename="{filename}"\r\nContent-Type: text/csv\r\n\r\n'.encode()
                 + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), \
        f"multipart/form-data; boundary={boundary}"


async def upload(env, data, fields, browser=None):
    token = await env.csrf(browser)
    body, kind = multipart({"csrf": token, **fields}, "registry.csv", data)
    r = await (browser or env.browser).post(
        BASE + "/journals/reconcile", allow_redirects=False, data=body,
        headers={"content-type": kind})
    return r, (await r.content()).decode("utf-8")


@pytest_twisted.ensureDeferred
async def test_registry_reconciliation_shows_exactly_the_differences_and_remembers_the_layout(db):
    env = Env(db)
    cid = await day_of_payments(db)
    await env.operator("sam", "support")
    await env.login("sam")
    fields = {"provider": "osmp", "day": "2026-11-30", "columns": "txn_id,date,account,amount",
              "format": "html"}
    r, html = await upload(env, REGISTRY.encode(), fields)
    assert r.code == 200
    assert "osmp, 2026-11-30: 2 match, 1 only in the registry, 1 only ours," \
        " 1 amount mismatches." in html

    def section(name):
        part = html[html.index(f'id="{name}"'):]
        return part[:part.index("</table>") if "</table>" in part else 200]

    assert "t2" in section("mismatched") and "250.00" in section("mismatched") \
        and "200.00" in section("mismatched")
    assert "x9" in section("only-registry") and "t1" not in section("only-registry")
    assert "t4" in section("only-ours") and "late" not in section("only-ours")
    assert f"/customers/{cid}" in section("matched")
    # The CSV export (smartyd.reconcile.to_csv, as the CLI's --csv).
    r, text = await upload(env, REGISTRY.encode(), {**fields, "format": "csv"})
    assert r.headers.getRawHeaders("content-type") == ["text/csv; charset=utf-8"]
    lines = text.lstrip("\ufeff").strip().splitlines()
    assert lines[0].startswith("status;txn_id") and sorted(
        line.split(";")[0] for line in lines[1:]) == [
        "amount_mismatch", "matched", "matched", "only_ours", "only_registry"]
    # A cell a spreadsheet would take for a formula is text; the new layout is remembered.
    r, text = await upload(env, b"txn;d;a;amount\n=HYPERLINK(1);x;@evil;1.00\n",
                           {**fields, "columns": "txn_id,-,account,amount", "format": "csv"})
    assert "only_registry;'=HYPERLINK(1);2;;'@evil;1.00" in text
    r, html = await upload(env, b"100.00,t1\n", {**fields, "columns": "amount,txn_id"})
    assert r.code == 200 and "1 match, 0 only in the registry, 3 only ours" in html
    r, html = await env.get("/journals/reconcile?provider=osmp")
    assert 'name="columns" value="amount,txn_id"' in html
    # A registry that cannot be read: a visible message naming the line; nothing saved.
    r, html = await upload(env, b"t1;30.11.2026;y;abc\n", fields)
    assert r.code == 400 and "line 1: amount" in html
    r, html = await upload(env, b"a\n", {**fields, "provider": "no such!"})
    assert r.code == 400 and "Name the provider" in html
    r, html = await upload(env, b"t1;1\n", {**fields, "columns": "txn_id,txn_id,amount"})
    assert r.code == 400 and "a column is named twice" in html
    assert await db.run(reconcile.get_layout, "osmp") == ("amount", "txn_id")
    # Each layout remembered anew is a change of sam's, in the audit journal.
    rows = await audit(db, action="registry.layout")
    assert [(row["actor"], row["after"]["columns"]) for row in reversed(rows)] == [
        ("sam", ["txn_id", "date", "account", "amount"]),
        ("sam", ["txn_id", "-", "account", "amount"]), ("sam", ["amount", "txn_id"])]
    assert rows[0]["before"] == {"provider": "osmp", "columns": ["txn_id", "-", "account",
                                                                 "amount"]}


@pytest_twisted.ensureDeferred
async def test_a_viewer_reconciles_with_its_own_columns_but_remembers_no_layout(db):
    env = Env(db)
    await day_of_payments(db)
    await env.operator("vera", "viewer")
    await env.login("vera")
    _, html = await env.get("/journals/reconcile?provider=osmp")
    assert "used for this upload only" in html
    fields = {"provider": "osmp", "day": "2026-11-30", "columns": "txn_id,date,account,amount",
              "format": "html"}
    # No layout yet: the viewer's columns serve the comparison, nothing is remembered.
    r, html = await upload(env, REGISTRY.encode(), fields)
    assert r.code == 200 and "2 match, 1 only in the registry, 1 only ours" in html
    assert "used for this comparison only" in html
    assert await db.run(reconcile.get_layout, "osmp") is None
    # A layout support remembered stays as it was after the viewer's upload with others.
    await db.run(reconcile.set_layout, "osmp", ("amount", "txn_id"))
    r, html = await upload(env, REGISTRY.encode(), fields)
    assert r.code == 200 and "2 match, 1 only in the registry, 1 only ours" in html
    assert "used for this comparison only" in html
    assert 'name="columns" value="txn_id,date,account,amount"' in html  # as given, this run
    assert await db.run(reconcile.get_layout, "osmp") == ("amount", "txn_id")
    r, html = await env.get("/journals/reconcile?provider=osmp")
    assert 'name="columns" value="amount,txn_id"' in html
    # The remembered layout itself given again: nothing to say.
    r, html = await upload(env, b"100.00,t1\n", {**fields, "columns": "amount,txn_id"})
    assert r.code == 200 and "used for this comparison only" not in html
    assert await audit(db) == []


@pytest_twisted.ensureDeferred
async def test_payments_per_day_receipts_and_health_journals(db):
    env = Env(db)
    cid = await day_of_payments(db)

    async def more(tx):
        payment = await payments.get(tx, "osmp", "t1")
        job, _ = await fiscal_jobs.enqueue(tx, payment.id, "osmp", "t1")
        payment = await payments.get(tx, "osmp", "t2")
        failed, _ = await fiscal_jobs.enqueue(tx, payment.id, "osmp", "t2")
        await fiscal_jobs.fail(tx, failed.id, "Dreamkas <down>")
        await tx.execute("INSERT INTO job_runs (job, last_started, last_finished, last_ok,"
                         " last_error, runs, failures) VALUES ('epg-sync', now(), now(), false,"
                         " 'feed <down>', 3, 1)")
        return failed.id

    failed = await db.run(more)
    await env.operator("vera", "viewer")
    await env.operator("sam", "support")
    await env.login("vera")
    # Payments are on their provider's day (OSMP's txn_date), in Moscow time.
    tomorrow = (datetime.now(timezone.utc) + timedelta(days=1)).date().isoformat()
    r, html = await env.get(f"/journals/payments?from=2026-11-30&to={tomorrow}")
    assert r.code == 200
    per_day = html[html.index('id="per-day"'):]
    assert re.search(r"<td>2026-11-30</td><td>osmp</td><td>4</td><td><a [^>]*>640.00</a>",
                     per_day)
    totals = html[html.index('id="totals"'):]
    assert re.search(r"<td>osmp</td><td>5</td><td>645.00</td>", totals)
    assert re.search(r"<td>assist</td><td>1</td><td>70.00</td>", totals)
    assert re.search(r"<td>All providers</td><td>6</td><td>715.00</td>", totals)
    r, html = await env.get("/journals/payments?from=2026-11-30&to=2026-11-30&provider=assist")
    assert r.code == 200 and "715.00" not in html and 'id="per-day"' in html
    r, html = await env.get("/journals/payments?from=nonsense")
    assert r.code == 400 and "YYYY-MM-DD" in html
    r, html = await env.get("/journals/payments?from=2026-12-01&to=2026-11-30")
    assert r.code == 400 and "before it starts" in html
    r, html = await env.get("/journals/payments/day?day=2026-11-30&provider=osmp")
    assert r.code == 200 and "osmp, 2026-11-30: 4 payments, 640.00" in html
    assert html.count(f'href="/customers/{cid}"') == 4
    # The receipt queue: a viewer sees it, may not retry; support retries, audited.
    r, html = await env.get("/journals/receipts")
    assert r.code == 200 and "queued: 1" in html and "failed: 1" in html
    assert "Dreamkas &lt;down&gt;" in html and f"/journals/receipts/{failed}/retry" in html
    token = await env.csrf()
    r, html = await env.post(f"/journals/receipts/{failed}/retry", {"csrf": token})
    assert r.code == 403 and "it needs the support role" in html
    assert (await db.run(fiscal_jobs.list_jobs, "failed"))[0].id == failed
    browser = env.another_browser()
    await env.login("sam", browser=browser)
    token = await env.csrf(browser)
    r, html = await env.post(f"/journals/receipts/{failed}/retry", {"csrf": token},
                             browser=browser)
    assert r.code == 200 and f"Receipt job {failed} is handed back" in html
    assert await db.run(fiscal_jobs.list_jobs, "failed") == []
    [row] = await audit(db, action="receipt.retry")
    assert (row["actor"], row["customer_id"]) == ("sam", cid)
    assert (row["before"]["state"], row["after"]["state"]) == ("failed", "posting")
    r, html = await env.post(f"/journals/receipts/{failed}/retry", {"csrf": token},
                             browser=browser)
    assert r.code == 400 and "is posting, not failed" in html
    assert len(await audit(db, action="receipt.retry")) == 1
    r, html = await env.get("/journals/health")
    assert r.code == 200 and "epg-sync" in html and "feed &lt;down&gt;" in html \
        and "<td>failed</td>" in html and 'id="outbox-depth"' in html


# -- the catalog -----------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_an_admin_creates_and_edits_tariffs_and_channels_a_viewer_reads_them(db):
    env = Env(db)
    await env.operator("boss", "admin")
    await env.operator("vera", "viewer")
    await env.login("boss")
    token = await env.csrf()
    r, html = await env.post("/catalog/channels", {
        "csrf": token, "name": "news", "url_mask": "http://s.example/news/$token",
        "streamer_id": "astra-news", "xmltv_id": "news.example"})
    assert r.code == 200 and "Saved." in html
    [news] = await db.run(catalog.list_channels)
    assert (news["streamer_id"], news["xmltv_id"]) == ("astra-news", "news.example")
    r, html = await env.post("/catalog/channels", {"csrf": token, "name": "bad",
                                                   "url_mask": "ftp://x"})
    assert r.code == 400 and "url mask must be a stream URL" in html
    r, html = await env.post("/catalog/tariffs", {
        "csrf": token, "name": "Basic <TV>", "price": "99.50", "period_days": "30",
        "period_months": "", "activation_price": "0", "sessions": "2", "devices": "3",
        "hidden": "1", "channel": str(news["id"])})
    assert r.code == 200 and "Basic &lt;TV&gt;" in html
    [tariff] = await db.run(catalog.list_tariffs)
    assert (tariff["price"], tariff["sessions"], tariff["devices"], tariff["hidden"],
            tariff["channels"]) == (Decimal("99.50"), 2, 3, True, [news["id"]])
    assert await db.fetchval("SELECT devices_count FROM tariffs") == 3
    r, html = await env.get(f"/catalog/tariffs/{tariff['id']}")
    assert 'name="devices" value="3"' in html and "Devices in session" in html
    for bad, why in (({"price": "1.001"}, "price is not an amount"),
                     ({"period_days": "0"}, "period days must be 1-3660"),
                     ({"sessions": "x"}, "sessions must be a whole number"),
                     ({"devices": "x"}, "devices must be a whole number"),
                     ({"devices": "0"}, "devices must be at least 1")):
        r, html = await env.post(f"/catalog/tariffs/{tariff['id']}", {
            "csrf": token, "name": "Basic", "price": "10", "period_days": "30",
            "activation_price": "0", **bad})
        assert r.code == 400 and why in html, bad
    r, html = await env.post("/catalog/tariffs", {
        "csrf": token, "name": "Other", "price": "1", "period_days": "30",
        "activation_price": "0", "devices": "0"})
    assert r.code == 400 and "devices must be at least 1" in html
    assert len(await db.run(catalog.list_tariffs)) == 1
    r, html = await env.post(f"/catalog/tariffs/{tariff['id']}", {
        "csrf": token, "name": "Basic", "price": "120.00", "period_days": "30",
        "period_months": "1", "activation_price": "5", "sessions": ""})
    assert r.code == 200 and "Saved." in html
    [edited] = await db.run(catalog.list_tariffs)
    assert (edited["name"], edited["price"], edited["period_months"], edited["sessions"],
            edited["devices"], edited["hidden"], edited["channels"]) == (
        "Basic", Decimal("120.00"), 1, None, None, False, [])
    r, html = await env.post(f"/catalog/channels/{news['id']}", {
        "csrf": token, "url_mask": "https://cdn.example/news/$token", "streamer_id": "",
        "xmltv_id": ""})
    assert r.code == 200
    [news2] = await db.run(catalog.list_channels)
    assert (news2["url_mask"], news2["streamer_id"], news2["xmltv_id"]) == (
        "https://cdn.example/news/$token", None, None)
    r, _ = await env.get("/catalog/tariffs/999")
    assert r.code == 404
    assert [r["action"] for r in await audit(db)] == [
        "channel.edit", "tariff.edit", "tariff.create", "channel.create"]
    [edit] = await audit(db, action="tariff.edit")
    assert edit["before"]["price"] == "99.50" and edit["after"]["price"] == "120.00"
    assert (edit["before"]["devices"], edit["after"]["devices"]) == (3, None)

    viewer = env.another_browser()
    await env.login("vera", browser=viewer)
    r, html = await env.get("/catalog", browser=viewer)
    assert r.code == 200 and "Basic" in html and "cdn.example" in html
    vtoken = await env.csrf(viewer)
    r, html = await env.post(f"/catalog/channels/{news['id']}", {
        "csrf": vtoken, "url_mask": "http://evil/"}, browser=viewer)
    assert r.code == 403 and "it needs the admin role" in html
    r, html = await env.post("/catalog/tariffs", {"csrf": vtoken, "name": "x", "price": "1",
                                                  "period_days": "1"}, browser=viewer)
    assert r.code == 403
    assert len(await db.run(catalog.list_tariffs)) == 1


# -- the card's other parts ---------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_the_card_shows_cards_sessions_outbox_and_the_statement_as_csv(db):
    env = Env(db)
    cid, aid = await customer_world(db)

    async def more(tx):
        await tx.execute("INSERT INTO payture_cards (customer_id, card_id, masked, expiry)"
                         " VALUES (%s, 'c-1', '411111xxxxxx1111', '12/29')", (cid,))
        await tx.execute("INSERT INTO partner_calls (provider, user_key, customer_id, op,"
                         " state, last_error) VALUES ('megogo', 'u1', %s, 'subscribe',"
                         " 'failed', 'HTTP 500')", (cid,))
        for session, expires in (("live-1", NOW + 60), ("gone-1", NOW - 60)):
            await tx.execute("INSERT INTO session_leases (account_id, session, since, expires)"
                             " VALUES (%s, %s, %s, %s)", (aid, session, NOW - 600, expires))

    await db.run(more)
    await env.operator("sam", "support")
    await env.login("sam")
    r, html = await env.get(f"/customers/{cid}")

    def part(name):
        return html[html.index(f'id="{name}"'):][:1500]

    assert "411111xxxxxx1111" in part("cards") and "12/29" in part("cards")
    assert "megogo" in part("outbox") and "HTTP 500" in part("outbox")
    assert "live-1" in part("sessions") and "gone-1" not in html
    assert 'id="autopay">off<' in html
    token = await env.csrf()
    r, html = await env.post(f"/customers/{cid}/autopay", {"csrf": token, "state": "on",
                                                           "reason": "asked by phone"})
    assert r.code == 200 and "Autopayment is on." in html and 'id="autopay">on<' in html
    [row] = await audit(db, action="customer.autopay")
    assert (row["before"], row["after"], row["actor"]) == ({"autopay": False}, {"autopay": True},
                                                           "sam")
    r, text = await env.get(f"/customers/{cid}/statement.csv")
    assert r.code == 200 and r.headers.getRawHeaders("content-type") == [
        "text/csv; charset=utf-8"]
    lines = text.strip().splitlines()
    assert lines[0] == "time,amount,kind,cause,balance_after,ledger_id"
    assert lines[1] == ",,opening_balance,,0.00,"
    assert lines[2].split(",")[1:5] == ["50.00", "payment", "osmp:777000111", "50.00"]
    assert lines[3] == ",,closing_balance,,50.00,"
    r, _ = await env.get("/customers/999999/statement.csv")
    assert r.code == 404


def day_at(day: int, hour: int = 12) -> datetime:
    return datetime(2026, 11, day, hour, tzinfo=timezone.utc)


@pytest_twisted.ensureDeferred
async def test_the_statement_of_a_period_adds_up_pages_back_and_downloads(db):
    env = Env(db)
    env.web.statement_rows = 2  # a page of two rows
    cid = await db.run(ledger.create_customer, "Period", None, None)

    async def seed(tx):
        for n, (day, amount) in enumerate([(1, "100.00"), (2, "-10.00"), (3, "-20.00"),
                                           (4, "-30.00"), (5, "5.00")]):
            await ledger.post(tx, cid, Decimal(amount), "manual", f"=row {n}", f"k{n}",
                              at=day_at(day))

    await db.run(seed)
    await env.operator("vera", "viewer")
    await env.login("vera")

    def statement(html):
        part = html[html.index('id="statement-section"'):]
        part = part[:part.index("</section>")]
        return (re.search(r'id="opening">([^<]*)<', part)[1],
                re.findall(r"<td>(=row \d)</td>", part),
                re.search(r'id="closing">([^<]*)<', part)[1],
                re.search(r'id="earlier" href="([^"]*)"', part))

    # The 2nd to the 4th (days, both included): 100.00 before, -60.00 in it.
    r, html = await env.get(f"/customers/{cid}?from=2026-11-02&to=2026-11-04")
    assert r.code == 200
    opening, rows, closing, earlier = statement(html)
    assert (opening, rows, closing) == ("90.00", ["=row 2", "=row 3"], "40.00")
    r, html = await env.get(unescape(earlier[1]))  # the next page back
    opening, rows, closing, earlier = statement(html)
    assert (opening, rows, closing, earlier) == ("100.00", ["=row 1"], "90.00", None)
    # No period: the latest rows, closing with the balance.
    r, html = await env.get(f"/customers/{cid}")
    opening, rows, closing, _ = statement(html)
    assert (opening, rows, closing) == ("70.00", ["=row 3", "=row 4"], "45.00")
    assert f'href="/customers/{cid}/statement.csv?from=2026-11-02&amp;to=2026-11-04"' in \
        (await env.get(f"/customers/{cid}?from=2026-11-02&to=2026-11-04"))[1]
    r, text = await env.get(f"/customers/{cid}/statement.csv?from=2026-11-02&to=2026-11-04")
    lines = text.strip().splitlines()
    assert lines[1] == ",,opening_balance,,100.00,"
    assert [line.split(",")[1:4] for line in lines[2:5]] == [
        ["-10.00", "manual", "'=row 1"], ["-20.00", "manual", "'=row 2"],
        ["-30.00", "manual", "'=row 3"]]
    assert lines[5] == ",,closing_balance,,40.00,"
    for bad in ("from=2026-11-04&to=2026-11-02", "from=yesterday"):
        r, html = await env.get(f"/customers/{cid}?{bad}")
        assert r.code == 400 and "A period is two days" in html
        r, _ = await env.get(f"/customers/{cid}/statement.csv?{bad}")
        assert r.code == 400


@pytest_twisted.ensureDeferred
async def test_smartyd_admin_changes_are_audit_rows_of_cli_in_the_consoles_journal(
        db, tmp_path, pg_dsn):
    cfg = tmp_path / "smartyd.toml"
    cfg.write_text(f'[database]\ndsn = "{pg_dsn}"\n[log]\nfile = "{tmp_path}/smartyd.jsonl"\n')

    def cli(*argv):
        proc = subprocess.run([sys.executable, "-m", "smartyd.admin", "--config", str(cfg),
                               *argv], capture_output=True, text=True, timeout=60)
        return proc.returncode, json.loads(proc.stdout) if proc.returncode == 0 else None, \
            proc.stderr

    code, customer, err = cli("customer", "create", "--name", "Olga")
    assert code == 0, err
    cid = customer["id"]
    code, account, err = cli("account", "create", "--login", "olga-tv", "--customer", str(cid))
    assert code == 0, err
    aid = account["id"]
    code, channel, err = cli("channel", "create", "--name", "news",
                             "--url-mask", "http://streamer/news.m3u8")
    assert code == 0, err
    code, tariff, err = cli("tariff", "create", "--name", "Basic", "--price", "0.00",
                            "--channel", str(channel["id"]))
    assert code == 0, err
    for argv in (("tariff", "assign", str(aid), str(tariff["id"])),
                 ("account", "limit", str(aid), "--sessions", "2"),
                 ("account", "block", str(aid), "--reason", "FRAUD"),
                 ("customer", "autopay", str(cid), "on")):
        code, _, err = cli(*argv)
        assert code == 0, (argv, err)
    # A command refused changes nothing and records nothing.
    code, _, err = cli("account", "limit", "999999", "--sessions", "1")
    assert code != 0 and "no account 999999" in err

    rows = await audit(db)
    assert {r["actor"] for r in rows} == {"cli"}
    assert [(r["action"], r["customer_id"]) for r in reversed(rows)] == [
        ("customer.create", cid), ("account.create", cid), ("channel.create", None),
        ("tariff.create", None), ("tariff.assign", cid), ("account.limit", cid),
        ("account.block", cid), ("customer.autopay", cid)]
    by_action = {r["action"]: r for r in rows}
    assert by_action["account.block"]["reason"] == "FRAUD"
    assert by_action["account.block"]["before"]["active"] is True
    assert by_action["account.block"]["after"]["active"] is False
    assert (by_action["account.limit"]["after"]["previous"],
            by_action["account.limit"]["after"]["max_sessions"]) == (None, 2)
    assert (by_action["customer.autopay"]["before"],
            by_action["customer.autopay"]["after"]) == ({"autopay": False}, {"autopay": True})
    assert by_action["tariff.create"]["after"]["name"] == "Basic"
    # The console's audit journal and the customer's card show them.
    env = Env(db)
    await env.operator("vera", "viewer")
    await env.login("vera")
    r, html = await env.get("/audit?actor=cli")
    journal = html[html.index('id="journal"'):]
    assert r.code == 200 and journal.count("<td>cli</td>") == 8
    assert "channel.create" in journal and "FRAUD" in journal
    r, html = await env.get(f"/customers/{cid}")
    trail = html[html.index('id="audit"'):]
    assert trail.count("<td>cli</td>") == 6 and "tariff.assign" in trail


@pytest_twisted.ensureDeferred
async def test_a_change_made_at_a_gateway_is_recorded_for_the_accounts_customer(db):
    # assist charge|cancel and payture card-remove: the partner's answer first, then the row.
    cid, aid = await customer_world(db)
    clock = Clock()
    clock.advance(NOW)
    await console_admin.recorded(db, clock, "assist.charge", {"order": "A-1", "amount": "9.00"},
                                 account_id=aid)
    await console_admin.recorded(db, clock, "payture.card_remove", {"card": "c-1"},
                                 customer_id=cid)
    rows = await audit(db, customer_id=cid)
    assert [(r["actor"], r["action"], r["after"], r["at"].timestamp()) for r in reversed(rows)] \
        == [("cli", "assist.charge", {"order": "A-1", "amount": "9.00"}, NOW),
            ("cli", "payture.card_remove", {"card": "c-1"}, NOW)]


@pytest_twisted.ensureDeferred
async def test_texts_follow_the_browsers_language(db):
    env = Env(db)
    r, html = await env.get("/login", headers={"accept-language": "ru-RU,ru;q=0.9,en;q=0.5"})
    assert "Войти" in html and 'lang="ru"' in html
    r, html = await env.get("/login", headers={"accept-language": "en-GB,ru;q=0.5"})
    assert "Log in" in html and 'lang="en"' in html


@pytest_twisted.ensureDeferred
async def test_the_listener_starts_on_its_endpoint_and_a_port_in_use_is_an_error(db):
    busy = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        Site(Resource()))
    try:
        port = busy.getHost().port
        cfg = make_config(console={"enabled": True,
                                   "listen": f"tcp:{port}:interface=127.0.0.1"})
        [listener] = build(cfg, reactor, db).app.features["console"].services
        with pytest.raises(CannotListenError):
            listener.startService()
        cfg = make_config(console={"enabled": True, "listen": "tcp:0:interface=127.0.0.1"})
        [listener] = build(cfg, reactor, db).app.features["console"].services
        listener.startService()
        assert listener.running
        await listener.stopService()
    finally:
        await busy.stopListening()
