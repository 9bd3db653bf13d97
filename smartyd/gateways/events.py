"""
Gateway events worth an alert, as a metric: ``smartyd_gateway_events{provider, event}``.

Events: ``credited``, ``amount_mismatch``, ``unknown_order``,
``reversed_after_credit``, ``bad_row``, ``forged``, ``not_charged``,
``gateway_error``, ``bad_check_value``, ``state_refused``.  Each is also a log event carrying
``provider`` and ``reason`` (= the event name) keys.

The counter is L{smartyd.metrics.Metrics.gateway_events}; ``metrics`` may be
None (admin commands that count nothing).
"""

from __future__ import annotations


def count(metrics, provider: str, event: str, n: int = 1) -> None:
    if metrics is not None and n:
        metrics.gateway_events.labels(provider, event).inc(n)


def credited(metrics, provider: str, amount) -> None:
    """A payment credited (after its transaction committed)."""
    if metrics is None:
        return
    metrics.payments.labels(provider).inc()
    metrics.payment_amount.labels(provider).inc(float(amount))
    count(metrics, provider, "credited")
