"""
The operator's staff: operators with roles, their console sessions and the
audit trail (migration 0019).  Plain SQL over a L{Tx}; ``smartyd-admin
operator`` and the console (L{smartyd.console}) both call these.

Roles are ordered: ``viewer`` reads everything, ``support`` also changes an
account's state, ``admin`` also moves money by hand and manages operators
(L{may}).

A session's id is 32 random bytes, in the browser's cookie only; the table
keeps its SHA-256, so a copy of the database opens no session.  A session
ends after ``IDLE_TIMEOUT`` seconds without a request.  After
``MAX_FAILURES`` wrong passwords in a row an operator is locked for
``LOCK_SECONDS`` (a right password during the lock is refused too).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
import secrets
from datetime import datetime, timedelta
from typing import Any, Awaitable, Callable

from attrs import frozen

from smartyd.db import Tx

ROLES = ("viewer", "support", "admin")
LOGIN_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
IDLE_TIMEOUT = 30 * 60
MAX_FAILURES = 5
LOCK_SECONDS = 15 * 60
MIN_PASSWORD = 10
CLI = "cli"  # the actor of a change made with smartyd-admin


class OperatorError(ValueError):
    """An operator command was refused; the message says why."""


def may(role: str, needed: str) -> bool:
    """True when ``role`` has at least the rights of ``needed``."""
    return ROLES.index(role) >= ROLES.index(needed)


def new_password() -> str:
    return secrets.token_urlsafe(12)


@frozen
class Operator:
    id: int
    login: str
    role: str
    disabled: bool
    failed_attempts: int
    locked_until: datetime | None
    created: datetime
    password_hash: str = ""

    def to_json(self) -> dict:
        return {"id": self.id, "login": self.login, "role": self.role,
                "disabled": self.disabled, "failed_attempts": self.failed_attempts,
                "locked_until": self.locked_until.isoformat() if self.locked_until else None,
                "created": self.created.isoformat()}


_COLUMNS = "id, login, role, disabled, failed_attempts, locked_until, created, password_hash"


def _operator(row) -> Operator | None:
    return None if row is None else Operator(*row)


def check_login(login: str) -> None:
    if not LOGIN_RE.match(login or ""):
        raise OperatorError("an operator's login is 1-64 characters of A-Z a-z 0-9 _ . @ -")


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise OperatorError(f"an operator's password has at least {MIN_PASSWORD} characters")


async def create(tx: Tx, login: str, role: str, password_hash: str) -> Operator:
    check_login(login)
    if role not in ROLES:
        raise OperatorError(f"role must be one of {', '.join(ROLES)}")
    if await tx.fetchval("SELECT 1 FROM operators WHERE login = %s", (login,)):
        raise OperatorError(f"operator {login!r} exists already")
    return _operator(await tx.fetchone(
        f"INSERT INTO operators (login, role, password_hash) VALUES (%s, %s, %s)"
        f" RETURNING {_COLUMNS}", (login, role, password_hash)))


async def get(tx: Tx, login: str, lock: bool = False) -> Operator | None:
    return _operator(await tx.fetchone(
        f"SELECT {_COLUMNS} FROM operators WHERE login = %s" + (" FOR UPDATE" if lock else ""),
        (login,)))


async def get_by_id(tx: Tx, operator_id: int) -> Operator | None:
    return _operator(await tx.fetchone(f"SELECT {_COLUMNS} FROM operators WHERE id = %s",
                                       (operator_id,)))


async def listing(tx: Tx) -> list[Operator]:
    return [Operator(*r) for r in await tx.fetchall(
        f"SELECT {_COLUMNS} FROM operators ORDER BY login")]


async def disable(tx: Tx, login: str) -> Operator:
    """Disable an operator and end its sessions."""
    op = await get(tx, login, lock=True)
    if op is None:
        raise OperatorError(f"no operator {login!r}")
    await tx.execute("UPDATE operators SET disabled = true WHERE id = %s", (op.id,))
    await tx.execute("DELETE FROM console_sessions WHERE operator_id = %s", (op.id,))
    return await get(tx, login)


async def set_password(tx: Tx, login: str, password_hash: str) -> Operator:
    """A new password: the lock and the failure count are cleared, sessions ended."""
    op = await get(tx, login, lock=True)
    if op is None:
        raise OperatorError(f"no operator {login!r}")
    await tx.execute("UPDATE operators SET password_hash = %s, failed_attempts = 0,"
                     " locked_until = NULL WHERE id = %s", (password_hash, op.id))
    await tx.execute("DELETE FROM console_sessions WHERE operator_id = %s", (op.id,))
    return await get(tx, login)


async def login_failed(tx: Tx, operator_id: int, now: datetime) -> None:
    """Count a wrong password; the ``MAX_FAILURES``-th in a row locks the operator."""
    await tx.execute(
        "UPDATE operators SET failed_attempts = failed_attempts + 1,"
        " locked_until = CASE WHEN failed_attempts + 1 >= %s THEN %s ELSE locked_until END"
        " WHERE id = %s",
        (MAX_FAILURES, now + timedelta(seconds=LOCK_SECONDS), operator_id))


async def login_succeeded(tx: Tx, operator_id: int) -> None:
    await tx.execute("UPDATE operators SET failed_attempts = 0, locked_until = NULL"
                     " WHERE id = %s", (operator_id,))


# -- sessions --------------------------------------------------------------------------------------
def session_hash(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode("utf-8")).digest()


async def open_session(tx: Tx, operator_id: int, now: datetime) -> str:
    """
    A new session of the operator; returns its id (for the cookie only).
    Sessions idle past the time-out (anyone's) are deleted on the way.
    """
    await tx.execute("DELETE FROM console_sessions WHERE last_seen <= %s",
                     (now - timedelta(seconds=IDLE_TIMEOUT),))
    session_id = secrets.token_urlsafe(32)
    await tx.execute(
        "INSERT INTO console_sessions (id_hash, operator_id, created, last_seen)"
        " VALUES (%s, %s, %s, %s)", (session_hash(session_id), operator_id, now, now))
    return session_id


async def touch_session(tx: Tx, session_id: str, now: datetime) -> Operator | None:
    """
    The operator of a live session, its idle clock restarted; None for an
    unknown, idle-expired (then deleted) or disabled operator's session.
    """
    key = session_hash(session_id)
    row = await tx.fetchone(
        "UPDATE console_sessions s SET last_seen = %s FROM operators o"
        " WHERE s.id_hash = %s AND o.id = s.operator_id AND NOT o.disabled"
        " AND s.last_seen > %s RETURNING s.operator_id",
        (now, key, now - timedelta(seconds=IDLE_TIMEOUT)))
    if row is None:
        await tx.execute("DELETE FROM console_sessions WHERE id_hash = %s", (key,))
        return None
    return await get_by_id(tx, row[0])


async def close_session(tx: Tx, session_id: str) -> None:
    await tx.execute("DELETE FROM console_sessions WHERE id_hash = %s",
                     (session_hash(session_id),))


# -- the audit trail -----------------------------------------------------------------------------
async def audit(tx: Tx, actor: str, action: str, *, at: datetime, operator_id: int | None = None,
                customer_id: int | None = None, before: Any = None, after: Any = None,
                reason: str = "") -> int:
    """One audit row, in the caller's transaction (with the change it records)."""
    return await tx.fetchval(
        "INSERT INTO audit_log (at, actor, operator_id, action, customer_id, before, after,"
        " reason) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
        (at, actor, operator_id, action, customer_id,
         None if before is None else json.dumps(before, default=str),
         None if after is None else json.dumps(after, default=str), reason))


@frozen
class Actor:
    """Who makes a change and when: an operator (``operator_id``) or L{CLI}."""

    name: str
    at: datetime
    operator_id: int | None = None


def _recorded(value: Any) -> Any:
    return value.to_json() if hasattr(value, "to_json") else value


async def audited(tx: Tx, actor: str, action: str, change: Callable[[Tx], Awaitable[Any]], *,
                  at: datetime, operator_id: int | None = None,
                  customer_id: int | Callable[[Tx, Any], Any] | None = None,
                  before: Callable[[Tx], Awaitable[Any]] | None = None,
                  after: Callable[[Any], Any] | None = None, reason: str = "") -> Any:
    """
    Run ``change(tx)`` and write its audit row in the same transaction: the
    change and its record commit together or not at all.  Every audited
    change goes through here (the console's actions, ``smartyd-admin``'s
    commands with actor L{CLI}); returns the change's result.

    ``before(tx)``, read first, is the state the change replaces; ``after``
    maps the result to what the row records (default: the result, its
    ``to_json()`` when it has one).  The row's customer is ``customer_id``
    (or what ``customer_id(tx, result)`` returns or resolves to), else the
    ``customer_id`` the recorded state after (or before) names.
    """
    was = _recorded(await before(tx)) if before is not None else None
    out = await change(tx)
    now = after(out) if after is not None else _recorded(out)
    if callable(customer_id):
        customer_id = customer_id(tx, out)
        if inspect.isawaitable(customer_id):
            customer_id = await customer_id
    if customer_id is None:
        for state in (now, was):
            if isinstance(state, dict) and isinstance(state.get("customer_id"), int):
                customer_id = state["customer_id"]
                break
    await audit(tx, actor, action, at=at, operator_id=operator_id, customer_id=customer_id,
                before=was, after=now, reason=reason)
    return out


async def audit_rows(tx: Tx, *, customer_id: int | None = None, actor: str | None = None,
                     action: str | None = None, since: datetime | None = None,
                     until: datetime | None = None, limit: int = 200) -> list[dict]:
    """Audit rows, newest first, filtered by whichever arguments are given."""
    where, params = [], []
    for column, op, value in (("customer_id", "=", customer_id), ("actor", "=", actor),
                              ("action", "=", action), ("at", ">=", since),
                              ("at", "<", until)):
        if value is not None:
            where.append(f"{column} {op} %s")
            params.append(value)
    sql = ("SELECT id, at, actor, action, customer_id, before, after, reason FROM audit_log"
           + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC LIMIT %s")
    return await tx.fetchdicts(sql, (*params, limit))
