"""
``smartyd-admin widget`` and ``epg``: the website widgets and the TV guide.

  widget create --type channels|signup|cabinet|epg|payment [--title T] [--tariff ID ...]
                                             -> {"id": ..., "type", "title", "tariffs"}
  epg sync                                   one XMLTV import in this process (the
                                             daemon's job, same code): counts
"""

from __future__ import annotations

from smartyd.admin.console import audited
from smartyd.partners import PartnerError
from smartyd.widgets.epg import EPGError
from smartyd.widgets.repo import KINDS, create_widget


def register(sub) -> dict:
    w = sub.add_parser("widget", help="website widgets").add_subparsers(
        dest="action", required=True)
    c = w.add_parser("create")
    c.add_argument("--type", required=True, choices=KINDS)
    c.add_argument("--title", default="")
    c.add_argument("--tariff", type=int, action="append", default=[],
                   help="a tariff the widget shows (repeat; default: all visible ones)")
    e = sub.add_parser("epg", help="the TV guide").add_subparsers(dest="action", required=True)
    e.add_parser("sync")
    return {"widget": cmd_widget, "epg": cmd_epg}


async def cmd_widget(db, args, cfg, reactor, app) -> dict:
    return (await audited(db, reactor, "widget.create",
                          lambda tx: create_widget(tx, args.type, args.title,
                                                   args.tariff))).to_json()


async def cmd_epg(db, args, cfg, reactor, app) -> dict:
    if not cfg.epg.xmltv_url:
        raise ValueError("[epg] xmltv_url is empty")
    try:  # the daemon's import job
        return (await app.features["epg"].handle.run()).to_json()
    except (PartnerError, EPGError) as e:
        raise ValueError(str(e))
