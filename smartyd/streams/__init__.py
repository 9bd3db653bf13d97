"""
Stream tokens (DESIGN §5): mint signed stream URLs, check them at high rate.

- L{tokens}: the token format -- HMAC-SHA256, key rotation, IP binding.
- L{entitlements}: the in-memory snapshot of who may watch what, reloaded on
  PostgreSQL NOTIFY and after every reconnect.
- L{check}: the one check function behind both listeners.
- L{web}: the Klein app -- ``POST /streams/url``, ``GET /streams/check``.
- L{fast}: the lean HTTP/1.1 server on ``[tokens] fast_listen``.
- L{pool} and L{worker}: ``workers > 1`` processes sharing that socket.

Until the first snapshot has loaded every check is answered 503 (with
C{Retry-After: 1}), never 403: not knowing yet is no reason to deny a viewer,
and streamers treat a 5xx from an auth backend as "backend unavailable" (try
another, or apply their own fallback) rather than caching a refusal.  Once
loaded, a snapshot keeps answering while the notification connection is down
(refusing everyone during a database blip would take access away by mistake);
the reconnect reloads it, so changes made meanwhile apply then.
"""

from __future__ import annotations

import os

from smartyd.streams.check import Checker, Tallies, prometheus_counters
from smartyd.streams.entitlements import Entitlements
from smartyd.streams.fast import FastCheckFactory, FastListener
from smartyd.streams.pool import WorkerPool
from smartyd.streams.tokens import TokenCodec
from smartyd.streams.web import StreamsApp


def install(parts) -> None:
    """Add the snapshot service, the ``/streams`` routes and the fast listener."""
    cfg = parts.cfg
    codec = TokenCodec(cfg.tokens.keys, bind_ip=cfg.tokens.bind_ip)
    entitlements = Entitlements(parts.db, metrics=parts.metrics, clock=parts.reactor)
    parts.services.append(entitlements)
    debug = cfg.log.level == "debug"

    app = StreamsApp(
        parts.db,
        codec,
        Checker(
            codec,
            entitlements,
            parts.reactor,
            prometheus_counters(parts.metrics, "http"),
            listener="http",
            log_refusals=debug,
        ),
        parts.reactor,
        parts.metrics,
        ttl=cfg.tokens.ttl,
        trusted_proxies=cfg.http.trusted_proxies,
    )
    parts.mounts.append(("/streams", app.resource()))
    if cfg.tokens.fast_listen:
        if cfg.tokens.workers > 1:
            parts.services.append(
                WorkerPool(
                    parts.reactor,
                    cfg.tokens.fast_listen,
                    cfg.tokens.workers,
                    config_path=_config_path(cfg.source),
                    metrics=parts.metrics,
                )
            )
        else:
            tallies = Tallies()
            fast = Checker(
                codec, entitlements, parts.reactor, tallies, listener="fast", log_refusals=debug
            )
            parts.services.append(
                FastListener(
                    parts.reactor,
                    cfg.tokens.fast_listen,
                    FastCheckFactory(fast, parts.reactor),
                    tallies=tallies,
                    metrics=parts.metrics,
                )
            )


def _config_path(source: str) -> str | None:
    """The configuration file a worker process reads: None for the built-in defaults."""
    if source == "<defaults>":
        return None
    return os.path.abspath(source)
