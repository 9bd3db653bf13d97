"""
Online cinemas (MEGOGO, tvzavr) and the Irdeto CAS, inside the daemon:

  - catalog syncs (L{smartyd.vod.catalog_sync}, one code path, a feed reader
    per partner) on pollers every ``sync_interval``, once cluster-wide;
  - the partner outbox (L{smartyd.vod.outbox}): subscription changes marked in
    their own transaction, planned into partner calls, sent in order per user
    with retries and backoff (L{Outbox}, every instance; claims skip each other);
  - tvzavr ``check_accounts`` (renewals) and the MEGOGO reconcile, periodic.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from attrs import define, field
from twisted.logger import Logger

from smartyd.config import Config
from smartyd.db import Database, Tx
from smartyd.feature import Feature
from smartyd.partners import PartnerError, PartnerHTTP, PartnerRefused
from smartyd.poller import Poller
from smartyd.util.backoff import exponential
from smartyd.util.text import one_line
from smartyd.vod import outbox
from smartyd.vod.catalog_sync import CatalogSync
from smartyd.vod.irdeto import IrdetoClient, IrdetoPartner
from smartyd.vod.megogo import MegogoClient, MegogoPartner
from smartyd.vod.tvod import Tvod
from smartyd.vod.tvzavr import TvzavrClient, TvzavrPartner

log = Logger()

OUTBOX_INTERVAL = 5.0
LEASE = 120.0
MAX_BACKOFF = 3600.0
STUCK_AFTER = timedelta(hours=1)


def enabled(cfg: Config) -> bool:
    return cfg.megogo.enabled or cfg.tvzavr.enabled or cfg.irdeto.enabled


def partners(cfg: Config, client: Any, clock: Any, metrics: Any = None) -> dict[str, Any]:
    """The enabled partners, by provider name (what the outbox sends through)."""
    out: dict[str, Any] = {}
    if cfg.megogo.enabled:
        http = PartnerHTTP("megogo", client, clock, metrics, timeout=30.0)
        out["megogo"] = MegogoPartner(cfg.megogo, MegogoClient(cfg.megogo, http))
    if cfg.tvzavr.enabled:
        http = PartnerHTTP("tvzavr", client, clock, metrics, timeout=30.0,
                           max_body=512 * 1024 * 1024)
        out["tvzavr"] = TvzavrPartner(cfg.tvzavr, TvzavrClient(cfg.tvzavr, http, clock))
    if cfg.irdeto.enabled:
        http = PartnerHTTP("irdeto", client, clock, metrics, timeout=30.0)
        out["irdeto"] = IrdetoPartner(cfg.irdeto, IrdetoClient(cfg.irdeto, http))
    return out


def catalog_syncs(cfg: Config, client: Any, db: Database, clock: Any,
                  metrics: Any = None) -> dict[str, CatalogSync]:
    """One L{CatalogSync} per enabled cinema (what the daemon and ``vod sync`` run)."""
    out = {}
    if cfg.megogo.enabled:
        http = PartnerHTTP("megogo-feed", client, clock, metrics, timeout=600.0,
                           max_body=512 * 1024 * 1024)

        async def fetch_megogo(on_chunk) -> None:
            await http.stream("GET", cfg.megogo.xml_url, on_chunk)

        out["megogo"] = CatalogSync("megogo", fetch_megogo, db, clock,
                                    cfg.megogo.catalog_tariff_id, metrics)
    if cfg.tvzavr.enabled:
        tv = partners(cfg.replace(megogo=type(cfg.megogo)(), irdeto=type(cfg.irdeto)()),
                      client, clock, metrics)["tvzavr"]
        out["tvzavr"] = CatalogSync("tvzavr", tv.client.catalog, db, clock,
                                    cfg.tvzavr.catalog_tariff_id, metrics)
    return out


@define(eq=False)
class Outbox:
    """Plans marked customers into partner calls and sends the due ones."""

    db: Database
    clock: Any
    partners: dict[str, Any]
    metrics: Any = None
    batch: int = 100
    lease: float = LEASE
    interval: float = OUTBOX_INTERVAL

    async def run(self) -> dict:
        planned = await self.plan_all()
        sent = await self.send_due()
        await self.update_metrics()
        return {"planned": planned, **sent}

    # -- planning ---------------------------------------------------------------------------
    async def plan_all(self) -> int:
        total = 0
        while True:
            n = await self.db.run(self._plan_batch)
            total += n
            if n < self.batch:
                return total

    async def _plan_batch(self, tx: Tx) -> int:
        ids = await outbox.dirty_customers(tx, self.batch)
        for cid in ids:
            await self.plan_customer(tx, cid)
        if ids:
            await outbox.clear_dirty(tx, ids)
        return len(ids)

    async def plan_customer(self, tx: Tx, customer_id: int) -> int:
        tariffs = await outbox.active_tariffs(tx, customer_id)
        devices = await outbox.customer_devices(tx, customer_id)
        queued = 0
        for name, partner in self.partners.items():
            desired = partner.desired(customer_id, tariffs, devices)
            known = await outbox.known_state(tx, name, customer_id)
            for (user, item) in sorted(set(desired) | {k for k, w in known.items() if w}):
                if item == "user":
                    continue
                wanted = desired.get((user, item), False)
                if known.get((user, item)) == wanted or ((user, item) not in known and not wanted):
                    continue
                user_known = await outbox.user_state(tx, name, user)
                for op, args, marks in partner.calls(user, item, wanted, user_known):
                    await outbox.enqueue(tx, name, user, customer_id, op, args)
                    queued += 1
                    if marks:
                        await outbox.set_state(tx, name, user, marks, True, customer_id)
                await outbox.set_state(tx, name, user, item, wanted, customer_id)
        return queued

    # -- sending ----------------------------------------------------------------------------
    async def send_due(self) -> dict:
        done = failed = retried = 0
        while True:
            now = self.clock.seconds()
            calls = await self.db.run(outbox.claim, now, now + self.lease, self.batch)
            if not calls:
                # Every call sent, or waiting for its retry time: a user's next call
                # becomes due once the one before it is done, hence the loop.
                return {"done": done, "failed": failed, "retried": retried}
            for call in calls:
                outcome = await self._send(call)
                done += outcome == "done"
                failed += outcome == "failed"
                retried += outcome == "unknown"

    async def _send(self, call: outbox.Call) -> str:
        partner = self.partners.get(call.provider)
        if partner is None:
            # The partner was disabled with calls queued: they wait (not failed) for it.
            await self.db.run(outbox.finish, call, "unknown" if call.uncertain else "queued",
                              "partner not enabled", self.clock.seconds() + MAX_BACKOFF)
            return "waiting"
        try:
            if call.uncertain and await partner.in_effect(call):
                log.info("{provider} call {id} ({op}) was in effect already; not re-sent",
                         provider=call.provider, id=call.id, op=call.op)
            else:
                await partner.send(call)
        except PartnerRefused as e:
            await self.db.run(outbox.finish, call, "failed", one_line(e))
            log.warn("{provider} refused call {id} ({op}): {error}", provider=call.provider,
                     id=call.id, op=call.op, error=one_line(e))
            self._count(call.provider, "failed")
            return "failed"
        except PartnerError as e:
            delay = exponential(10.0, call.attempts, MAX_BACKOFF)
            await self.db.run(outbox.finish, call, "unknown", one_line(e),
                              self.clock.seconds() + delay)
            log.warn("{provider} call {id} ({op}) outcome unknown, retry in {delay}s: {error}",
                     provider=call.provider, id=call.id, op=call.op, delay=delay,
                     error=one_line(e))
            self._count(call.provider, "retry")
            return "unknown"
        await self.db.run(outbox.finish, call, "done")
        self._count(call.provider, "done")
        return "done"

    def _count(self, provider: str, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.partner_calls.labels(provider, outcome).inc()

    async def update_metrics(self) -> None:
        if self.metrics is None:
            return
        counts = await self.db.run(outbox.depth)
        for provider in set(self.partners) | {p for p, _ in counts}:
            for state in outbox.OPEN:
                self.metrics.partner_outbox.labels(provider, state).set(
                    counts.get((provider, state), 0))

    async def stuck(self) -> list[str]:
        return await self.db.run(outbox.stuck, outbox.at(self.clock.seconds()) - STUCK_AFTER)

    async def health(self) -> dict:
        """``/health``'s ``outbox`` field: each enabled partner ``ok`` or ``stuck``."""
        stuck = set(await self.stuck())
        return {"outbox": {p: "stuck" if p in stuck else "ok"
                           for p in sorted(set(self.partners) | stuck)}}


@define(eq=False)
class CheckAccounts:
    """tvzavr ``check_accounts``: a renewal call for every running subscription."""

    db: Database

    async def run(self) -> int:
        return await self.db.run(outbox.queue_renewals, "tvzavr")


@define(eq=False)
class Reconcile:
    """MEGOGO: compare ``user/subscriptions`` with ours; log, or queue the fix."""

    db: Database
    partner: MegogoPartner
    fix: bool = False
    mismatches: list = field(factory=list)

    async def run(self) -> int:
        self.mismatches = []
        rows = await self.db.run(outbox.settled_items, "megogo")
        for user, item, wanted, customer_id in rows:
            service = int(item.split(":", 1)[1])
            subs = await self.partner.client.subscriptions(user)
            has = subs is not None and service in subs
            if has == wanted:
                continue
            self.mismatches.append(user)
            log.warn("megogo reconcile: {user} service {service} is {has} there, {wanted} here",
                     user=user, service=service, has="on" if has else "off",
                     wanted="on" if wanted else "off")
            if self.fix:
                await self.db.run(outbox.enqueue, "megogo", user, customer_id,
                                  "subscribe" if wanted else "unsubscribe",
                                  {"service_id": service})
        return len(self.mismatches)


@define(eq=False)
class Vod:
    """What ``make_vod`` builds, for the admin CLI and the tests."""

    outbox: Outbox
    syncs: dict
    partners: dict
    tvod: Tvod | None = None


def make_vod(cfg: Config, *, db: Database, client: Any, clock: Any, metrics: Any) -> Feature:
    """
    Pollers: one catalog sync per enabled cinema (cluster-wide once), the
    outbox (every instance), tvzavr check_accounts and MEGOGO reconcile
    (cluster-wide once).
    """
    parts = partners(cfg, client, clock, metrics)
    box = Outbox(db, clock, parts, metrics)
    syncs = catalog_syncs(cfg, client, db, clock, metrics)
    services: list = [Poller("vod-outbox", OUTBOX_INTERVAL, box.run, clock, metrics=metrics,
                             max_backoff=60.0)]
    intervals = {"megogo": cfg.megogo.sync_interval, "tvzavr": cfg.tvzavr.sync_interval}
    for name, sync in syncs.items():
        services.append(Poller(f"vod-sync-{name}", intervals[name], sync.run, clock, db=db,
                               metrics=metrics))
    if cfg.tvzavr.enabled:
        services.append(Poller("tvzavr-check-accounts", cfg.tvzavr.sync_interval,
                               CheckAccounts(db).run, clock, db=db, metrics=metrics,
                               initial_delay=cfg.tvzavr.sync_interval))
    if cfg.megogo.enabled:
        services.append(Poller("megogo-reconcile", cfg.megogo.sync_interval,
                               Reconcile(db, parts["megogo"], cfg.megogo.reconcile == "fix").run,
                               clock, db=db, metrics=metrics,
                               initial_delay=cfg.megogo.sync_interval))
    tvod = Tvod(db, parts, cfg.billing.credit_limit)
    return Feature(services=tuple(services), handle=Vod(box, syncs, parts, tvod),
                   health=box.health)
