"""
The operator's dashboard and alert rules (etc/grafana, etc/prometheus) name
only metrics the daemon exports, and the metrics added for them work.
"""

import json
import re
from pathlib import Path

import pytest_twisted
import yaml
from fakes import in_memory_client
from twisted.internet import reactor
from twisted.internet.task import Clock

from conftest import make_config
from smartyd import ledger
from smartyd.metrics import Durations, Metrics
from smartyd.streams.check import Checker, prometheus_counters
from smartyd.streams.sessions import SessionLeases
from smartyd.streams.tokens import TokenCodec
from testapp import build

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "etc" / "grafana" / "smartyd.json"
ALERTS = ROOT / "etc" / "prometheus" / "smartyd-alerts.yml"
NAME = re.compile(r"\bsmartyd_[a-z0-9_]+")
# Prometheus' suffixes: a counter X is exposed as X_total, a histogram as X_bucket/_sum/_count.
SUFFIXES = ("_total", "_created", "_bucket", "_sum", "_count")


def dashboard_expressions() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in board["templating"]["list"] if "definition" in v]
    return exprs


def alert_expressions() -> list[str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def exported(text: str) -> set[str]:
    """Every sample name /metrics can carry, from its # TYPE lines and its samples."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "counter":
                names |= {name + "_total", name + "_created"}
            elif kind == "histogram":
                names |= {name + s for s in ("_bucket", "_sum", "_count", "_created")}
        elif line and not line.startswith("#"):
            names.add(re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0))
    return names


@pytest_twisted.ensureDeferred
async def test_every_metric_the_dashboard_and_alerts_name_is_exported(db):
    cfg = make_config(
        assist={"enabled": True, "generation": "legacy", "shop_id": "111111",
                "login": "shoplogin", "password": "shoppass1", "secret": "push-secret",
                "return_url": "https://portal.example/paid"},
        payture={"enabled": True, "host": "https://sandbox3.payture.com",
                 "merchant_pay_key": "MerchantPay"},
        dreamkas={"enabled": True, "token": "t" * 32, "api_url": "https://kabinet.dreamkas.ru/api",
                  "device_id": 1, "tax_mode": "SIMPLE_WO", "webhook_secret": "s" * 24},
        megogo={"enabled": True, "xml_url": "http://megogo.test/all_mgg.xml", "partner_id": 7,
                "salt": "pepper-salt", "svod_service_id": 555, "tariff_id": 1,
                "catalog_tariff_id": 1, "billing_url": "http://megogo.test"},
        billing_api={"enabled": True, "clients": [{"client_id": "1", "api_key": "k" * 24}]},
        widgets={"enabled": True, "allowed_origins": ["https://isp.example"]},
    )
    app = build(cfg, reactor, db, Metrics())  # its services are not started: no partner called
    r = await in_memory_client(app.root).get("http://smartyd/metrics")
    assert r.code == 200
    text = await r.text()
    available = exported(text)
    named = {n for e in dashboard_expressions() + alert_expressions() for n in NAME.findall(e)}
    assert len(named) >= 25  # the files were read, not skipped
    assert sorted(named - available) == []
    # The alerts' own needs: each probe of /metrics refreshed the database gauge.
    assert "smartyd_db_up 1.0" in text.splitlines()
    # Series a panel shows from the first scrape, at 0 before anything happened.
    for reason in ("address", "credentials"):
        assert f'smartyd_osmp_refused_requests_total{{reason="{reason}"}} 0.0' in text.splitlines()


def test_the_alert_rules_cover_what_the_operator_must_hear():
    rules = {r["alert"]: r for g in yaml.safe_load(ALERTS.read_text())["groups"]
             for r in g["rules"]}
    assert set(rules) >= {"SmartydDown", "SmartydDatabaseUnavailable", "SmartydPollerFailing",
                          "SmartydOutboxStuck", "SmartydReceiptsStuck", "SmartydTokenRefusalsJump"}
    for rule in rules.values():
        assert rule["annotations"]["summary"] and rule["labels"]["severity"]
    titles = [p["title"] for p in json.loads(DASHBOARD.read_text())["panels"]]
    for word in ("Token checks", "p99", "Refusals", "OSMP", "Gateway", "Receipts", "Poller",
                 "outbox", "pool", "round trips", "sessions"):
        assert any(word in t for t in titles), word


def test_durations_bucket_like_prometheus_and_merge_only_what_fits():
    d = Durations(bounds=(0.001, 0.01))
    for s in (0.0005, 0.001, 0.002, 0.5):
        d.observe(s)
    assert d.counts == [2, 1, 1] and abs(d.sum - 0.5035) < 1e-12
    taken = d.take()
    assert taken[:3] == [2, 1, 1] and d.take() is None
    total = Durations(bounds=(0.001, 0.01))
    assert total.merge(taken) and total.merge(taken)
    assert total.counts == [4, 2, 2]
    for junk in (None, [1, 2], [1, 2, "3", 0.1], [1, -2, 3, 0.1], "x"):
        assert not total.merge(junk)
    assert total.counts == [4, 2, 2]


class Holder:
    snapshot = None


def test_a_checker_times_its_checks_into_the_token_check_histogram():
    metrics = Metrics()
    ticks = iter([10.0, 10.0004, 20.0, 20.03])
    checker = Checker(TokenCodec(["s3cret-s3cret-s3cret"]), Holder(), Clock(),
                      prometheus_counters(metrics, "http"), when_unavailable="deny",
                      durations=metrics.token_check_seconds.labels("http"),
                      timer=lambda: next(ticks), sample_every=1)
    assert checker.check({"token": "x"}, {}).reason == "not_ready"
    checker.check({"token": "y"}, {})
    value = metrics.registry.get_sample_value
    assert value("smartyd_token_check_seconds_bucket", {"listener": "http", "le": "0.0005"}) == 1
    assert value("smartyd_token_check_seconds_bucket", {"listener": "http", "le": "0.025"}) == 1
    assert value("smartyd_token_check_seconds_bucket", {"listener": "http", "le": "0.05"}) == 2
    assert value("smartyd_token_check_seconds_count", {"listener": "http"}) == 2
    # A worker's report adds to the daemon's "fast" histogram.
    metrics.token_check_seconds.labels("fast").merge([1] + [0] * 12 + [0.00001])
    assert value("smartyd_token_check_seconds_bucket", {"listener": "fast", "le": "+Inf"}) == 1


def test_the_checker_times_one_check_in_sample_every():
    metrics = Metrics()
    timed = []

    def timer():
        timed.append(1)
        return 1.0

    checker = Checker(TokenCodec(["s3cret-s3cret-s3cret"]), Holder(), Clock(),
                      prometheus_counters(metrics, "http"), when_unavailable="deny",
                      durations=metrics.token_check_seconds.labels("http"), timer=timer,
                      sample_every=4)
    for _ in range(9):
        assert checker.check({"token": "x"}, {}).reason == "not_ready"
    value = metrics.registry.get_sample_value
    # the 1st, 5th and 9th were timed (two timer calls each)
    assert value("smartyd_token_check_seconds_count", {"listener": "http"}) == 3
    assert len(timed) == 6


@pytest_twisted.ensureDeferred
async def test_the_sessions_gauge_counts_the_live_leases_of_every_process(db):
    metrics = Metrics()
    here, there = SessionLeases(lease=30), SessionLeases(lease=30)
    metrics.watch_sessions(here)
    accounts = [(await db.run(ledger.create_account, f"s{i}")).id for i in range(2)]
    assert metrics.registry.get_sample_value("smartyd_stream_sessions") == 0
    assert here.admit(accounts[0], 2, "t:a", 100.0) and here.admit(accounts[0], 2, "t:b", 100.0)
    assert there.admit(accounts[1], 1, "t:c", 100.0)
    await there.exchange(db, 100.5)
    await here.exchange(db, 101.0)
    assert metrics.registry.get_sample_value("smartyd_stream_sessions") == 3
    await here.exchange(db, 200.0)  # every lease ran out
    assert metrics.registry.get_sample_value("smartyd_stream_sessions") == 0
