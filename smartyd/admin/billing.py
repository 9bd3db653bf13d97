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
from smartyd.admin.errors import AdminError
from smartyd.admin.gateways import set_autopay
from smartyd.billing import Charging, engine


def moment(text: str | None, reactor) -> datetime:
    """An ISO-8601 moment with a zone (``--at``), or the reactor's now."""
    if text is None:
        return engine.utc(reactor.seconds())
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise AdminError(f"--at: not an ISO-8601 moment: {text!r}")
    if at.tzinfo is None:
        raise AdminError(f"--at: give the time zone (e.g. {text}+03:00)")
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
    for action in ("show", "statement"):
        cu.add_parser(action).add_argument("id", type=int)
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


async def cmd_customer(db, args, cfg, reactor) -> Any:
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

        return await db.run(create)
    if args.action == "show":
        return await db.run(customer_json, args.id)
    if args.action == "autopay":
        return await set_autopay(db, args)
    if args.action == "statement":

        async def statement(tx):
            customer = await ledger.get_customer(tx, args.id)
            if customer is None:
                raise AdminError(f"no customer {args.id}")
            rows = await ledger.statement(tx, args.id)
            return {"customer_id": args.id, "balance": str(customer.balance),
                    "rows": [r.to_json() for r in rows]}

        return await db.run(statement)
    at = moment(args.at, reactor)
    return await db.run(engine.promise, cfg.billing, args.id, args.amount, args.days, at)


async def cmd_billing(db, args, cfg, reactor) -> Any:
    at = moment(args.at, reactor)
    return (await Charging(cfg.billing, db, reactor).run(at)).to_json()
