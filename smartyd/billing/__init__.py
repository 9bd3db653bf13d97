"""
The built-in billing: the charging job (a L{Poller} running every
``[billing] charge_interval`` seconds, once cluster-wide) and the payment
hook that settles a paying customer at once.  The rules are in
L{smartyd.billing.engine}; the period arithmetic in L{smartyd.billing.periods}.
"""

from __future__ import annotations

from typing import Any

from attrs import define
from twisted.logger import Logger

from smartyd.billing import engine
from smartyd.billing.engine import RunResult, utc
from smartyd.config import Billing as BillingConfig
from smartyd.db import Database
from smartyd.feature import Feature
from smartyd.poller import Poller

log = Logger()

POLLER_JOB = "billing-charge"


def payment_hooks(cfg: BillingConfig) -> tuple:
    """The hooks a payment runs in its transaction: settling its customer (charging modes)."""
    return (engine.payment_hook(cfg),) if cfg.charges else ()


@define(eq=False)
class Charging:
    """One charging run as of the clock's now (what the poller runs)."""

    cfg: BillingConfig
    db: Database
    clock: Any
    metrics: Any = None
    batch: int = 500
    # Autopayment's hook (smartyd.gateways.autopay): before each batch settles.
    before_settle: Any = None

    async def run(self, at=None) -> RunResult:
        started = self.clock.seconds()
        at = at if at is not None else utc(started)
        result = await engine.run(self.db, self.cfg, at, batch=self.batch, metrics=self.metrics,
                                  before_settle=self.before_settle)
        if self.metrics is not None:
            self.metrics.billing_run_seconds.set(self.clock.seconds() - started)
            self.metrics.billing_debtors.set(await self.db.run(engine.debtor_count))
        if result.charged or result.suspended or result.reactivated:
            log.info("billing run as of {at}: {charged} charges, {amount} charged,"
                     " {suspended} suspended, {reactivated} resumed",
                     at=at.isoformat(), charged=result.charged, amount=result.amount,
                     suspended=result.suspended, reactivated=result.reactivated)
        return result


def make_billing(cfg: BillingConfig, *, db: Database, clock: Any, metrics: Any,
                 before_settle: Any = None) -> Feature:
    """
    The charging job: in builtin/transactional mode a poller every
    ``charge_interval`` seconds, once cluster-wide (the job's advisory lock
    and ``job_runs``); in full/reduced mode nothing runs.
    """
    charging = Charging(cfg, db, clock, metrics, before_settle=before_settle)
    if not cfg.charges:
        return Feature(handle=charging)
    poller = Poller(POLLER_JOB, cfg.charge_interval, charging.run, clock, db=db,
                    metrics=metrics)
    return Feature(services=(poller,), handle=charging)
