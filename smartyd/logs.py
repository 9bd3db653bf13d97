"""
Logging: twisted.logger events as JSON lines, and reading them back.

One event per line, stable keys first::

    {"time": "2026-11-22T10:00:00.123456Z", "level": "info", "ns": "smartyd.osmp",
     "event": "credited 10.00 to 42", "account": 42, "amount": "10.00", ...}

Every keyword field of the log call becomes a key, so admins filter on
``txn_id``, ``account``, ``provider``...  Keys that smell of secrets are
replaced by ``"***"``.  The file is reopened by L{JSONLineObserver.reopen}
(the daemon calls it on SIGUSR1, after logrotate moved the file away).
"""

from __future__ import annotations

import datetime
import json
import os
import sys
from decimal import Decimal
from typing import IO, Any, Iterable, Iterator

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
)
from zope.interface import implementer

SECRET_KEYS = frozenset(
    {"password", "passwd", "secret", "secrets", "api_key", "apikey", "token", "authorization",
     "merchant_pay_key", "merchant_add_key", "salt", "dsn", "signature", "checkvalue"}
)
_FIRST = ("time", "level", "ns", "event")


def _jsonable(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, Decimal):
        return str(v)
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (datetime.datetime, datetime.date)):
        return v.isoformat()
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return repr(v)


def event_to_dict(event: dict) -> dict:
    level = event.get("log_level")
    out = {
        "time": datetime.datetime.fromtimestamp(
            event.get("log_time", 0), datetime.timezone.utc
        ).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "level": getattr(level, "name", None) or ("error" if event.get("isError") else "info"),
        "ns": event.get("log_namespace", ""),
        "event": _safe_format(event),
    }
    for key, value in event.items():
        if key.startswith("log_") or key in out or key in ("format", "message", "isError",
                                                           "system", "time", "console"):
            continue
        out[key] = "***" if key.lower() in SECRET_KEYS else _jsonable(value)
    failure = event.get("log_failure")
    if failure is not None:
        try:
            out["failure"] = failure.getTraceback()
        except Exception:
            out["failure"] = repr(failure)
    return out


def _safe_format(event: dict) -> str:
    # Format with secrets redacted even if a format string names them.
    if any(k.lower() in SECRET_KEYS for k in event):
        event = {k: ("***" if k.lower() in SECRET_KEYS else v) for k, v in event.items()}
    text = formatEvent(event)
    if not text and "message" in event:  # legacy twisted.python.log
        text = " ".join(str(m) for m in event["message"])
    return text


@implementer(ILogObserver)
class JSONLineObserver:
    """Writes each event as one JSON line to a file path, or to stdout for ``"-"``."""

    def __init__(self, path: str, stream: IO[str] | None = None):
        self.path = path
        self._stream = stream
        self._owned = False
        if stream is None:
            self._open()

    def _open(self) -> None:
        if self.path == "-":
            self._stream, self._owned = sys.stdout, False
            return
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        self._stream = open(self.path, "a", encoding="utf-8", buffering=1)
        self._owned = True

    def reopen(self) -> None:
        if self._owned:
            old = self._stream
            self._open()
            try:
                old.close()
            except OSError:
                pass

    def close(self) -> None:
        if self._owned and self._stream is not None:
            self._stream.close()
            self._owned = False

    def __call__(self, event: dict) -> None:
        try:
            line = json.dumps(event_to_dict(event), ensure_ascii=False)
        except Exception as e:  # never let logging take the daemon down
            line = json.dumps({"level": "error", "event": f"unloggable event: {e!r}"})
        try:
            self._stream.write(line + "\n")
        except (OSError, ValueError):
            pass


@implementer(ILogObserver)
class ConsoleObserver:
    """
    Short human lines for a person at the terminal (``twistd -n``) or the
    journal: the start-up steps (events logged with ``console=True``) and
    every warning or worse, as ``smartyd: <text>``.  An event may opt out
    with ``console=False`` (a start-up failure already printed its line).
    """

    def __init__(self, stream: IO[str] | None):
        self._stream = stream

    def __call__(self, event: dict) -> None:
        level = event.get("log_level")
        loud = level is not None and level >= LogLevel.warn
        if self._stream is None or not event.get("console", loud):
            return
        try:
            self._stream.write(f"smartyd: {level.name if loud else ''}{': ' if loud else ''}"
                               f"{_safe_format(event)}\n")
            self._stream.flush()
        except (OSError, ValueError):
            pass


def fan_out(*observers: ILogObserver) -> ILogObserver:
    """One observer that hands each event to every one of ``observers``."""

    @implementer(ILogObserver)
    def observe(event: dict) -> None:
        for observer in observers:
            observer(event)

    return observe


def level_filtered(observer: ILogObserver, level: str) -> FilteringLogObserver:
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))
    return FilteringLogObserver(observer, [predicate])


# -- reading logs back (smartyd-admin logs) -------------------------------------------
def parse_grep(items: Iterable[str]) -> list[tuple[str, str]]:
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--grep takes KEY=VALUE, got {item!r}")
        out.append((key, value))
    return out


def matches(record: dict, grep: list[tuple[str, str]]) -> bool:
    for key, value in grep:
        got = record.get(key)
        if got is None or str(got) != value:
            return False
    return True


def render(record: dict) -> str:
    """One readable line: time, level, event text, then the other fields as k=v."""
    head = "{time} {level:<8} {event}".format(
        time=record.get("time", "?")[:23].replace("T", " "),
        level=str(record.get("level", "?")).upper(),
        event=record.get("event", ""),
    )
    rest = " ".join(
        f"{k}={json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v}"
        for k, v in record.items()
        if k not in _FIRST and k != "failure"
    )
    line = f"{head}  [{record.get('ns', '')}] {rest}".rstrip()
    if "failure" in record:
        line += "\n" + str(record["failure"]).rstrip()
    return line


def read_records(lines: Iterable[str]) -> Iterator[dict]:
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = {"level": "?", "event": line}
        if isinstance(record, dict):
            yield record
