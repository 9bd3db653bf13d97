"""
The widgets in a real browser: Debian's ``chromium`` driven by Playwright
(``executable_path``; Playwright's own browser download is not used).  An
operator's page -- a static HTML file with the seed's one-line snippet,
served on 127.0.0.1 by the test -- embeds widgets of a real smartyd HTTP
port (another origin), and the test asserts what a person sees: the channel
list in the iframe, sized to its content, and a sign-up that creates an
account whose login and password then work.

The browser must be there: ``.ci/run`` (``./smartyd-dev test``) installs
it; a missing one fails this test rather than skipping it.
``SMARTYD_WIDGET_SCREENSHOTS=DIR`` keeps the screenshots in DIR.
"""

from __future__ import annotations

import os
import re
import shutil
from datetime import timedelta
from decimal import Decimal
from html import escape
from urllib.parse import urlencode

import pytest_twisted
from treq.client import HTTPClient
from playwright.sync_api import sync_playwright
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.threads import blockingCallFromThread, deferToThread
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from conftest import captured_events, make_config
from fakes.assist import FakeAssist
from fakes.xmltv import FakeXMLTV, now_utc, xmltv
from smartyd import catalog, ledger
from smartyd.http.auth import password_login
from smartyd.http.root import make_site
from smartyd.widgets import repo
from testapp import build

CHROMIUM = os.environ.get("SMARTYD_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

SNIPPET = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>ISP</title></head>
<body style="font-family: sans-serif; max-width: 640px; margin: 20px auto">
<h1>Example ISP</h1>
<div id="widget-content"></div>
<script id="widget-script" type="text/javascript"></script>
<script type="text/javascript">document.getElementById('widget-script').src='http://HOST/widgets/api/get/ID?container_id=widget-content&time='+Math.random();</script>
<p id="footer">Footer of the operator's page</p>
</body></html>
"""


def browse(operator: str, shots: str, profile: str) -> dict:
    """In a worker thread (Playwright's sync API blocks): what a person sees."""
    seen: dict = {}
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=FLAGS,
            viewport={"width": 720, "height": 640})
        try:
            page = context.new_page()
            page.goto(f"{operator}/channels.html")
            frame = page.frame_locator("#widget-content iframe")
            frame.locator("ul.channels li", has_text="first").wait_for(timeout=15000)
            seen["channels"] = frame.locator("ul.channels li").all_inner_texts()
            seen["tariffs"] = frame.locator("section.tariff h2").all_inner_texts()
            page.wait_for_function(
                "document.querySelector('#widget-content iframe').style.height !== '150px'",
                timeout=15000)
            seen["iframe_height"] = page.locator("#widget-content iframe").evaluate(
                "f => f.getBoundingClientRect().height")
            seen["iframe_src"] = page.locator("#widget-content iframe").get_attribute("src")
            page.screenshot(path=os.path.join(shots, "channels.png"), full_page=True)

            page.goto(f"{operator}/signup.html")
            frame = page.frame_locator("#widget-content iframe")
            question = frame.locator("#captcha-question").inner_text(timeout=15000)
            a, b = re.search(r"(\d+) \+ (\d+) =", question).groups()
            frame.get_by_label("Name").fill("Browser Person")
            frame.get_by_label("E-mail").fill("person@example.com")
            frame.get_by_label(re.compile("Anti-robot")).fill(str(int(a) + int(b)))
            page.screenshot(path=os.path.join(shots, "signup.png"), full_page=True)
            frame.get_by_role("button", name="Create my account").click()
            seen["login"] = frame.locator("#new-login").inner_text(timeout=15000)
            seen["password"] = frame.locator("#new-password").inner_text()
            page.screenshot(path=os.path.join(shots, "signup-done.png"), full_page=True)
        finally:
            context.close()
    return seen


@pytest_twisted.ensureDeferred
async def test_channels_and_signup_widgets_embedded_from_another_origin(db, tmp_path):
    assert os.access(CHROMIUM, os.X_OK), (
        f"{CHROMIUM} is missing: apt-get install chromium (./smartyd-dev test does)")
    pages = Resource()
    operator_port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        Site(pages))
    operator = f"http://127.0.0.1:{operator_port.getHost().port}"
    cfg = make_config(widgets={"enabled": True, "allowed_origins": [operator],
                               "language": "en", "captcha": True})
    app = build(cfg, reactor, db)
    smartyd_port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        make_site(app.root, cfg.http.max_body, reactor=reactor))
    try:
        async def seed(tx):
            a = await catalog.create_channel(tx, "first", "http://s.example/1/index.m3u8")
            b = await catalog.create_channel(tx, "second", "http://s.example/2/index.m3u8")
            basic = await catalog.create_tariff(tx, "Basic", "0.00", [a["id"], b["id"]])
            channels = await repo.create_widget(tx, "channels", "Our channels", [basic["id"]])
            signup = await repo.create_widget(tx, "signup", "Sign up", [basic["id"]])
            return channels.id, signup.id, basic["id"]

        channels, signup, basic = await db.run(seed)
        host = f"127.0.0.1:{smartyd_port.getHost().port}"
        for name, wid in (("channels.html", channels), ("signup.html", signup)):
            html = SNIPPET.replace("HOST", host).replace("ID", str(wid))
            pages.putChild(name.encode(), Data(html.encode(), "text/html; charset=utf-8"))
        shots = os.environ.get("SMARTYD_WIDGET_SCREENSHOTS") or str(tmp_path)
        os.makedirs(shots, exist_ok=True)
        profile = tmp_path / "chromium-profile"
        seen = await deferToThread(browse, operator, shots, str(profile))
        # The signed-up account mints a stream URL (what a player does with it).
        client = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
        minted = await client.post(f"http://{host}/streams/url", data={
            "login": seen["login"], "password": seen["password"], "channel": "first"})
        mint = await minted.json()
    finally:
        await smartyd_port.stopListening()
        await operator_port.stopListening()
        shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)

    assert seen["channels"] == ["first", "second"] and seen["tariffs"] == ["Basic"]
    assert seen["iframe_src"].startswith(f"http://{host}/widgets/page/{channels}")
    assert seen["iframe_height"] > 150  # sized to its content by the page's report
    account = await password_login(db, seen["login"], seen["password"])
    assert account is not None
    assert await db.run(catalog.account_tariffs, account.id) == [basic]
    assert os.path.getsize(os.path.join(shots, "channels.png")) > 1000
    assert minted.code == 200 and mint["url"] == "http://s.example/1/index.m3u8"
    assert len(mint["token"]) > 20 and mint["expires"] > 0


# -- cabinet, payment and TV guide ----------------------------------------------------------------
PAYER_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Fake ASSIST</title></head>
<body style="font-family: sans-serif"><h1>Fake ASSIST</h1>
<p id="paid">Order {order}: {amount} paid.</p>
<p><a id="back" href="{back}">Back to the shop</a></p></body></html>
"""


class FakeAssistSite(Resource):
    """
    The fake ASSIST on a real port: its Klein app (the report the daemon
    polls) plus the payer's page the widget's form posts to.  The page pays
    the order at once (a bill in the fake's report) and links back to the
    shop's ``URL_RETURN_OK`` with ``?ordernumber=N`` as ASSIST does.
    """

    isLeaf = True

    def __init__(self, fake: FakeAssist):
        super().__init__()
        self.fake, self.inner = fake, fake.app.resource()
        self.purchases: list[dict] = []

    def render(self, request):
        if request.path != b"/shops/purchase.cfm":
            return self.inner.render(request)
        form = {k.decode(): v[0].decode("utf-8", "replace") for k, v in request.args.items()}
        self.purchases.append(form)
        order, amount = form["Order_IDP"], form["Subtotal_P"]
        self.fake.pay(order, amount)
        back = form["URL_RETURN_OK"] + ("&" if "?" in form["URL_RETURN_OK"] else "?") + \
            urlencode({"ordernumber": order})
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return PAYER_PAGE.format(order=escape(order), amount=escape(amount),
                                 back=escape(back, quote=True)).encode("utf-8")


def cabinet_connects_sport(page, login: str, password: str, seen: dict) -> None:
    """In the cabinet framed on the page: log in, note the balance, connect "Sport", note again."""
    frame = page.frame_locator("#widget-content iframe")
    frame.get_by_label("Login").fill(login)
    frame.get_by_label("Password").fill(password)
    frame.get_by_role("button", name="Log in").click()
    seen["balance_before"] = frame.locator("#balance").inner_text(timeout=15000)
    frame.locator("#tariffs tr", has_text="Sport").get_by_role("button", name="Connect").click()
    frame.locator("#tariffs tr", has_text="Sport").get_by_text("connected").wait_for(
        timeout=15000)
    seen["balance_connected"] = frame.locator("#balance").inner_text()
    seen["statement"] = frame.locator("#statement").inner_text()


def browse_account(operator: str, shots: str, profile: str, login: str, password: str,
                   poll) -> dict:
    """In a worker thread: the TV guide, the cabinet, a payment and the cabinet again."""
    seen: dict = {}
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=FLAGS,
            viewport={"width": 720, "height": 640})
        try:
            page = context.new_page()
            page.goto(f"{operator}/epg.html")
            frame = page.frame_locator("#widget-content iframe")
            on_air = frame.locator("tr.onair")
            on_air.wait_for(timeout=15000)
            seen["on_air"] = on_air.all_inner_texts()
            seen["guide"] = frame.locator("section.guide").all_inner_texts()
            page.screenshot(path=os.path.join(shots, "epg.png"), full_page=True)

            page.goto(f"{operator}/cabinet.html")
            cabinet_connects_sport(page, login, password, seen)
            page.screenshot(path=os.path.join(shots, "cabinet.png"), full_page=True)

            page.goto(f"{operator}/payment.html")
            frame = page.frame_locator("#widget-content iframe")
            seen["amount_field"] = frame.get_by_label("Amount").input_value(timeout=15000)
            page.screenshot(path=os.path.join(shots, "payment.png"), full_page=True)
            frame.get_by_role("button", name="Pay").click()
            frame.get_by_role("button", name="Continue to the payment page").click()
            seen["gateway"] = page.locator("#paid").inner_text(timeout=15000)
            page.locator("#back").click()
            seen["result_before_poll"] = page.locator("#result").inner_text(timeout=15000)
            seen["polled"] = poll()  # the daemon asks the fake gateway's report
            page.reload()
            seen["result"] = page.locator("#result").inner_text(timeout=15000)
            page.screenshot(path=os.path.join(shots, "payment-done.png"), full_page=True)

            page.goto(f"{operator}/cabinet.html")
            frame = page.frame_locator("#widget-content iframe")
            seen["balance_paid"] = frame.locator("#balance").inner_text(timeout=15000)
        finally:
            context.close()
    return seen


@pytest_twisted.ensureDeferred
async def test_epg_cabinet_and_payment_widgets_embedded_from_another_origin(db, tmp_path):
    assert os.access(CHROMIUM, os.X_OK), (
        f"{CHROMIUM} is missing: apt-get install chromium (./smartyd-dev test does)")
    now = now_utc()
    feed = FakeXMLTV(xmltv([
        ("first.example", now - timedelta(minutes=20), now + timedelta(minutes=40),
         "Evening <News>"),
        ("first.example", now + timedelta(minutes=40), now + timedelta(minutes=100), "Film"),
    ]))
    fake = FakeAssist()
    gateway = FakeAssistSite(fake)
    pages = Resource()
    # The daemon's port must be known to configure ``return_url``: its root is set once built.
    daemon = make_site(Resource(), 1 << 20, reactor=reactor)
    ports = []
    try:
        for resource in (pages, feed, gateway):
            ports.append(await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
                Site(resource)))
        operator, feed_url, gateway_url = (f"http://127.0.0.1:{p.getHost().port}" for p in ports)
        ports.append(await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            daemon))
        host = f"127.0.0.1:{ports[-1].getHost().port}"

        async def seed(tx):
            a = await catalog.create_channel(tx, "first", "http://s.example/1/index.m3u8")
            b = await catalog.create_channel(tx, "second", "http://s.example/2/index.m3u8")
            await repo.set_xmltv_id(tx, a["id"], "first.example")
            sport = await catalog.create_tariff(tx, "Sport", "10.00", [b["id"]])
            account = await ledger.create_account(tx, "carol", ledger.hash_password("pw-carol"))
            await ledger.credit(tx, account.customer_id, "50.00", "payment", "test", "t:1")
            ids = {kind: (await repo.create_widget(tx, kind, "", tariffs)).id
                   for kind, tariffs in (("epg", []), ("cabinet", [sport["id"]]),
                                         ("payment", []))}
            return account, ids

        account, ids = await db.run(seed)
        cfg = make_config(
            widgets={"enabled": True, "allowed_origins": [operator], "language": "en"},
            epg={"xmltv_url": f"{feed_url}/guide.xml"},
            assist={"enabled": True, "generation": "legacy", "shop_id": "111111",
                    "login": "shoplogin", "password": "shoppass1", "secret": "push-secret",
                    "server": gateway_url,
                    "return_url": f"http://{host}/widgets/page/{ids['payment']}/result"})
        client = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor,
                                                                        persistent=False)))
        app = build(cfg, reactor, db, http_client=client)
        daemon.resource = app.root
        imported = await app.app.features["epg"].handle.run()
        extra = {"payment": f"&amount=150.00&client_id={account.customer_id}"
                            "&payment_type=assist"}
        for kind, wid in ids.items():
            html = SNIPPET.replace("HOST", host).replace("ID", str(wid)).replace(
                "container_id=widget-content", "container_id=widget-content" + extra.get(kind, ""))
            pages.putChild(f"{kind}.html".encode(), Data(html.encode(), "text/html; charset=utf-8"))
        shots = os.environ.get("SMARTYD_WIDGET_SCREENSHOTS") or str(tmp_path)
        os.makedirs(shots, exist_ok=True)
        poll = app.app.features["assist"].handle.poll

        def poll_from_thread():
            return blockingCallFromThread(reactor, lambda: defer.ensureDeferred(poll()))

        seen = await deferToThread(browse_account, operator, shots,
                                   str(tmp_path / "chromium-profile"), "carol", "pw-carol",
                                   poll_from_thread)
    finally:
        for port in ports:
            await port.stopListening()
        shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)

    assert imported.to_json()["stored"] == 2
    assert len(seen["on_air"]) == 1 and "Evening <News>" in seen["on_air"][0]
    assert "on air" in seen["on_air"][0] and "Film" in seen["guide"][0]
    assert seen["balance_before"] == "50.00" and seen["balance_connected"] == "40.00"
    assert "-10.00" in seen["statement"]
    assert seen["amount_field"] == "150.00"
    [purchase] = gateway.purchases
    number = purchase["Order_IDP"]
    assert purchase["Subtotal_P"] == "150.00" and seen["gateway"] == f"Order {number}: 150.00 paid."
    assert seen["result_before_poll"] == f"Payment {number}: 150.00, not credited yet."
    assert seen["result"] == f"Payment {number}: 150.00, credited."
    assert seen["balance_paid"] == "190.00"
    assert (await db.run(ledger.get_account, account.id)).balance == Decimal("190.00")
    for name in ("epg.png", "cabinet.png", "payment.png"):
        assert os.path.getsize(os.path.join(shots, name)) > 1000


# -- a browser that sends the widget no cookie --------------------------------------------------
class Recording(Resource):
    """The daemon's root, noting the ``Cookie`` header and page session of every widget form."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.inner: Resource | None = None
        self.posted_cookies: list = []
        self.posted_sessions: list = []

    def render(self, request):
        if request.method == b"POST" and request.path.startswith(b"/widgets/page/"):
            self.posted_cookies.append(request.getHeader(b"cookie"))
            self.posted_sessions += [v.decode() for v in request.args.get(b"session", [])]
        return self.inner.render(request)


def browse_cabinet_without_cookies(operator: str, shots: str, profile: str, login: str,
                                   password: str) -> dict:
    """In a worker thread: log in to the cabinet framed by another site, connect a tariff."""
    seen: dict = {}
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=FLAGS,
            viewport={"width": 720, "height": 640})
        try:
            page = context.new_page()
            page.goto(f"{operator}/cabinet.html")
            cabinet_connects_sport(page, login, password, seen)
            # The viewport: a full-page shot leaves a frame of another site blank.
            page.screenshot(path=os.path.join(shots, "cabinet-no-cookies.png"))
            seen["cookies"] = context.cookies()
        finally:
            context.close()
    return seen


@pytest_twisted.ensureDeferred
async def test_cabinet_works_in_a_frame_of_another_site_that_gets_no_cookie(db, tmp_path):
    """
    The operator's page on 127.0.0.1, the daemon on 127.0.0.2: two sites, so
    Chromium sends the framed widget no cookie at all over plain HTTP (as
    Safari, or Chrome blocking third-party cookies, does over HTTPS).  The
    session then lives in the page: the payer logs in, sees the balance and
    connects a tariff.
    """
    assert os.access(CHROMIUM, os.X_OK), (
        f"{CHROMIUM} is missing: apt-get install chromium (./smartyd-dev test does)")
    pages = Resource()
    recording = Recording()
    ports = []
    try:
        ports.append(await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Site(pages)))
        operator = f"http://127.0.0.1:{ports[0].getHost().port}"
        cfg = make_config(widgets={"enabled": True, "allowed_origins": [operator],
                                   "language": "en"})
        app = build(cfg, reactor, db)
        recording.inner = app.root
        ports.append(await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.2").listen(
            make_site(recording, cfg.http.max_body, reactor=reactor)))
        host = f"127.0.0.2:{ports[1].getHost().port}"

        async def seed(tx):
            a = await catalog.create_channel(tx, "first", "http://s.example/1/index.m3u8")
            sport = await catalog.create_tariff(tx, "Sport", "10.00", [a["id"]])
            account = await ledger.create_account(tx, "dave", ledger.hash_password("pw-dave"))
            await ledger.credit(tx, account.customer_id, "50.00", "payment", "test", "t:1")
            return account, (await repo.create_widget(tx, "cabinet", "", [sport["id"]])).id

        account, wid = await db.run(seed)
        html = SNIPPET.replace("HOST", host).replace("ID", str(wid))
        pages.putChild(b"cabinet.html", Data(html.encode(), "text/html; charset=utf-8"))
        shots = os.environ.get("SMARTYD_WIDGET_SCREENSHOTS") or str(tmp_path)
        os.makedirs(shots, exist_ok=True)
        with captured_events() as events:
            seen = await deferToThread(browse_cabinet_without_cookies, operator, shots,
                                       str(tmp_path / "chromium-profile"), "dave", "pw-dave")
    finally:
        for port in ports:
            await port.stopListening()
        shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)

    # The case under test: the browser kept no cookie of the framed site and sent none.
    assert seen["cookies"] == []
    assert len(recording.posted_cookies) == 2 and set(recording.posted_cookies) == {None}
    assert seen["balance_before"] == "50.00" and seen["balance_connected"] == "40.00"
    assert "-10.00" in seen["statement"]
    assert (await db.run(ledger.get_account, account.id)).balance == Decimal("40.00")
    # The sessions the pages carried (anonymous, then dave's) are in no log line.
    assert len(set(recording.posted_sessions)) == 2
    access = [e for e in events if e.get("log_format") == "{method} {path} {code}"
              and e["method"] == "POST"]  # the access log (QuietSite.log)
    assert [e["path"] for e in access] == [f"/widgets/page/{wid}", f"/widgets/page/{wid}/tariff"]
    assert not [e for e in events for token in recording.posted_sessions if token in repr(e)]
