"""
Request parameters as the billings send them (pure: no I/O).

What the public clients put on the wire (../shared/BILLING_API.md §2, §5):

- ``-1`` or an empty value for "not given" (HYDRA sends both ``customer_id``
  and ``ext_id``, the unused one as ``-1``);
- booleans as ``0``/``1`` (documented), ``True``/``False`` (Python 2
  ``urlencode``), ``true``/``false``;
- lists as repeated keys (documented) or one value, the literal
  ``[1, 2, 3]`` (the vendor's Python client, the PHP client).

A value that does not parse is a L{FieldError}; the service collects them
into ``error_fields`` under the method's validation code.
"""

from __future__ import annotations

import json
import re
from datetime import date
from decimal import Decimal

from attrs import define, field

from smartyd import ledger

TRUE = frozenset({"1", "true", "True", "TRUE", "on", "yes"})
FALSE = frozenset({"0", "false", "False", "FALSE", "off", "no"})
NOT_GIVEN = frozenset({"", "-1"})
_LIST = re.compile(r"^\[(.*)\]$", re.S)
# ASCII digits only: str.isdigit() and a plain \d also take "²" or "١", which
# int() then refuses (or reads) -- not what any client sends.
_INT = re.compile(r"-?[0-9]{1,18}")
_ID = re.compile(r"[0-9]{1,18}")
_AMOUNT = re.compile(r"-?[0-9]{1,12}(\.[0-9]{1,2})?")


class FieldError(Exception):
    """A parameter's value is not acceptable: ``field`` and why."""

    def __init__(self, name: str, message: str):
        super().__init__(f"{name}: {message}")
        self.field = name
        self.message = message


@define
class Params:
    """
    The received parameters: ``pairs`` in the order received (repeated keys
    repeated), as the signature covers them.
    """

    pairs: list[tuple[str, str]]
    _map: dict[str, list[str]] = field(init=False)

    def __attrs_post_init__(self) -> None:
        self._map = {}
        for k, v in self.pairs:
            self._map.setdefault(k, []).append(v)

    def __contains__(self, name: str) -> bool:
        return name in self._map

    def raw(self, name: str) -> str | None:
        """The value as sent (the last, when repeated), None when absent."""
        values = self._map.get(name)
        return values[-1] if values else None

    def text(self, name: str, max_len: int | None = None) -> str | None:
        """The value as text (None when absent); ``max_len`` characters at most."""
        v = self.raw(name)
        if v is not None and max_len is not None and len(v) > max_len:
            raise FieldError(name, f"at most {max_len} characters")
        return v

    def ref(self, name: str) -> str | None:
        """An identifier; ``-1`` and empty mean "not given" (HYDRA)."""
        v = self.raw(name)
        return None if v is None or v.strip() in NOT_GIVEN else v.strip()

    def ident(self, name: str) -> int | None:
        """A numeric identifier, None when not given (``-1``, empty)."""
        v = self.ref(name)
        if v is None:
            return None
        if not _ID.fullmatch(v):
            raise FieldError(name, "not an id")
        return int(v)

    def boolean(self, name: str, default: bool | None = None) -> bool | None:
        v = self.raw(name)
        if v is None or v == "":
            return default
        return parse_bool(name, v)

    def integer(self, name: str, default: int | None = None) -> int | None:
        v = self.raw(name)
        if v is None or v.strip() == "":
            return default
        v = v.strip()
        if not _INT.fullmatch(v):
            raise FieldError(name, "not an integer")
        return int(v)

    def ids(self, name: str) -> list[int]:
        """A Number[]: repeated keys, or one ``[1, 2, 3]`` literal (or ``1,2,3``)."""
        out: list[int] = []
        for v in self._map.get(name, []) + self._map.get(name + "[]", []):
            out.extend(parse_ids(name, v))
        return out

    def day(self, name: str) -> str | None:
        """A ``yyyy-mm-dd`` date, kept as that text."""
        v = self.raw(name)
        if v is None or v.strip() == "":
            return None
        try:
            return date.fromisoformat(v.strip()[:10]).isoformat()
        except ValueError:
            raise FieldError(name, "not a date (yyyy-mm-dd)")

    def amount(self, name: str, default: str = "0") -> Decimal:
        """Money with ``.`` and at most two places (never rounded: a third place is refused)."""
        v = self.raw(name)
        v = default if v is None or v.strip() == "" else v.strip()
        if not _AMOUNT.fullmatch(v):
            raise FieldError(name, "not an amount (digits, '.', at most 2 decimals)")
        try:
            return ledger.money(v)
        except ledger.LedgerError as e:
            raise FieldError(name, str(e))

    def json_object(self, name: str) -> dict | None:
        v = self.raw(name)
        if v is None or v.strip() == "":
            return None
        try:
            parsed = json.loads(v)
        except ValueError:
            raise FieldError(name, "not JSON")
        if not isinstance(parsed, dict):
            raise FieldError(name, "not a JSON object")
        return parsed


def parse_bool(name: str, v: str) -> bool:
    v = v.strip()
    if v in TRUE:
        return True
    if v in FALSE:
        return False
    raise FieldError(name, "not a boolean (0/1, true/false)")


def parse_ids(name: str, v: str) -> list[int]:
    v = v.strip()
    m = _LIST.match(v)
    if m:
        v = m.group(1)
    out = []
    for part in v.split(","):
        part = part.strip().strip("'\"")
        if part == "":
            continue
        if not _ID.fullmatch(part):
            raise FieldError(name, "not a list of ids")
        out.append(int(part))
    return out
