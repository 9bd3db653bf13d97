"""
``smartyd-admin payments``, ``registry`` and ``health``: the operator's journals
(L{smartyd.journals}, L{smartyd.reconcile}; the console calls the same functions).

  payments journal --from D --to D [--provider P]   per day and provider: counts, totals
  payments day --date D --provider P                one day's payments of a provider
  registry reconcile --provider P --date D FILE [--columns txn_id,date,account,amount]
                     [--csv OUT]                    the provider's registry against our
                                                    payments of the day (--columns is
                                                    remembered for P; without it the
                                                    remembered layout is used); --csv
                                                    writes the comparison for a spreadsheet
  health partners                                   pollers' last runs, stuck partner calls,
                                                    the last EPG sync, receipt counts

Days (``YYYY-MM-DD``) are Moscow days, as OSMP's ``txn_date`` (L{smartyd.journals}).
"""

from __future__ import annotations

from pathlib import Path

from twisted.internet import threads

from smartyd import journals, operators, reconcile
from smartyd.billing.engine import utc


def register(sub) -> dict:
    p = sub.add_parser("payments", help="payment journals").add_subparsers(
        dest="action", required=True)
    j = p.add_parser("journal", help="payments per day and provider")
    j.add_argument("--from", dest="date_from", required=True, metavar="YYYY-MM-DD")
    j.add_argument("--to", dest="date_to", required=True, metavar="YYYY-MM-DD")
    j.add_argument("--provider")
    d = p.add_parser("day", help="one day's payments of a provider")
    d.add_argument("--date", required=True, metavar="YYYY-MM-DD")
    d.add_argument("--provider", required=True)
    r = sub.add_parser("registry", help="provider registries").add_subparsers(
        dest="action", required=True)
    c = r.add_parser("reconcile", help="a daily registry against our payments")
    c.add_argument("--provider", required=True)
    c.add_argument("--date", required=True, metavar="YYYY-MM-DD")
    c.add_argument("--columns", help="the CSV's columns in order: txn_id, date, account, amount"
                                     " or - (remembered for the provider)")
    c.add_argument("--csv", metavar="OUT", help="also write the comparison as CSV to OUT")
    c.add_argument("file", metavar="FILE")
    h = sub.add_parser("health", help="health").add_subparsers(dest="action", required=True)
    h.add_parser("partners", help="pollers, partner outbox, EPG sync, receipts")
    return {"payments": cmd_payments, "registry": cmd_registry, "health": cmd_health}


async def cmd_payments(db, args, cfg, reactor, app) -> dict:
    if args.action == "journal":
        return await db.run(journals.payments_by_day, journals.parse_day(args.date_from),
                            journals.parse_day(args.date_to), args.provider)
    return await db.run(journals.day_payments, journals.parse_day(args.date), args.provider)


async def cmd_registry(db, args, cfg, reactor, app) -> dict:
    day = journals.parse_day(args.date)
    try:
        data = await threads.deferToThread(Path(args.file).read_bytes)
    except OSError as e:
        raise ValueError(f"{args.file}: {e.strerror}")
    # A layout given with --columns is remembered: a change, audited as cli's.
    result = await reconcile.reconcile_registry(
        db, args.provider, day, data, args.columns,
        actor=operators.Actor(operators.CLI, utc(reactor.seconds())))
    if args.csv:
        out = reconcile.to_csv(result)
        try:
            await threads.deferToThread(Path(args.csv).write_bytes, out)
        except OSError as e:
            raise ValueError(f"{args.csv}: {e.strerror}")
        result["csv"] = args.csv
    return result


async def cmd_health(db, args, cfg, reactor, app) -> dict:
    return await db.run(journals.partner_health, reactor.seconds())
