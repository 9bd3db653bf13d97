"""
The receipt job queue: one row of ``receipt_jobs`` per fiscalized payment.

"Never twice" rests on three things:
  - ``UNIQUE (payment_id)``: a payment has at most one job, and so one
    ``external_id`` -- the idempotency key Dreamkas sees;
  - claims: a worker takes due jobs with ``FOR UPDATE SKIP LOCKED`` and moves
    them to ``posting`` with a lease (``next_attempt_at``) and a new ``claim``
    number, so concurrent workers and instances never hold the same job; a
    writer whose claim is stale changes nothing;
  - a job found in ``posting`` when its lease ran out may have reached
    Dreamkas (time-out, 5xx, crash): its next claim looks the operation up by
    ``external_id`` before it would POST again (L{ClaimedPost.uncertain}).

Operation updates from polling and from the webhook go through one function,
L{apply_operation}, under the row lock: the first to bring a terminal status
wins and the second finds nothing to do.

Times are passed in (from the worker's injected clock); the table never asks
PostgreSQL's ``now()`` when a job is due -- nor how long it has been in its
state: ``state_since`` is set NULL by every change of state and stamped with
the worker's clock by its next round (L{stuck}; migration 0018 says why).
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from decimal import Decimal

from attrs import frozen

from smartyd.db import Tx
from smartyd.fiscal.api import Operation

STATES = ("queued", "posting", "pending", "done", "failed")
OPEN_STATES = ("queued", "posting", "pending")
# externalId = uuid5(this, the payment's identity): stable for a payment, and
# in the UUID form Dreamkas' own examples use.
EXTERNAL_ID_NAMESPACE = uuid.UUID("7c1d2a8e-5b0f-4d8e-9a51-3f1e6c2b9d40")


def external_id_for(payment_id: int, provider: str, payment_external_id: str) -> str:
    return str(uuid.uuid5(
        EXTERNAL_ID_NAMESPACE, f"smartyd:payment:{payment_id}:{provider}:{payment_external_id}"
    ))


def at(seconds: float) -> datetime:
    """A clock reading as a timestamptz parameter."""
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


_COLUMNS = (
    "id, payment_id, external_id, state, attempts, polls, next_attempt_at, operation_id,"
    " operation_status, receipt_id, last_error, receipt, created, updated, finished"
)


def _iso(v) -> str | None:
    if v is None:
        return None
    if isinstance(v, datetime) and v.year < 2:  # '-infinity'
        return None
    return v.isoformat()


@frozen
class Job:
    id: int
    payment_id: int
    external_id: str
    state: str
    attempts: int
    polls: int
    next_attempt_at: object
    operation_id: str | None
    operation_status: str | None
    receipt_id: str | None
    last_error: str | None
    receipt: dict | None
    created: object
    updated: object
    finished: object

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "payment_id": self.payment_id,
            "external_id": self.external_id,
            "state": self.state,
            "attempts": self.attempts,
            "polls": self.polls,
            "next_attempt_at": _iso(self.next_attempt_at) if self.state in OPEN_STATES else None,
            "operation_id": self.operation_id,
            "operation_status": self.operation_status,
            "receipt_id": self.receipt_id,
            "last_error": self.last_error,
            "created": _iso(self.created),
            "finished": _iso(self.finished),
        }


# -- enqueueing -------------------------------------------------------------------------
async def enqueue(tx: Tx, payment_id: int, provider: str, payment_external_id: str
                  ) -> tuple[Job, bool]:
    """The payment's job, created due now if absent.  Returns ``(job, created)``."""
    row = await tx.fetchone(
        f"INSERT INTO receipt_jobs (payment_id, external_id) VALUES (%s, %s)"
        f" ON CONFLICT (payment_id) DO NOTHING RETURNING {_COLUMNS}",
        (payment_id, external_id_for(payment_id, provider, payment_external_id)),
    )
    if row is not None:
        return Job(*row), True
    return await get_by_payment(tx, payment_id), False


async def enqueue_payment_id(tx: Tx, payment_id: int) -> tuple[Job, bool]:
    row = await tx.fetchone(
        "SELECT provider, external_id FROM payments WHERE id = %s", (payment_id,)
    )
    if row is None:
        raise LookupError(f"no payment {payment_id}")
    return await enqueue(tx, payment_id, row[0], row[1])


async def get_by_payment(tx: Tx, payment_id: int) -> Job | None:
    row = await tx.fetchone(
        f"SELECT {_COLUMNS} FROM receipt_jobs WHERE payment_id = %s", (payment_id,)
    )
    return None if row is None else Job(*row)


async def list_jobs(tx: Tx, state: str | None = None, limit: int = 100,
                    payment_id: int | None = None) -> list[Job]:
    clauses, params = [], []
    if state is not None:
        clauses.append("state = %s")
        params.append(state)
    if payment_id is not None:
        clauses.append("payment_id = %s")
        params.append(payment_id)
    where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
    rows = await tx.fetchall(
        f"SELECT {_COLUMNS} FROM receipt_jobs{where} ORDER BY id DESC LIMIT %s",
        (*params, limit),
    )
    return [Job(*r) for r in rows]


async def counts(tx: Tx) -> dict[str, int]:
    rows = await tx.fetchall("SELECT state, count(*) FROM receipt_jobs GROUP BY state")
    out = {s: 0 for s in STATES}
    out.update({state: n for state, n in rows})
    return out


async def retry_failed(tx: Tx, job_id: int) -> Job | None:
    """
    A failed job handed back to the worker, due now with its attempts and
    polls reset; None when ``job_id`` is not a failed job, or Dreamkas itself
    failed its operation (``operation_status`` ERROR: a retry would only find
    that operation again under the payment's ``externalId``).

    A job with an operation (given up while polling its status) goes back to
    ``pending``: its status is polled again.  One without goes back to
    ``posting``, not ``queued``: its earlier POSTs may have reached Dreamkas
    (a job given up after time-outs), so its next claim looks the
    ``externalId`` up before it would POST -- a retry never makes a second
    receipt.  Its kept body is dropped, so that the receipt is built again
    from the current catalog and settings (what the operator likely fixed).
    """
    row = await tx.fetchone(
        f"UPDATE receipt_jobs SET"
        f" state = CASE WHEN operation_id IS NULL THEN 'posting' ELSE 'pending' END,"
        f" receipt = CASE WHEN operation_id IS NULL THEN NULL ELSE receipt END,"
        f" attempts = 0, polls = 0, next_attempt_at = '-infinity', finished = NULL,"
        f" updated = now(), state_since = NULL, stuck_warned = '{{}}'"
        f" WHERE id = %s AND state = 'failed' AND operation_status IS DISTINCT FROM 'ERROR'"
        f" RETURNING {_COLUMNS}",
        (job_id,),
    )
    return None if row is None else Job(*row)


# -- claiming ----------------------------------------------------------------------------
@frozen
class ClaimedPost:
    """A job claimed for POSTing, with what its receipt is made of."""

    id: int
    claim: int
    prior: str
    external_id: str
    attempts: int
    receipt: dict | None
    payment_id: int
    provider: str
    amount: Decimal
    details: dict
    account_id: int
    phone: str | None
    email: str | None
    tariff_name: str | None
    prior_since: datetime | None = None  # state_since before the claim

    @property
    def uncertain(self) -> bool:
        """A POST of this job may have reached Dreamkas already."""
        return self.prior == "posting"


@frozen
class ClaimedFollow:
    id: int
    claim: int
    operation_id: str
    external_id: str
    attempts: int
    polls: int


async def claim_for_post(tx: Tx, now: float, lease_until: float, limit: int) -> list[ClaimedPost]:
    """
    Take up to ``limit`` due jobs in ``queued`` (never sent, or refused) or in
    ``posting`` whose lease or back-off ran out.  Other workers' claimed rows
    are skipped, not waited for.
    """
    claimed = await tx.fetchall(
        "WITH due AS ("
        "  SELECT id, state AS prior, state_since AS prior_since FROM receipt_jobs"
        "  WHERE state IN ('queued', 'posting') AND next_attempt_at <= %(now)s"
        "  ORDER BY next_attempt_at, id LIMIT %(limit)s"
        "  FOR UPDATE SKIP LOCKED)"
        " UPDATE receipt_jobs j SET state = 'posting', claim = j.claim + 1,"
        "   next_attempt_at = %(lease)s, updated = now(),"
        "   state_since = CASE WHEN due.prior = 'posting' THEN due.prior_since END"
        " FROM due WHERE j.id = due.id"
        " RETURNING j.id, j.claim, due.prior, j.external_id, j.attempts, j.receipt, j.payment_id,"
        "   due.prior_since",
        {"now": at(now), "lease": at(lease_until), "limit": limit},
    )
    if not claimed:
        return []
    context = {
        r[0]: r[1:]
        for r in await tx.fetchall(
            "SELECT p.id, p.provider, p.amount, p.details, p.account_id, c.phone, c.email, t.name"
            " FROM payments p JOIN customers c ON c.id = p.customer_id"
            " LEFT JOIN tariffs t ON t.id = CASE WHEN p.details->>'tariff_id' ~ '^[0-9]{1,18}$'"
            "   THEN (p.details->>'tariff_id')::bigint END"
            " WHERE p.id = ANY(%s)",
            ([r[6] for r in claimed],),
        )
    }
    out = []
    for (job_id, claim, prior, external_id, attempts, receipt, payment_id,
         prior_since) in sorted(claimed):
        provider, amount, details, account_id, phone, email, tariff = context[payment_id]
        out.append(ClaimedPost(
            job_id, claim, prior, external_id, attempts, receipt, payment_id, provider,
            amount, details or {}, account_id, phone, email, tariff, prior_since,
        ))
    return out


async def claim_for_follow(tx: Tx, now: float, lease_until: float, limit: int
                           ) -> list[ClaimedFollow]:
    """Take up to ``limit`` ``pending`` jobs whose next status poll is due."""
    rows = await tx.fetchall(
        "WITH due AS ("
        "  SELECT id FROM receipt_jobs"
        "  WHERE state = 'pending' AND next_attempt_at <= %(now)s"
        "  ORDER BY next_attempt_at, id LIMIT %(limit)s"
        "  FOR UPDATE SKIP LOCKED)"
        " UPDATE receipt_jobs j SET claim = j.claim + 1, next_attempt_at = %(lease)s,"
        "   updated = now()"
        " FROM due WHERE j.id = due.id"
        " RETURNING j.id, j.claim, j.operation_id, j.external_id, j.attempts, j.polls",
        {"now": at(now), "lease": at(lease_until), "limit": limit},
    )
    return [ClaimedFollow(*r) for r in sorted(rows)]


# -- outcomes ------------------------------------------------------------------------------
async def save_receipt(tx: Tx, job_id: int, claim: int, body: dict) -> bool:
    """Keep the body about to be POSTed, so that a re-POST sends the same receipt."""
    await tx.execute(
        "UPDATE receipt_jobs SET receipt = %s, updated = now()"
        " WHERE id = %s AND claim = %s AND state = 'posting' AND receipt IS NULL",
        (json.dumps(body, ensure_ascii=False), job_id, claim),
    )
    return tx.rowcount == 1


async def fail(tx: Tx, job_id: int, reason: str, claim: int | None = None,
               from_state: str | None = None, attempts: int | None = None) -> bool:
    """Give the job up with ``reason`` (only if still open, and still ours)."""
    sql = ("UPDATE receipt_jobs SET state = 'failed', last_error = %s, finished = now(),"
           " updated = now(), attempts = coalesce(%s, attempts)"
           " WHERE id = %s AND state IN ('queued', 'posting', 'pending')")
    params: list = [reason[:1000], attempts, job_id]
    if claim is not None:
        sql += " AND claim = %s"
        params.append(claim)
    if from_state is not None:
        sql += " AND state = %s"
        params.append(from_state)
    await tx.execute(sql, params)
    return tx.rowcount == 1


async def retry_later(tx: Tx, job_id: int, claim: int, from_state: str, to_state: str,
                      error: str, next_at: float) -> bool:
    """Count a failed try and make the job due again at ``next_at``."""
    await tx.execute(
        "UPDATE receipt_jobs SET state = %s, attempts = attempts + 1, last_error = %s,"
        " next_attempt_at = %s, updated = now(),"
        " state_since = CASE WHEN state = %s THEN state_since END"
        " WHERE id = %s AND claim = %s AND state = %s",
        (to_state, error[:1000], at(next_at), to_state, job_id, claim, from_state),
    )
    return tx.rowcount == 1


async def apply_operation(tx: Tx, op: Operation, next_poll_at: float,
                          claim: int | None = None, job_id: int | None = None
                          ) -> tuple[int, str] | None:
    """
    Bring the job of ``op`` up to date: job ``job_id`` (the worker that
    POSTed it knows), else the job with this operation id, else -- while the
    job has no operation yet -- the job with the operation's ``externalId``.
    Returns ``(payment_id, new state)`` when the job changed state, else None.

    SUCCESS makes any job ``done`` (the receipt exists, whatever we thought);
    a later SUCCESS fills in a receipt id the first one lacked;
    ERROR fails an open job; PENDING/IN_PROGRESS moves a job without an
    operation to ``pending`` and, for the poller holding ``claim``, schedules
    the next poll.  Anything else -- a late or repeated update -- changes
    nothing.
    """
    if job_id is not None:
        row = await tx.fetchone(
            "SELECT id, payment_id, state, operation_id, claim, receipt_id FROM receipt_jobs"
            " WHERE id = %s FOR UPDATE", (job_id,),
        )
    else:
        row = await tx.fetchone(
            "SELECT id, payment_id, state, operation_id, claim, receipt_id FROM receipt_jobs"
            " WHERE operation_id = %s OR (operation_id IS NULL AND external_id = %s)"
            " ORDER BY operation_id IS NULL LIMIT 1 FOR UPDATE",
            (op.id, op.external_id),
        )
    if row is None:
        return None
    job_id, payment_id, state, operation_id, current_claim, receipt_id = row
    if operation_id is not None and operation_id != op.id:
        return None  # another operation than the one this job follows
    if op.status == "SUCCESS":
        if state == "done":
            if receipt_id is None and op.receipt_id is not None:
                # SUCCESS came first without data.receiptId (Ubilling's integration
                # re-reads such operations for it); a later update brings it.
                await tx.execute(
                    "UPDATE receipt_jobs SET receipt_id = %s, updated = now() WHERE id = %s",
                    (op.receipt_id, job_id),
                )
            return None
        await tx.execute(
            "UPDATE receipt_jobs SET state = 'done', operation_id = %s, operation_status = %s,"
            " receipt_id = %s, last_error = NULL, finished = now(), updated = now()"
            " WHERE id = %s",
            (op.id, op.status, op.receipt_id, job_id),
        )
        return payment_id, "done"
    if op.status == "ERROR":
        if state not in OPEN_STATES:
            return None
        await tx.execute(
            "UPDATE receipt_jobs SET state = 'failed', operation_id = %s, operation_status = %s,"
            " last_error = %s, finished = now(), updated = now() WHERE id = %s",
            (op.id, op.status, op.error[:1000], job_id),
        )
        return payment_id, "failed"
    if state in ("queued", "posting"):
        await tx.execute(
            "UPDATE receipt_jobs SET state = 'pending', operation_id = %s, operation_status = %s,"
            " last_error = NULL, next_attempt_at = %s, updated = now(), state_since = NULL"
            " WHERE id = %s",
            (op.id, op.status, at(next_poll_at), job_id),
        )
        return payment_id, "pending"
    if state == "pending" and claim is not None and claim == current_claim:
        await tx.execute(
            "UPDATE receipt_jobs SET operation_status = %s, polls = polls + 1,"
            " next_attempt_at = %s, updated = now() WHERE id = %s",
            (op.status, at(next_poll_at), job_id),
        )
    return None


async def operation_unknown(tx: Tx, job_id: int, claim: int, error: str, next_at: float) -> bool:
    """A pending job whose status poll failed: count it, poll again later."""
    return await retry_later(tx, job_id, claim, "pending", "pending", error, next_at)


async def release_unsent(tx: Tx, claimed: list, now: float) -> None:
    """Hand jobs claimed in vain (never POSTed) back, as they were, due now."""
    for c in claimed:
        await tx.execute(
            "UPDATE receipt_jobs SET state = %s, next_attempt_at = %s, updated = now(),"
            " state_since = %s"
            " WHERE id = %s AND claim = %s AND state = 'posting'",
            (c.prior, at(now), c.prior_since, c.id, c.claim),
        )


# -- stuck jobs ------------------------------------------------------------------------------
@frozen
class StuckJob:
    """A job just found in one open state for longer than ``stuck_after``."""

    id: int
    payment_id: int
    external_id: str
    state: str
    since: datetime
    attempts: int
    last_error: str | None


async def stuck(tx: Tx, now: float, stuck_after: float, limit: int
                ) -> tuple[dict[str, int], list[StuckJob]]:
    """
    Stamp the open jobs whose ``state_since`` is NULL with ``now``; count, per
    open state, the jobs in it since ``now - stuck_after`` or before; and
    return up to ``limit`` of them not yet warned of in their state, marked
    warned (once per job and state; rows another transaction holds are left
    for a later round).
    """
    await tx.execute(
        "UPDATE receipt_jobs SET state_since = %s WHERE id IN ("
        "  SELECT id FROM receipt_jobs"
        "  WHERE state IN ('queued', 'posting', 'pending') AND state_since IS NULL"
        "  FOR UPDATE SKIP LOCKED)",
        (at(now),),
    )
    cutoff = at(now - stuck_after)
    rows = await tx.fetchall(
        "SELECT state, count(*) FROM receipt_jobs"
        " WHERE state IN ('queued', 'posting', 'pending') AND state_since <= %s"
        " GROUP BY state",
        (cutoff,),
    )
    counts = {state: 0 for state in OPEN_STATES}
    counts.update({state: n for state, n in rows})
    newly = await tx.fetchall(
        "WITH s AS ("
        "  SELECT id FROM receipt_jobs"
        "  WHERE state IN ('queued', 'posting', 'pending') AND state_since <= %s"
        "    AND NOT state = ANY(stuck_warned)"
        "  ORDER BY state_since, id LIMIT %s"
        "  FOR UPDATE SKIP LOCKED)"
        " UPDATE receipt_jobs j SET stuck_warned = j.stuck_warned || j.state"
        " FROM s WHERE j.id = s.id"
        " RETURNING j.id, j.payment_id, j.external_id, j.state, j.state_since, j.attempts,"
        "   j.last_error",
        (cutoff, limit),
    )
    return counts, [StuckJob(*r) for r in sorted(newly, key=lambda r: (r[4], r[0]))]
