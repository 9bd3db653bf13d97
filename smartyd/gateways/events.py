"""
Gateway events worth an alert, as a metric: ``smartyd_gateway_events{provider, event}``.

Events: ``credited``, ``amount_mismatch``, ``unknown_order``,
``reversed_after_credit``, ``bad_row``, ``forged``, ``not_charged``,
``gateway_error``, ``bad_check_value``, ``state_refused``.  Each is also a log event carrying
``provider`` and ``reason`` (= the event name) keys.

The counter belongs in L{smartyd.metrics.Metrics} (as ``gateway_events``);
until it is declared there it is registered here, once per metrics registry.
"""

from __future__ import annotations

import weakref

from prometheus_client import Counter

_COUNTERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def gateway_events(metrics) -> Counter | None:
    if metrics is None:
        return None
    declared = getattr(metrics, "gateway_events", None)
    if declared is not None:
        return declared
    counter = _COUNTERS.get(metrics)
    if counter is None:
        counter = Counter(
            "smartyd_gateway_events", "Payment gateway events by provider and kind",
            ["provider", "event"], registry=metrics.registry,
        )
        _COUNTERS[metrics] = counter
    return counter


def count(metrics, provider: str, event: str, n: int = 1) -> None:
    counter = gateway_events(metrics)
    if counter is not None and n:
        counter.labels(provider, event).inc(n)


def credited(metrics, provider: str, amount) -> None:
    """A payment credited (after its transaction committed)."""
    if metrics is None:
        return
    metrics.payments.labels(provider).inc()
    metrics.payment_amount.labels(provider).inc(float(amount))
    count(metrics, provider, "credited")
