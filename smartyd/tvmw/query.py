"""
Reading a method's query parameters (pure: no I/O).

Every reader raises L{TvmwError} with the method's own parameter-error code
(``code``) and ``error_messages`` = ``{name: [why]}`` (the spec's shape for
parameter errors), before anything is read or written.  A parameter that is
absent or empty is "not given".
"""

from __future__ import annotations

import re
from typing import Mapping

from smartyd.tvmw.errors import TvmwError

_INT = re.compile(r"^\d{1,18}$")
MAX_LIST = 100


def bad(code: int, name: str, why: str) -> TvmwError:
    return TvmwError(code, f"{name}: {why}", error_messages={name: [why]})


def given(params: Mapping[str, str], name: str) -> str | None:
    """The value, stripped; None when absent or empty."""
    v = params.get(name)
    if v is None or not v.strip():
        return None
    return v.strip()


def ident(params: Mapping[str, str], name: str, code: int, required: bool = False
          ) -> int | None:
    """A non-negative integer id (None when not given, unless ``required``)."""
    v = given(params, name)
    if v is None:
        if required:
            raise bad(code, name, "required")
        return None
    if not _INT.match(v):
        raise bad(code, name, "expected a number")
    return int(v)


def ident_list(params: Mapping[str, str], name: str, code: int) -> tuple[int, ...]:
    """Ids separated by commas (the spec's "several values"), in order, without repeats."""
    v = given(params, name)
    if v is None:
        return ()
    parts = [p.strip() for p in v.split(",")]
    if len(parts) > MAX_LIST or not all(_INT.match(p) for p in parts):
        raise bad(code, name, f"expected up to {MAX_LIST} numbers separated by commas")
    return tuple(dict.fromkeys(int(p) for p in parts))


def flag(params: Mapping[str, str], name: str, code: int) -> bool | None:
    """``0`` / ``1`` (None when not given)."""
    v = given(params, name)
    if v is None:
        return None
    if v not in ("0", "1"):
        raise bad(code, name, "expected 0 or 1")
    return v == "1"


def text(params: Mapping[str, str], name: str, code: int, max_len: int) -> str | None:
    v = given(params, name)
    if v is not None and (len(v) > max_len or not v.isprintable()):
        raise bad(code, name, f"at most {max_len} printable characters")
    return v


def paging(params: Mapping[str, str], code: int, default_limit: int = 20,
           max_limit: int = 100) -> tuple[int, int]:
    """
    ``(limit, offset)`` from the spec's ``limit`` (0-100, default 20; a larger
    one is cut to 100, the spec's maximum) and ``page`` (from 1, default 1).
    """
    limit = ident(params, "limit", code)
    limit = default_limit if limit is None else min(limit, max_limit)
    page = ident(params, "page", code)
    if page is not None and page < 1:
        raise bad(code, "page", "pages are numbered from 1")
    page = page or 1
    if page > 10 ** 6:
        raise bad(code, "page", "at most 1000000")
    return limit, (page - 1) * limit
