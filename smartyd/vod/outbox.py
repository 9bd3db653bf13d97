"""
The durable partner outbox (MEGOGO, tvzavr, Irdeto), on the pattern of
L{smartyd.fiscal.jobs}.  SQL only here.

Intake: a trigger on ``subscriptions`` (and ``devices``) marks the customer
in ``vod_dirty`` in the same transaction as the tariff change, suspension or
resumption, whoever wrote it (the charging engine, a payment, the admin CLI).
L{plan} turns marked customers into ``partner_calls``: for each partner it
computes what the partner should have (L{Desired}) and compares it with
``partner_state`` (what we last asked for), queueing one call per difference
and recording the new intent, all in one transaction with the marker's removal.

Sending: L{claim} takes, per (provider, user), only the oldest open call
(order per user), ``FOR UPDATE SKIP LOCKED``, moving it to ``sending`` with a
lease.  A call found in ``sending`` after its lease (a crash between claim and
answer) or left ``unknown`` (time-out, 5xx, garbage) is uncertain: the worker
asks the partner whether its effect holds before sending it again, so the
partner sees each change once.  A refused call is ``failed`` and holds the
user's later calls until an operator retries it (``outbox retry ID``).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

from attrs import frozen

from smartyd.db import Tx

OPEN = ("queued", "sending", "unknown", "failed")
DUE = ("queued", "sending", "unknown")


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


@frozen
class Call:
    id: int
    provider: str
    user_key: str
    customer_id: int
    op: str
    args: dict
    state: str
    attempts: int
    claim: int
    last_error: str | None = None

    @property
    def uncertain(self) -> bool:
        """Claimed from ``sending`` (lease ran out) or ``unknown``: it may have reached the partner."""
        return self.state in ("sending", "unknown")

    def to_json(self) -> dict:
        return {"id": self.id, "provider": self.provider, "user": self.user_key,
                "customer_id": self.customer_id, "op": self.op, "args": self.args,
                "state": self.state, "attempts": self.attempts, "last_error": self.last_error}


_COLUMNS = "id, provider, user_key, customer_id, op, args, state, attempts, claim, last_error"


# -- planning -------------------------------------------------------------------------------
async def dirty_customers(tx: Tx, limit: int) -> list[int]:
    """Marked customers, locked (SKIP LOCKED: another planner takes the others)."""
    rows = await tx.fetchall(
        "SELECT customer_id FROM vod_dirty ORDER BY customer_id LIMIT %s FOR UPDATE SKIP LOCKED",
        (limit,))
    return [r[0] for r in rows]


async def active_tariffs(tx: Tx, customer_id: int) -> list[tuple[int | None, int]]:
    """(account_id or None for the customer, tariff_id) of the customer's active subscriptions."""
    return [tuple(r) for r in await tx.fetchall(
        "SELECT account_id, tariff_id FROM subscriptions WHERE customer_id = %s"
        " AND state = 'active'", (customer_id,))]


async def customer_devices(tx: Tx, customer_id: int) -> list[tuple[int, str]]:
    """(account_id, device uid) of the customer's active accounts."""
    return [tuple(r) for r in await tx.fetchall(
        "SELECT d.account_id, d.uid FROM devices d JOIN accounts a ON a.id = d.account_id"
        " WHERE a.customer_id = %s AND a.active ORDER BY d.uid", (customer_id,))]


async def known_state(tx: Tx, provider: str, customer_id: int) -> dict[tuple[str, str], bool]:
    rows = await tx.fetchall(
        "SELECT user_key, item, wanted FROM partner_state WHERE provider = %s"
        " AND customer_id = %s FOR UPDATE", (provider, customer_id))
    return {(u, i): w for u, i, w in rows}


async def user_state(tx: Tx, provider: str, user_key: str) -> dict[str, bool]:
    rows = await tx.fetchall(
        "SELECT item, wanted FROM partner_state WHERE provider = %s AND user_key = %s",
        (provider, user_key))
    return dict(rows)


async def set_state(tx: Tx, provider: str, user_key: str, item: str, wanted: bool,
                    customer_id: int) -> None:
    await tx.execute(
        "INSERT INTO partner_state (provider, user_key, item, wanted, customer_id)"
        " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (provider, user_key, item)"
        " DO UPDATE SET wanted = EXCLUDED.wanted, customer_id = EXCLUDED.customer_id",
        (provider, user_key, item, wanted, customer_id))


async def enqueue(tx: Tx, provider: str, user_key: str, customer_id: int, op: str,
                  args: dict) -> int:
    return await tx.fetchval(
        "INSERT INTO partner_calls (provider, user_key, customer_id, op, args)"
        " VALUES (%s, %s, %s, %s, %s) RETURNING id",
        (provider, user_key, customer_id, op, json.dumps(args, sort_keys=True)))


async def clear_dirty(tx: Tx, customer_ids: list[int]) -> None:
    await tx.execute("DELETE FROM vod_dirty WHERE customer_id = ANY(%s)", (customer_ids,))


# -- sending --------------------------------------------------------------------------------
async def claim(tx: Tx, now: float, lease_until: float, limit: int) -> list[Call]:
    """The due head call of each user (oldest open one), moved to ``sending``."""
    rows = await tx.fetchall(
        f"SELECT {_COLUMNS} FROM partner_calls c WHERE c.state IN ('queued', 'sending', 'unknown')"
        " AND c.next_at <= %s AND NOT EXISTS (SELECT 1 FROM partner_calls p"
        "  WHERE p.provider = c.provider AND p.user_key = c.user_key AND p.id < c.id"
        "  AND p.state IN ('queued', 'sending', 'unknown', 'failed'))"
        " ORDER BY c.id LIMIT %s FOR UPDATE SKIP LOCKED",
        (at(now), limit))
    calls = [Call(*r) for r in rows]
    if calls:
        await tx.execute(
            "UPDATE partner_calls SET state = 'sending', claim = claim + 1,"
            " attempts = attempts + 1, next_at = %s WHERE id = ANY(%s)",
            (at(lease_until), [c.id for c in calls]))
    return calls


async def finish(tx: Tx, call: Call, state: str, error: str | None = None,
                 next_at: float | None = None) -> bool:
    """Record a claimed call's outcome; False when the claim went stale (changes nothing)."""
    row = await tx.fetchone(
        "UPDATE partner_calls SET state = %s, last_error = %s,"
        " next_at = coalesce(%s, next_at),"
        " finished = CASE WHEN %s IN ('done', 'failed') THEN now() END"
        " WHERE id = %s AND claim = %s + 1 AND state = 'sending' RETURNING 1",
        (state, error, at(next_at) if next_at is not None else None, state, call.id, call.claim))
    return row is not None


async def list_calls(tx: Tx, state: str | None = None, limit: int = 100) -> list[Call]:
    if state:
        rows = await tx.fetchall(
            f"SELECT {_COLUMNS} FROM partner_calls WHERE state = %s ORDER BY id LIMIT %s",
            (state, limit))
    else:
        rows = await tx.fetchall(
            f"SELECT {_COLUMNS} FROM partner_calls WHERE state IN %s ORDER BY id LIMIT %s",
            (OPEN, limit))
    return [Call(*r) for r in rows]


async def get_call(tx: Tx, call_id: int) -> Call | None:
    row = await tx.fetchone(f"SELECT {_COLUMNS} FROM partner_calls WHERE id = %s", (call_id,))
    return None if row is None else Call(*row)


async def retry(tx: Tx, call_id: int) -> Call | None:
    """A failed call queued again, due now (an uncertain one stays uncertain)."""
    row = await tx.fetchone(
        f"UPDATE partner_calls SET state = 'queued', next_at = '-infinity', last_error = NULL,"
        f" finished = NULL WHERE id = %s AND state = 'failed' RETURNING {_COLUMNS}", (call_id,))
    return None if row is None else Call(*row)


async def depth(tx: Tx) -> dict[tuple[str, str], int]:
    """Open calls per (provider, state)."""
    rows = await tx.fetchall(
        "SELECT provider, state, count(*) FROM partner_calls WHERE state IN %s GROUP BY 1, 2",
        (OPEN,))
    return {(p, s): n for p, s, n in rows}


# A stuck call: failed, or open and created before the moment given (one %s).
_STUCK = "(state = 'failed' OR (state IN ('queued', 'sending', 'unknown') AND created < %s))"


async def stuck(tx: Tx, older_than: datetime) -> list[str]:
    """Providers with a failed call, or an open call created before ``older_than``."""
    rows = await tx.fetchall(
        f"SELECT DISTINCT provider FROM partner_calls WHERE {_STUCK} ORDER BY 1", (older_than,))
    return [r[0] for r in rows]


async def stuck_calls(tx: Tx, older_than: datetime, limit: int = 100
                      ) -> list[tuple[Call, datetime]]:
    """
    The calls L{stuck} counts (failed, or open since before ``older_than``),
    oldest first, each with when it was created.
    """
    rows = await tx.fetchall(
        f"SELECT {_COLUMNS}, created FROM partner_calls WHERE {_STUCK} ORDER BY id LIMIT %s",
        (older_than, limit))
    return [(Call(*r[:-1]), r[-1]) for r in rows]


async def queue_renewals(tx: Tx, provider: str) -> int:
    """A ``renew`` call for every user whose subscription is on and has no open renewal."""
    rows = await tx.fetchall(
        "INSERT INTO partner_calls (provider, user_key, customer_id, op, args)"
        " SELECT s.provider, s.user_key, s.customer_id, 'renew',"
        "  jsonb_build_object('tariff', split_part(s.item, ':', 2)::bigint)"
        " FROM partner_state s WHERE s.provider = %s AND s.wanted AND s.item LIKE 'tariff:%%'"
        " AND NOT EXISTS (SELECT 1 FROM partner_calls c WHERE c.provider = s.provider"
        "  AND c.user_key = s.user_key AND c.op = 'renew'"
        "  AND c.state IN ('queued', 'sending', 'unknown', 'failed'))"
        " ORDER BY s.user_key RETURNING 1", (provider,))
    return len(rows)


async def settled_items(tx: Tx, provider: str, limit: int = 1000) -> list[tuple]:
    """(user, item, wanted, customer) of service items with no open call (for reconciling)."""
    return [tuple(r) for r in await tx.fetchall(
        "SELECT s.user_key, s.item, s.wanted, s.customer_id FROM partner_state s"
        " WHERE s.provider = %s AND s.item LIKE 'service:%%' AND NOT EXISTS ("
        "  SELECT 1 FROM partner_calls c WHERE c.provider = s.provider"
        "  AND c.user_key = s.user_key AND c.state IN ('queued', 'sending', 'unknown', 'failed'))"
        " ORDER BY s.user_key LIMIT %s", (provider, limit))]
