"""
The shared check function and the snapshot, without a database: every
refusal reason, the three request dialects, cache durations, counting, and
Hypothesis on arbitrary parameters (never raises).
"""

import base64

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock

from smartyd.metrics import Metrics
from smartyd.streams.check import (
    REASONS,
    Checker,
    Tallies,
    add_counts,
    parse_query,
    prometheus_counters,
    token_from_uri,
)
from smartyd.streams.entitlements import SnapshotBuilder
from smartyd.streams.tokens import TokenCodec

NOW = 1_700_000_000
IP = "203.0.113.9"


class Holder:
    """What the checker reads its snapshot from (the Entitlements service in the daemon)."""

    def __init__(self, snapshot=None):
        self.snapshot = snapshot


def snapshot():
    b = SnapshotBuilder()
    b.add(1, True, [10, 11])  # alice: ch10, ch11
    b.add(2, False, [10])  # bob: blocked
    b.add(3, True, [])  # carol: no tariff
    b.add(4, True, [10, 11])  # dave: same set as alice
    return b.build({"ch10": 10, "ch11": 11, "ch12": 12}, NOW)


def make(bind_ip=True, snap="default"):
    clock = Clock()
    clock.advance(NOW)
    codec = TokenCodec(["s3cret"], bind_ip=bind_ip)
    tallies = Tallies()
    holder = Holder(snapshot() if snap == "default" else snap)
    return Checker(codec, holder, clock, tallies, listener="test"), codec, clock, tallies, holder


def test_snapshot_shares_equal_channel_sets_and_answers_entitlements():
    s = snapshot()
    assert len(s.channel_sets) == 3  # {10,11}, {10}, {}
    assert s.channels_of(1) is s.channels_of(4)
    assert s.entitlement(1, 10) == "ok"
    assert s.entitlement(1, 12) == "not_entitled"
    assert s.entitlement(2, 10) == "blocked"
    assert s.entitlement(3, 10) == "not_entitled"
    assert s.entitlement(99, 10) == "unknown_account"
    assert s.channels_of(2) == frozenset({10}) and s.channels_of(99) is None


def test_allowed_with_the_account_and_a_short_cache_duration():
    checker, codec, clock, tallies, _ = make()
    token = codec.mint(1, 10, NOW + 3600, ip=IP)
    verdict = checker.check({"token": token, "ip": IP, "name": "ch10"}, {})
    assert tuple(verdict) == (True, 1, "ok", 60, None, None)
    # Never cached past the token's expiry.
    clock.advance(3600 - 15)
    assert checker.check({"token": token, "ip": IP}, {}).duration == 15
    assert [c for c in tallies.take()] == [("allowed", "ok", 2)]


def test_every_refusal_reason():
    checker, codec, clock, tallies, holder = make()
    good = codec.mint(1, 10, NOW + 3600, ip=IP)
    raw = bytearray(base64.urlsafe_b64decode(good + "=" * (-len(good) % 4)))
    raw[10] ^= 1  # account 1 -> 0
    forged = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()

    def reason(params, headers=None, peer=None):
        verdict = checker.check(params, headers or {}, peer)
        assert verdict.allowed is (verdict.reason == "ok")
        return verdict.reason

    assert reason({}) == "malformed"
    assert reason({"token": "x" * 74, "ip": IP}) == "malformed"
    assert reason({"token": good, "ip": "not-an-ip"}) == "malformed"
    assert reason({"token": TokenCodec(["other"]).mint(1, 10, NOW + 60, ip=IP), "ip": IP}) \
        == "unknown_key"
    assert reason({"token": forged, "ip": IP}) == "bad_signature"
    assert reason({"token": codec.mint(1, 10, NOW, ip=IP), "ip": IP}) == "expired"
    assert reason({"token": good, "ip": "198.51.100.1"}) == "ip_mismatch"
    assert reason({"token": good, "ip": IP, "name": "ch11"}) == "channel_mismatch"
    assert reason({"token": good, "ip": IP, "name": "no-such-channel"}) == "channel_mismatch"
    assert reason({"token": codec.mint(99, 10, NOW + 60, ip=IP), "ip": IP}) == "unknown_account"
    assert reason({"token": codec.mint(2, 10, NOW + 60, ip=IP), "ip": IP}) == "blocked"
    assert reason({"token": codec.mint(3, 10, NOW + 60, ip=IP), "ip": IP}) == "not_entitled"
    assert reason({"token": codec.mint(1, 12, NOW + 60, ip=IP), "ip": IP}) == "not_entitled"
    b = SnapshotBuilder()
    b.add(1, True, [10])
    holder.snapshot = b.build({"ch10": 10}, NOW, limits={1: 1})
    assert reason({"token": good, "ip": IP, "session_id": "s1"}) == "ok"
    assert reason({"token": good, "ip": IP, "session_id": "s2"}) == "too_many_sessions"
    holder.snapshot = None
    assert reason({"token": good, "ip": IP}) == "not_ready"
    counted = {r: n for _, r, n in tallies.take()}
    # entitlement_unknown: only with when_unavailable = "allow" (test_streams_streamers.py)
    assert set(counted) == set(REASONS) - {"entitlement_unknown"}
    assert counted["malformed"] == 3 and counted["not_entitled"] == 2


def test_refusals_name_the_account_only_after_the_signature_verified():
    checker, codec, _, _, _ = make()
    blocked = checker.check({"token": codec.mint(2, 10, NOW + 60, ip=IP), "ip": IP}, {})
    assert (blocked.allowed, blocked.account_id, blocked.duration) == (False, 2, 10)
    forged = checker.check({"token": "A" * 74, "ip": IP}, {})
    assert forged.account_id is None


def test_not_ready_is_not_a_refusal_to_cache():
    checker, codec, _, _, _ = make(snap=None)
    verdict = checker.check({"token": codec.mint(1, 10, NOW + 60, ip=IP), "ip": IP}, {})
    assert tuple(verdict) == (False, None, "not_ready", 0, None, None)


def test_flussonic_parameters():
    checker, codec, _, _, _ = make()
    token = codec.mint(1, 11, NOW + 3600, ip=IP)
    params = {"name": "ch11", "ip": IP, "token": token, "session_id": "abc123",
              "proto": "hls", "referer": "http://portal.example/"}
    assert checker.check(params, {}).reason == "ok"
    assert checker.check(dict(params, name="ch10"), {}).reason == "channel_mismatch"


def test_nginx_auth_request_headers():
    checker, codec, _, _, _ = make()
    token = codec.mint(1, 10, NOW + 3600, ip=IP)
    headers = {"x-original-uri": f"/ch10/index.m3u8?a=1&token={token}#frag",
               "x-real-ip": IP}
    assert checker.check({"name": "ch10"}, headers, peer="127.0.0.1").reason == "ok"
    assert checker.check({}, headers, peer="127.0.0.1").reason == "ok"
    wrong_ip = dict(headers, **{"x-real-ip": "192.0.2.1"})
    assert checker.check({}, wrong_ip, peer="127.0.0.1").reason == "ip_mismatch"
    assert checker.check({}, {"x-original-uri": "/ch10/index.m3u8"}).reason == "malformed"


def test_the_viewer_address_is_ip_then_x_real_ip_then_the_peer():
    checker, codec, _, _, _ = make()
    token = codec.mint(1, 10, NOW + 3600, ip=IP)
    other = "192.0.2.50"
    assert checker.check({"token": token, "ip": IP}, {"x-real-ip": other}, other).allowed
    assert not checker.check({"token": token, "ip": other}, {"x-real-ip": IP}, IP).allowed
    assert checker.check({"token": token}, {"x-real-ip": IP}, other).allowed
    assert checker.check({"token": token}, {}, IP).allowed
    assert checker.check({"token": token}, {}, None).reason == "ip_mismatch"


def test_unbound_tokens_ignore_the_address():
    checker, codec, _, _, _ = make(bind_ip=False)
    token = codec.mint(1, 10, NOW + 3600)
    assert checker.check({"token": token}, {}, None).allowed
    assert checker.check({"token": token, "ip": "192.0.2.1"}, {}).allowed


def test_parse_query():
    assert parse_query("a=1&b=2&a=3") == {"a": "1", "b": "2"}
    assert parse_query("name=ch%201&x=a+b&flag&=v&e=") == {
        "name": "ch 1", "x": "a b", "flag": "", "": "v", "e": ""}
    assert parse_query("t=%zz%") == {"t": "%zz%"}
    assert token_from_uri("/a/b?x=1&token=T&token=U") == "T"
    assert token_from_uri("/a/b") is None and token_from_uri("/a?#token=x") is None


def test_counting_into_prometheus():
    metrics = Metrics()
    clock = Clock()
    clock.advance(NOW)
    codec = TokenCodec(["s3cret"])
    checker = Checker(codec, Holder(snapshot()), clock, prometheus_counters(metrics, "http"))
    checker.check({"token": codec.mint(1, 10, NOW + 60, ip=IP), "ip": IP}, {})
    checker.check({"token": "junk"}, {})
    text = metrics.render().decode()
    assert 'smartyd_token_checks_total{listener="http",outcome="allowed",reason="ok"} 1.0' in text
    assert ('smartyd_token_checks_total{listener="http",outcome="denied",reason="malformed"} 1.0'
            in text)
    add_counts(metrics, "fast", [["denied", "blocked", 5], ["allowed", "blocked", 1],
                                 ["denied", "nonsense", 1], ["denied", "expired", -3], "x"])
    text = metrics.render().decode()
    assert 'smartyd_token_checks_total{listener="fast",outcome="denied",reason="blocked"} 5.0' \
        in text
    assert "nonsense" not in text
    assert 'listener="fast",outcome="denied",reason="expired"' not in text


params = st.dictionaries(st.sampled_from(["token", "ip", "name", "session_id", "x"]),
                         st.text(max_size=120), max_size=5)
headers = st.dictionaries(st.sampled_from(["x-original-uri", "x-real-ip"]),
                          st.text(max_size=200), max_size=2)


@given(params=params, headers=headers, peer=st.one_of(st.none(), st.text(max_size=40)))
def test_check_never_raises_and_never_allows_garbage(params, headers, peer):
    checker, _, _, _, _ = make()
    verdict = checker.check(params, headers, peer)
    assert not verdict.allowed and verdict.reason in REASONS


@given(query=st.text(max_size=300))
def test_parse_query_never_raises(query):
    assert isinstance(parse_query(query), dict)
