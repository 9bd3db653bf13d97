"""
Dreamkas fiscalization: every accepted payment gets its fiscal receipt exactly once.

Operators under 54-FZ print a receipt on their cash device for each payment;
a missed receipt is a fine, a double receipt a tax error.  When
``[dreamkas] enabled``:

  - each accepted payment (with ``always_fiscalize = false``: each payment an
    admin marks, ``smartyd-admin receipts fiscalize --payment ID``) gets a
    job in ``receipt_jobs``, inserted by a payment hook inside the payment's
    own transaction (L{jobs});
  - a L{Poller} runs the L{ReceiptWorker} every ``poll_interval`` seconds:
    it POSTs receipts and follows their operations to SUCCESS or ERROR;
  - ``POST /webhooks/dreamkas/<webhook_secret>`` applies operation updates
    as they happen (L{DreamkasWebhook}); the webhook URL is registered in the
    Dreamkas Kabinet (or ``POST /api/webhooks``) with ``operations`` on;
  - devices and positions are cached for ``cache_lifetime`` seconds
    (L{DreamkasCache}); ``smartyd-admin receipts refresh-cache`` refetches them;
  - a job in one open state for longer than ``stuck_after`` seconds is
    counted in ``smartyd_receipts_stuck{state}`` and logged as a warning once.
"""

from __future__ import annotations

from smartyd.config import Dreamkas as DreamkasConfig
from smartyd.feature import Feature
from smartyd.fiscal import jobs
from smartyd.fiscal.api import PARTNER, DreamkasAPI, Operation
from smartyd.fiscal.dreamkas_cache import DreamkasCache
from smartyd.fiscal.webhook import DreamkasWebhook
from smartyd.fiscal.worker import ReceiptWorker
from smartyd.partners import PartnerHTTP
from smartyd.payments import AcceptHook
from smartyd.poller import Poller

__all__ = [
    "DreamkasAPI", "DreamkasCache", "DreamkasWebhook", "Operation", "ReceiptWorker",
    "dreamkas_api", "enqueue_receipt", "make_dreamkas", "payment_hooks",
]

POLLER_JOB = "dreamkas-receipts"


async def enqueue_receipt(tx, payment) -> None:
    """The payment hook: queue the payment's receipt in its own transaction."""
    await jobs.enqueue(tx, payment.id, payment.provider, payment.external_id)


# The one-statement accept (migration 0011) inserts the same job itself.
enqueue_receipt.in_sql = ("receipt",)


def payment_hooks(cfg: DreamkasConfig) -> tuple[AcceptHook, ...]:
    """What every accepted payment must do for fiscalization, in its own transaction."""
    return (enqueue_receipt,) if cfg.enabled and cfg.always_fiscalize else ()


def dreamkas_api(cfg: DreamkasConfig, *, client, clock, metrics=None) -> DreamkasAPI:
    return DreamkasAPI(PartnerHTTP(PARTNER, client, clock, metrics=metrics),
                       cfg.api_url, cfg.token)


def make_dreamkas(cfg: DreamkasConfig, *, db, client, clock, metrics) -> Feature:
    """The receipt worker on a poller, and ``/webhooks/dreamkas/<webhook_secret>``."""
    api = dreamkas_api(cfg, client=client, clock=clock, metrics=metrics)
    worker = ReceiptWorker(
        db, api, DreamkasCache(db, api, clock, cfg.cache_lifetime), clock,
        device_id=cfg.device_id, tax_mode=cfg.tax_mode, poll_interval=cfg.poll_interval,
        metrics=metrics, stuck_after=cfg.stuck_after,
    )
    # No cluster-wide lock: the queue is safe for every instance to work at
    # once (claims skip each other's rows).
    poller = Poller(POLLER_JOB, cfg.poll_interval, worker.run, clock, metrics=metrics)
    webhook = DreamkasWebhook(db, cfg.webhook_secret, clock, cfg.poll_interval, metrics)
    return Feature(mounts=(("/webhooks/dreamkas", webhook.resource()),), services=(poller,),
                   handle=worker)
