"""
Website widgets (issue 16): channels, sign-up, personal cabinet, TV guide and
payment form, embedded in the operator's site with the seed's one-line
snippet (``/widgets/api/get/<ID>?container_id=...``); see docs/WIDGETS.md.

L{make_widgets} mounts ``/widgets`` and ``/captcha`` (``[widgets] enabled``);
L{make_epg} is the XMLTV import's poller (``[epg] xmltv_url``);
L{epg_sync} is the one import both it and ``smartyd-admin epg sync`` run.
"""

from __future__ import annotations

from typing import Any

from smartyd.config import Config
from smartyd.db import Database
from smartyd.feature import Feature
from smartyd.partners import PartnerHTTP
from smartyd.poller import Poller
from smartyd.widgets.epg import PARTNER, POLLER_JOB, EPGSync
from smartyd.widgets.session import Sessions, derive_key
from smartyd.widgets.web import WidgetsWeb

__all__ = ["epg_sync", "make_epg", "make_widgets"]

XMLTV_TIMEOUT = 300.0
XMLTV_MAX_BODY = 256 * 1024 * 1024


def make_widgets(cfg: Config, *, db: Database, clock: Any, metrics: Any,
                 assist: Any = None, payture: Any = None) -> Feature:
    """``/widgets`` and ``/captcha``; ``assist`` / ``payture``: the payment widget's gateways."""
    sessions = Sessions(derive_key(cfg.tokens.keys[0]), clock, cfg.http.trusted_proxies)
    web = WidgetsWeb(cfg, db, clock, sessions, metrics=metrics, assist=assist, payture=payture,
                     trusted_proxies=cfg.http.trusted_proxies)
    resource = web.resource()
    return Feature(mounts=(("/widgets", resource), ("/captcha", resource)), handle=web)


def epg_sync(cfg: Config, *, db: Database, client: Any, clock: Any,
             metrics: Any = None) -> EPGSync:
    http = PartnerHTTP(PARTNER, client, clock, metrics, timeout=XMLTV_TIMEOUT,
                       max_body=XMLTV_MAX_BODY)

    async def fetch() -> bytes:
        return (await http.request("GET", cfg.epg.xmltv_url)).body

    return EPGSync(fetch, db, clock)


def make_epg(cfg: Config, *, db: Database, client: Any, clock: Any, metrics: Any) -> Feature:
    """The XMLTV import: at start-up, then every ``sync_interval``, once cluster-wide."""
    sync = epg_sync(cfg, db=db, client=client, clock=clock, metrics=metrics)
    poller = Poller(POLLER_JOB, cfg.epg.sync_interval, sync.run, clock, db=db, metrics=metrics)
    return Feature(services=(poller,), handle=sync)
