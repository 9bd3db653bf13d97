"""
Website widgets through the app's root (``build_app`` + an in-memory client):
the snippet's script, every widget type (channels, sign-up, cabinet, TV guide,
payment), CSRF and captcha refusals, the per-address sign-up limit, and the
XMLTV import against a fake feed.  The real browser is tests/test_widgets_browser.py.
"""

from __future__ import annotations

import base64
import gzip
import json
import re
from datetime import timedelta
from decimal import Decimal
from html import unescape
from urllib.parse import urlencode

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from attrs import evolve
from twisted.internet import defer, reactor
from twisted.internet.task import Clock

from conftest import make_config
from fakes import in_memory_client
from fakes.assist import FakeAssist
from fakes.xmltv import FakeXMLTV, minutes, now_utc, unspaced, xmltv
from smartyd import catalog, ledger
from smartyd.config import ConfigError
from smartyd.http.auth import password_login
from smartyd.widgets import repo
from smartyd.widgets.epg import EPGError, EPGSync
from smartyd.widgets.session import LIFETIME, Sessions, derive_key
from testapp import build

ORIGIN = "https://isp.example"
ASSIST = {"enabled": True, "generation": "legacy", "shop_id": "111111", "login": "shoplogin",
          "password": "shoppass1", "secret": "push-secret", "test_mode": True}
BASE = "http://smartyd"


def widgets_config(**over):
    widgets = {"enabled": True, "allowed_origins": [ORIGIN], "language": "en", **over}
    return make_config(widgets=widgets, assist=ASSIST)


class Env:
    def __init__(self, db, cfg=None, client=None):
        self.db = db
        self.fake = FakeAssist()
        self.app = build(cfg or widgets_config(), reactor, db,
                         http_client=client or self.fake.client())
        self.web = in_memory_client(self.app.root)

    async def widget(self, kind, title="", tariffs=()):
        return (await self.db.run(repo.create_widget, kind, title, list(tariffs))).id

    async def get(self, path, **kw):
        r = await self.web.get(BASE + path, **kw)
        return r, (await r.content()).decode("utf-8")

    async def post(self, path, data, **kw):
        r = await self.web.post(BASE + path, data=data, allow_redirects=False, **kw)
        return r, (await r.content()).decode("utf-8")

    async def form_page(self, widget_id):
        """The page and its form's hidden fields (what a browser would post back)."""
        r, html = await self.get(f"/widgets/page/{widget_id}")
        hidden = dict(re.findall(r'<input type="hidden" name="([a-z_]+)" value="([^"]*)"', html))
        return html, {k: unescape(v) for k, v in hidden.items()}


async def catalog_world(db):
    async def seed(tx):
        a = await catalog.create_channel(tx, "first", "http://s.example/first/index.m3u8")
        b = await catalog.create_channel(tx, "second", "http://s.example/second/index.m3u8")
        c = await catalog.create_channel(tx, "third", "http://s.example/third/index.m3u8")
        basic = await catalog.create_tariff(tx, "Basic <b>TV</b>", "10.00", [a["id"], b["id"]])
        extra = await catalog.create_tariff(tx, "Extra", "5.00", [c["id"]])
        return basic["id"], extra["id"], (a["id"], b["id"], c["id"])

    return await db.run(seed)


# -- config ------------------------------------------------------------------------------------------
def test_widgets_config_requires_origins_and_refuses_non_origins():
    with pytest.raises(ConfigError, match=r"\[widgets\] allowed_origins: required"):
        make_config(widgets={"enabled": True})
    with pytest.raises(ConfigError, match=r"\[widgets\] allowed_origins: not an origin"):
        make_config(widgets={"enabled": True, "allowed_origins": ["https://isp.example/path"]})
    with pytest.raises(ConfigError, match=r"\[epg\] sync_interval"):
        make_config(epg={"sync_interval": 5})
    cfg = make_config(widgets={"enabled": True, "allowed_origins": [ORIGIN], "language": "ru"})
    assert cfg.widgets.captcha is True and cfg.widgets.signup_limit == 3


# -- the snippet's script ----------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_script_renders_an_iframe_and_passes_other_parameters_on(db):
    env = Env(db)
    wid = await env.widget("payment", title="Pay </script>")
    r, js = await env.get(f"/widgets/api/get/{wid}?container_id=widget-content&time=0.123"
                          "&amount=150&client_id=77")
    assert r.code == 200
    assert r.headers.getRawHeaders("content-type") == ["application/javascript; charset=utf-8"]
    assert '"widget-content"' in js and "/widgets/api/get/\" + id" in js
    assert '{"amount": "150", "client_id": "77"}' in js  # time and container_id not passed on
    assert "document.currentScript" in js and "/widgets/page/" in js
    assert "</script>" not in js and "Pay \\u003c/script\\u003e" in js
    r, js = await env.get("/widgets/api/get/999999?container_id=x")
    assert r.code == 404 and "no such widget" in js


# -- channels ---------------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_channels_grouped_by_the_widgets_tariffs_escaped_with_csp(db):
    env = Env(db)
    basic, extra, _ = await catalog_world(db)
    everything = await env.widget("channels")
    only_basic = await env.widget("channels", title="Our <i>channels</i>", tariffs=[basic])
    r, html = await env.get(f"/widgets/page/{everything}")
    assert r.code == 200
    assert "first" in html and "second" in html and "third" in html and "Extra" in html
    assert "Basic &lt;b&gt;TV&lt;/b&gt;" in html and "<b>TV" not in html
    csp = r.headers.getRawHeaders("content-security-policy")[0]
    assert f"frame-ancestors {ORIGIN}" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp
    r, html = await env.get(f"/widgets/page/{only_basic}")
    assert "Our &lt;i&gt;channels&lt;/i&gt;" in html
    assert "second" in html and "third" not in html and "Extra" not in html


# -- sign-up -----------------------------------------------------------------------------------------
def captcha_answer(html: str) -> str:
    a, b = re.search(r"(\d+) \+ (\d+) =", html).groups()
    return str(int(a) + int(b))


async def customers(db) -> int:
    return await db.fetchval("SELECT count(*) FROM customers")


@pytest_twisted.ensureDeferred
async def test_signup_with_captcha_creates_customer_and_account_shown_once(db):
    env = Env(db)
    basic, _, (first, second, _) = await catalog_world(db)
    wid = await env.widget("signup", tariffs=[basic])
    html, hidden = await env.form_page(wid)
    assert 'aria-describedby="captcha-question"' in html
    # A wrong answer: refused visibly, nothing created, the captcha used up.
    wrong = str(int(captcha_answer(html)) + 1)
    r, page = await env.post(f"/widgets/page/{wid}", {**hidden, "captcha": wrong,
                                                     "name": "Ann", "email": "ann@example.com"})
    assert r.code == 400 and "anti-robot answer is wrong" in page
    assert await customers(db) == 0
    r, page = await env.post(f"/widgets/page/{wid}", {**hidden, "captcha": captcha_answer(html),
                                                     "name": "Ann"})
    assert r.code == 400 and await customers(db) == 0  # the same captcha twice: refused
    # The right answer to a new question.
    html, hidden = await env.form_page(wid)
    r, page = await env.post(f"/widgets/page/{wid}", {
        **hidden, "captcha": captcha_answer(html), "name": "Ann <script>", "phone": "+7 900 1",
        "email": "ann@example.com"})
    assert r.code == 200, page
    login = re.search(r'id="new-login">([^<]+)<', page).group(1)
    password = re.search(r'id="new-password">([^<]+)<', page).group(1)
    account = await password_login(db, login, password)
    assert account is not None
    customer = await db.run(ledger.get_customer, account.customer_id)
    assert customer.name == "Ann <script>" and customer.email == "ann@example.com"
    assert await db.run(catalog.account_tariffs, account.id) == [basic]
    # Shown once: the page again is a fresh form.
    _, again = await env.get(f"/widgets/page/{wid}")
    assert password not in again and login not in again


@pytest_twisted.ensureDeferred
async def test_signup_refuses_a_post_without_a_valid_csrf_token(db):
    env = Env(db, widgets_config(captcha=False))
    wid = await env.widget("signup")
    _, hidden = await env.form_page(wid)
    r, page = await env.post(f"/widgets/page/{wid}", {"name": "Eve"})
    assert r.code == 403 and "did not come from this page" in page
    r, page = await env.post(f"/widgets/page/{wid}", {"name": "Eve", "csrf": hidden["csrf"] + "x"})
    assert r.code == 403
    # Another browser (no session cookie) with a token lifted from this one.
    r = await in_memory_client(env.app.root).post(f"{BASE}/widgets/page/{wid}",
                                                  data={"name": "Eve", "csrf": hidden["csrf"]})
    assert r.code == 403
    assert await customers(db) == 0
    r, page = await env.post(f"/widgets/page/{wid}", {"name": "Eve", "csrf": hidden["csrf"]})
    assert r.code == 200 and await customers(db) == 1


@pytest_twisted.ensureDeferred
async def test_signup_is_limited_per_client_address(db):
    env = Env(db, widgets_config(captcha=False, signup_limit=2))
    wid = await env.widget("signup")
    _, hidden = await env.form_page(wid)
    codes = []
    for i in range(3):
        r, page = await env.post(f"/widgets/page/{wid}", {**hidden, "name": f"n{i}"})
        codes.append(r.code)
    assert codes == [200, 200, 429] and "Too many sign-ups" in page
    assert await customers(db) == 2
    ips = await db.fetchval("SELECT count(DISTINCT ip) FROM widget_signups")
    assert ips == 1


@pytest_twisted.ensureDeferred
async def test_signup_refuses_bad_input_visibly(db):
    env = Env(db, widgets_config(captcha=False))
    wid = await env.widget("signup")
    _, hidden = await env.form_page(wid)
    r, page = await env.post(f"/widgets/page/{wid}", {**hidden, "name": "Bob",
                                                     "email": "not-an-address"})
    assert r.code == 400 and "Please check the form: E-mail" in page
    assert await customers(db) == 0


# -- cabinet -----------------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_cabinet_login_balance_and_tariff_connect_disconnect(db):
    env = Env(db)
    basic, extra, _ = await catalog_world(db)
    account = await db.run(ledger.create_account, "carol", ledger.hash_password("pw-carol"))
    await db.run(ledger.credit, account.customer_id, "50.00", "payment", "test", "t:1")
    wid = await env.widget("cabinet", tariffs=[basic, extra])
    html, hidden = await env.form_page(wid)
    assert 'id="login"' in html
    wrong, unknown = [(await env.post(f"/widgets/page/{wid}", {**hidden, "login": login,
                                                                "password": "nope"}))
                      for login in ("carol", "nobody")]
    assert wrong[0].code == unknown[0].code == 403
    assert "Wrong login or password" in wrong[1] and wrong[1] == unknown[1]
    r, _ = await env.post(f"/widgets/page/{wid}", {**hidden, "login": "carol",
                                                  "password": "pw-carol"})
    assert r.code == 303
    html, hidden = await env.form_page(wid)
    assert 'id="balance">50.00<' in html and "carol" in html
    r, _ = await env.post(f"/widgets/page/{wid}/tariff", {**hidden, "tariff_id": str(extra),
                                                         "action": "connect"})
    assert r.code == 303
    html, hidden = await env.form_page(wid)
    assert 'id="balance">45.00<' in html and "connected" in html
    assert await db.run(catalog.account_tariffs, account.id) == [extra]
    # A tariff the widget does not offer is refused, visibly.
    other = await db.run(catalog.create_tariff, "Hidden", "1.00", [], hidden=True)
    r, page = await env.post(f"/widgets/page/{wid}/tariff", {**hidden, "tariff_id": str(
        other["id"]), "action": "connect"})
    assert r.code == 400 and "cannot be changed" in page
    r, _ = await env.post(f"/widgets/page/{wid}/tariff", {**hidden, "tariff_id": str(extra),
                                                         "action": "disconnect"})
    assert await db.run(catalog.account_tariffs, account.id) == []
    r, _ = await env.post(f"/widgets/page/{wid}/logout", hidden)
    html, _ = await env.form_page(wid)
    assert 'id="login"' in html and "balance" not in html


async def logged_in(env, db, wid, login="carol", password="pw-carol"):
    _, hidden = await env.form_page(wid)
    r, _ = await env.post(f"/widgets/page/{wid}", {**hidden, "login": login,
                                                  "password": password})
    assert r.code == 303
    return await env.form_page(wid)


@pytest_twisted.ensureDeferred
async def test_cabinet_adds_an_account_shown_once_and_refuses_without_csrf(db):
    env = Env(db)
    carol = await db.run(ledger.create_account, "carol", ledger.hash_password("pw-carol"))
    wid = await env.widget("cabinet")
    html, hidden = await logged_in(env, db, wid)
    assert 'id="accounts"><li>carol</li></ul>' in html and 'id="add-account"' in html
    r, page = await env.post(f"/widgets/page/{wid}/account", {})
    assert r.code == 403 and "did not come from this page" in page
    assert len(await db.run(ledger.customer_accounts, carol.customer_id)) == 1
    r, page = await env.post(f"/widgets/page/{wid}/account", hidden)
    assert r.code == 200, page
    login = re.search(r'id="new-login">([^<]+)<', page).group(1)
    password = re.search(r'id="new-password">([^<]+)<', page).group(1)
    added = await password_login(db, login, password)
    assert added is not None and added.customer_id == carol.customer_id
    assert f"<li>{login}</li>" in page  # listed among the customer's accounts
    _, again = await env.get(f"/widgets/page/{wid}")
    assert password not in again  # shown once
    # Another browser, not logged in (its own valid token): nothing to add to.
    stranger = Env.__new__(Env)
    stranger.db, stranger.app = db, env.app
    stranger.web = in_memory_client(env.app.root)
    _, theirs = await stranger.form_page(wid)
    r, _ = await stranger.post(f"/widgets/page/{wid}/account", theirs)
    assert r.code == 303
    assert len(await db.run(ledger.customer_accounts, carol.customer_id)) == 2


@pytest_twisted.ensureDeferred
async def test_cabinet_changes_a_password_of_the_customers_own_accounts_only(db):
    env = Env(db)
    carol = await db.run(ledger.create_account, "carol", ledger.hash_password("pw-carol"))
    second = await db.run(ledger.create_account, "carol2", ledger.hash_password("pw-second"),
                          None, carol.customer_id)
    other = await db.run(ledger.create_account, "mallory", ledger.hash_password("pw-mallory"))
    wid = await env.widget("cabinet")
    html, hidden = await logged_in(env, db, wid)
    assert f'<option value="{second.id}">carol2</option>' in html
    url = f"/widgets/page/{wid}/password"
    change = {"account_id": str(second.id), "new_password": "new-secret-1",
              "new_password2": "new-secret-1", "password": "pw-carol"}
    r, page = await env.post(url, change)  # no token
    assert r.code == 403 and "did not come from this page" in page
    r, page = await env.post(url, {**hidden, **change, "password": "wrong"})
    assert r.code == 403 and "Your current password is wrong" in page
    r, page = await env.post(url, {**hidden, **change, "new_password2": "new-secret-2"})
    assert r.code == 400 and "The new passwords differ" in page
    r, page = await env.post(url, {**hidden, **change, "new_password": "short",
                                   "new_password2": "short"})
    assert r.code == 400 and "The new passwords differ" in page
    r, page = await env.post(url, {**hidden, **change, "account_id": str(other.id)})
    assert r.code == 400 and "Please check the form: Account" in page
    assert await password_login(db, "mallory", "pw-mallory") is not None
    assert await password_login(db, "carol2", "pw-second") is not None  # nothing changed yet
    r, page = await env.post(url, {**hidden, **change})
    assert r.code == 200 and "The password is changed" in page
    assert await password_login(db, "carol2", "new-secret-1") is not None
    assert await password_login(db, "carol2", "pw-second") is None
    assert await password_login(db, "carol", "pw-carol") is not None


@pytest_twisted.ensureDeferred
async def test_cabinet_profile_phone_and_email_validated_and_escaped(db):
    env = Env(db)
    carol = await db.run(ledger.create_account, "carol", ledger.hash_password("pw-carol"))
    wid = await env.widget("cabinet")
    html, hidden = await logged_in(env, db, wid)
    assert 'id="profile"' in html
    url = f"/widgets/page/{wid}/profile"
    r, page = await env.post(url, {"phone": "+7 900 1", "email": "c@example.com"})
    assert r.code == 403
    r, page = await env.post(url, {**hidden, "phone": "call me", "email": "c@example.com"})
    assert r.code == 400 and "Please check the form: Phone" in page
    r, page = await env.post(url, {**hidden, "phone": "", "email": "not-an-address"})
    assert r.code == 400 and "Please check the form: E-mail" in page
    customer = await db.run(ledger.get_customer, carol.customer_id)
    assert customer.phone is None and customer.email is None  # refused: nothing changed
    r, page = await env.post(url, {**hidden, "phone": "+7 900 1",
                                   "email": '"><script>@x.example'})
    assert r.code == 200 and "Saved." in page
    assert 'value="&quot;&gt;&lt;script&gt;@x.example"' in page and "<script>@" not in page
    customer = await db.run(ledger.get_customer, carol.customer_id)
    assert customer.phone == "+7 900 1" and customer.email == '"><script>@x.example'
    r, page = await env.post(url, {**hidden, "phone": "", "email": "c@example.com"})
    customer = await db.run(ledger.get_customer, carol.customer_id)
    assert customer.phone is None and customer.email == "c@example.com"


# -- without cookies: the session in the page ------------------------------------------------------
class Cookieless(Env):
    """A browser that sends the widgets no cookie (a frame on another site): each request fresh."""

    @property
    def web(self):
        return in_memory_client(self.app.root)

    @web.setter
    def web(self, value):
        pass


def fields_of(html: str) -> dict[str, str]:
    """The hidden fields of a page's forms (every form carries the same session and token)."""
    found = re.findall(r'<input type="hidden" name="([a-z_]+)" value="([^"]*)"', html)
    return {k: unescape(v) for k, v in found}


def sessions_of(env) -> Sessions:
    return env.app.app.features["widgets"].handle.sessions


def set_cookie(r) -> str:
    [cookie] = r.headers.getRawHeaders("set-cookie")
    return cookie


KEY = derive_key("a-stream-token-key-of-32-characters..")


@given(value=st.one_of(st.text(max_size=300), st.just("."), st.just("e30.x")),
       widget=st.integers(-2, 2**40))
def test_page_session_verify_never_raises_on_garbage(value, widget):
    sessions = Sessions(KEY, Clock())
    assert sessions.from_page(value, widget) is None and sessions.decode(value) is None


@given(account=st.one_of(st.none(), st.integers(1, 2**62)), widget=st.integers(1, 2**40),
       flip=st.integers(0, 10**6))
def test_page_session_round_trips_and_any_changed_character_is_refused(account, widget, flip):
    sessions = Sessions(KEY, Clock())
    s = sessions.new(account)
    token = sessions.page_token(s, widget)
    assert sessions.from_page(token, widget) == evolve(s, expires=float(int(s.expires)),
                                                       in_page=widget)
    assert sessions.from_page(token, widget + 1) is None and sessions.decode(token) is None
    i = flip % len(token)
    changed = token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1:]
    assert sessions.from_page(changed, widget) is None


@pytest_twisted.ensureDeferred
async def test_session_cookie_is_partitioned_over_https_only(db):
    proxied = Cookieless(db, make_config(
        widgets={"enabled": True, "allowed_origins": [ORIGIN], "language": "en"},
        http={"trusted_proxies": ["127.0.0.1/32"]}))
    wid = await proxied.widget("channels")
    r, _ = await proxied.get(f"/widgets/page/{wid}", headers={"X-Forwarded-Proto": "https"})
    flags = set_cookie(r).split("; ")[1:]
    assert {"SameSite=None", "Secure", "Partitioned", "HttpOnly"} <= set(flags)
    r, _ = await proxied.get(f"/widgets/page/{wid}")  # the proxy spoke plain HTTP
    flags = set_cookie(r).split("; ")[1:]
    assert "SameSite=Lax" in flags and "Partitioned" not in flags and "Secure" not in flags
    # The header from a peer that is not a trusted proxy is not believed.
    direct = Cookieless(db)
    r, _ = await direct.get(f"/widgets/page/{wid}", headers={"X-Forwarded-Proto": "https"})
    flags = set_cookie(r).split("; ")[1:]
    assert "SameSite=Lax" in flags and "Partitioned" not in flags


@pytest_twisted.ensureDeferred
async def test_cabinet_without_cookies_carries_a_rotated_session_in_its_forms(db, log_events):
    env = Cookieless(db)
    basic, extra, _ = await catalog_world(db)
    carol = await db.run(ledger.create_account, "carol", ledger.hash_password("pw-carol"))
    await db.run(ledger.credit, carol.customer_id, "50.00", "payment", "test", "t:1")
    wid = await env.widget("cabinet", tariffs=[basic, extra])
    html, anonymous = await env.form_page(wid)
    assert set(anonymous) == {"csrf", "session"}
    r, page = await env.post(f"/widgets/page/{wid}", {**anonymous, "login": "carol",
                                                     "password": "pw-carol"})
    # The page itself (a redirect's GET would come without the session), with a new one.
    assert r.code == 200 and 'id="balance">50.00<' in page
    logged = fields_of(page)
    sessions = sessions_of(env)
    before = sessions.from_page(anonymous["session"], wid)
    after = sessions.from_page(logged["session"], wid)
    assert before.account_id is None and after.account_id == carol.id
    assert after.sid != before.sid and logged["csrf"] != anonymous["csrf"]  # no fixation
    r, page = await env.post(f"/widgets/page/{wid}/tariff", {
        **logged, "tariff_id": str(extra), "action": "connect"})
    assert r.code == 200 and 'id="balance">45.00<' in page and "connected" in page
    assert await db.run(catalog.account_tariffs, carol.id) == [extra]
    # The session before the login stays anonymous: it changes nothing of carol's.
    r, page = await env.post(f"/widgets/page/{wid}/tariff", {
        **anonymous, "tariff_id": str(basic), "action": "connect"})
    assert r.code == 200 and 'id="login"' in page
    # CSRF is still required, and bound to the page's session.
    disconnect = {"tariff_id": str(extra), "action": "disconnect"}
    for fields in ({"session": logged["session"]},
                   {"session": logged["session"], "csrf": anonymous["csrf"]},
                   {"csrf": logged["csrf"]}):
        r, page = await env.post(f"/widgets/page/{wid}/tariff", {**fields, **disconnect})
        assert r.code == 403 and "did not come from this page" in page
    assert await db.run(catalog.account_tariffs, carol.id) == [extra]
    r, page = await env.post(f"/widgets/page/{wid}/logout", logged)
    assert r.code == 200 and 'id="login"' in page
    assert sessions.from_page(fields_of(page)["session"], wid).account_id is None
    # Never in a log line.
    for token in (anonymous["session"], logged["session"]):
        assert not [e for e in log_events if token in repr(e)]


@pytest_twisted.ensureDeferred
async def test_a_forged_expired_foreign_or_cross_site_page_session_is_refused(db):
    env = Cookieless(db)
    carol = await db.run(ledger.create_account, "carol", ledger.hash_password("pw-carol"))
    mallory = await db.run(ledger.create_account, "mallory", ledger.hash_password("pw-mallory"))
    wid, other = await env.widget("cabinet"), await env.widget("cabinet")

    async def log_in(login, password, widget=wid):
        _, anonymous = await env.form_page(widget)
        r, page = await env.post(f"/widgets/page/{widget}", {**anonymous, "login": login,
                                                            "password": password})
        assert r.code == 200
        return fields_of(page)

    theirs, mine = await log_in("mallory", "pw-mallory"), await log_in("carol", "pw-carol")
    sessions = sessions_of(env)
    session = sessions.from_page(mine["session"], wid)
    payload, mac = mine["session"].split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    as_mallory = base64.urlsafe_b64encode(json.dumps({**data, "acc": mallory.id}).encode())
    expired = Sessions(sessions.key, Clock())  # signed at the epoch: long expired
    refused = {
        "another account, the MAC kept": as_mallory.decode().rstrip("=") + "." + mac,
        "signed under another key": Sessions(derive_key("another-key-of-32-characters....."),
                                             reactor).page_token(session, wid),
        "expired": expired.page_token(evolve(session, expires=LIFETIME), wid),
        "another widget's": sessions.page_token(session, other),
        "the cookie's form": sessions.encode(session),
        "no session": "",
    }
    url = f"/widgets/page/{wid}/profile"
    for why, token in refused.items():
        r, page = await env.post(url, {"csrf": mine["csrf"], "session": token,
                                       "phone": "+7 1"})
        assert r.code == 403 and "did not come from this page" in page, why
    # mallory's session with carol's token, and carol's on another widget's page
    r, _ = await env.post(url, {"csrf": mine["csrf"], "session": theirs["session"],
                                "phone": "+7 2"})
    assert r.code == 403
    r, _ = await env.post(f"/widgets/page/{other}/profile", {**mine, "phone": "+7 3"})
    assert r.code == 403
    # The page's form as a cookie: not a session for the other widget (nor for this one).
    for widget in (other, wid):
        r, _ = await env.post(f"/widgets/page/{widget}/profile", {
            "csrf": mine["csrf"], "phone": "+7 3"}, cookies={"smartyd_widget": mine["session"]})
        assert r.code == 403
    # A session in a query string (a URL: logged, kept in history, sent as a Referer).
    r, _ = await env.post(f"{url}?{urlencode({'session': mine['session']})}",
                          {"csrf": mine["csrf"], "phone": "+7 4"})
    assert r.code == 403
    # Posted by another site's page (login CSRF with the attacker's own session).
    for headers in ({"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
                    {"Origin": "https://evil.example"}, {"Origin": "null"}):
        r, _ = await env.post(url, {**mine, "phone": "+7 5"}, headers=headers)
        assert r.code == 403, headers
    for customer in (carol.customer_id, mallory.customer_id):
        assert (await db.run(ledger.get_customer, customer)).phone is None
    for headers in ({"Sec-Fetch-Site": "same-origin"}, {"Origin": "https://smartyd:8443"}, {}):
        r, page = await env.post(url, {**mine, "phone": "+7 6"}, headers=headers)
        assert r.code == 200 and "Saved." in page, headers
    assert (await db.run(ledger.get_customer, carol.customer_id)).phone == "+7 6"
    assert (await db.run(ledger.get_customer, mallory.customer_id)).phone is None


@pytest_twisted.ensureDeferred
async def test_signup_and_payment_without_cookies(db):
    env = Cookieless(db, widgets_config(captcha=False))
    account = await db.run(ledger.create_account, "dave", "")
    signup, payment = await env.widget("signup"), await env.widget("payment")
    _, hidden = await env.form_page(signup)
    assert set(hidden) == {"csrf", "session"}
    r, page = await env.post(f"/widgets/page/{signup}", {**hidden, "name": "Ann"})
    assert r.code == 200 and 'id="new-login"' in page and await customers(db) == 2
    r, page = await env.post(f"/widgets/page/{signup}", {"csrf": hidden["csrf"], "name": "Eve"})
    assert r.code == 403 and await customers(db) == 2  # the token alone: no session to bind
    _, hidden = await env.form_page(payment)
    pay = {"amount": "150.00", "payment_type": "assist", "client_id": str(account.customer_id)}
    r, page = await env.post(f"/widgets/page/{payment}", {**hidden, **pay, "amount": "1.234"})
    assert r.code == 400 and set(fields_of(page)) >= {"csrf", "session"}  # the form again
    r, page = await env.post(f"/widgets/page/{payment}", {**hidden, **pay})
    assert r.code == 200 and 'name="Subtotal_P" value="150.00"' in page
    assert await db.fetchval("SELECT count(*) FROM gateway_orders") == 1


@pytest_twisted.ensureDeferred
async def test_a_cookie_wins_and_its_pages_carry_no_session(db):
    env = Env(db)
    carol = await db.run(ledger.create_account, "carol", ledger.hash_password("pw-carol"))
    await db.run(ledger.create_account, "mallory", ledger.hash_password("pw-mallory"))
    wid = await env.widget("cabinet")
    html, hidden = await logged_in(env, db, wid)  # the cookie came back: a 303 and a GET
    assert 'id="balance"' in html and set(hidden) == {"csrf"} and 'name="session"' not in html
    stranger = Cookieless(db)
    stranger.app = env.app
    _, anonymous = await stranger.form_page(wid)
    r, page = await stranger.post(f"/widgets/page/{wid}", {**anonymous, "login": "mallory",
                                                          "password": "pw-mallory"})
    theirs = fields_of(page)
    # carol's browser posting mallory's page session: the cookie's session decides.
    r, _ = await env.post(f"/widgets/page/{wid}/profile", {**theirs, "phone": "+7 1"})
    assert r.code == 403
    r, page = await env.post(f"/widgets/page/{wid}/profile", {**hidden, "session": theirs[
        "session"], "phone": "+7 2"})
    assert r.code == 200 and "Saved." in page and 'name="session"' not in page
    assert (await db.run(ledger.get_customer, carol.customer_id)).phone == "+7 2"


# -- payment -----------------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_payment_form_to_assist_and_back_to_a_credited_result(db):
    env = Env(db)
    account = await db.run(ledger.create_account, "dave", "")
    wid = await env.widget("payment")
    r, html = await env.get(f"/widgets/page/{wid}?amount=150.00&client_id="
                            f"{account.customer_id}&payment_type=w1")
    assert "The payment method w1 is not offered here" in html
    assert 'value="150.00"' in html and f'value="{account.customer_id}"' in html
    _, hidden = await env.form_page(wid)
    # Without the token: refused, no order.
    r, page = await env.post(f"/widgets/page/{wid}", {"amount": "150.00", "payment_type": "assist",
                                                     "client_id": str(account.customer_id)})
    assert r.code == 403
    assert await db.fetchval("SELECT count(*) FROM gateway_orders") == 0
    r, page = await env.post(f"/widgets/page/{wid}", {**hidden, "amount": "1.234",
                                                     "payment_type": "assist",
                                                     "client_id": str(account.customer_id)})
    assert r.code == 400 and "Please check the form: Amount" in page
    r, page = await env.post(f"/widgets/page/{wid}", {**hidden, "amount": "150.00",
                                                     "payment_type": "paypal",
                                                     "client_id": str(account.customer_id)})
    assert r.code == 400 and "paypal is not offered" in page
    r, page = await env.post(f"/widgets/page/{wid}", {**hidden, "amount": "150.00",
                                                     "payment_type": "assist",
                                                     "client_id": str(account.customer_id)})
    assert r.code == 200, page
    number = re.search(r'name="Order_IDP" value="(\d+)"', page).group(1)
    assert 'name="Subtotal_P" value="150.00"' in page and 'target="_top"' in page
    assert "form-action 'self' https://" in r.headers.getRawHeaders("content-security-policy")[0]
    env.fake.pay(number, "150.00")
    await env.app.app.features["assist"].handle.poll()
    r, html = await env.get(f"/widgets/page/{wid}/result?order={number}")
    assert r.code == 200 and f"Payment {number}: 150.00, credited" in html
    assert (await db.run(ledger.get_account, account.id)).balance == Decimal("150.00")


@pytest_twisted.ensureDeferred
async def test_payment_of_an_order_created_earlier_overrides_amount_and_client(db):
    env = Env(db)
    erin = await db.run(ledger.create_account, "erin", "")
    other = await db.run(ledger.create_account, "frank", "")
    assist = env.app.app.features["assist"].handle
    earlier, _ = await assist.create_order(erin.id, "70.00")  # e.g. an operator's invoice
    number = earlier.order_number
    wid = await env.widget("payment")
    query = f"order_id={number}&amount=999.00&client_id={other.customer_id}"
    r, html = await env.get(f"/widgets/page/{wid}?{query}")
    assert r.code == 200 and f'id="order">Order {number}: 70.00<' in html
    assert "999.00" not in html and f'value="{other.customer_id}"' not in html
    hidden = dict(re.findall(r'<input type="hidden" name="([a-z_]+)" value="([^"]*)"', html))
    assert hidden["order_id"] == number
    pay = {"order_id": number, "amount": "999.00", "client_id": str(other.customer_id),
           "payment_type": "assist"}
    r, page = await env.post(f"/widgets/page/{wid}", pay)
    assert r.code == 403  # no token
    r, page = await env.post(f"/widgets/page/{wid}", {**pay, "csrf": unescape(hidden["csrf"])})
    assert r.code == 200, page
    assert f'name="Order_IDP" value="{number}"' in page and 'name="Subtotal_P" value="70.00"' in page
    assert await db.fetchval("SELECT count(*) FROM gateway_orders") == 1  # no new order
    env.fake.pay(number, "70.00")
    await assist.poll()
    assert (await db.run(ledger.get_account, erin.id)).balance == Decimal("70.00")
    assert (await db.run(ledger.get_account, other.id)).balance == Decimal("0.00")
    # Paid: it cannot be paid again; an unknown order neither.
    for ref in (number, "987654321"):
        r, html = await env.get(f"/widgets/page/{wid}?order_id={ref}")
        assert "No such payment order, or it is paid already" in html and "Order_IDP" not in html
        r, page = await env.post(f"/widgets/page/{wid}", {**pay, "order_id": ref,
                                                         "csrf": unescape(hidden["csrf"])})
        assert r.code == 404 and "Order_IDP" not in page
    assert await db.fetchval("SELECT count(*) FROM gateway_orders") == 1


# -- TV guide ----------------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_epg_imported_from_xmltv_shows_the_programme_on_air(db):
    now = now_utc()
    feed = FakeXMLTV(xmltv([
        ("first.example", now - timedelta(minutes=30), now + timedelta(minutes=30), "News & <Weather>"),
        ("first.example", now + timedelta(minutes=30), now + timedelta(minutes=90), "Film"),
        ("first.example", now - timedelta(days=3), now - timedelta(days=2, hours=23), "Old"),
        ("nobody.example", now, now + timedelta(hours=1), "Unmatched"),
    ]))
    cfg = make_config(widgets={"enabled": True, "allowed_origins": [ORIGIN], "language": "en"},
                      epg={"xmltv_url": "http://epg.example/guide.xml"})
    env = Env(db, cfg, client=feed.client())
    _, _, (first, _, _) = await catalog_world(db)
    await db.run(repo.set_xmltv_id, first, "first.example")
    sync = env.app.app.features["epg"].handle
    result = await sync.run()
    assert feed.requests == [b"/guide.xml"]
    assert result.to_json() == {"programmes": 4, "stored": 3, "skipped": 1, "pruned": 1}
    wid = await env.widget("epg")
    r, html = await env.get(f"/widgets/page/{wid}")
    assert r.code == 200
    on_air = re.search(r'<tr class="onair">.*?</tr>', html).group(0)
    assert "News &amp; &lt;Weather&gt;" in on_air and "on air" in on_air
    assert "Film" in html and "Old" not in html and "Unmatched" not in html
    # Again: idempotent (upserts), nothing more to prune.
    assert (await sync.run()).to_json()["stored"] == 3
    assert await db.fetchval("SELECT count(*) FROM epg_programmes") == 2


@pytest.mark.parametrize("gzipped, stops, time", [
    (True, True, None),      # guide.xml.gz, as iptv-org/epg and others publish only
    (False, False, None),    # no stop: the next programme's start ends it
    (False, True, minutes),  # to the minute, no offset (UT): the DTD's example
    (False, True, unspaced),  # "20260101120000+0300"
    (True, False, minutes),
])
@pytest_twisted.ensureDeferred
async def test_epg_reads_feeds_in_every_form_the_dtd_and_providers_use(db, gzipped, stops,
                                                                       time):
    now = now_utc().replace(second=0)
    rows = [("first.example", now - timedelta(minutes=30), now + timedelta(minutes=30), "News"),
            ("second.example", now, now + timedelta(hours=2), "Match"),
            ("first.example", now + timedelta(minutes=30), now + timedelta(minutes=90), "Film"),
            ("first.example", now + timedelta(minutes=90), now + timedelta(minutes=95), "Late")]
    feed = FakeXMLTV(xmltv(rows, stops=stops, **({"time": time} if time else {})),
                     gzipped=gzipped)
    cfg = make_config(epg={"xmltv_url": "http://epg.example/guide.xml.gz"})
    env = Env(db, cfg, client=feed.client())
    _, _, (first, _, _) = await catalog_world(db)
    await db.run(repo.set_xmltv_id, first, "first.example")
    result = await env.app.app.features["epg"].handle.run()
    # Without stops the last programme of each channel has no end: skipped, counted.
    stored = 3 if stops else 2
    assert result.to_json() == {"programmes": 4, "stored": stored, "skipped": 4 - stored,
                                "pruned": 0}
    got = await db.fetchall("SELECT title, start, stop FROM epg_programmes ORDER BY start")
    want = [(t, a, b) for ch, a, b, t in rows if ch == "first.example"][:stored]
    assert [tuple(r) for r in got] == want


@pytest_twisted.ensureDeferred
async def test_epg_gzip_bomb_and_broken_gzip_are_errors(db):
    now = now_utc()
    body = xmltv([("first.example", now, now + timedelta(hours=1), "x" * 1000)] * 50)
    sync = EPGSync(FakeXMLTV().client, db, Clock(), max_xml=len(body) // 2,
                   in_thread=lambda f, *a: defer.maybeDeferred(f, *a))
    with pytest.raises(EPGError, match="once decompressed"):
        await sync.sync_bytes(gzip.compress(body))
    with pytest.raises(EPGError, match="gzip"):
        await sync.sync_bytes(gzip.compress(body)[:300])
    assert await db.fetchval("SELECT count(*) FROM epg_programmes") == 0


@pytest_twisted.ensureDeferred
async def test_epg_refuses_a_feed_with_an_internal_dtd(db):
    now = now_utc()
    evil = xmltv([("first.example", now, now + timedelta(hours=1), "&boom;")],
                 doctype='<!DOCTYPE tv [<!ENTITY boom "x">]>\n')
    cfg = make_config(epg={"xmltv_url": "http://epg.example/guide.xml"})
    env = Env(db, cfg, client=FakeXMLTV(evil).client())
    with pytest.raises(EPGError, match="internal subset"):
        await env.app.app.features["epg"].handle.run()
    assert await db.fetchval("SELECT count(*) FROM epg_programmes") == 0


# -- smartyd-admin -----------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_admin_widget_create_channel_xmltv_id_account_show_by_login(db, admin):
    basic, _, _ = await catalog_world(db)
    code, out, _ = admin("widget", "create", "--type", "channels", "--title", "TV",
                         "--tariff", str(basic))
    assert code == 0 and out["type"] == "channels" and out["tariffs"] == [basic]
    assert (await db.run(repo.get_widget, out["id"])).title == "TV"
    code, _, err = admin("widget", "create", "--type", "signup", "--tariff", "999999")
    assert code != 0 and "no tariff 999999" in err
    code, out, _ = admin("channel", "create", "--name", "fourth", "--url-mask",
                         "http://s.example/4/index.m3u8", "--xmltv-id", "fourth.example")
    assert code == 0 and out["xmltv_id"] == "fourth.example"
    assert await db.run(repo.xmltv_channels) == {"fourth.example": out["id"]}
    account = await db.run(ledger.create_account, "signed-up", "")
    code, out, _ = admin("account", "show", "--login", "signed-up")
    assert code == 0 and out["id"] == account.id
    code, _, err = admin("account", "show", "--login", "nobody")
    assert code != 0 and "no account with login 'nobody'" in err
