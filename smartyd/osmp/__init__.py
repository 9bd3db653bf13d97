"""
OSMP (QIWI) terminal payments: ``GET``/``POST /payments/osmp`` (DESIGN §4).

Terminals in the field speak this protocol and will not adapt to us, so the
answer to *every* request that passes the access checks -- garbage included --
is ``200 text/xml; charset=utf-8``, a well-formed ``<response>`` with a
result code from the specification.  The terminal repeats a request answered
1 or 90 for up to a day and treats every other code as final; the mapping
below is built around that::

    0    check: the account may be paid; pay: accepted, or a repeat of an
         accepted txn_id (same prv_txn and sum, nothing credited again)
    1    temporary error: the database is unreachable or timed out, smartyd
         is still starting (pay), or an unexpected error rolled a pay back
    4    the account is not in the configured format (a wrong check digit
         of a personal payment code, not digits, not a login)
    5    no such account
    7    the account does not take payments (``payments_allowed`` off), or
         it is blocked and ``[osmp] forbid_blocked`` is set
    8    pay: the ledger cannot book the amount (the balance would leave
         the range of a money column) -- retrying will not help
    79   the account is blocked
    90   pay: PostgreSQL rolled the payment back for concurrency (deadlock,
         serialization failure, a lock not granted in time): retry
    241  sum below ``min_sum`` (a pay of 0.00 too)
    242  sum above ``max_sum``
    243  check: the account cannot be checked now (smartyd is starting)
    300  anything else: a missing, repeated or malformed parameter, an
         unknown command, a txn_date further than ``max_txn_age`` from now,
         a txn_id accepted before with another account or sum (a conflict),
         an unexpected error in a check

Money safety:

- A pay is L{smartyd.payments.accept} (payment row + ledger credit in one
  transaction, idempotent on ``("osmp", txn_id)`` through a unique index), so
  twenty copies of one pay on twenty connections or several instances credit
  once, and every copy answers with the same ``prv_txn`` (the payment id).
- Conditions on *new* money (txn_date age, sum limits, account status) are
  checked only when the txn_id is not accepted yet: a retry of an accepted
  pay is answered from the stored payment even if the account was blocked or
  the txn_date aged past ``max_txn_age`` in between (a commit whose
  acknowledgement was lost answers 1, and QIWI retries for up to 24 h).
- The work is shielded from the client's disconnect (Klein cancels the
  handler's Deferred when the connection drops): the transaction commits or
  rolls back as a whole and its outcome is logged either way.

Access comes first: a source address outside ``[osmp] allow`` gets a
body-less 403, wrong or missing HTTP Basic credentials (when ``username`` is
set) a body-less 401; neither reaches the protocol, both are counted in
``smartyd_osmp_refused_requests``.

``txn_date`` is read as Moscow time (UTC+3, no DST since 2014): the public
descriptions of the protocol give it as the date of the payment in the
payment system's own time zone, and QIWI runs on Moscow time.  The zone is a
constructor argument (L{OSMPService.txn_tz}).

The package in three parts:

- L{protocol}: result codes, request parsing, the XML answer; no I/O.
- L{service}: L{OSMPService}, check and pay against the database, and the
  one place where a failure becomes a result code.
- L{web}: the Klein resource -- access, shielding, metrics, XML out.
"""

from __future__ import annotations

from typing import Callable

from twisted.logger import Logger

from smartyd.config import OSMP as OSMPConfig
from smartyd.feature import Feature
from smartyd.osmp.protocol import (
    ACCOUNT_INACTIVE,
    ACCOUNT_NOT_FOUND,
    BAD_ACCOUNT_FORMAT,
    CANNOT_CHECK,
    CONTENT_TYPE,
    MOSCOW,
    NOT_COMPLETED,
    OK,
    OTHER_ERROR,
    PAYMENT_FORBIDDEN,
    PROVIDER,
    RESULT_CODES,
    SUM_TOO_LARGE,
    SUM_TOO_SMALL,
    TECHNICAL_REFUSAL,
    TEMPORARY_ERROR,
    Answer,
    OSMPRequest,
    Refused,
    answer,
    format_txn_date,
    parse_account,
    parse_request,
    parse_txn_date,
)
from smartyd.osmp.service import OSMPService, PayOutcome, find_account
from smartyd.osmp.web import OSMP
from smartyd.payments import Payments

__all__ = [
    "ACCOUNT_INACTIVE", "ACCOUNT_NOT_FOUND", "BAD_ACCOUNT_FORMAT", "CANNOT_CHECK",
    "CONTENT_TYPE", "MOSCOW", "NOT_COMPLETED", "OK", "OTHER_ERROR", "PAYMENT_FORBIDDEN",
    "PROVIDER", "RESULT_CODES", "SUM_TOO_LARGE", "SUM_TOO_SMALL", "TECHNICAL_REFUSAL",
    "TEMPORARY_ERROR", "Answer", "OSMP", "OSMPRequest", "OSMPService", "PayOutcome",
    "Refused", "answer", "find_account", "format_txn_date", "make_osmp", "parse_account",
    "parse_request", "parse_txn_date",
]

log = Logger()


def make_osmp(cfg: OSMPConfig, *, db, clock, payments: Payments, metrics,
              readiness: Callable[[], bool], trusted_proxies: tuple = ()) -> Feature:
    """``/payments/osmp`` (the composition root builds it when ``[osmp] enabled``)."""
    if cfg.username and not cfg.password:
        log.warn("[osmp] username is set but password is empty: terminals authenticate"
                 " with an empty password")
    service = OSMPService(cfg, db, clock, metrics, hooks=payments.accept_hooks, ready=readiness)
    osmp = OSMP(cfg, service, metrics, trusted_proxies=trusted_proxies)
    return Feature(mounts=(("/payments/osmp", osmp.resource()),), handle=service)
