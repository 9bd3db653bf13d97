"""
``smartyd-admin operator``: the operator console's staff (README, "Operator console").

  operator create --login L --role admin|support|viewer [--password-stdin]
                                 -> the operator, and ``password`` (generated:
                                    printed this once) unless read from stdin
  operator list                  -> {"operators": [...]}
  operator disable LOGIN         -> the operator (its sessions ended)
  operator password LOGIN [--password-stdin]
                                 -> the operator, and the new ``password`` when generated

Every change is an audit row whose actor is ``cli``; so is ``account
block|unblock`` (L{set_account_active}).
"""

from __future__ import annotations

import sys

from twisted.internet.threads import deferToThread

from smartyd import ledger, operators
from smartyd.billing.engine import utc


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
    at = utc(reactor.seconds())
    if args.action == "disable":

        async def disable(tx):
            before = await operators.get(tx, args.login)
            op = await operators.disable(tx, args.login)
            await operators.audit(tx, operators.CLI, "operator.disable", at=at,
                                  before=before.to_json(), after=op.to_json())
            return op.to_json()

        return await db.run(disable)
    if args.action == "create":
        operators.check_login(args.login)
    password, generated = _password(args, stdin)
    pw_hash = await deferToThread(ledger.hash_password, password)

    async def change(tx):
        if args.action == "create":
            op = await operators.create(tx, args.login, args.role, pw_hash)
            await operators.audit(tx, operators.CLI, "operator.create", at=at,
                                  after=op.to_json())
        else:
            op = await operators.set_password(tx, args.login, pw_hash)
            await operators.audit(tx, operators.CLI, "operator.password", at=at,
                                  after={"login": op.login})
        return op.to_json()

    out = await db.run(change)
    if generated:
        out["password"] = password
    return out


async def set_account_active(db, account_id: int, active: bool, reason: str, reactor) -> dict:
    """``account block|unblock``: the change and its audit row (actor ``cli``) in one transaction."""
    at = utc(reactor.seconds())

    async def change(tx):
        before = await ledger.get_account(tx, account_id, lock=True)
        account = await ledger.set_active(tx, account_id, active, reason)
        keep = ("login", "active", "status_reason")
        await operators.audit(
            tx, operators.CLI, "account.unblock" if active else "account.block", at=at,
            customer_id=account.customer_id,
            before={"account": account_id, **{k: before.to_json()[k] for k in keep}},
            after={"account": account_id, **{k: account.to_json()[k] for k in keep}},
            reason=reason)
        return account.to_json()

    return await db.run(change)
