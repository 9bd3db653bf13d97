"""
Admin commands of the built-in billing: ``customer`` (create, show,
statement, promise) and ``billing run``.  Account and tariff commands
(smartyd/admin/__init__.py) call the same engine for assignments.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from smartyd import catalog, ledger
from smartyd.admin.console import audited
from smartyd.admin.errors import AdminError
from smartyd.admin.gateways import set_autopay
from smartyd.billing import engine


def moment(text: str | None, reactor) -> datetime:
    """An ISO-8601 moment with a zone (``--at``), or the reactor's now."""
    if text is None:
        return engine.utc(reactor.seconds())
    return parse_moment(text, "--at")


def parse_moment(text: str, option: str) -> datetime:
    """An ISO-8601 moment with its time zone given as ``option``, or a one-line AdminError."""
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise AdminError(f"{option}: not an ISO-8601 moment: {text!r}")
    if at.tzinfo is None:
        # The example is the moment as read, with a zone: one the option accepts
        # ("2025-03-01+03:00" is read as 03:00 without a zone).
        raise AdminError(f"{option}: give the time zone (e.g. {at.isoformat()}+03:00)")
    return at


def register(sub) -> dict:
    cu = sub.add_parser("customer", help="customers (the money holders)").add_subparsers(
        dest="action", required=True)
    c = cu.add_parser("create")
    c.add_argument("--name", default="")
    c.add_argument("--firstname", default="")
    c.add_argument("--lastname", default="")
    c.add_argument("--ext-id")
    c.add_argument("--phone")
    c.add_argument("--email")
    c.add_argument("--contract")
    c.add_argument("--meta", help="free JSON object")
    cu.add_parser("show").add_argument("id", type=int)
    s = cu.add_parser("statement", help="the ledger over a period: opening + rows = closing")
    s.add_argument("id", type=int)
    s.add_argument("--from", dest="start", metavar="T",
                   help="ISO-8601 moment: rows at or after it (default: the first)")
    s.add_argument("--to", dest="end", metavar="T", help="ISO-8601 moment: rows before it")
    s.add_argument("--limit", type=int, default=1000,
                   help=f"at most N rows, the latest (0..{ledger.STATEMENT_MAX_ROWS})")
    s.add_argument("--before", type=int, metavar="ROW_ID",
                   help="only rows older than this ledger row (the next page back)")
    p = cu.add_parser("promise", help="a promised payment, taken back after --days")
    p.add_argument("id", type=int)
    p.add_argument("--amount", required=True)
    p.add_argument("--days", type=int, required=True)
    p.add_argument("--at", help="ISO-8601 moment (default now)")
    a = cu.add_parser("autopay", help="turn autopayment from the bound Payture card on or off")
    a.add_argument("id", type=int)
    a.add_argument("state", choices=("on", "off"))

    bi = sub.add_parser("billing", help="the charging job").add_subparsers(
        dest="action", required=True)
    r = bi.add_parser("run", help="charge everything due (once, whoever else runs)")
    r.add_argument("--at", help="ISO-8601 moment (default now)")
    return {"customer": cmd_customer, "billing": cmd_billing}


async def customer_json(tx, customer_id: int) -> dict:
    customer = await ledger.get_customer(tx, customer_id)
    if customer is None:
        raise AdminError(f"no customer {customer_id}")
    out = customer.to_json()
    out["accounts"] = [a.to_json() for a in await ledger.customer_accounts(tx, customer_id)]
    out["subscriptions"] = [
        {"id": s["id"], "tariff": s["tariff_id"], "account_id": s["account_id"],
         "paid_until": s["paid_until"].isoformat(), "state": s["state"]}
        for s in await catalog.customer_subscriptions(tx, customer_id)
    ]
    return out


async def cmd_customer(db, args, cfg, reactor, app) -> Any:
    if args.action == "create":
        meta = None
        if args.meta is not None:
            try:
                meta = json.loads(args.meta)
            except ValueError:
                raise AdminError("--meta: not JSON")
            if not isinstance(meta, dict):
                raise AdminError("--meta: a JSON object")

        async def create(tx):
            cid = await ledger.create_customer(
                tx, args.name, args.phone, args.email, ext_id=args.ext_id,
                firstname=args.firstname, lastname=args.lastname,
                contract_number=args.contract, meta=meta)
            return await customer_json(tx, cid)

        return await audited(db, reactor, "customer.create", create,
                             customer_id=lambda tx, out: out["id"])
    if args.action == "show":
        return await db.run(customer_json, args.id)
    if args.action == "autopay":
        return await set_autopay(db, args, reactor)
    if args.action == "statement":
        start = parse_moment(args.start, "--from") if args.start is not None else None
        end = parse_moment(args.end, "--to") if args.end is not None else None
        try:
            found = await db.run(ledger.statement, args.id, start=start, end=end,
                                 limit=args.limit, before=args.before)
        except ledger.CustomerNotFound:
            raise
        except ledger.LedgerError as e:  # the arguments: name them as options
            raise AdminError(f"--{e}")
        return found.to_json()
    at = moment(args.at, reactor)

    async def balance(tx):
        customer = await ledger.get_customer(tx, args.id, lock=True)
        return None if customer is None else {"balance": str(customer.balance)}

    return await audited(
        db, reactor, "promise.grant",
        lambda tx: engine.promise(tx, cfg.billing, args.id, args.amount, args.days, at),
        before=balance, customer_id=args.id)


async def cmd_billing(db, args, cfg, reactor, app) -> Any:
    """The daemon's charging run (its autopayment before a batch settles), once, as of ``--at``."""
    at = moment(args.at, reactor)
    return (await app.billing.handle.run(at)).to_json()
