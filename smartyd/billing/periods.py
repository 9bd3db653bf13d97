"""
Billing periods and daily amounts: pure arithmetic, no I/O.

Period ``k`` of a subscription anchored at ``anchor`` is
``[start(k), start(k + 1))`` with ``start(k) = anchor + k * period``.  A
period in calendar months is counted from the anchor each time and clamped
to the month's end (anchored on 31 Jan: 29 Feb, 31 Mar, 30 Apr, ...), so a
short month never shifts the later ones.  Wall-clock arithmetic happens in
the moments' own UTC offset (the database session's time zone).
"""

from __future__ import annotations

import calendar
from datetime import datetime, timedelta
from decimal import ROUND_DOWN, Decimal

from attrs import frozen

CENT = Decimal("0.01")
DAY = timedelta(days=1)
MICROSECOND = timedelta(microseconds=1)


def add_months(moment: datetime, months: int) -> datetime:
    """``moment`` plus ``months`` calendar months, clamped to the month's end."""
    y, m = divmod(moment.month - 1 + months, 12)
    year, month = moment.year + y, m + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


@frozen
class Period:
    """A tariff's period: ``days`` days, or ``months`` calendar months when set."""

    days: int
    months: int | None = None

    def start(self, anchor: datetime, k: int) -> datetime:
        if self.months:
            return add_months(anchor, k * self.months)
        return anchor + k * self.days * DAY

    def length_days(self, anchor: datetime, k: int) -> int:
        """Days in period ``k`` (a calendar month's days for month periods)."""
        if not self.months:
            return self.days
        span = self.start(anchor, k + 1) - self.start(anchor, k)
        return max(1, round(span / DAY))


def daily_amount(price: Decimal, days: int, day: int) -> Decimal:
    """
    The charge for day ``day`` (0-based) of a ``days``-day period: the price
    divided by the days, rounded down to kopecks, the last day taking the
    remainder, so that the whole period sums exactly to ``price``.
    """
    per_day = (price / days).quantize(CENT, rounding=ROUND_DOWN)
    if day < days - 1:
        return per_day
    return price - per_day * (days - 1)


def unused_share(amount: Decimal, start: datetime, end: datetime, at: datetime) -> Decimal:
    """The part of ``amount`` paid for ``[start, end)`` not used by ``at`` (rounded down)."""
    if at >= end or end <= start:
        return Decimal("0.00")
    at = max(at, start)
    unused = Decimal((end - at) // MICROSECOND) / Decimal((end - start) // MICROSECOND)
    return (amount * unused).quantize(CENT, rounding=ROUND_DOWN)
