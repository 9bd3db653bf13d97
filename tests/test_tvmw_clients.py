"""
The TV Middleware API as public apps built on Smarty's API call it (issue 23:
"where the spec is vague, follow them").  Each test replays one client's
requests -- its paths (with or without the trailing slash), its parameters
and their order, its ``device`` types -- and asserts that the fields it reads
are there with the types it expects, parsed as it parses them (JSON, or the
``<rss>`` XML its set-top box types get).  The client is named in each
test's docstring; the clients were read, not copied.

Clients:

- samandarkuchkarov/tvcom_iOS (React Native app of the operator TVCOM):
  ``Api/index.js``, ``context.js``, ``services/http/userAPI.js`` --
  ``client_id`` as the number 1, ``device`` "ios" (JSON) or "android_stb"
  (XML read with fast-xml-parser: ``rss.channels.item``), ``device_uid`` the
  phone's IP address, ``authkey`` in the query; ``account/status``'s
  ``status == 1`` makes it log in again.
- an M3U generator for the same operator (a public Node script, ``find_string``
  index id 54303215140; its repository was not resolved by the index):
  ``channel/list/?...&compact=1&device=android``, keeps
  ``Number(has_subscription) !== 0``, writes ``#EXTINF`` from ``id``, ``name``,
  ``icon`` and the entry ``channel/url/?cid=...&device=android&client_id=1&
  authkey=...&timezone=0`` (the default ``redirect=1``).
- ilyatm/InfosvyazChannelParser (``InfosvyazChannelParser.java``):
  ``channel/list/`` and ``category/list/`` for ``device=mag`` (XML) with
  extra ``timezone``/``timeshift``/``sess_key``; reads every ``channels``
  child's ``id``, ``name``, ``url``, ``icon``, ``category_id`` and writes
  ``url`` as the M3U entry.
"""

from __future__ import annotations

import hashlib
import json
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest_twisted
from twisted.internet import reactor

from fakes import in_memory_client
from fakes.megogo import FakeMegogo
from smartyd import catalog, ledger
from smartyd.billing import engine
from smartyd.gateways.untrusted_xml import parse_untrusted_xml
from streams_world import PASSWORD, connect, get, within
from test_tvmw import KEY, Running, _guide, config, fast_port
from test_tvmw_content import CATALOG, KEYS, MEGOGO, T0, Daemon, feed, tv_tariff, tvmw_config

HOST = "http://smartyd"
API = HOST + "/tvmiddleware/api/"
PHONE_IP = "192.168.1.23"  # tvcom_iOS sends its IP address as device_uid


@pytest_twisted.async_yield_fixture
async def instance(db, world):
    running = Running(db, config())
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


async def fetch(instance, path: str, params: list | dict):
    """A GET of ``path`` (relative to the API, exactly as the client writes it)."""
    query = urlencode(params)
    joint = "&" if "?" in path else "?"
    return await instance.http.get(API + path + (joint + query if query else ""),
                                   allow_redirects=False)


async def as_json(resp) -> dict:
    assert resp.code == 200, resp.code
    assert resp.headers.getRawHeaders(b"content-type")[0].startswith(b"application/json")
    return json.loads(await resp.content())


async def as_rss(resp):
    assert resp.code == 200, resp.code
    assert resp.headers.getRawHeaders(b"content-type")[0].startswith(b"application/xml")
    root = parse_untrusted_xml(await resp.content())
    assert root.tag == "rss"
    return root


def integer(text: str | None) -> int:
    """A number as fast-xml-parser / Integer.parseInt read it: fails on anything else."""
    assert text is not None
    return int(text)


async def stream_check(instance, uri: str, channel: str) -> int:
    """What the streamer's check of the URL's token answers on the fast listener."""
    query = parse_qs(urlsplit(uri).query)
    client = await connect(fast_port(instance))
    client.send(get(f"/streams/check?token={query['token'][0]}&ip={query['ip'][0]}"
                    f"&name={channel}"))
    [answer] = await client.wait(1)
    await client.close()
    return answer["status"]


async def ios_login(instance, device="ios") -> str:
    """tvcom_iOS ``Api/index.js`` ``login``: GET ``login`` without the slash."""
    answer = await as_json(await fetch(instance, "login", [
        ("abonement", "alice"), ("password", PASSWORD), ("client_id", 1),
        ("api_key", KEY), ("device", device), ("device_uid", PHONE_IP),
        ("device_model", "iPhone 13")]))
    assert answer["error"] == 0
    return answer["authkey"]


# -- samandarkuchkarov/tvcom_iOS ----------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_tvcom_ios_logs_in_checks_its_token_and_logs_in_again_after_logout(instance, db,
                                                                                  world):
    """
    samandarkuchkarov/tvcom_iOS: ``Api/index.js`` ``login`` and ``logoutApi``
    (paths without the trailing slash), ``context.js`` ``checkToken`` (reads
    ``status`` -- 1 clears the stored token -- and ``status_reason`` for the
    DEBT banner), ``pages/Authentication`` (reads ``error == 0``, ``authkey``,
    ``abonement``, ``status_reason``); ``services/http/userAPI.js``
    ``loginUser`` for a set-top box (XML, ``parseXML(data).authkey``).
    """
    answer = await as_json(await fetch(instance, "login", [
        ("abonement", "alice"), ("password", PASSWORD), ("client_id", 1),
        ("api_key", KEY), ("device", "ios"), ("device_uid", PHONE_IP),
        ("device_model", "iPhone 13")]))
    assert answer["error"] == 0 and isinstance(answer["error"], int)
    assert isinstance(answer["authkey"], str) and answer["authkey"]
    assert answer["abonement"] == "alice" and answer["status_reason"] == "ACTIVE"
    authkey = answer["authkey"]
    # The IP address it sends as device_uid binds like any uid.
    assert await db.fetchval("SELECT account_id FROM devices WHERE uid = %s",
                             (PHONE_IP,)) == world.alice

    status = await as_json(await fetch(instance, "account/status/", [
        ("authkey", authkey), ("client_id", 1), ("device", "ios"),
        ("device_uid", PHONE_IP), ("device_model", "iPhone 13")]))
    assert status["status"] == 0 and isinstance(status["status"], int)
    assert status["status_reason"] == "ACTIVE"

    bye = await as_json(await fetch(instance, "logout", [
        ("authkey", authkey), ("client_id", 1), ("device", "ios"), ("device_uid", PHONE_IP)]))
    assert bye["error"] == 0
    status = await as_json(await fetch(instance, "account/status/", [
        ("authkey", authkey), ("client_id", 1), ("device", "ios"),
        ("device_uid", PHONE_IP), ("device_model", "iPhone 13")]))
    assert status["status"] == 1  # what makes the app forget the token and log in again
    # checkToken reads the same from a set-top box's XML: data.rss.status == 1.
    root = await as_rss(await fetch(instance, "account/status/", [
        ("authkey", authkey), ("client_id", 1), ("device", "android_stb"),
        ("device_uid", PHONE_IP)]))
    assert integer(root.findtext("status")) == 1

    # userAPI.js loginUser: $hostWithParams puts client_id and api_key first; android_stb: XML.
    root = await as_rss(await fetch(instance, "login/", [
        ("client_id", 1), ("api_key", KEY), ("abonement", "alice"), ("password", PASSWORD),
        ("device", "android_stb")]))
    assert integer(root.findtext("error")) == 0 and len(root.findtext("authkey")) == 32
    wrong = await as_rss(await fetch(instance, "login/", [
        ("client_id", 1), ("api_key", KEY), ("abonement", "alice"), ("password", "nope"),
        ("device", "android_stb")]))
    assert integer(wrong.findtext("error")) == 1  # utils/errors/login.js: code 1


@pytest_twisted.ensureDeferred
async def test_tvcom_ios_channel_list_as_xml_and_json_and_its_search(instance, db, world):
    """
    samandarkuchkarov/tvcom_iOS: ``Api/index.js`` ``getChannel`` (android_stb:
    ``rss.channels.item``; phone "android": JSON ``channels``) and
    ``getChannelInfo`` (``channel/list/search/`` with ``limit=1``); the
    fields ``pages/TvList`` and ``components/TvCarusel`` read: ``id``,
    ``name``, ``icon``, ``has_subscription`` (compared ``== 1``),
    ``is_favorited``, ``category_id``, ``program_name``,
    ``program_begin_time``/``program_end_time`` (``Number(...)``) and
    ``program_preview_url``.
    """
    now = int(reactor.seconds())
    await _guide(db, world, now)
    authkey = await ios_login(instance)
    common = [("authkey", authkey), ("client_id", 1)]
    root = await as_rss(await fetch(instance, "channel/list/", common + [
        ("device", "android_stb"), ("api_key", KEY), ("device_uid", PHONE_IP)]))
    items = {integer(i.findtext("id")): i for i in root.findall("channels/item")}
    assert set(items) == {world.ch1, world.ch2}
    ch1 = items[world.ch1]
    for field in ("name", "icon", "program_preview_url", "program_name"):
        assert ch1.find(field) is not None, field
    for field in ("has_subscription", "is_favorited", "category_id", "program_begin_time",
                  "program_end_time"):
        integer(ch1.findtext(field))
    assert integer(ch1.findtext("has_subscription")) == 1
    assert integer(items[world.ch2].findtext("has_subscription")) == 0
    assert ch1.findtext("program_name") == "News <live>"
    assert integer(ch1.findtext("program_begin_time")) == now - 600

    phone = await as_json(await fetch(instance, "channel/list/", common + [
        ("device", "android"), ("api_key", KEY), ("device_uid", PHONE_IP)]))
    [first, second] = phone["channels"]
    assert isinstance(first["id"], int) and isinstance(first["has_subscription"], int)
    assert isinstance(first["program_preview_url"], str)

    found = await as_rss(await fetch(instance, "channel/list/search/", [
        ("authkey", authkey), ("limit", 1), ("client_id", 1), ("search", "ch"),
        ("device", "android_stb"), ("device_uid", PHONE_IP)]))
    assert [integer(i.findtext("id")) for i in found.findall("channels/item")] == [world.ch1]
    page2 = await as_json(await fetch(instance, "channel/list/search/", [
        ("authkey", authkey), ("limit", 1), ("page", 2), ("client_id", 1), ("search", "ch"),
        ("device", "ios")]))
    assert [c["id"] for c in page2["channels"]] == [world.ch2]


@pytest_twisted.ensureDeferred
async def test_tvcom_ios_zaps_reads_the_guide_and_the_channel_detail(instance, db, world):
    """
    samandarkuchkarov/tvcom_iOS: ``context.js`` ``getChannelSrc``
    (``channel/url/`` with ``redirect=0``, reads ``uri``),
    ``getProgramListByDay`` (``program/list/`` with ``time_from``/``time_to``
    as Unix seconds, android_stb XML, reads ``programs.item`` and each
    ``begin_time``/``end_time``/``name``/``id``/``preview`` as
    ``components/TimeShift`` shows them), ``Api/index.js``
    ``getChannelDetail`` (no ``device``: JSON, checks ``!detail.error``).
    """
    now = int(reactor.seconds())
    await _guide(db, world, now)
    authkey = await ios_login(instance)
    src = await as_json(await fetch(instance, "channel/url/", [
        ("cid", world.ch1), ("redirect", 0), ("authkey", authkey), ("client_id", 1),
        ("device", "ios"), ("device_uid", PHONE_IP)]))
    assert src["error"] == 0 and isinstance(src["uri"], str)
    assert await stream_check(instance, src["uri"].replace("amp;", ""), "ch1") == 200

    root = await as_rss(await fetch(instance, "program/list/", [
        ("authkey", authkey), ("cid", world.ch1), ("client_id", 1), ("api_key", KEY),
        ("device", "android_stb"), ("time_to", str(now + 86400)),
        ("time_from", str(now - 6 * 86400))]))
    programs = root.findall("programs/item")
    assert [p.findtext("name") for p in programs] == ["News <live>", "Film", "Late"]
    assert [integer(p.findtext("begin_time")) for p in programs] == [
        now - 600, now + 600, now + 1800]
    for p in programs:
        integer(p.findtext("end_time"))
        integer(p.findtext("id"))
        assert p.find("preview") is not None

    detail = await as_json(await fetch(instance, "channel/detail/", [
        ("api_key", KEY), ("client_id", 1), ("authkey", authkey), ("cid", world.ch1)]))
    assert detail["error"] == 0 and detail["id"] == world.ch1


@pytest_twisted.ensureDeferred
async def test_tvcom_ios_customer_info_and_subscriptions(instance, world):
    """
    samandarkuchkarov/tvcom_iOS: ``context.js`` ``getUserInfo``
    (``customer/info`` without the slash, android_stb XML; ``pages/Profile``
    and ``pages/Home`` read ``balance`` and ``tariffs.item`` with ``id`` and
    ``is_assigned``) and ``Api/index.js`` ``getSubscriptionList``
    (``customer/tariff/subscription/list/``, "ios" JSON; reads
    ``subscriptions`` with ``tariff_id``, ``tariff_name``, ``end_date``).
    """
    authkey = await ios_login(instance)
    root = await as_rss(await fetch(instance, "customer/info", [
        ("authkey", authkey), ("client_id", 1), ("api_key", KEY), ("device", "android_stb"),
        ("device_uid", PHONE_IP)]))
    assert float(root.findtext("balance")) == 0
    tariffs = {integer(t.findtext("id")): integer(t.findtext("is_assigned"))
               for t in root.findall("tariffs/item")}
    assert tariffs[world.basic] == 1

    subs = await as_json(await fetch(instance, "customer/tariff/subscription/list/", [
        ("authkey", authkey), ("api_key", KEY), ("client_id", 1), ("device", "ios"),
        ("device_uid", PHONE_IP)]))
    [sub] = subs["subscriptions"]
    assert sub["tariff_id"] == world.basic and sub["tariff_name"] == "basic"
    assert isinstance(sub["end_date"], str) and sub["end_date"][:2] == "20"


@pytest_twisted.ensureDeferred
async def test_tvcom_ios_buys_and_cancels_a_tariff_reading_the_error_as_a_number(instance, db,
                                                                                  world):
    """
    samandarkuchkarov/tvcom_iOS: ``context.js`` ``buyTariff``
    (``customer/tariff/subscribe`` without the slash) and ``removeTariff``
    (``customer/tariff/unsubscribe/``), "ios" JSON; ``pages/PodpiskaTv``
    ``switch (status.error)`` -- a strict comparison: the code must be a JSON
    number -- 0 bought, 2 not enough money, 3 already subscribed; on
    unsubscribe 0 done, 2 a basic tariff.
    """
    extra = (await db.run(catalog.create_tariff, "extra", "50.00", [world.ch2],
                          additional=True))["id"]
    authkey = await ios_login(instance)

    async def call(path, tariff_id):
        return await as_json(await fetch(instance, path, [
            ("authkey", authkey), ("tariff_id", tariff_id), ("client_id", 1), ("api_key", KEY),
            ("device", "ios"), ("device_uid", PHONE_IP)]))

    assert (await call("customer/tariff/subscribe", extra))["error"] == 2
    alice = await db.run(ledger.get_account, world.alice)
    await db.run(ledger.credit, alice.customer_id, "500.00", "payment", "osmp:1", "pay:1")
    bought = await call("customer/tariff/subscribe", extra)
    assert bought["error"] == 0 and type(bought["error"]) is int
    assert (await call("customer/tariff/subscribe", extra))["error"] == 3
    assert (await call("customer/tariff/unsubscribe/", world.basic))["error"] == 2
    assert (await call("customer/tariff/unsubscribe/", extra))["error"] == 0


@pytest_twisted.ensureDeferred
async def test_tvcom_ios_lists_films_opens_one_and_gets_its_megogo_url(db, world):
    """
    samandarkuchkarov/tvcom_iOS: ``context.js`` ``getFilmsWithParams``
    (``video/list/?client_id=1`` with the rest of the query appended,
    android_stb XML; reads ``rss.count`` and ``rss.videos.item``, each with
    ``id`` and ``files.item`` whose ``id`` is the ``vfid`` it plays),
    ``getCurrentMovie`` (``video/detail/`` with ``vid``, "ios" JSON; reads
    ``name`` and ``actions``) and ``getSrc`` (``video/url/`` with ``vid``,
    ``vfid``, ``redirect=0``; reads ``uri``).
    """
    cat = await tv_tariff(db, "megogo-catalog", "0.00", hidden=True)
    svod = await tv_tariff(db, "megogo-svod", "0.00", additional=True)
    cfg = tvmw_config(megogo={**MEGOGO, "catalog_tariff_id": cat, "tariff_id": svod, **KEYS})
    daemon = Daemon(db, cfg, http_client=in_memory_client(FakeMegogo(partner_id=7).resource()))
    await daemon.app.app.features["vod"].handle.syncs["megogo"].sync_bytes(feed(*CATALOG))
    await daemon.start()
    try:
        alice = await db.run(ledger.get_account, world.alice)
        for t in (cat, svod):
            await db.run(engine.assign, cfg.billing, alice.id, t, at=T0)
        authkey = await ios_login(daemon)
        root = await as_rss(await fetch(daemon, "video/list/?client_id=1", [
            ("authkey", authkey), ("limit", 2), ("page", 1), ("api_key", KEY),
            ("device", "android_stb"), ("device_uid", PHONE_IP), ("search", "alpha")]))
        assert integer(root.findtext("count")) == 1
        [video] = root.findall("videos/item")
        vid = integer(video.findtext("id"))
        [file] = video.findall("files/item")
        vfid = integer(file.findtext("id"))

        movie = await as_json(await fetch(daemon, "video/detail/", [
            ("vid", vid), ("authkey", authkey), ("device", "ios"), ("client_id", 1),
            ("device_uid", PHONE_IP)]))
        assert movie["error"] == 0 and movie["name"] == "Alpha"
        assert isinstance(movie["actions"], list)

        src = await as_json(await fetch(daemon, "video/url/", [
            ("vid", vid), ("authkey", authkey), ("vfid", vfid), ("redirect", 0),
            ("device", "ios"), ("client_id", 1), ("api_key", KEY), ("device_uid", PHONE_IP)]))
        assert src["error"] == 0 and src["uri"].startswith("https://api.megogo.net/v1/stream?")
        token = hashlib.md5(f"isp-{alice.customer_id}7pepper-salt".encode()).hexdigest()
        assert (src["ext_auth_token"], src["ext_apikey"]) == (token, "m-pub")  # ios: mobile
    finally:
        await daemon.stop()


# -- the M3U generator ---------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_m3u_generator_builds_a_playlist_whose_entries_play(instance, world):
    """
    The M3U generator (public Node script, index id 54303215140): loads
    ``channel/list/?authkey=&client_id=&api_key=&compact=1&device=android``
    (JSON, ``json.channels``), keeps ``Number(has_subscription) !== 0``, writes
    ``#EXTINF:-1 tvg-id="<id>" tvg-logo="<icon>" group-title=...,<name>`` and
    the entry ``channel/url/?cid=<id>&device=android&client_id=1&authkey=
    <authkey>&timezone=0``.  A player opening the entry is redirected to the
    stream, whose token the streamer's check (the fast listener) accepts.
    """
    authkey = await ios_login(instance, device="android")
    listed = await as_json(await fetch(instance, "channel/list/", [
        ("authkey", authkey), ("client_id", "1"), ("api_key", KEY), ("compact", 1),
        ("device", "android")]))
    channels = [c for c in listed["channels"] if int(c["has_subscription"]) != 0]
    lines = ["#EXTM3U"]
    for ch in channels:
        lines.append(f'#EXTINF:-1 tvg-id="{ch["id"]}" tvg-logo="{ch["icon"]}"'
                     f' group-title="TV",{ch["name"].strip()}')
        lines.append(API + "channel/url/?" + urlencode([
            ("cid", ch["id"]), ("device", "android"), ("client_id", "1"),
            ("authkey", authkey), ("timezone", 0)]))
    assert lines[1] == f'#EXTINF:-1 tvg-id="{world.ch1}" tvg-logo="" group-title="TV",ch1'
    assert len(lines) == 3  # ch2 is not subscribed: left out

    for entry in lines[2::2]:
        resp = await instance.http.get(entry, allow_redirects=False)
        assert resp.code == 302
        location = resp.headers.getRawHeaders(b"location")[0].decode()
        assert location.startswith("http://streamer.example.com:8080/ch1/index.m3u8?token=")
        assert await stream_check(instance, location, "ch1") == 200


# -- ilyatm/InfosvyazChannelParser ---------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_infosvyaz_parser_builds_its_m3u_from_channel_list_urls(instance, db, world):
    """
    ilyatm/InfosvyazChannelParser ``InfosvyazChannelParser.java``: the XML of
    ``category/list/`` and ``channel/list/`` for ``device=mag`` (with the
    extra ``timezone=12&timeshift=0&sess_key=...`` it sends), every child of
    ``<channels>`` an element with ``id`` (``Integer.parseInt``), ``name``,
    ``url``, ``icon``, ``category_id`` (``Integer.parseInt``, looked up among
    the categories' ``id``/``name``); the M3U entry is the channel's ``url``.
    A subscribed channel's ``url`` plays (a redirect to a stream whose token
    checks 200); a locked one has none.
    """
    reloaded = instance.entitlements.next_reload()
    await db.execute("INSERT INTO channel_categories (id, name, color)"
                     " VALUES (7, 'News', '#ff0000')")
    await db.execute("UPDATE channels SET category_id = 7 WHERE id = %s", (world.ch1,))
    await within(reloaded, 5)
    await instance.tvmw.deps["channels"].reload()
    authkey = await ios_login(instance)  # the parser logs in nowhere: its authkey was captured
    params = [("device", "mag"), ("client_id", 1), ("api_key", KEY), ("sess_key", 139146),
              ("authkey", authkey)]
    categories = {}
    root = await as_rss(await fetch(instance, "category/list/", params))
    for item in list(root.find("categories")):
        categories[integer(item.findtext("id"))] = item.findtext("name")
    assert categories == {7: "News"}

    root = await as_rss(await fetch(instance, "channel/list/", [
        ("timezone", 12), ("timeshift", 0)] + params))
    playlist = {}
    for item in list(root.find("channels")):
        cid = integer(item.findtext("id"))
        category = categories.get(integer(item.findtext("category_id")))
        assert item.find("icon") is not None
        playlist[cid] = (item.findtext("name"), category, item.findtext("url"))
    assert playlist[world.ch1][:2] == ("ch1", "News")
    assert playlist[world.ch2] == ("ch2", None, "")  # locked: no URL to play

    url = playlist[world.ch1][2]
    assert url.startswith(API + "channel/url/?")
    resp = await instance.http.get(url, allow_redirects=False)
    assert resp.code == 302
    location = resp.headers.getRawHeaders(b"location")[0].decode()
    assert await stream_check(instance, location, "ch1") == 200


def test_the_channel_list_url_origin_is_the_host_the_device_named():
    """
    ChannelList's ``url`` starts with ``public_origin``: the ``Host`` the
    device sent (anything else than a host name / address[:port]: no URL),
    ``https`` when it came over TLS or through a trusted proxy that says so.
    """
    import ipaddress

    from twisted.web.server import Request
    from twisted.web.test.requesthelper import DummyChannel

    from smartyd.http.addresses import public_origin

    def request(host: bytes | None, proto: bytes | None = None):
        r = Request(DummyChannel())
        if host is not None:
            r.requestHeaders.setRawHeaders(b"host", [host])
        if proto is not None:
            r.requestHeaders.setRawHeaders(b"x-forwarded-proto", [proto])
        return r

    assert public_origin(request(b"TV.example.com:8080")) == "http://tv.example.com:8080"
    assert public_origin(request(b"[::1]:80")) == "http://[::1]:80"
    for bad in (None, b"", b"evil.com/x?", b"a b", b"host:port", b"\xff", b"x@y"):
        assert public_origin(request(bad)) is None, bad
    peer = Request(DummyChannel()).getClientAddress().host
    proxies = (ipaddress.ip_network(peer),)
    assert public_origin(request(b"tv.example.com", b"https"), proxies) == \
        "https://tv.example.com"
    # The header counts only from a trusted proxy.
    assert public_origin(request(b"tv.example.com", b"https")) == "http://tv.example.com"
