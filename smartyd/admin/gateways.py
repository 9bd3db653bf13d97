"""
``smartyd-admin assist ...`` and ``smartyd-admin payture ...``.

  assist order --account N --amount X [--two-stage] [--comment C]
                                  -> {"order": {...}, "form": {url, charset, fields, html}}
  assist show ORDER               -> the order and its bills
  assist poll                     -> one results poll now (cluster lock and pacing apply)
  assist charge ORDER             -> charge a blocked two-stage order (14-day window)
  assist cancel ORDER             -> void a blocked order / refund a paid one
  payture order --account N --amount X --ip IP   -> {"order": {...}, "url": payment page}
  payture check ORDER             -> ask GetState now; credit if Charged (as a notification would)
  payture cards CUSTOMER          -> the customer's bound cards (GetList first; stored if down)
  payture card-remove CUSTOMER CARD -> unbind the card at Payture (Remove), then forget it
  customer autopay ID on|off      -> autopayment from the bound card when charging finds debt

Gateway refusals are one line with the gateway's code:
``smartyd-admin: ASSIST refused (AS400): ...``.  Each command uses the
daemon's service of its gateway (``app.features``): the same payment hooks
(settlement, receipts) and partner client.
"""

from __future__ import annotations

from typing import Any

from smartyd.admin.console import audited, recorded
from smartyd.admin.errors import AdminError
from smartyd.gateways import cards, orders
from smartyd.gateways.assist_service import POLLER_JOB
from smartyd.gateways.wallet import CardNotFound
from smartyd.partners import PartnerError, PartnerRefused
from smartyd.poller import Poller


def register(sub) -> dict:
    a = sub.add_parser("assist", help="ASSIST payment gateway").add_subparsers(
        dest="action", required=True)
    o = a.add_parser("order", help="create an order and print its payment form")
    o.add_argument("--account", type=int, required=True)
    o.add_argument("--amount", required=True)
    o.add_argument("--two-stage", action="store_true", help="block now, charge later (Delay=1)")
    o.add_argument("--comment", default="")
    for action, text in (("show", "an order and its bills"),
                         ("charge", "charge a blocked two-stage order"),
                         ("cancel", "void a blocked order or refund a paid one")):
        c = a.add_parser(action, help=text)
        c.add_argument("order")
    a.add_parser("poll", help="poll the results now")

    p = sub.add_parser("payture", help="Payture payment gateway").add_subparsers(
        dest="action", required=True)
    o = p.add_parser("order", help="create an order and open a payment session")
    o.add_argument("--account", type=int, required=True)
    o.add_argument("--amount", required=True)
    o.add_argument("--ip", required=True, help="the payer's IP address")
    c = p.add_parser("check", help="verify an order with GetState and credit it if Charged")
    c.add_argument("order")
    c = p.add_parser("cards", help="a customer's bound cards (asks Payture's GetList)")
    c.add_argument("customer", type=int)
    c = p.add_parser("card-remove", help="unbind a customer's card (Payture's Remove)")
    c.add_argument("customer", type=int)
    c.add_argument("card")
    return {"assist": cmd_assist, "payture": cmd_payture}


def _service(app, name: str):
    """The daemon's service of gateway ``name`` (its payment hooks, its HTTP client)."""
    feature = app.features.get(name)
    if feature is None:
        raise AdminError(f"[{name}] enabled = false in the configuration")
    return feature.handle


async def _partner(operation, partner: str):
    """Run ``operation`` (a coroutine); the gateway's refusals as one-line AdminErrors."""
    try:
        return await operation
    except PartnerRefused as e:
        raise AdminError(f"{partner} refused ({e.code}): {e.message}")
    except PartnerError as e:
        raise AdminError(f"{partner} unavailable: {e.message}")


async def cmd_assist(db, args, cfg, reactor, app) -> Any:
    service = _service(app, "assist")

    async def operation():
        if args.action == "order":
            order, form = await service.create_order(args.account, args.amount,
                                                     two_stage=args.two_stage,
                                                     comment=args.comment)
            return {"order": order.to_json(), "form": form.to_json()}
        if args.action == "show":
            return await service.show(args.order)
        if args.action == "poll":
            return await _poll(service, db, reactor, cfg.assist.poll_interval)
        out = await (service.charge if args.action == "charge" else service.cancel)(args.order)
        # Done at ASSIST (its answer, then our order): the audit row after it.
        await recorded(db, reactor, f"assist.{args.action}",
                       {"order": args.order, "amount": out["order"]["amount"]},
                       account_id=out["order"]["account_id"])
        return out

    return await _partner(operation(), "ASSIST")


async def _poll(service, db, clock, interval) -> dict:
    # The daemon's poller job (its cluster lock and pacing) around the daemon's service.
    summary = []

    async def work():
        summary.append(await service.poll())

    poller = Poller(POLLER_JOB, interval, work, clock, db=db)
    outcome = await poller.force()
    out = {"outcome": outcome}
    if summary:
        out.update(summary[0].to_json())
    elif outcome == "skipped":
        out["note"] = f"polled less than {interval}s ago, or another instance is polling"
    return out


async def cmd_payture(db, args, cfg, reactor, app) -> Any:
    service = _service(app, "payture")

    async def operation():
        if args.action == "order":
            order, url = await service.create_order(args.account, args.amount, args.ip)
            return {"order": order.to_json(), "url": url}
        if args.action in ("cards", "card-remove"):
            if service.wallet is None:
                raise AdminError("[payture] merchant_add_key is not set: no cards")
            try:
                if args.action == "cards":
                    return await service.wallet.cards(args.customer)
                out = await service.wallet.remove(args.customer, args.card)
                await recorded(db, reactor, "payture.card_remove", {"card": args.card},
                               customer_id=args.customer)
                return out
            except CardNotFound as e:
                raise AdminError(str(e))
        order = await db.run(orders.get, "payture", args.order)
        if order is None:
            raise AdminError(f"no Payture order {args.order}")
        handled = await service.verify_and_credit(order.order_number)
        if handled.outcome == "gateway_error":
            raise AdminError("Payture unavailable: GetState failed (see the log)")
        after = await db.run(orders.get, "payture", args.order)
        return {"outcome": handled.outcome, "order": after.to_json()}

    return await _partner(operation(), "Payture")


async def set_autopay(db, args, reactor) -> Any:
    """``customer autopay ID on|off`` (registered with the billing's customer commands)."""
    async def before(tx):
        return {"autopay": await cards.autopay_enabled(tx, args.id)}

    out = await audited(db, reactor, "customer.autopay",
                        lambda tx: cards.set_autopay(tx, args.id, args.state == "on"),
                        before=before, after=lambda out: {"autopay": out["autopay"]},
                        customer_id=args.id)
    out["cards"] = len(await db.run(cards.list_cards, args.id))
    if out["autopay"] and not out["cards"]:
        out["note"] = "no bound card yet: autopayment starts once a card is bound"
    return out
