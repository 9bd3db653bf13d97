"""
Reading a method's query parameters: the spec's parameter error, never a 500.

A bad or missing parameter raises L{TvmwError} with the method's code for it
(``code``; 1 unless the spec names another) and ``error_messages``:
``{"<name>": "<why>"}``, as the spec's methods with parameter errors answer.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Mapping

from smartyd.tvmw.errors import TvmwError

#: Values longer than this are refused (the web layer refuses them first).
MAX_VALUE = 1024
#: The largest integer a parameter may carry (PostgreSQL bigint).
MAX_INT = 2**63 - 1
#: The latest moment (Unix time) a time parameter may name, 3000-01-01 UTC, and
#: the days a day parameter may name: date arithmetic on them (a day more, a
#: period back) stays inside Python's calendar, so none of it can raise.
MAX_EPOCH = 32503680000
FIRST_DAY, LAST_DAY = date(1970, 1, 1), date(2999, 12, 31)
_INTEGER = re.compile(r"-?[0-9]{1,19}")


def bad(name: str, why: str, code: int = 1) -> TvmwError:
    return TvmwError(code, f"bad parameter {name}: {why}", error_messages={name: why})


def integer(params: Mapping[str, str], name: str, *, default: int | None = None,
            lo: int = 0, hi: int = MAX_INT, code: int = 1) -> int | None:
    """An integer parameter in [lo, hi]; ``default`` when absent or empty."""
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    if _INTEGER.fullmatch(raw) is None:
        raise bad(name, "must be an integer", code)
    value = int(raw)
    if not lo <= value <= hi:
        raise bad(name, f"must be between {lo} and {hi}", code)
    return value


def in_calendar(day: date, name: str, code: int = 1) -> date:
    """``day`` when within L{FIRST_DAY}..L{LAST_DAY}; else the parameter error."""
    if not FIRST_DAY <= day <= LAST_DAY:
        raise bad(name, f"must be a day from {FIRST_DAY} to {LAST_DAY}", code)
    return day


def required_integer(params: Mapping[str, str], name: str, *, lo: int = 0, hi: int = MAX_INT,
                     code: int = 1) -> int:
    value = integer(params, name, lo=lo, hi=hi, code=code)
    if value is None:
        raise bad(name, "is required", code)
    return value


def flag(params: Mapping[str, str], name: str, default: int = 0, code: int = 1) -> int:
    """A 0/1 flag."""
    return integer(params, name, default=default, lo=0, hi=1, code=code)


def text(params: Mapping[str, str], name: str, *, default: str = "", max_len: int = 256,
         code: int = 1) -> str:
    raw = params.get(name)
    if raw is None:
        return default
    if len(raw) > max_len or not raw.isprintable():
        raise bad(name, f"must be at most {max_len} printable characters", code)
    return raw


def integer_list(params: Mapping[str, str], name: str, *, most: int = 100,
                 code: int = 1) -> tuple[int, ...]:
    """
    Non-negative integers separated by commas (the spec's "several values"),
    in order, repeats dropped; () when absent or empty.
    """
    raw = params.get(name)
    if raw is None or raw == "":
        return ()
    parts = [p.strip() for p in raw.split(",")]
    if len(parts) > most or not all(p.isascii() and p.isdigit() and len(p) <= 18 for p in parts):
        raise bad(name, f"must be up to {most} integers separated by commas", code)
    return tuple(dict.fromkeys(int(p) for p in parts))


def paging(params: Mapping[str, str], *, default_limit: int = 20, max_limit: int = 100,
           code: int = 1) -> tuple[int, int]:
    """
    ``(limit, offset)`` from the spec's ``limit`` (default 20; above 100, the
    spec's maximum, it is cut to 100) and ``page`` (from 1, default 1).
    """
    limit = min(integer(params, "limit", default=default_limit, code=code), max_limit)
    page = integer(params, "page", default=1, lo=1, hi=10**6, code=code)
    return limit, (page - 1) * limit
