"""
``smartyd-admin operator``: the operator console's staff (README, "Operator console");
and the audit rows of every ``smartyd-admin`` command that changes something
(L{audited}, L{recorded}).

  operator create --login L --role admin|support|viewer [--password-stdin]
                                 -> the operator, and ``password`` (generated:
                                    printed this once) unless read from stdin
  operator list                  -> {"operators": [...]}
  operator disable LOGIN         -> the operator (its sessions ended)
  operator password LOGIN [--password-stdin]
                                 -> the operator, and the new ``password`` when generated

Every change made with ``smartyd-admin`` is an audit row whose actor is
``cli`` (L{operators.CLI}), shown in the console's audit journal and on the
customer's card.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet.threads import deferToThread

from smartyd import ledger, operators
from smartyd.billing.engine import utc


def audited(db, reactor, action: str, change, **kw) -> Any:
    """
    ``change(tx)`` and its audit row (actor ``cli``, now by the reactor's
    clock) in one transaction: L{operators.audited}, whose keywords (before,
    after, customer_id, reason) ``kw`` passes on.  Returns a Deferred of the
    change's result.
    """
    at = utc(reactor.seconds())
    return db.run(lambda tx: operators.audited(tx, operators.CLI, action, change, at=at, **kw))


async def customer_of_account(tx, account_id: int | None) -> int | None:
    account = await ledger.get_account(tx, account_id) if account_id is not None else None
    return account.customer_id if account is not None else None


async def recorded(db, reactor, action: str, after: Any, *, account_id: int | None = None,
                   customer_id: int | None = None) -> None:
    """
    The audit row (actor ``cli``) of a change made at a partner (a gateway's
    charge, cancel or card removal: its own transactions, after the partner's
    answer); the customer is ``customer_id`` or ``account_id``'s.
    """
    async def nothing(tx):
        return after

    await audited(db, reactor, action, nothing,
                  customer_id=customer_id if customer_id is not None else (
                      lambda tx, _: customer_of_account(tx, account_id)))


def register(sub) -> dict:
    op = sub.add_parser("operator", help="operators of the console").add_subparsers(
        dest="action", required=True)
    c = op.add_parser("create")
    c.add_argument("--login", required=True)
    c.add_argument("--role", required=True, choices=operators.ROLES)
    c.add_argument("--password-stdin", action="store_true",
                   help="read the password from stdin (default: generate and print it once)")
    op.add_parser("list")
    op.add_parser("disable").add_argument("login")
    p = op.add_parser("password", help="set a new password (ends its sessions, clears a lock)")
    p.add_argument("login")
    p.add_argument("--password-stdin", action="store_true")
    return {"operator": cmd_operator}


def _password(args, stdin) -> tuple[str, bool]:
    """The password to set and whether it was generated here."""
    if not args.password_stdin:
        return operators.new_password(), True
    password = stdin.readline().rstrip("\r\n")
    operators.check_password(password)
    return password, False


async def cmd_operator(db, args, cfg, reactor, app=None, stdin=None) -> dict:
    stdin = stdin or sys.stdin
    if args.action == "list":
        return {"operators": [o.to_json() for o in await db.run(operators.listing)]}
    if args.action == "disable":
        op = await audited(db, reactor, "operator.disable",
                           lambda tx: operators.disable(tx, args.login),
                           before=lambda tx: operators.get(tx, args.login))
        return op.to_json()
    if args.action == "create":
        operators.check_login(args.login)
    password, generated = _password(args, stdin)
    pw_hash = await deferToThread(ledger.hash_password, password)
    if args.action == "create":
        op = await audited(db, reactor, "operator.create",
                           lambda tx: operators.create(tx, args.login, args.role, pw_hash))
    else:
        op = await audited(db, reactor, "operator.password",
                           lambda tx: operators.set_password(tx, args.login, pw_hash),
                           after=lambda op: {"login": op.login})
    out = op.to_json()
    if generated:
        out["password"] = password
    return out


ACCOUNT_STATE = ("login", "active", "status_reason")


async def set_account_active(db, account_id: int, active: bool, reason: str, reactor) -> dict:
    """``account block|unblock``: the change and its audit row (actor ``cli``) in one transaction."""
    def state(account):
        if account is None:
            return None
        return {"account": account_id, "customer_id": account.customer_id,
                **{k: account.to_json()[k] for k in ACCOUNT_STATE}}

    async def before(tx):
        return state(await ledger.get_account(tx, account_id, lock=True))

    account = await audited(db, reactor, "account.unblock" if active else "account.block",
                            lambda tx: ledger.set_active(tx, account_id, active, reason),
                            before=before, after=state, reason=reason)
    return account.to_json()
