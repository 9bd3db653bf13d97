"""
Every endpoint that reads a JSON body refuses a hostile one (nested past the
depth guard) with a 400 -- through the daemon's own root resource, with
nothing logged as a failure and nothing changed in the database.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.logger import LogLevel, globalLogPublisher

from conftest import make_config
from fakes import in_memory_client
from smartyd import ledger
from testapp import build as build_parts
from smartyd.metrics import Metrics
from smartyd.util.json_guard import MAX_JSON_DEPTH, BadJSON, parse_json

SECRET = "hook-s3cret-4f9a"
DEEP_ARRAYS = b"[" * 60000  # python3 -c 'print("["*60000,end="")'
DEEP_OBJECTS = b'{"a":' * 10000  # 50 KB: under every body cap
JSON_ENDPOINTS = [
    "/streams/url",
    "/payments/assist/order",
    "/payments/assist/result",
    "/payments/payture/order",
    f"/webhooks/dreamkas/{SECRET}",
]


def every_feature_config():
    return make_config(
        tokens={"secret": "json-test-secret-0123456789", "fast_listen": ""},
        assist={"enabled": True, "generation": "legacy", "shop_id": "111111",
                "login": "shoplogin", "password": "shoppass1", "secret": "push-secret",
                "test_mode": True, "return_url": "https://portal.example/paid"},
        payture={"enabled": True, "host": "https://sandbox3.payture.com",
                 "merchant_pay_key": "MerchantKey", "password": "payture-pass"},
        dreamkas={"enabled": True, "token": "t0k3n", "api_url": "http://dreamkas.test/api",
                  "device_id": 109266, "webhook_secret": SECRET},
    )


@pytest.fixture
def failures():
    """Log events at critical level or carrying a failure (a traceback)."""
    seen = []

    def observer(event):
        if event.get("log_level") in (LogLevel.critical, LogLevel.error) \
                or event.get("log_failure") is not None:
            seen.append(event)

    globalLogPublisher.addObserver(observer)
    yield seen
    globalLogPublisher.removeObserver(observer)


async def db_state(db) -> dict:
    """Every table's content, as a digest."""
    tables = [r[0] for r in await db.fetchall(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")]
    state = {}
    for table in tables:
        state[table] = await db.fetchval(
            f"SELECT count(*) || ':' || md5(coalesce(string_agg(t::text, ',' ORDER BY t::text),"
            f" '')) FROM {table} t")
    return state


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("path", JSON_ENDPOINTS)
@pytest.mark.parametrize("body", [DEEP_ARRAYS, DEEP_OBJECTS], ids=["arrays", "objects"])
async def test_deeply_nested_json_is_a_400_and_changes_nothing(db, failures, path, body):
    metrics = Metrics()
    parts = build_parts(every_feature_config(), reactor, db, metrics)
    await db.run(ledger.create_account, "alice", ledger.hash_password("s3cret"))
    before = await db_state(db)
    web = in_memory_client(parts.root)
    response = await web.post("http://smartyd" + path, data=body,
                              headers={"content-type": "application/json"})
    content = await response.content()
    if path == "/payments/assist/result":
        # An ASSIST push is a form and is answered as the legacy protocol
        # answers (HTTP 200, codes in the body): a JSON body carries no
        # fields, so it is a push without a valid CheckValue.
        assert response.code == 200 and b'firstcode="5" secondcode="158"' in content, content
    else:
        assert response.code == 400, (path, response.code, content[:200])
    assert await db_state(db) == before
    assert [e.get("log_format") for e in failures] == []


# -- the helper ------------------------------------------------------------------------------------
def test_parse_json_counts_depth_outside_strings_only():
    at_limit = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    assert parse_json(at_limit) is not None
    with pytest.raises(BadJSON, match="nested"):
        parse_json(b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1))
    mixed = b'{"a": [{"b": [1]}]}'
    assert parse_json(mixed, max_depth=4) == {"a": [{"b": [1]}]}
    with pytest.raises(BadJSON):
        parse_json(mixed, max_depth=3)
    # brackets (and escaped quotes) inside strings are text, not nesting
    text = json.dumps({"s": "[{" * 5000 + '\\"[[' + "}]" * 5000}).encode()
    assert parse_json(text, max_depth=1)["s"].startswith("[{[{")


@pytest.mark.parametrize("data", [b"", b"{", b"\xff\xfe", b"[1,]", b"NaN-ish", b'"\\ud800'])
def test_parse_json_turns_every_bad_body_into_bad_json(data):
    with pytest.raises(BadJSON):
        parse_json(data)
