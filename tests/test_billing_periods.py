"""
Billing periods and daily amounts (smartyd/billing/periods.py): pure
arithmetic, held to precise vectors and Hypothesis properties.  No database:
bench/mutants.sh judges the module's mutants with these (and the two pure
tests in tests/test_billing.py).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal as D
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smartyd.billing.periods import (CENT, DAY, MICROSECOND, Period, add_months, daily_amount,
                                     unused_share)

UTC = timezone.utc
MSK = timezone(timedelta(hours=3))


def test_constants():
    assert (CENT, DAY, MICROSECOND) == (D("0.01"), timedelta(days=1), timedelta(microseconds=1))


@pytest.mark.parametrize("moment, months, expected", [
    (datetime(2024, 1, 31, 12, tzinfo=UTC), 1, datetime(2024, 2, 29, 12, tzinfo=UTC)),
    (datetime(2023, 1, 31, 12, tzinfo=UTC), 1, datetime(2023, 2, 28, 12, tzinfo=UTC)),
    (datetime(2024, 1, 31, 12, tzinfo=UTC), 3, datetime(2024, 4, 30, 12, tzinfo=UTC)),
    (datetime(2024, 11, 15, tzinfo=UTC), 1, datetime(2024, 12, 15, tzinfo=UTC)),
    (datetime(2024, 12, 15, tzinfo=UTC), 1, datetime(2025, 1, 15, tzinfo=UTC)),
    (datetime(2024, 12, 31, tzinfo=UTC), 2, datetime(2025, 2, 28, tzinfo=UTC)),
    (datetime(2024, 1, 10, tzinfo=UTC), 12, datetime(2025, 1, 10, tzinfo=UTC)),
    (datetime(2024, 1, 10, tzinfo=UTC), 25, datetime(2026, 2, 10, tzinfo=UTC)),
    (datetime(2024, 3, 31, tzinfo=UTC), -1, datetime(2024, 2, 29, tzinfo=UTC)),
    (datetime(2024, 1, 31, tzinfo=UTC), -2, datetime(2023, 11, 30, tzinfo=UTC)),
    (datetime(2024, 5, 1, 23, 59, 59, 7, tzinfo=MSK), 0,
     datetime(2024, 5, 1, 23, 59, 59, 7, tzinfo=MSK)),
])
def test_add_months(moment, months, expected):
    got = add_months(moment, months)
    assert got == expected and got.tzinfo is expected.tzinfo


@settings(max_examples=200, deadline=None)
@given(st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2900, 1, 1),
                    timezones=st.just(UTC)), st.integers(-1200, 1200))
def test_add_months_lands_in_the_right_month_on_the_day_or_its_end(moment, months):
    got = add_months(moment, months)
    total = moment.year * 12 + moment.month - 1 + months
    assert got.year * 12 + got.month - 1 == total
    assert got.day == moment.day or (got.day < moment.day and (got + DAY).day == 1)
    assert got.time() == moment.time() and got.tzinfo is moment.tzinfo


def test_day_periods():
    anchor = datetime(2024, 1, 31, 12, tzinfo=UTC)
    week = Period(7)
    assert week.months is None
    assert [week.start(anchor, k) for k in (0, 1, 2)] == [
        anchor, anchor + timedelta(days=7), anchor + timedelta(days=14)]
    assert week.length_days(anchor, 5) == 7
    assert Period(30, months=0).start(anchor, 2) == anchor + timedelta(days=60)
    assert Period(30, months=0).length_days(anchor, 2) == 30


def test_month_periods_count_from_the_anchor():
    anchor = datetime(2024, 1, 31, 12, tzinfo=UTC)
    month = Period(30, months=1)
    assert [month.start(anchor, k).date().isoformat() for k in range(6)] == [
        "2024-01-31", "2024-02-29", "2024-03-31", "2024-04-30", "2024-05-31", "2024-06-30"]
    assert [month.length_days(anchor, k) for k in range(5)] == [29, 31, 30, 31, 30]
    quarter = Period(90, months=3)
    assert quarter.start(anchor, 1) == datetime(2024, 4, 30, 12, tzinfo=UTC)
    assert quarter.start(anchor, 2) == datetime(2024, 7, 31, 12, tzinfo=UTC)
    assert quarter.length_days(anchor, 0) == 90 and quarter.length_days(anchor, 1) == 92


def test_a_period_is_at_least_one_day():
    class Tiny(Period):  # periods of an hour: rounded to no day, counted as one
        def start(self, anchor, k):
            return anchor + k * timedelta(hours=1)
    assert Tiny(1, months=1).length_days(datetime(2024, 1, 1, tzinfo=UTC), 0) == 1


@pytest.mark.parametrize("price, days, expected", [
    (D("300.00"), 31, [D("9.67")] * 30 + [D("9.90")]),
    (D("0.15"), 30, [D("0.00")] * 29 + [D("0.15")]),
    (D("100.00"), 3, [D("33.33"), D("33.33"), D("33.34")]),
    (D("10.00"), 1, [D("10.00")]),
    (D("7.00"), 7, [D("1.00")] * 7),
    (D("0.00"), 5, [D("0.00")] * 5),
])
def test_daily_amounts(price, days, expected):
    assert [daily_amount(price, days, d) for d in range(days)] == expected


def test_daily_amounts_round_down_not_half_up():
    assert daily_amount(D("0.29"), 3, 0) == D("0.09")    # 0.0966...
    assert daily_amount(D("0.29"), 3, 2) == D("0.11")
    assert daily_amount(D("2.00"), 3, 0) == D("0.66")    # 0.666...
    assert str(daily_amount(D("2.00"), 3, 0)) == "0.66"


@settings(max_examples=200, deadline=None)
@given(st.decimals(min_value=0, max_value=10**7, places=2), st.integers(1, 400))
def test_a_period_of_daily_amounts_sums_to_the_price(price, days):
    amounts = [daily_amount(price, days, d) for d in range(days)]
    assert sum(amounts) == price
    assert len(set(amounts[:-1])) <= 1 and amounts[-1] >= amounts[0] >= 0
    assert amounts[-1] - amounts[0] < days * CENT
    assert all(a == a.quantize(CENT) for a in amounts)


T = datetime(2024, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize("amount, at, expected", [
    (D("300.00"), T, D("300.00")),                        # not begun: all of it
    (D("300.00"), T - timedelta(days=3), D("300.00")),    # before it began: all of it
    (D("300.00"), T + timedelta(days=10), D("200.00")),
    (D("300.00"), T + timedelta(days=29, hours=12), D("5.00")),
    (D("100.00"), T + timedelta(days=10), D("66.66")),    # 66.666..: rounded down
    (D("300.00"), T + timedelta(days=30), D("0.00")),     # at the end: nothing
    (D("300.00"), T + timedelta(days=31), D("0.00")),
    (D("0.01"), T + timedelta(microseconds=1), D("0.00")),
])
def test_unused_share(amount, at, expected):
    got = unused_share(amount, T, T + timedelta(days=30), at)
    assert got == expected and str(got) == str(expected)


def test_unused_share_of_an_empty_or_reversed_span_is_nothing():
    assert str(unused_share(D("10.00"), T, T, T - DAY)) == "0.00"
    assert unused_share(D("10.00"), T + DAY, T, T - DAY) == D("0.00")


def test_unused_share_counts_microseconds_exactly_over_centuries():
    # 2**54 microseconds (571 years): a float cannot hold 2**54 - 1 or
    # 2**54 + 1, an integer count can -- the share stays just below 1.00.
    start = datetime(1000, 1, 1, tzinfo=UTC)
    at = start + MICROSECOND
    for length in (2**54, 2**54 + 1):
        end = start + length * MICROSECOND
        assert str(unused_share(D("1.00"), start, end, at)) == "0.99"
        assert str(unused_share(D("1.00"), start, end, start)) == "1.00"


def test_unused_share_counts_microseconds():
    end = T + timedelta(seconds=1)
    assert unused_share(D("1000000.00"), T, end, T + timedelta(microseconds=1)) \
        == D("999999.00")


@settings(max_examples=200, deadline=None)
@given(st.decimals(min_value=0, max_value=10**6, places=2), st.integers(1, 10**12),
       st.integers(-10**12, 2 * 10**12))
def test_unused_share_is_between_nothing_and_all(amount, length_us, offset_us):
    end = T + timedelta(microseconds=length_us)
    at = T + timedelta(microseconds=offset_us)
    got = unused_share(amount, T, end, at)
    assert D("0.00") <= got <= amount and got == got.quantize(CENT)
    exact = Fraction(amount) * max(0, min(length_us, length_us - offset_us)) / length_us
    # rounded down to kopecks (Decimal's 28 digits may land a hair above the exact share)
    assert exact - Fraction(1, 100) < got <= exact + Fraction(1, 10**20)
