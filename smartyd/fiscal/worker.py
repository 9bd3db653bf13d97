"""
The receipt worker: one L{ReceiptWorker.run} per poll (a L{Poller} body).

A run
  1. POSTs due jobs, a batch at a time: claim (one transaction), build and
     keep each receipt body (one transaction), POST them with bounded
     concurrency, record every outcome (one transaction).  A job whose
     previous POST may have reached Dreamkas is looked up by ``externalId``
     first (paging through the operation list, see L{smartyd.fiscal.api})
     and only re-POSTed -- with the same ``externalId`` and body -- when
     Dreamkas shows no operation for it;
  2. follows pending operations (``GET /operations/{id}``) whose next poll is
     due, a batch at a time, until SUCCESS or ERROR;
  3. watches for jobs stuck in one open state for longer than ``stuck_after``
     seconds (``[dreamkas] stuck_after``): the gauge
     ``smartyd_receipts_stuck{state}`` counts them (the one queue's count, the
     same on every instance), and each is logged as a warning once per state
     (L{jobs.stuck}).

Failed tries back off per job (``base * 2**(attempts-1)``, capped) on the
injected clock; ``max_attempts`` failed tries fail the job with its reason.
A customer without a mobile phone or e-mail fails at once, with no API call.
"""

from __future__ import annotations

from typing import Any

from attrs import define, field, frozen
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from smartyd.db import Database
from smartyd.fiscal import jobs, receipt
from smartyd.fiscal.api import DreamkasAPI, Operation
from smartyd.fiscal.dreamkas_cache import CachedCatalog, DreamkasCache
from smartyd.partners import PartnerError, PartnerRefused
from smartyd.util.backoff import exponential

log = Logger()


class FiscalSetupError(Exception):
    """The configuration does not let us build a receipt (e.g. which device)."""


# -- what one POST came to ------------------------------------------------------------------
@frozen
class Created:
    op: Operation


@frozen
class Unknown:
    """The POST may or may not have created an operation."""

    error: str


@frozen
class NotCreated:
    """Dreamkas said no; ``retry`` when trying again later may help."""

    error: str
    retry: bool


@frozen
class NotSent:
    """The claim's lease ran too short to send this job safely; hand it back."""


# HTTP answers that mean "not now" rather than "never".
_RETRY_REFUSALS = ("401", "403", "408", "423", "429")


@define(eq=False)
class ReceiptWorker:
    db: Database
    api: DreamkasAPI
    catalog: DreamkasCache
    clock: Any
    device_id: int = 0
    tax_mode: str = "DEFAULT"
    poll_interval: float = 30.0
    metrics: Any = None
    batch: int = 100
    concurrency: int = 8
    lease: float = 300.0
    max_attempts: int = 10
    max_backoff: float = 3600.0
    max_batches: int = 20
    stuck_after: float = 3600.0
    _semaphore: Any = field(init=False, default=None)

    def __attrs_post_init__(self):
        self._semaphore = defer.DeferredSemaphore(self.concurrency)

    # -- the run ---------------------------------------------------------------------------
    async def run(self) -> dict:
        """One pass; raises only what the poller should back off for."""
        stats = {"posted": 0, "followed": 0, "stuck": 0}
        failure: Exception | None = None
        try:
            stats["posted"] = await self.post_due()
        except (PartnerError, FiscalSetupError) as e:
            failure = e
        stats["followed"] = await self.follow_due()
        stats["stuck"] = await self.watch_stuck()
        if isinstance(failure, FiscalSetupError):
            log.error("dreamkas receipts cannot be posted: {error}", error=str(failure))
        elif failure is not None:
            raise failure
        return stats

    def _now(self) -> float:
        return self.clock.seconds()

    def _backoff(self, attempts: int) -> float:
        return exponential(self.poll_interval, attempts - 1, self.max_backoff)

    def _poll_delay(self, polls: int) -> float:
        # Slow operations are polled less and less often.
        return exponential(self.poll_interval, polls // 10, self.max_backoff)

    def _send_window(self) -> float:
        """
        Seconds after a claim in which a job may still be sent: one job takes
        at most three requests (look-up, POST, look-up after a 409), and all
        of them must end before the lease does -- or another worker could
        take the job while our POST is under way.  A look-up may read several
        pages, so the window is checked again right before the POST.
        """
        timeout = getattr(getattr(self.api, "http", None), "timeout", 30.0)
        return max(self.lease - 3 * timeout - 30.0, 0.0)

    def _count(self, state: str) -> None:
        if self.metrics is not None and state in ("done", "failed"):
            self.metrics.receipts.labels(state).inc()

    # -- 1. POST -------------------------------------------------------------------------
    def _device(self, snapshot: CachedCatalog) -> int:
        if self.device_id:
            known = snapshot.device_ids()
            if known and self.device_id not in known:
                log.warn("dreamkas device {device} is not among the account's devices {known}",
                         device=self.device_id, known=known)
            return self.device_id
        known = snapshot.device_ids()
        if len(known) == 1:
            return known[0]
        raise FiscalSetupError(
            f"[dreamkas] device_id is 0 and the account has {len(known)} devices: set device_id"
        )

    async def post_due(self) -> int:
        posted = 0
        snapshot: CachedCatalog | None = None
        for _ in range(self.max_batches):
            now = self._now()
            claimed = await self.db.run(
                jobs.claim_for_post, now, now + self.lease, self.batch
            )
            if not claimed:
                break
            if snapshot is None:
                try:
                    snapshot = await self.catalog.get()
                    device = self._device(snapshot)
                except BaseException:
                    await self.db.run(jobs.release_unsent, claimed, now)
                    raise
            bodies, no_contact = await self.db.run(self._prepare, claimed, device, snapshot)
            for _ in range(no_contact):
                self._count("failed")
            ready = [(c, bodies[c.id]) for c in claimed if c.id in bodies]
            send_by = now + self._send_window()
            outcomes = await defer.gatherResults(
                [self._semaphore.run(
                    lambda c=c, b=b: Deferred.fromCoroutine(self._post_one(c, b, send_by)))
                 for c, b in ready],
                consumeErrors=True,
            )
            changed = await self.db.run(self._record, list(zip([c for c, _ in ready], outcomes)))
            for state in changed:
                self._count(state)
            posted += sum(1 for o in outcomes if not isinstance(o, NotSent))
            if len(claimed) < self.batch or any(isinstance(o, (Unknown, NotSent))
                                                 for o in outcomes):
                break  # nothing more due, or Dreamkas is struggling: let the jobs back off
        return posted

    async def _prepare(self, tx, claimed: list, device: int, snapshot: CachedCatalog
                       ) -> tuple[dict, int]:
        """Each claimed job's body (kept on its first claim); no-contact jobs fail here."""
        bodies: dict[int, dict] = {}
        failed = 0
        for c in claimed:
            if c.receipt is not None:
                bodies[c.id] = c.receipt
                continue
            try:
                body = receipt.build(
                    external_id=c.external_id, device_id=device, tax_mode=self.tax_mode,
                    amount=c.amount, provider=c.provider, details=c.details,
                    phone=c.phone, email=c.email, tariff_name=c.tariff_name,
                    products=snapshot.products,
                )
            except receipt.NoContact as e:
                if await jobs.fail(tx, c.id, str(e), claim=c.claim):
                    log.error(
                        "receipt for payment {payment_id} (account {account}) failed: {reason}",
                        payment_id=c.payment_id, account=c.account_id, provider=c.provider,
                        reason=str(e),
                    )
                    failed += 1
                continue
            await jobs.save_receipt(tx, c.id, c.claim, body)
            bodies[c.id] = body
        return bodies, failed

    async def _post_one(self, c: jobs.ClaimedPost, body: dict, send_by: float):
        """POST one receipt -- or find the operation a previous POST created."""
        if self._now() > send_by:
            return NotSent()
        try:
            if c.uncertain:
                op = await self.api.find_operation(c.external_id)
                if op is not None:
                    log.info("receipt {external_id}: found operation {operation} of an earlier"
                             " POST; not posting again", external_id=c.external_id,
                             operation=op.id)
                    return Created(op)
                if self._now() > send_by:  # the look-up (pages of it) took the time
                    return NotSent()
            try:
                op = await self.api.create_receipt(body)
            except PartnerRefused as e:
                if e.code != "409":
                    return NotCreated(f"refused by Dreamkas: {e.message}",
                                      retry=e.code in _RETRY_REFUSALS)
            else:
                if op.external_id not in (None, c.external_id):
                    return Unknown(f"POST /receipts answered operation {op.id} of externalId"
                                   f" {op.external_id}")
                return Created(op)
            # 409: Dreamkas has an operation with this externalId.
            op = await self.api.find_operation(c.external_id)
            if op is not None:
                return Created(op)
            return Unknown("Dreamkas reports the externalId as used but does not list"
                           " its operation")
        except PartnerError as e:
            return Unknown(e.message)
        except Exception as e:  # a bug must not lose track of a maybe-posted receipt
            log.failure("receipt {external_id}: unexpected error", external_id=c.external_id)
            return Unknown(f"{type(e).__name__}: {e}")

    async def _record(self, tx, results: list) -> list[str]:
        now = self._now()
        changed = []
        for c, outcome in results:
            if isinstance(outcome, NotSent):
                await jobs.release_unsent(tx, [c], now)
                continue
            if isinstance(outcome, Created):
                applied = await jobs.apply_operation(
                    tx, outcome.op, now + self.poll_interval, claim=c.claim, job_id=c.id
                )
                if applied is not None:
                    changed.append(applied[1])
                    if applied[1] == "failed":
                        log.error("receipt for payment {payment_id} failed: {reason}",
                                  payment_id=c.payment_id, reason=outcome.op.error)
                continue
            attempts = c.attempts + 1
            if isinstance(outcome, NotCreated) and not outcome.retry:
                reason = outcome.error
            elif attempts >= self.max_attempts:
                reason = f"gave up after {attempts} attempts: {outcome.error}"
                if isinstance(outcome, Unknown):
                    reason += (f" (the receipt may exist: look up externalId {c.external_id}"
                               " in Dreamkas before fiscalizing again)")
            else:
                # A job that may have reached Dreamkas stays 'posting' (its next
                # claim looks it up first); one that surely did not is 'queued'.
                uncertain = isinstance(outcome, Unknown) or c.uncertain
                to_state = "posting" if uncertain else "queued"
                await jobs.retry_later(tx, c.id, c.claim, "posting", to_state, outcome.error,
                                       now + self._backoff(attempts))
                log.warn("receipt for payment {payment_id}: try {attempts} failed: {error}",
                         payment_id=c.payment_id, attempts=attempts, error=outcome.error)
                continue
            if await jobs.fail(tx, c.id, reason, claim=c.claim, from_state="posting",
                               attempts=attempts):
                changed.append("failed")
                log.error("receipt for payment {payment_id} failed: {reason}",
                          payment_id=c.payment_id, reason=reason)
        return changed

    # -- 2. follow -------------------------------------------------------------------------
    async def follow_due(self) -> int:
        followed = 0
        for _ in range(self.max_batches):
            now = self._now()
            claimed = await self.db.run(jobs.claim_for_follow, now, now + self.lease, self.batch)
            if not claimed:
                break
            results = await defer.gatherResults(
                [self._semaphore.run(lambda c=c: Deferred.fromCoroutine(self._poll_one(c)))
                 for c in claimed],
                consumeErrors=True,
            )
            changed = await self.db.run(self._record_polls, list(zip(claimed, results)))
            for state in changed:
                self._count(state)
            followed += len(claimed)
            if len(claimed) < self.batch:
                break
        return followed

    async def _poll_one(self, c: jobs.ClaimedFollow):
        try:
            return await self.api.operation(c.operation_id)
        except PartnerError as e:
            return e.message
        except Exception as e:
            log.failure("receipt operation {operation}: unexpected error", operation=c.operation_id)
            return f"{type(e).__name__}: {e}"

    async def _record_polls(self, tx, results: list) -> list[str]:
        now = self._now()
        changed = []
        for c, result in results:
            if isinstance(result, Operation):
                applied = await jobs.apply_operation(
                    tx, result, now + self._poll_delay(c.polls + 1), claim=c.claim
                )
                if applied is not None:
                    changed.append(applied[1])
                    if applied[1] == "failed":
                        log.error("receipt {external_id} failed: {reason}",
                                  external_id=c.external_id, reason=result.error)
                continue
            attempts = c.attempts + 1
            if attempts >= self.max_attempts:
                reason = (f"gave up after {attempts} attempts to learn the status of operation"
                          f" {c.operation_id}: {result}")
                if await jobs.fail(tx, c.id, reason, claim=c.claim, from_state="pending",
                                   attempts=attempts):
                    changed.append("failed")
                    log.error("receipt {external_id} failed: {reason}",
                              external_id=c.external_id, reason=reason)
            else:
                await jobs.operation_unknown(tx, c.id, c.claim, result,
                                             now + self._backoff(attempts))
        return changed

    # -- 3. stuck jobs ---------------------------------------------------------------------
    async def watch_stuck(self) -> int:
        """Count the jobs stuck in an open state; warn of each once per state."""
        now = self._now()
        counts, newly = await self.db.run(jobs.stuck, now, self.stuck_after, self.batch)
        if self.metrics is not None:
            for state, n in counts.items():
                self.metrics.receipts_stuck.labels(state).set(n)
        for j in newly:
            log.warn(
                "receipt for payment {payment_id} has been {state} for {seconds} s, longer than"
                " [dreamkas] stuck_after ({stuck_after} s): externalId {external_id},"
                " {attempts} failed tries, last error: {error}",
                payment_id=j.payment_id, job_id=j.id, state=j.state,
                seconds=int(now - j.since.timestamp()), stuck_after=int(self.stuck_after),
                external_id=j.external_id, attempts=j.attempts, error=j.last_error or "none",
            )
        return sum(counts.values())
