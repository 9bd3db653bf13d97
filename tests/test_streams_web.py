"""
``POST /streams/url`` and ``GET /streams/check`` over StubTreq, on a real
database and a real entitlement snapshot; "now" is a task.Clock.
"""

import json
from urllib.parse import parse_qs, urlsplit

import pytest
import pytest_twisted
from attrs import define
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.task import Clock

from testapp import build as build_parts
from smartyd.streams.check import Checker, prometheus_counters
from smartyd.streams.entitlements import Entitlements
from smartyd.streams.fast import FastListener
from smartyd.streams.tokens import TokenCodec
from smartyd.streams.web import StreamsApp
from fakes import in_memory_client as stub_treq
from streams_world import PASSWORD, UID, connect, get, within
from conftest import make_config

NOW = 1_700_000_000
URL = "http://smartyd/streams/url"
CHECK = "http://smartyd/streams/check"
IP = "203.0.113.9"


@define
class Site:
    http: StubTreq
    codec: TokenCodec
    clock: Clock
    metrics: object


@pytest.fixture
def site(db, entitlements, metrics):
    clock = Clock()
    clock.advance(NOW)
    codec = TokenCodec(["s3cret"], bind_ip=True)
    checker = Checker(codec, entitlements, clock, prometheus_counters(metrics, "http"))
    app = StreamsApp(db, codec, checker, clock, metrics, ttl=3600)
    return Site(stub_treq(app.resource()), codec, clock, metrics)


async def body(response):
    return json.loads(await response.content())


def metric(metrics, name, **labels):
    return metrics.registry.get_sample_value(name, labels) or 0


# -- POST /streams/url -------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_mint_with_login_and_password_substitutes_the_mask(site, world):
    r = await site.http.post(URL, data={"login": "alice", "password": PASSWORD,
                                        "channel": "ch1", "ip": IP})
    assert r.code == 200
    out = await body(r)
    assert out["expires"] == NOW + 3600
    url = urlsplit(out["url"])
    assert (url.scheme, url.netloc, url.path) == ("http", "streamer.example.com:8080",
                                                  "/ch1/index.m3u8")
    query = parse_qs(url.query)
    assert query == {"token": [out["token"]], "u": [str(world.alice)], "ip": [IP],
                     "e": [str(NOW + 3600)], "keep": ["$unknown"]}
    reason, claims = site.codec.verify(out["token"], IP, NOW)
    assert reason == "ok" and (claims.account, claims.channel) == (world.alice, world.ch1)
    assert metric(site.metrics, "smartyd_tokens_minted_total") == 1


@pytest_twisted.ensureDeferred
async def test_mint_json_with_device_uid_and_channel_id_binds_the_callers_ip(site, world):
    r = await site.http.post(URL, data=json.dumps({"uid": UID, "channel": world.ch1}),
                             headers={"Content-Type": "application/json"})
    assert r.code == 200
    out = await body(r)
    # No ip given: the caller's address (StubTreq's client is 127.0.0.1).
    assert site.codec.verify(out["token"], "127.0.0.1", NOW)[0] == "ok"
    assert site.codec.verify(out["token"], IP, NOW)[0] == "ip_mismatch"
    r = await site.http.post(URL, data={"uid": UID, "channel": str(world.ch1), "ip": IP})
    assert r.code == 200


@pytest_twisted.ensureDeferred
async def test_every_refusal_is_the_same_403(site, world):
    cases = [
        {"login": "alice", "password": "wrong", "channel": "ch1"},
        {"login": "nobody", "password": PASSWORD, "channel": "ch1"},
        {"login": "carol", "password": PASSWORD, "channel": "ch1"},  # blocked
        {"login": "bob", "password": PASSWORD, "channel": "ch1"},  # no tariff
        {"login": "alice", "password": PASSWORD, "channel": "ch2"},  # not in her tariff
        {"login": "alice", "password": PASSWORD, "channel": "nosuch"},
        {"login": "alice", "password": PASSWORD, "channel": "999999"},
        {"uid": "ff:ff:ff:ff:ff:ff", "channel": "ch1"},
    ]
    bodies = set()
    for fields in cases:
        r = await site.http.post(URL, data=fields)
        assert r.code == 403, fields
        bodies.add(await r.content())
    assert bodies == {b'{"error": "forbidden"}'}
    assert metric(site.metrics, "smartyd_tokens_minted_total") == 0
    assert metric(site.metrics, "smartyd_http_requests_total",
                  route="streams_url", code="403") == len(cases)


@pytest_twisted.ensureDeferred
async def test_malformed_mint_requests_are_400(site, world):
    json_header = {"Content-Type": "application/json"}
    cases = [
        ({"login": "alice", "password": PASSWORD}, {}),
        ({"channel": "ch1"}, {}),
        ({"channel": "ch1", "login": "alice"}, {}),
        ({"channel": "ch1", "uid": UID, "login": "alice", "password": "x"}, {}),
        ({"channel": "ch1", "uid": UID, "ip": "not-an-ip"}, {}),
        ({"channel": "ch 1", "uid": UID}, {}),
        ({"channel": "9" * 30, "uid": UID}, {}),
        ({"channel": "ch1", "uid": "x" * 1000}, {}),
        ("[1, 2]", json_header),
        ("{not json", json_header),
        (json.dumps({"channel": ["ch1"], "uid": UID}), json_header),
        (json.dumps({"channel": "ch1", "uid": 5}), json_header),
    ]
    for data, headers in cases:
        r = await site.http.post(URL, data=data, headers=headers)
        assert r.code == 400, data
        assert "error" in await body(r)
    r = await site.http.get(URL)
    assert r.code == 405


# -- GET /streams/check --------------------------------------------------------------------
async def mint(site, login="alice", channel="ch1", ip=IP):
    r = await site.http.post(URL, data={"login": login, "password": PASSWORD,
                                        "channel": channel, "ip": ip})
    assert r.code == 200
    return (await body(r))["token"]


def flussonic_headers(response):
    return (response.headers.getRawHeaders("X-UserId"),
            response.headers.getRawHeaders("X-AuthDuration"))


@pytest_twisted.ensureDeferred
async def test_check_plain_flussonic_and_nginx_styles(site, world):
    token = await mint(site)
    user = [str(world.alice)]

    r = await site.http.get(CHECK, params={"token": token, "ip": IP, "name": "ch1"})
    assert r.code == 200 and flussonic_headers(r) == (user, ["60"])
    assert await r.content() == b""

    r = await site.http.get(CHECK, params={
        "name": "ch1", "ip": IP, "token": token, "session_id": "4f3a-77", "proto": "hls",
        "referer": "http://portal.example.com/watch?x=1&y=2"})
    assert r.code == 200 and flussonic_headers(r) == (user, ["60"])

    r = await site.http.get(CHECK, headers={
        "X-Original-URI": f"/ch1/index.m3u8?token={token}&other=1", "X-Real-IP": IP})
    assert r.code == 200 and flussonic_headers(r) == (user, ["60"])

    r = await site.http.head(CHECK, params={"token": token, "ip": IP})
    assert r.code == 200
    assert metric(site.metrics, "smartyd_token_checks_total", listener="http",
                  outcome="allowed", reason="ok") == 4


@pytest_twisted.ensureDeferred
async def test_check_refusals_are_403_with_the_reason_counted(site, world):
    token = await mint(site)
    cases = {
        "ip_mismatch": {"token": token, "ip": "198.51.100.7"},
        "channel_mismatch": {"token": token, "ip": IP, "name": "ch2"},
        "malformed": {"token": "bogus", "ip": IP},
    }
    for reason, params in cases.items():
        r = await site.http.get(CHECK, params=params)
        assert r.code == 403
        assert r.headers.getRawHeaders("X-AuthDuration") == ["10"]
        assert metric(site.metrics, "smartyd_token_checks_total", listener="http",
                      outcome="denied", reason=reason) == 1
    site.clock.advance(3600)
    r = await site.http.get(CHECK, params={"token": token, "ip": IP})
    assert r.code == 403 and r.headers.getRawHeaders("X-UserId") == [str(world.alice)]
    assert metric(site.metrics, "smartyd_token_checks_total", listener="http",
                  outcome="denied", reason="expired") == 1


@pytest_twisted.ensureDeferred
async def test_malformed_check_input_is_403_never_500(site, world):
    queries = [
        "", "token", "token=&ip=", "token=%00%ff%fe&ip=%zz", "token=" + "A" * 5000,
        "ip=1.2.3.4&name=%E2%98%83&token=AAAA", "token=a&token=b&token=c",
        "name=ch1&ip=::1&token=" + "_" * 74,
    ]
    for query in queries:
        r = await site.http.get(f"{CHECK}?{query}")
        assert r.code == 403, query
    r = await site.http.get(CHECK, headers={"X-Original-URI": "\u2603?token=%%%",
                                            "X-Real-IP": "x" * 300})
    assert r.code == 403


@pytest_twisted.ensureDeferred
async def test_check_answers_403_until_the_snapshot_has_loaded(db, world, metrics):
    clock = Clock()
    clock.advance(NOW)
    codec = TokenCodec(["s3cret"])
    not_started = Entitlements(db, metrics=metrics)
    checker = Checker(codec, not_started, clock, prometheus_counters(metrics, "http"))
    http = stub_treq(StreamsApp(db, codec, checker, clock, metrics, ttl=60).resource())
    token = codec.mint(world.alice, world.ch1, NOW + 60, ip=IP)
    r = await http.get(CHECK, params={"token": token, "ip": IP})
    # [tokens] when_unavailable = "deny" (the default; issue 14: was 503).
    assert r.code == 403 and r.headers.getRawHeaders("X-AuthDuration") == ["0"]
    assert r.headers.getRawHeaders("Retry-After") is None
    assert metric(metrics, "smartyd_token_checks_total", listener="http",
                  outcome="unavailable", reason="not_ready") == 1


# -- the feature as installed by the daemon ---------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_install_mounts_the_routes_and_adds_the_services(db, world, metrics):
    from twisted.application.service import MultiService

    cfg = make_config(tokens={"secret": "s3cret-long-enough-for-config",
                              "fast_listen": "tcp:0:interface=127.0.0.1"},
                      osmp={"enabled": False})
    parts = build_parts(cfg, reactor, db, metrics)
    services = [s for s in parts.services if isinstance(s, (Entitlements, FastListener))]
    assert [type(s) for s in services] == [Entitlements, FastListener]
    root = MultiService()
    for s in services:
        s.setServiceParent(root)
    root.startService()
    try:
        await within(services[0].when_loaded(), 10)
        http = stub_treq(parts.root)
        r = await http.post(URL, data={"login": "alice", "password": PASSWORD,
                                       "channel": "ch1", "ip": "127.0.0.1"})
        assert r.code == 200
        token = (await body(r))["token"]
        r = await http.get(CHECK, params={"token": token, "name": "ch1", "ip": "127.0.0.1"})
        assert r.code == 200
        client = await connect(services[1].port.getHost().port)
        client.send(get(f"/streams/check?token={token}&name=ch1"))
        [answer] = await client.wait(1)
        assert answer["status"] == 200 and answer["headers"]["X-UserId"] == str(world.alice)
        await client.close()
    finally:
        await root.stopService()
    text = (await (await http.get("http://smartyd/metrics")).text()).splitlines()
    assert 'smartyd_token_checks_total{listener="fast",outcome="allowed",reason="ok"} 1.0' \
        in text
    assert 'smartyd_token_checks_total{listener="http",outcome="allowed",reason="ok"} 1.0' \
        in text
    assert any(line.startswith("smartyd_entitlement_reloads_total ") for line in text)
