"""
``smartyd-admin vod`` and ``outbox``: the online cinemas' catalogs and the partner outbox.

  vod sync megogo|tvzavr                     one sync in this process (the daemon's job, same code)
  vod show --provider P --id X               a title (X = the partner's id), our genres, hidden
  vod genres --provider P                    the partner's genres and what each maps to
  vod genre-map --provider P --partner-genre G --genre NAME
  vod buy --account A --provider P --id X --purchase-id Z
                                             TVOD: the account buys title X (debited once per
                                             account + title + purchase id; the grant is queued)
  outbox [--state S]                         open (or state S) partner calls
  outbox retry ID                            a failed call queued again
"""

from __future__ import annotations

from smartyd.admin.console import audited, recorded
from smartyd.partners import PartnerError
from smartyd.vod import outbox
from smartyd.vod.catalog_sync import genres, get_title, map_genre

PROVIDERS = ("megogo", "tvzavr")


def register(sub) -> dict:
    v = sub.add_parser("vod", help="online cinema catalogs").add_subparsers(
        dest="action", required=True)
    s = v.add_parser("sync")
    s.add_argument("provider", choices=PROVIDERS)
    s = v.add_parser("show")
    s.add_argument("--provider", required=True, choices=PROVIDERS)
    s.add_argument("--id", required=True)
    s = v.add_parser("genres")
    s.add_argument("--provider", required=True, choices=PROVIDERS)
    s = v.add_parser("genre-map")
    s.add_argument("--provider", required=True, choices=PROVIDERS)
    s.add_argument("--partner-genre", required=True)
    s.add_argument("--genre", required=True)
    s = v.add_parser("buy")
    s.add_argument("--account", required=True, type=int)
    s.add_argument("--provider", required=True, choices=PROVIDERS)
    s.add_argument("--id", required=True)
    s.add_argument("--purchase-id", required=True)
    o = sub.add_parser("outbox", help="partner calls (MEGOGO, tvzavr, Irdeto)")
    o.add_argument("--state", choices=("queued", "sending", "unknown", "done", "failed"))
    actions = o.add_subparsers(dest="action")
    r = actions.add_parser("retry")
    r.add_argument("id", type=int)
    return {"vod": cmd_vod, "outbox": cmd_outbox}


async def cmd_vod(db, args, cfg, reactor, app) -> dict:
    if args.action in ("sync", "buy"):
        # The daemon's vod feature: its partners, syncs and purchases.
        if not getattr(cfg, args.provider).enabled:
            raise ValueError(f"[{args.provider}] enabled is false")
        vod = app.features["vod"].handle
    if args.action == "sync":
        try:
            return (await vod.syncs[args.provider].run()).to_json()
        except PartnerError as e:
            raise ValueError(str(e))
    if args.action == "show":
        title = await db.run(get_title, args.provider, args.id)
        if title is None:
            raise ValueError(f"no {args.provider} title {args.id}")
        return title
    if args.action == "buy":
        # The grant is only queued here (same transaction); the daemon's outbox sends it.
        purchase, created = await vod.tvod.buy(args.provider, args.account, args.id,
                                               args.purchase_id)
        out = {**purchase.to_json(), "created": created}
        if created:  # the purchase's own transaction (its debit, its grant queued) is done
            await recorded(db, reactor, "vod.buy", out, customer_id=purchase.customer_id)
        return out
    if args.action == "genres":
        return {"provider": args.provider, "genres": await db.run(genres, args.provider)}
    return await audited(db, reactor, "vod.genre_map",
                         lambda tx: map_genre(tx, args.provider, args.partner_genre, args.genre))


async def cmd_outbox(db, args, cfg, reactor, app) -> dict:
    if getattr(args, "action", None) == "retry":
        async def retry(tx):
            call = await outbox.retry(tx, args.id)
            if call is None:
                raise ValueError(f"no failed partner call {args.id}")
            return call

        return (await audited(db, reactor, "outbox.retry", retry)).to_json()
    calls = await db.run(outbox.list_calls, args.state)
    return {"calls": [c.to_json() for c in calls]}
