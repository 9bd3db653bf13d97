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

Gateway refusals are one line with the gateway's code:
``smartyd-admin: ASSIST refused (AS400): ...``.
"""

from __future__ import annotations

from typing import Any

from smartyd.partners import PartnerError, PartnerRefused


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
    return {"assist": cmd_assist, "payture": cmd_payture}


def _fail(message: str) -> Exception:
    from smartyd.admin import AdminError

    return AdminError(message)


class _Wiring:
    """An HTTP pool (only for commands that talk to the gateway) and the reactor."""

    def __init__(self, network: bool):
        from twisted.internet import reactor

        from smartyd.partners import HTTPClientService

        self.reactor = reactor
        self.http = HTTPClientService(reactor) if network else None
        self.client = self.http.client if network else None

    async def close(self) -> None:
        if self.http is not None:
            await self.http.pool.closeCachedConnections()


async def cmd_assist(db, args, cfg) -> Any:
    from smartyd.gateways import assist_service, check_config
    from smartyd.metrics import Metrics

    if not cfg.assist.enabled:
        raise _fail("[assist] enabled = false in the configuration")
    check_config(cfg)
    wiring = _Wiring(network=args.action in ("poll", "charge", "cancel"))
    service = assist_service(cfg, db, wiring.client, wiring.reactor, Metrics(), [])
    try:
        if args.action == "order":
            order, form = await service.create_order(args.account, args.amount,
                                                     two_stage=args.two_stage,
                                                     comment=args.comment)
            return {"order": order.to_json(), "form": form.to_json()}
        if args.action == "show":
            return await service.show(args.order)
        if args.action == "poll":
            return await _poll(service, db, wiring.reactor, cfg.assist.poll_interval)
        operation = service.charge if args.action == "charge" else service.cancel
        return await operation(args.order)
    except PartnerRefused as e:
        raise _fail(f"ASSIST refused ({e.code}): {e.message}")
    except PartnerError as e:
        raise _fail(f"ASSIST unavailable: {e.message}")
    finally:
        await wiring.close()


async def _poll(service, db, clock, interval) -> dict:
    from smartyd.gateways.assist_service import POLLER_JOB
    from smartyd.poller import Poller

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


async def cmd_payture(db, args, cfg) -> Any:
    from smartyd.gateways import check_config, payture_service

    if not cfg.payture.enabled:
        raise _fail("[payture] enabled = false in the configuration")
    check_config(cfg)
    wiring = _Wiring(network=True)
    service = payture_service(cfg, db, wiring.client, wiring.reactor, None, [])
    try:
        if args.action == "order":
            order, url = await service.create_order(args.account, args.amount, args.ip)
            return {"order": order.to_json(), "url": url}
        from smartyd.gateways import orders

        order = await db.run(orders.get, "payture", args.order)
        if order is None:
            raise _fail(f"no Payture order {args.order}")
        handled = await service.verify_and_credit(order.order_number)
        if handled.outcome == "gateway_error":
            raise _fail("Payture unavailable: GetState failed (see the log)")
        after = await db.run(orders.get, "payture", args.order)
        return {"outcome": handled.outcome, "order": after.to_json()}
    except PartnerRefused as e:
        raise _fail(f"Payture refused ({e.code}): {e.message}")
    except PartnerError as e:
        raise _fail(f"Payture unavailable: {e.message}")
    finally:
        await wiring.close()
