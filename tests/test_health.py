import json

import pytest_twisted
from fakes import in_memory_client as _stub_treq
from twisted.internet import reactor

from testapp import build as build_parts
from smartyd.config import Config
from smartyd.http.health import Health
from smartyd.metrics import Metrics


def site(db, metrics=None, cfg=None):
    parts = build_parts(cfg or Config(), reactor, db, metrics or Metrics())
    return parts, _stub_treq(parts.root)


@pytest_twisted.ensureDeferred
async def test_health_ok_and_metrics(db):
    parts, http = site(db)
    r = await http.get("http://smartyd/health")
    assert r.code == 200
    body = json.loads(await r.content())
    assert body["status"] == "ok" and body["db"] == "ok"
    r = await http.get("http://smartyd/metrics")
    assert r.code == 200
    assert r.headers.getRawHeaders("content-type")[0].startswith("text/plain; version=0.0.4")
    text = (await r.text()).splitlines()
    assert 'smartyd_http_requests_total{code="200",route="health"} 1.0' in text
    assert "smartyd_db_up 1.0" in text
    assert any(l.startswith('smartyd_db_pool{state="size"} 8.0') for l in text)


@pytest_twisted.ensureDeferred
async def test_health_says_starting_until_ready(db):
    parts, http = site(db)
    parts.ready = False
    r = await http.get("http://smartyd/health")
    assert r.code == 503 and json.loads(await r.content())["status"] == "starting"


@pytest_twisted.ensureDeferred
async def test_unknown_path_is_json_404(db):
    _, http = site(db)
    r = await http.get("http://smartyd/nope")
    assert r.code == 404 and json.loads(await r.content()) == {"error": "not found"}


@pytest_twisted.ensureDeferred
async def test_health_503_while_the_database_is_down_then_recovers(own_cluster, make_db):
    db = await make_db(size=2, dsn=own_cluster.dsn())
    _, http = site(db)
    assert (await http.get("http://smartyd/health")).code == 200
    own_cluster.stop(mode="fast")
    r = await http.get("http://smartyd/health")
    assert r.code == 503
    assert json.loads(await r.content()) | {"uptime": 0} == {
        "status": "unavailable", "db": "down", "uptime": 0}
    own_cluster.start()
    r = await http.get("http://smartyd/health")
    assert r.code == 200 and json.loads(await r.content())["db"] == "ok"


@pytest_twisted.ensureDeferred
async def test_health_sources_add_fields_and_a_failing_one_is_left_out(db):
    async def good():
        return {"outbox": {"megogo": "stuck"}, "status": "overridden?"}

    async def bad():
        raise RuntimeError("boom")

    health = Health(db, Metrics(), reactor, started=reactor.seconds(), sources=[bad, good])
    http = _stub_treq(health.resource())
    r = await http.get("http://smartyd/health")
    body = json.loads(await r.content())
    assert r.code == 200
    assert body["outbox"] == {"megogo": "stuck"} and body["status"] == "ok"
