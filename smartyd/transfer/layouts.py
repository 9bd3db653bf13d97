"""
The CSV layouts ``smartyd-admin import`` reads and ``export`` writes (docs/IMPORT.md).

Pure: bytes in, records out, nothing touches the database here.  A file is
UTF-8 (with or without a BOM) or, when it is not valid UTF-8, cp1251 (what
Russian billings' exports are); its delimiter is ``;`` or ``,``, whichever the
first non-empty line holds more of (``;`` on a tie).

Two layout families:

- ``smartyd`` (the default): a header row naming the columns (any order,
  optional ones may be left out; a column left out is left as it is on an
  existing record), one layout per kind (L{COLUMNS}).
- ``hydra``: the two files of Smarty's Hydra migration tool, without header:
  ``user ID;account ID;tariff ID`` (customers, accounts, subscriptions: the
  user is the customer's ``ext_id``, the account ID the account's login, the
  tariff the customer's) and ``--;account ID;--;MAC;device serial`` (devices:
  the MAC, normalised to ``aa:bb:cc:dd:ee:ff``, is the device uid; the third
  column, the model in Hydra's export, is kept as the model).

A line becomes a list of C{(kind, record)}: a Hydra subscriptions line
carries its customer, its account and the subscription.  Records are dicts
holding only the columns present; C{BadRow} names what is wrong with a line.
"""

from __future__ import annotations

import codecs
import csv
import re
from datetime import datetime, timezone
from decimal import Decimal
from typing import IO, Iterator

from attrs import frozen

from smartyd import ledger

KINDS = ("customers", "accounts", "devices", "subscriptions", "balances")
FORMATS = ("smartyd", "hydra")

COLUMNS = {
    "customers": ("id", "ext_id", "name", "firstname", "middlename", "lastname", "phone",
                  "email", "contract_number", "comment"),
    "accounts": ("id", "login", "customer_id", "customer_ext_id", "active", "status_reason",
                 "password_hash"),
    "devices": ("uid", "account_login", "serial", "model"),
    "subscriptions": ("customer_id", "customer_ext_id", "account_login", "tariff_id",
                      "tariff_ext_id", "paid_until"),
    "balances": ("customer_id", "customer_ext_id", "amount"),
}
# Each group: at least one of its columns in the header, and non-empty on every line.
REQUIRED = {
    "customers": (("id", "ext_id"),),
    "accounts": (("login",),),
    "devices": (("uid",), ("account_login",)),
    "subscriptions": (("customer_id", "customer_ext_id", "account_login"),
                      ("tariff_id", "tariff_ext_id")),
    "balances": (("customer_id", "customer_ext_id"), ("amount",)),
}
# Text columns that may be NULL: an empty cell clears them.
NULLABLE = {"phone", "email", "contract_number", "serial", "model"}
INTEGERS = {"id", "customer_id", "tariff_id"}
# What a Hydra line of the customers file carries, by the kind imported.
HYDRA_KINDS = {"customers": ("customers",), "accounts": ("customers", "accounts"),
               "subscriptions": ("customers", "accounts", "subscriptions")}
MAX_TEXT = 255
_MAC = re.compile(r"^[0-9a-f]{12}$")
_CONTROL = re.compile(r"[\x00-\x1f]")
_HASH = re.compile(r"^scrypt\$\d+\$\d+\$\d+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$")
_TRUE = {"1", "true", "t", "yes", "y"}
_FALSE = {"0", "false", "f", "no", "n"}


class BadRow(Exception):
    """Line ``line`` of the file cannot be imported, for ``reason``."""

    def __init__(self, line: int, reason: str):
        super().__init__(f"line {line}: {reason}")
        self.line = line
        self.reason = reason


class LayoutError(ValueError):
    """The file as a whole does not fit the layout (its header, its kind)."""


@frozen
class Source:
    """A file opened for import: its encoding, delimiter and line count."""

    path: str
    encoding: str
    delimiter: str
    lines: int

    def open(self) -> IO[str]:
        return open(self.path, encoding=self.encoding, newline="")


def detect(path: str, chunk: int = 1 << 20) -> Source:
    """Read the file once: UTF-8 or cp1251, ``;`` or ``,``, and its line count."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    utf8, lines, head = True, 0, b""
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            lines += block.count(b"\n")
            if len(head) < 65536:
                head += block[:65536]
            if utf8:
                try:
                    decoder.decode(block)
                except UnicodeDecodeError:
                    utf8 = False
        if utf8:
            try:
                decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                utf8 = False
    encoding = ("utf-8-sig" if head.startswith(codecs.BOM_UTF8) else "utf-8") if utf8 \
        else "cp1251"
    first = next((l for l in head.decode(encoding, "replace").splitlines() if l.strip()), "")
    delimiter = "," if first.count(",") > first.count(";") else ";"
    return Source(path, encoding, delimiter, lines + (0 if head.endswith(b"\n") else 1))


# -- cells ---------------------------------------------------------------------------------------
def _text(value: str, column: str) -> str:
    if len(value) > MAX_TEXT:
        raise ValueError(f"{column} is longer than {MAX_TEXT} characters")
    if _CONTROL.search(value):
        raise ValueError(f"{column} holds a control character")
    return value


def _integer(value: str, column: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"{column} is not a number: {value!r}")
    if not 0 < n < 2**63:
        raise ValueError(f"{column} must be positive: {value!r}")
    return n


def _boolean(value: str, column: str) -> bool:
    v = value.lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ValueError(f"{column} is not 1/0/true/false: {value!r}")


def _moment(value: str, column: str) -> datetime:
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{column} is not an ISO-8601 date/time: {value!r}")
    return at if at.tzinfo else at.replace(tzinfo=timezone.utc)


def _optional(parse):
    return lambda value, column: parse(value, column) if value else None


# An amount as a person or a billing writes it: a sign, whole units, and at
# most two places after a point or a comma (cp1251 exports write "10,50").
# Never an exponent ("1e3") or a third place: a balance is taken as written,
# never rounded or reinterpreted.
_AMOUNT = re.compile(r"^[+-]?\d{1,15}(?:[.,]\d{1,2})?$")


def _amount(value: str, column: str):
    if not _AMOUNT.match(value):
        raise ValueError(f"{column} {value!r}: not an amount (digits, at most two places after"
                         " a point or a comma)")
    try:
        return ledger.money(value.replace(",", "."))
    except ledger.LedgerError as e:
        raise ValueError(str(e))


def _login(value: str, column: str) -> str | None:
    if value and not ledger.LOGIN_RE.match(value):
        raise ValueError(f"{column} {value!r}: 1-64 characters of A-Z a-z 0-9 _ . @ + -")
    return value or None


def _status_reason(value: str, column: str) -> str | None:
    if value and not ledger.STATUS_REASON_RE.match(value):
        raise ValueError("status_reason: 1-20 characters of A-Z a-z 0-9 _ . - and space")
    return value or None


def _password_hash(value: str, column: str) -> str:
    if value and not _HASH.match(value):
        raise ValueError("password_hash is not a smartyd (scrypt) hash")
    return value


def _external_id(value: str, column: str) -> str | None:
    if len(value) > 64:
        raise ValueError(f"{column} is longer than 64 characters")
    return _text(value, column) or None


# Each column's reader: (the stripped cell, the column's name) -> its value; None for
# an empty cell of a column that is then left as it is.
_READERS = {
    **{c: _optional(_integer) for c in INTEGERS},
    "active": _optional(_boolean),
    "paid_until": _optional(_moment),
    "amount": _amount,
    "login": _login,
    "account_login": _login,
    "status_reason": _status_reason,
    "password_hash": _password_hash,
    "ext_id": _external_id,
    "customer_ext_id": _external_id,
    "tariff_ext_id": _external_id,
    "uid": lambda value, column: _text(value, column) or None,
}


def _cell(column: str, value: str) -> object:
    """One cell's value (see L{_READERS}; other columns are plain text)."""
    return _READERS.get(column, _text)(value.strip(), column)


def mac(value: str) -> str:
    """``00-1A-79-22-63-8A`` (or with ``:``, or bare) -> ``00:1a:79:22:63:8a``."""
    digits = re.sub(r"[-:.\s]", "", value).lower()
    if not _MAC.match(digits):
        raise ValueError(f"not a MAC address: {value!r}")
    return ":".join(digits[i:i + 2] for i in range(0, 12, 2))


# -- reading -------------------------------------------------------------------------------------
Line = tuple[int, list[tuple[str, dict]]]


def read(f: IO[str], delimiter: str, fmt: str, kind: str) -> Iterator[Line | BadRow]:
    """Each non-empty line as ``(line number, [(kind, record), ...])`` or a L{BadRow}."""
    if fmt not in FORMATS:
        raise LayoutError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    if kind not in KINDS:
        raise LayoutError(f"unknown kind {kind!r} (one of {', '.join(KINDS)})")
    reader = csv.reader(f, delimiter=delimiter)
    if fmt == "smartyd":
        yield from _read_own(reader, kind)
    elif kind == "devices":
        yield from _read_hydra_devices(reader)
    elif kind in HYDRA_KINDS:
        yield from _read_hydra_customers(reader, kind)
    else:
        raise LayoutError(f"the hydra layout has no {kind}")


def _rows(reader) -> Iterator[tuple[int, list[str]]]:
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            yield reader.line_num, e
            continue
        if any(cell.strip() for cell in row):
            yield reader.line_num, row


def _read_own(reader, kind: str) -> Iterator[Line | BadRow]:
    columns = COLUMNS[kind]
    header = None
    for line, row in _rows(reader):
        if isinstance(row, csv.Error):
            yield BadRow(line, f"not CSV: {row}")
            continue
        if header is None:
            header = [c.strip().lower().lstrip("\ufeff") for c in row]
            unknown = [c for c in header if c not in columns]
            if unknown or len(set(header)) != len(header):
                raise LayoutError(
                    f"line {line}: the header of a {kind} file names columns of"
                    f" {', '.join(columns)}, each once (found {', '.join(header)})")
            for group in REQUIRED[kind]:
                if not set(group) & set(header):
                    raise LayoutError(f"line {line}: a {kind} file needs a column"
                                      f" {' or '.join(group)}")
            readers = [(c, _READERS.get(c, _text)) for c in header]
            continue
        if len(row) != len(header):
            yield BadRow(line, f"{len(row)} cells, the header has {len(header)}")
            continue
        try:
            record = {c: read(v.strip(), c) for (c, read), v in zip(readers, row)}
        except ValueError as e:
            yield BadRow(line, str(e))
            continue
        missing = [g for g in REQUIRED[kind] if all(record.get(c) is None for c in g)]
        if missing:
            yield BadRow(line, f"{' or '.join(missing[0])} is empty")
            continue
        yield line, [(kind, record)]
    if header is None:
        raise LayoutError(f"the file is empty: a {kind} file starts with a header row")


def _read_hydra_customers(reader, kind: str) -> Iterator[Line | BadRow]:
    for line, row in _rows(reader):
        if isinstance(row, csv.Error):
            yield BadRow(line, f"not CSV: {row}")
            continue
        if len(row) != 3:
            yield BadRow(line, f"{len(row)} cells, the layout is user ID;account ID;tariff ID")
            continue
        user, account, tariff = (c.strip() for c in row)
        try:
            ext_id = _cell("ext_id", user)
            login = _cell("login", account)
            tariff = _cell("tariff_ext_id", tariff)
        except ValueError as e:
            yield BadRow(line, str(e).replace("ext_id", "user ID").replace("login", "account ID"))
            continue
        if ext_id is None or login is None:
            yield BadRow(line, "user ID and account ID are required")
            continue
        wanted = HYDRA_KINDS[kind]
        records = [("customers", {"ext_id": ext_id})]
        if "accounts" in wanted:
            records.append(("accounts", {"login": login, "customer_ext_id": ext_id}))
        if "subscriptions" in wanted:
            if tariff is None:
                yield BadRow(line, "tariff ID is empty")
                continue
            records.append(("subscriptions", {"customer_ext_id": ext_id,
                                              "tariff_hydra": tariff}))
        yield line, records


def _read_hydra_devices(reader) -> Iterator[Line | BadRow]:
    for line, row in _rows(reader):
        if isinstance(row, csv.Error):
            yield BadRow(line, f"not CSV: {row}")
            continue
        if len(row) != 5:
            yield BadRow(line, f"{len(row)} cells, the layout is --;account ID;--;MAC;device serial")
            continue
        _, account, model, address, serial = (c.strip() for c in row)
        try:
            login = _cell("account_login", account)
            uid = mac(address)
            record = {"uid": uid, "account_login": login, "model": _cell("model", model),
                      "serial": _cell("serial", serial)}
        except ValueError as e:
            yield BadRow(line, str(e).replace("account_login", "account ID"))
            continue
        if login is None:
            yield BadRow(line, "account ID is empty")
            continue
        yield line, [("devices", record)]


# -- keys ----------------------------------------------------------------------------------------
def key(kind: str, record: dict) -> tuple:
    """What identifies the record (a repeat of the key in one file is the same record)."""
    if kind == "customers":
        return ("ext", record["ext_id"]) if record.get("ext_id") else ("id", record["id"])
    if kind == "accounts":
        return (record["login"],)
    if kind == "devices":
        return (record["uid"],)
    if kind == "subscriptions":
        return (record.get("customer_id"), record.get("customer_ext_id"),
                record.get("account_login"), record.get("tariff_id"),
                record.get("tariff_ext_id"), record.get("tariff_hydra"))
    return (record.get("customer_id"), record.get("customer_ext_id"))


def fingerprint(record: dict) -> int:
    return hash(tuple(sorted(record.items())))


# -- writing -------------------------------------------------------------------------------------
def header(fmt: str, kind: str) -> list[str] | None:
    """The header row ``export`` writes (None: the layout has none)."""
    if fmt == "smartyd":
        return list(COLUMNS[kind])
    if kind in HYDRA_KINDS or kind == "devices":
        return None
    raise LayoutError(f"the hydra layout has no {kind}")


def cell(value: object) -> str:
    """A value as ``export`` writes it (read back by L{_cell} to the same value)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return str(value)


def writer(f: IO[str]):
    return csv.writer(f, delimiter=";", lineterminator="\n")


def hydra_mac(uid: str) -> str:
    """A device uid as Hydra writes MACs (``00-1A-79-...``), when it is one."""
    try:
        return mac(uid).replace(":", "-").upper()
    except ValueError:
        return uid


__all__ = ["BadRow", "COLUMNS", "FORMATS", "KINDS", "LayoutError", "Source", "detect", "read",
           "key", "fingerprint", "header", "cell", "writer", "mac", "hydra_mac"]
