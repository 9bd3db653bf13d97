"""
Prometheus metrics, one registry per daemon (tests build their own).

Metric names are interface for dashboards: add, never rename.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.http_requests = Counter(
            "smartyd_http_requests", "HTTP requests answered", ["route", "code"], registry=r
        )
        self.payments = Counter(
            "smartyd_payments", "Payments credited", ["provider"], registry=r
        )
        self.payment_amount = Counter(
            "smartyd_payment_amount", "Sum of credited payments", ["provider"], registry=r
        )
        self.osmp_answers = Counter(
            "smartyd_osmp_answers", "OSMP answers by command and result code",
            ["command", "result"], registry=r,
        )
        self.billing_api_answers = Counter(
            "smartyd_billing_api_answers", "Billing API answers by method and error code",
            ["method", "error"], registry=r,
        )
        self.tvmw_answers = Counter(
            "smartyd_tvmw_answers", "TV Middleware API answers by method and error code",
            ["method", "error"], registry=r,
        )
        self.tvmw_login_failures = Counter(
            "smartyd_tvmw_login_failures",
            "TV Middleware logins refused: bad credentials, or rate-limited before checking",
            ["reason"], registry=r,
        )
        self.osmp_refused = Counter(
            "smartyd_osmp_refused_requests", "OSMP requests refused before the protocol (403/401)",
            ["reason"], registry=r,
        )
        self.token_checks = Counter(
            "smartyd_token_checks", "Stream token checks by outcome and reason",
            ["listener", "outcome", "reason"], registry=r,
        )
        self.tokens_minted = Counter(
            "smartyd_tokens_minted", "Stream URLs minted", registry=r
        )
        self.entitlement_reloads = Counter(
            "smartyd_entitlement_reloads", "Entitlement snapshot reloads", registry=r
        )
        self.poller_runs = Counter(
            "smartyd_poller_runs", "Poller runs by job and outcome", ["job", "outcome"], registry=r
        )
        self.poller_duration = Histogram(
            "smartyd_poller_duration_seconds", "Poller run time", ["job"], registry=r
        )
        self.partner_requests = Counter(
            "smartyd_partner_requests", "Requests to partner APIs by partner and outcome",
            ["partner", "outcome"], registry=r,
        )
        self.gateway_events = Counter(
            "smartyd_gateway_events", "Payment gateway events by provider and kind",
            ["provider", "event"], registry=r,
        )
        self.payture_autopay = Counter(
            "smartyd_payture_autopay", "Payture autopayment attempt outcomes", ["outcome"],
            registry=r,
        )
        self.receipts = Counter(
            "smartyd_receipts", "Fiscal receipt jobs by final state", ["state"], registry=r
        )
        self.billing_charges = Counter(
            "smartyd_billing_charges", "Tariff charges taken by the charging job", registry=r
        )
        self.billing_amount = Counter(
            "smartyd_billing_charged_amount", "Money charged by the charging job", registry=r
        )
        self.billing_suspended = Counter(
            "smartyd_billing_suspended", "Subscriptions suspended for debt by the charging job",
            registry=r,
        )
        self.billing_reactivated = Counter(
            "smartyd_billing_reactivated", "Suspended subscriptions resumed by the charging job",
            registry=r,
        )
        self.billing_debtors = Gauge(
            "smartyd_billing_suspended_customers",
            "Customers with a subscription suspended for debt (after the last run)", registry=r,
        )
        self.billing_run_seconds = Gauge(
            "smartyd_billing_run_seconds", "Duration of the last charging run", registry=r
        )
        self.vod_sync_seconds = Gauge(
            "smartyd_vod_sync_seconds", "Duration of the last catalog sync", ["provider"],
            registry=r,
        )
        self.vod_sync_titles = Gauge(
            "smartyd_vod_sync_titles", "Titles in the feed / added / updated / hidden / unchanged"
            " (skipped unconverted) by the"
            " last catalog sync", ["provider", "kind"], registry=r,
        )
        self.partner_outbox = Gauge(
            "smartyd_partner_outbox", "Open partner calls by partner and state",
            ["provider", "state"], registry=r,
        )
        self.partner_calls = Counter(
            "smartyd_partner_calls", "Partner calls finished by partner and outcome",
            ["provider", "outcome"], registry=r,
        )
        self.db_up = Gauge("smartyd_db_up", "1 when the last database probe succeeded", registry=r)
        self._db = None

    def watch_db(self, db) -> None:
        """Expose the pool's size/idle/waiting as gauges at scrape time."""
        self._db = db
        metrics = self

        class _PoolCollector:
            def collect(self):
                if metrics._db is None:
                    return []
                stats = metrics._db.stats()
                g = GaugeMetricFamily("smartyd_db_pool", "Database pool", labels=["state"])
                g.add_metric(["size"], stats["size"])
                g.add_metric(["idle"], stats["idle"])
                g.add_metric(["waiting"], stats["waiting"])
                return [g]

            def describe(self):
                return []

        self.registry.register(_PoolCollector())

    def render(self) -> bytes:
        return generate_latest(self.registry)
