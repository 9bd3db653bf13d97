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

import pytest_twisted
from playwright.sync_api import sync_playwright
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.threads import deferToThread
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from conftest import make_config
from smartyd import catalog
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
