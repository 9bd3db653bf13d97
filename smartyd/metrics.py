"""
Prometheus metrics, one registry per daemon (tests build their own).

Metric names are interface for dashboards: add, never rename.
"""

from __future__ import annotations

from bisect import bisect_left

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


# Token checks take microseconds: the buckets start there.
TOKEN_CHECK_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                       0.05, 0.1, 0.25)


class Durations:
    """
    Observations counted into fixed buckets (Prometheus' ``le``: a value
    equal to a bound is in that bound's bucket), the last one past every
    bound.  Cheap enough for the token check's hot path: a bisect and two
    additions, no lock (one reactor thread).  A worker process L{take}s what
    it counted and sends it; the daemon L{merge}s it.
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple = TOKEN_CHECK_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds

    def take(self) -> list | None:
        """``[count per bucket..., sum]`` since the last take (None: nothing), and reset."""
        if not any(self.counts):
            return None
        out = [*self.counts, self.sum]
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        return out

    def merge(self, taken) -> bool:
        """Add a L{take} (maybe from another process); anything malformed is ignored."""
        if not (isinstance(taken, list) and len(taken) == len(self.counts) + 1
                and all(isinstance(n, int) and n >= 0 for n in taken[:-1])
                and isinstance(taken[-1], (int, float)) and taken[-1] >= 0):
            return False
        for i, n in enumerate(taken[:-1]):
            self.counts[i] += n
        self.sum += taken[-1]
        return True


class LatencyHistogram:
    """A histogram by one label over L{Durations} (fed on the hot path, read at scrape time)."""

    def __init__(self, name: str, documentation: str, label: str,
                 bounds: tuple = TOKEN_CHECK_BUCKETS) -> None:
        self.name, self.documentation, self.label, self.bounds = name, documentation, label, bounds
        self._by: dict[str, Durations] = {}

    def labels(self, value: str) -> Durations:
        """The cumulative L{Durations} of one label value (observe into it directly)."""
        found = self._by.get(value)
        if found is None:
            found = self._by[value] = Durations(self.bounds)
        return found

    def collect(self):
        family = HistogramMetricFamily(self.name, self.documentation, labels=[self.label])
        for value, d in sorted(self._by.items()):
            running, buckets = 0, []
            for bound, n in zip((*self.bounds, float("inf")), d.counts):
                running += n
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
            family.add_metric([value], buckets, d.sum)
        return [family]

    def describe(self):
        return []


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
            "TV Middleware logins refused: bad credentials, bad client (client_id/api_key),"
            " or rate-limited (too many waiting from one address) before checking",
            ["reason"], registry=r,
        )
        self.tvmw_login_delayed = Counter(
            "smartyd_tvmw_login_delayed",
            "TV Middleware logins and password changes held back by the rate limit's delay",
            registry=r,
        )
        self.osmp_refused = Counter(
            "smartyd_osmp_refused_requests", "OSMP requests refused before the protocol (403/401)",
            ["reason"], registry=r,
        )
        self.token_checks = Counter(
            "smartyd_token_checks", "Stream token checks by outcome and reason",
            ["listener", "outcome", "reason"], registry=r,
        )
        self.token_check_seconds = LatencyHistogram(
            "smartyd_token_check_seconds",
            "Time to decide a stream token check, in the listener's process (one check in 16"
            " is timed: a sample)", "listener")
        r.register(self.token_check_seconds)
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
        self.receipts_stuck = Gauge(
            "smartyd_receipts_stuck", "Fiscal receipt jobs in one open state for longer than"
            " [dreamkas] stuck_after (the shared queue's count: the same on every instance)",
            ["state"], registry=r,
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
                trips = CounterMetricFamily(
                    "smartyd_db_round_trips", "Statements sent by the pool's transactions"
                    " (BEGIN and COMMIT included)")
                trips.add_metric([], metrics._db.round_trips)
                return [g, trips]

            def describe(self):
                return []

        self.registry.register(_PoolCollector())

    def watch_sessions(self, sessions) -> None:
        """Expose the live session leases (L{SessionLeases.live}) as a gauge at scrape time."""

        class _SessionCollector:
            def collect(self):
                g = GaugeMetricFamily(
                    "smartyd_stream_sessions", "Live viewing sessions of accounts with a session"
                    " limit, all processes, as of the last lease exchange")
                g.add_metric([], sessions.live())
                return [g]

            def describe(self):
                return []

        self.registry.register(_SessionCollector())

    def render(self) -> bytes:
        return generate_latest(self.registry)
