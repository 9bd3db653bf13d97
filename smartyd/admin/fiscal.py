"""
``smartyd-admin receipts``: the operator's view of the receipt queue.

  receipts [--state S] [--payment ID] [--limit N]   jobs, newest first (since when in their
                                                    state, the payment), and counts per state
  receipts fiscalize --payment ID                   queue a receipt for a payment (idempotent)
  receipts retry JOB                                a failed receipt handed back to the worker
  receipts refresh-cache                            fetch devices and positions now
"""

from __future__ import annotations

from smartyd import journals
from smartyd.admin.console import audited
from smartyd.fiscal import dreamkas_api, jobs
from smartyd.fiscal.dreamkas_cache import DreamkasCache
from smartyd.partners import HTTPClientService, PartnerError


def register(sub) -> dict:
    p = sub.add_parser("receipts", help="fiscal receipts (Dreamkas)")
    p.add_argument("--state", choices=jobs.STATES)
    p.add_argument("--payment", type=int, help="only the job of this payment id")
    p.add_argument("--limit", type=int, default=100)
    actions = p.add_subparsers(dest="action")
    f = actions.add_parser("fiscalize", help="queue a receipt for a payment")
    f.add_argument("--payment", type=int, required=True, help="payment id")
    actions.add_parser("refresh-cache", help="fetch Dreamkas devices and positions now")
    r = actions.add_parser("retry", help="hand a failed receipt back to the worker")
    r.add_argument("job", type=int, help="receipt job id")
    return {"receipts": cmd_receipts}


async def cmd_receipts(db, args, cfg, reactor, app) -> dict:
    action = getattr(args, "action", None)
    if action == "fiscalize":
        try:
            job, created = await audited(
                db, reactor, "receipt.fiscalize",
                lambda tx: jobs.enqueue_payment_id(tx, args.payment),
                after=lambda out: {"job": out[0].to_json(), "created": out[1]},
                customer_id=lambda tx, out: _customer(tx, out[0].id))
        except LookupError as e:
            raise ValueError(str(e))
        out = {"created": created, "job": job.to_json()}
        if not cfg.dreamkas.enabled:
            out["warning"] = "[dreamkas] enabled is false: the job waits until it is enabled"
        return out
    if action == "refresh-cache":
        return await refresh_cache(db, cfg, reactor)
    if action == "retry":
        out = {"job": await audited(db, reactor, "receipt.retry",
                                    lambda tx: journals.retry_receipt(tx, args.job),
                                    before=lambda tx: journals.receipt_job(tx, args.job))}
        if not cfg.dreamkas.enabled:
            out["warning"] = "[dreamkas] enabled is false: the job waits until it is enabled"
        return out
    return await db.run(journals.receipt_queue, args.state, args.limit, args.payment)


async def _customer(tx, job_id: int) -> int | None:
    job = await journals.receipt_job(tx, job_id)
    return job["customer_id"] if job else None


async def refresh_cache(db, cfg, reactor) -> dict:
    d = cfg.dreamkas
    if not d.token:
        raise ValueError("[dreamkas] token is not set")
    pool = HTTPClientService(reactor)
    try:
        api = dreamkas_api(d, client=pool.client, clock=reactor)
        snapshot = await DreamkasCache(db, api, reactor, d.cache_lifetime).refresh()
    except PartnerError as e:
        raise ValueError(str(e))
    finally:
        await pool.pool.closeCachedConnections()
    return summary(snapshot)


def summary(snapshot) -> dict:
    return {
        "devices": [{"id": d.get("id"), "name": d.get("name")} for d in snapshot.devices],
        "products": [{"id": p.get("id"), "name": p.get("name"), "tax": p.get("tax")}
                     for p in snapshot.products],
    }
