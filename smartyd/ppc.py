"""
The NoDeny personal payment code: the account id followed by a check digit,
the last digit of the sum of the id's digits (5907 -> 5+9+0+7 = 21 -> ``59071``).
"""

from __future__ import annotations


class BadPaymentCode(ValueError):
    """Not a personal payment code: not digits, too short, or a wrong check digit."""


def check_digit(account_id: int) -> int:
    if account_id < 0:
        raise ValueError("account ids are positive")
    return sum(int(c) for c in str(account_id)) % 10


def encode(account_id: int) -> str:
    """The payment code of ``account_id``."""
    if account_id <= 0:
        raise ValueError("account ids are positive")
    return f"{account_id}{check_digit(account_id)}"


def decode(code: str) -> int:
    """The account id in ``code``; L{BadPaymentCode} when it is not a valid code."""
    if not isinstance(code, str) or not code.isascii() or not code.isdigit():
        raise BadPaymentCode("a payment code is ASCII digits only")
    if len(code) < 2 or len(code) > 19:
        raise BadPaymentCode("a payment code has 2 to 19 digits")
    if code[0] == "0":
        raise BadPaymentCode("a payment code does not start with 0")
    account_id = int(code[:-1])
    if check_digit(account_id) != int(code[-1]):
        raise BadPaymentCode("wrong check digit")
    return account_id
