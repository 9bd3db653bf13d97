"""
The operator's journals: payments per day and provider, one day's payments,
the receipt queue and the partners' health.  Plain async functions on a
transaction (L{smartyd.db.Tx}, through C{db.run(fn, ...)}), called alike by
``smartyd-admin`` (L{smartyd.admin.journals}) and the operator console: the
console owns no rule of its own (DESIGN §12).  Registry reconciliation is
L{smartyd.reconcile}.

Every function returns JSON-ready values: amounts as strings with two
decimals (as the ledger writes them), moments as ISO-8601 strings, days as
``YYYY-MM-DD``.

The operator's day
------------------
A payment belongs to the day of its I{moment}: the provider's own date when
it sent one (``payments.external_date``: the OSMP ``txn_date``), else when we
accepted it (``payments.created``) -- so a QIWI payment of 23:59:58 accepted
at 00:00:03 is in the day QIWI's registry puts it in.  Days are counted in
Moscow time (UTC+3, no DST: L{smartyd.osmp.protocol.MOSCOW}), the zone the
OSMP service reads ``txn_date`` in; every function takes ``tz`` (a fixed
offset) for another.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal

from smartyd.db import Tx
from smartyd.fiscal import jobs
from smartyd.osmp.protocol import MOSCOW
from smartyd.vod import STUCK_AFTER, outbox
from smartyd.widgets.epg import POLLER_JOB as EPG_JOB

__all__ = [
    "MAX_DAYS", "MOSCOW", "JournalError", "ReceiptNotRetryable", "day_bounds", "day_payments",
    "parse_day", "partner_health", "payments_by_day", "receipt_job", "receipt_queue",
    "retry_receipt",
    "zone_name",
]

# The longest range of payments_by_day, in days (a leap year).
MAX_DAYS = 366
# The moment a payment is booked on (see the module docstring).
MOMENT = "coalesce(p.external_date, p.created)"


class JournalError(ValueError):
    """A request the journals cannot answer (bad range, unknown job): the message says why."""


class ReceiptNotRetryable(JournalError):
    """The receipt job does not exist, is not failed, or Dreamkas itself failed its operation."""


def _money(v: Decimal | None) -> str:
    return str((v or Decimal("0")).quantize(Decimal("0.01")))


def _iso(v: datetime | None, tz: timezone) -> str | None:
    if v is None or (isinstance(v, datetime) and v.year < 2):  # '-infinity'
        return None
    return v.astimezone(tz).isoformat()


def parse_day(text: str) -> date:
    """``YYYY-MM-DD`` as a date; L{JournalError} naming the value otherwise."""
    try:
        return date.fromisoformat(text.strip())
    except (ValueError, AttributeError):
        raise JournalError(f"not a day (YYYY-MM-DD): {text!r}")


def day_bounds(day: date, tz: timezone = MOSCOW) -> tuple[datetime, datetime]:
    """``[start, end)`` of the operator's ``day`` in ``tz``, as aware datetimes."""
    start = datetime.combine(day, time(0), tzinfo=tz)
    return start, start + timedelta(days=1)


# -- payments ------------------------------------------------------------------------------------
async def payments_by_day(tx: Tx, date_from: date, date_to: date, provider: str | None = None,
                          tz: timezone = MOSCOW) -> dict:
    """
    Payments per day and provider from ``date_from`` to ``date_to``
    (inclusive; at most L{MAX_DAYS} days), of one ``provider`` or all.

    Returns::

        {"from": "2026-03-01", "to": "2026-03-02", "provider": "osmp" | None,
         "timezone": "UTC+03:00",
         "days": [{"day": "2026-03-01", "provider": "osmp", "count": 2, "total": "20.45"}, ...],
                  # days without payments are absent; ordered by day, then provider
         "providers": {"osmp": {"count": 2, "total": "20.45"}, ...},
         "count": 2, "total": "20.45"}

    Raises L{JournalError} for a reversed or too long range.
    """
    if date_to < date_from:
        raise JournalError(f"the range ends ({date_to}) before it starts ({date_from})")
    if (date_to - date_from).days + 1 > MAX_DAYS:
        raise JournalError(f"a range of at most {MAX_DAYS} days")
    start, _ = day_bounds(date_from, tz)
    _, end = day_bounds(date_to, tz)
    # One provider: a range of payments_provider_moment_idx (migration 0020).
    only = " AND p.provider = %(provider)s" if provider is not None else ""
    rows = await tx.fetchall(
        f"SELECT (({MOMENT} AT TIME ZONE 'UTC') + %(offset)s)::date AS day, p.provider,"
        f"  count(*), sum(p.amount)"
        f" FROM payments p WHERE {MOMENT} >= %(start)s AND {MOMENT} < %(end)s{only}"
        f" GROUP BY 1, 2 ORDER BY 1, 2",
        {"offset": tz.utcoffset(None), "start": start, "end": end, "provider": provider},
    )
    days, providers = [], {}
    count, total = 0, Decimal("0")
    for day, prov, n, amount in rows:
        days.append({"day": day.isoformat(), "provider": prov, "count": n,
                     "total": _money(amount)})
        p = providers.setdefault(prov, {"count": 0, "total": Decimal("0")})
        p["count"] += n
        p["total"] += amount
        count += n
        total += amount
    return {
        "from": date_from.isoformat(), "to": date_to.isoformat(), "provider": provider,
        "timezone": zone_name(tz),
        "days": days,
        "providers": {k: {"count": v["count"], "total": _money(v["total"])}
                      for k, v in sorted(providers.items())},
        "count": count, "total": _money(total),
    }


async def day_payments(tx: Tx, day: date, provider: str, tz: timezone = MOSCOW) -> dict:
    """
    One day's payments of ``provider``, in order of their moment.

    Returns::

        {"day": "2026-03-01", "provider": "osmp", "timezone": "UTC+03:00",
         "count": 2, "total": "20.45",
         "payments": [{"id": 7, "provider": "osmp", "external_id": "1234567",
                       "customer_id": 4, "account_id": 42,
                       "account": "426",        # what the payer gave (details.account),
                                                # else the account's login; None if neither
                       "amount": "10.45",
                       "time": "2026-03-01T15:00:00+03:00",  # the payment's moment in tz
                       "created": "2026-03-01T15:00:02+03:00",  # when we accepted it
                       "status": "accepted",
                       "receipt": "done" | "failed" | ... | None,  # its receipt job's state
                       "receipt_job": 3 | None, "receipt_error": str | None}, ...]}
    """
    start, end = day_bounds(day, tz)
    rows = await tx.fetchall(
        f"SELECT p.id, p.provider, p.external_id, p.customer_id, p.account_id,"
        f"  coalesce(p.details->>'account', a.login), p.amount, {MOMENT}, p.created, p.status,"
        f"  j.state, j.id, j.last_error"
        f" FROM payments p LEFT JOIN accounts a ON a.id = p.account_id"
        f"  LEFT JOIN receipt_jobs j ON j.payment_id = p.id"
        f" WHERE p.provider = %s AND {MOMENT} >= %s AND {MOMENT} < %s"
        f" ORDER BY {MOMENT}, p.id",
        (provider, start, end),
    )
    out = [{
        "id": r[0], "provider": r[1], "external_id": r[2], "customer_id": r[3],
        "account_id": r[4], "account": r[5], "amount": _money(r[6]),
        "time": _iso(r[7], tz), "created": _iso(r[8], tz), "status": r[9],
        "receipt": r[10], "receipt_job": r[11], "receipt_error": r[12],
    } for r in rows]
    return {"day": day.isoformat(), "provider": provider, "timezone": zone_name(tz),
            "count": len(out), "total": _money(sum((r[6] for r in rows), Decimal("0"))),
            "payments": out}


def zone_name(tz: timezone) -> str:
    """``UTC+03:00``."""
    offset = tz.utcoffset(None)
    sign = "-" if offset < timedelta(0) else "+"
    minutes = abs(int(offset.total_seconds())) // 60
    return f"UTC{sign}{minutes // 60:02d}:{minutes % 60:02d}"


# -- receipts ------------------------------------------------------------------------------------
async def receipt_queue(tx: Tx, state: str | None = None, limit: int = 100,
                        payment_id: int | None = None, tz: timezone = MOSCOW) -> dict:
    """
    The Dreamkas receipt queue, newest jobs first (L{jobs.list_jobs}).

    Returns::

        {"counts": {"queued": 0, "posting": 0, "pending": 0, "done": 1, "failed": 1},
         "jobs": [{<jobs.Job.to_json(): id, payment_id, external_id, state, attempts,
                   polls, next_attempt_at, operation_id, operation_status, receipt_id,
                   last_error, created, finished>,
                   "since": ISO | None,  # in its state since: state_since for an open job
                                         # (None until the worker's next round stamps it),
                                         # finished for done/failed
                   "provider": "osmp", "payment_external_id": "1234567",
                   "customer_id": 4, "amount": "10.45",
                   "retryable": bool}, ...]}  # retry_receipt would take it
    """
    found = await jobs.list_jobs(tx, state, max(1, min(limit, 10000)), payment_id)
    extra = {r[0]: r[1:] for r in await tx.fetchall(
        "SELECT j.id, j.state_since, p.provider, p.external_id, p.customer_id, p.amount"
        " FROM receipt_jobs j JOIN payments p ON p.id = j.payment_id WHERE j.id = ANY(%s)",
        ([j.id for j in found],),
    )}
    out = []
    for job in found:
        state_since, provider, external_id, customer_id, amount = extra[job.id]
        since = state_since if job.state in jobs.OPEN_STATES else job.finished
        out.append({**job.to_json(), "since": _iso(since, tz), "provider": provider,
                    "payment_external_id": external_id, "customer_id": customer_id,
                    "amount": _money(amount),
                    "retryable": job.state == "failed" and job.operation_status != "ERROR"})
    return {"counts": await jobs.counts(tx), "jobs": out}


async def receipt_job(tx: Tx, job_id: int, tz: timezone = MOSCOW) -> dict | None:
    """One receipt job as L{receipt_queue} lists it (its payment's customer too), or None."""
    payment_id = await tx.fetchval("SELECT payment_id FROM receipt_jobs WHERE id = %s",
                                   (job_id,))
    if payment_id is None:
        return None
    return (await receipt_queue(tx, limit=1, payment_id=payment_id, tz=tz))["jobs"][0]


async def retry_receipt(tx: Tx, job_id: int) -> dict:
    """
    A failed receipt job handed back to the worker (L{jobs.retry_failed}):
    returns its C{Job.to_json()}.  Raises L{ReceiptNotRetryable} (the message
    says why) for an unknown job, a job not failed, or one whose Dreamkas
    operation failed (a retry would find that same operation again).  A job
    with an operation is polled again, one without is looked up by its
    ``externalId`` before it is POSTed again: never a second receipt.
    """
    job = await jobs.retry_failed(tx, job_id)
    if job is not None:
        return job.to_json()
    row = await tx.fetchone(
        "SELECT state, operation_id, external_id FROM receipt_jobs WHERE id = %s", (job_id,))
    if row is None:
        raise ReceiptNotRetryable(f"no receipt job {job_id}")
    state, operation_id, external_id = row
    if state != "failed":
        raise ReceiptNotRetryable(f"receipt job {job_id} is {state}, not failed")
    raise ReceiptNotRetryable(
        f"receipt job {job_id}: Dreamkas failed its operation {operation_id} (externalId"
        f" {external_id}); a retry would find the same operation")


# -- partner health ------------------------------------------------------------------------------
async def partner_health(tx: Tx, now: float, stuck_after: timedelta = STUCK_AFTER,
                         limit: int = 100, tz: timezone = MOSCOW) -> dict:
    """
    The partners' health at ``now`` (POSIX seconds from the caller's clock);
    a partner call is stuck when failed or open for longer than ``stuck_after``
    (by default as ``/health``'s outbox field counts it, L{smartyd.vod.STUCK_AFTER}).

    Returns::

        {"now": ISO,
         "pollers": [{"job": "epg-sync", "outcome": "ok" | "error" | "running" | "never",
                      "last_started": ISO | None, "last_finished": ISO | None,
                      "last_error": str | None, "runs": 3, "failures": 1}, ...],
                     # every job in job_runs (the pollers that run once cluster-wide)
         "outbox": {"depth": {"megogo": {"queued": 1, "failed": 1}, ...},  # open calls
                    "stuck_providers": ["megogo"],  # as /health's outbox field has them
                    "stuck": [<outbox.Call.to_json()> + {"created": ISO}, ...]},
                             # failed calls and open ones older than stuck_after, oldest first
         "epg": {"last_sync": ISO | None, "outcome": ..., "last_error": str | None,
                 "programmes": 120, "guide_until": ISO | None},
         "receipts": {"queued": 0, ..., "failed": 1}}
    """
    moment = jobs.at(now)
    cutoff = moment - stuck_after
    pollers = []
    for job, started, finished, ok, error, runs, failures in await tx.fetchall(
            "SELECT job, last_started, last_finished, last_ok, last_error, runs, failures"
            " FROM job_runs ORDER BY job"):
        if started is None:
            outcome = "never"
        elif finished is None or finished < started:
            outcome = "running"
        else:
            outcome = "ok" if ok else "error"
        pollers.append({"job": job, "outcome": outcome, "last_started": _iso(started, tz),
                        "last_finished": _iso(finished, tz), "last_error": error,
                        "runs": runs, "failures": failures})
    depth: dict[str, dict[str, int]] = {}
    for (provider, state), n in sorted((await outbox.depth(tx)).items()):
        depth.setdefault(provider, {})[state] = n
    stuck = [{**call.to_json(), "created": _iso(created, tz)}
             for call, created in await outbox.stuck_calls(tx, cutoff, limit)]
    epg = next((p for p in pollers if p["job"] == EPG_JOB), None)
    programmes, guide_until = await tx.fetchone(
        "SELECT count(*), max(stop) FROM epg_programmes")
    return {
        "now": _iso(moment, tz),
        "pollers": pollers,
        "outbox": {"depth": depth, "stuck_providers": await outbox.stuck(tx, cutoff),
                   "stuck": stuck},
        "epg": {"last_sync": epg["last_finished"] if epg else None,
                "outcome": epg["outcome"] if epg else "never",
                "last_error": epg["last_error"] if epg else None,
                "programmes": programmes, "guide_until": _iso(guide_until, tz)},
        "receipts": await jobs.counts(tx),
    }
