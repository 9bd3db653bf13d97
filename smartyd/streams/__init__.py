"""
Stream tokens (DESIGN §5): mint signed stream URLs, check them at high rate.

- L{tokens}: the token format -- HMAC-SHA256, key rotation, IP binding.
- L{entitlements}: the in-memory snapshot of who may watch what, reloaded on
  PostgreSQL NOTIFY and after every reconnect.
- L{check}: the one check function behind both listeners.
- L{web}: the Klein app -- ``POST /streams/url``, ``GET /streams/check``.
- L{fast}: the lean HTTP/1.1 server on ``[tokens] fast_listen``.
- L{pool} and L{worker}: ``workers > 1`` processes sharing that socket.

- L{sessions}: concurrent sessions per account, leases exchanged through PostgreSQL.

Until the first snapshot has loaded, C{[tokens] when_unavailable} decides:
C{deny} (the default) answers 403 (X-AuthDuration 0: not to be cached), C{allow}
lets through every token that verifies (see L{check}).  Once loaded, a
snapshot keeps answering while the notification connection is down (refusing
everyone during a database blip would take access away by mistake); the
reconnect reloads it, so changes made meanwhile apply then.
"""

from __future__ import annotations

import os
from typing import Any

from smartyd.config import Config
from smartyd.feature import Feature
from smartyd.metrics import Durations
from smartyd.streams.check import Checker, Tallies, prometheus_counters
from smartyd.streams.entitlements import Entitlements
from smartyd.streams.fast import FastCheckFactory, FastListener
from smartyd.streams.pool import WorkerPool
from smartyd.streams.sessions import LeaseExchange, SessionLeases
from smartyd.streams.tokens import TokenCodec
from smartyd.streams.web import SMARTY_CHECK, StreamsApp


def make_codec(cfg: Config) -> TokenCodec:
    return TokenCodec(cfg.tokens.keys, bind_ip=cfg.tokens.bind_ip)


def make_sessions(cfg: Config, db, reactor: Any) -> tuple[SessionLeases, LeaseExchange]:
    """
    One process's session leases and the service that exchanges them through
    PostgreSQL once a second (in every process: no lock).
    """
    sessions = SessionLeases(lease=cfg.tokens.session_lease)
    return sessions, LeaseExchange(sessions, db, reactor)


def make_fast_checker(cfg: Config, codec: TokenCodec, entitlements: Entitlements,
                      reactor: Any, tallies: Tallies,
                      sessions: SessionLeases | None = None,
                      durations: Durations | None = None) -> Checker:
    """The checker behind the fast listener: in the daemon (workers = 1) or in each worker."""
    return Checker(codec, entitlements, reactor, tallies, listener="fast",
                   log_refusals=cfg.log.level == "debug", sessions=sessions,
                   when_unavailable=cfg.tokens.when_unavailable, durations=durations)


def make_streams(cfg: Config, *, db, reactor: Any, metrics) -> Feature:
    """
    The snapshot service, the ``/streams`` routes and, with ``[tokens]
    fast_listen``, the fast listener (in this process, or ``workers``
    processes sharing its socket).
    """
    codec = make_codec(cfg)
    entitlements = Entitlements(db, metrics=metrics, clock=reactor)
    sessions, exchange = make_sessions(cfg, db, reactor)
    metrics.watch_sessions(sessions)
    services: list = [entitlements, exchange]
    checker = Checker(codec, entitlements, reactor, prometheus_counters(metrics, "http"),
                      listener="http", log_refusals=cfg.log.level == "debug",
                      sessions=sessions, when_unavailable=cfg.tokens.when_unavailable,
                      durations=metrics.token_check_seconds.labels("http"))
    app = StreamsApp(db, codec, checker, reactor, metrics, ttl=cfg.tokens.ttl,
                     trusted_proxies=cfg.http.trusted_proxies)
    if cfg.tokens.fast_listen and cfg.tokens.workers > 1:
        services.append(WorkerPool(reactor, cfg.tokens.fast_listen, cfg.tokens.workers,
                                   config_path=_config_path(cfg.source), metrics=metrics))
    elif cfg.tokens.fast_listen:
        tallies, durations = Tallies(), Durations()
        fast = make_fast_checker(cfg, codec, entitlements, reactor, tallies, sessions, durations)
        services.append(FastListener(reactor, cfg.tokens.fast_listen,
                                     FastCheckFactory(fast, reactor), tallies=tallies,
                                     metrics=metrics, durations=durations))
    resource = app.resource()
    return Feature(mounts=(("/streams", resource), (SMARTY_CHECK, resource)),
                   services=tuple(services),
                   handle=entitlements)


def _config_path(source: str) -> str | None:
    """The configuration file a worker process reads: None for the built-in defaults."""
    if source == "<defaults>":
        return None
    return os.path.abspath(source)
