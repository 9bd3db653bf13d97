"""
Smarty's TV Middleware API (``/tvmiddleware/api/<method>/``): the interface
set-top boxes, Smart TVs and apps use to log in, list channels, zap, read the
guide, browse films and manage their subscription.

The public specification is Smarty's apidoc (``smarty-tvmw-api-docs/
api_data.json``, version 1.40.0).  Method names, parameter names, answer
fields and error numbers are the spec's.

Layout:
  - ``errors``: L{TvmwError}, the one exception a method raises to answer an
    error code.
  - ``call``: L{Session} (who is calling) and L{Call} (what a method gets).
  - methods are plain ``async def method(call: Call) -> dict`` functions,
    grouped by the spec's groups, each module exporting ``METHODS``:
    ``{"<spec url without slashes at the ends>": function}``.
  - the wire (JSON or XML, cookies, redirects) lives at the edge, in ``web``.
"""

from __future__ import annotations

from typing import Any, Mapping

from smartyd.config import Config
from smartyd.feature import Feature


def make_tvmw(cfg: Config, *, db, reactor: Any, metrics, entitlements,
              features: Mapping[str, Any] = {}) -> Feature:
    """
    The device API: the session store (its notification connection also
    reloads the channel catalog), the login limiter and the Klein resource
    under ``/tvmiddleware/api`` (Smarty's token check path stays the
    streams feature's: the longer prefix wins in L{smartyd.http.root.Root}).

    @param entitlements: the stream-token checker's snapshot service.
    @param features: the other features' handles by name (``vod``, ...),
        handed to methods as ``Call.deps``.
    """
    from smartyd.streams import make_codec
    from smartyd.tvmw import registry
    from smartyd.tvmw.channels import ChannelCache
    from smartyd.tvmw.ratelimit import LoginLimiter
    from smartyd.tvmw.sessions import SessionStore
    from smartyd.tvmw.web import PREFIX, TvmwWeb

    channels = ChannelCache(db)
    store = SessionStore(db, reactor, cfg.tvmw.session_ttl, metrics=metrics,
                         on_catalog=channels.reload)
    deps = dict(features)
    deps.update(sessions=store, channels=channels, entitlements=entitlements,
                codec=make_codec(cfg), limiter=LoginLimiter())
    web = TvmwWeb(registry.build(), store=store, db=db, cfg=cfg, reactor=reactor,
                  metrics=metrics, deps=deps, trusted_proxies=cfg.http.trusted_proxies)
    return Feature(mounts=((PREFIX, web.resource()),), services=(store,), handle=web)
