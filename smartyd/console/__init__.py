"""
The operator console (issue 22, DESIGN.md section 12): server-rendered pages
for the operator's staff on a listener of its own (``[console] listen``),
which serves the console and nothing else; the console is mounted on no
other listener.  See L{smartyd.console.web} for the pages,
L{smartyd.operators} for operators, sessions and the audit trail, and
L{smartyd.console.actions} for the changes it makes (the CLI's and the
billing's functions, audited).
"""

from __future__ import annotations

from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.endpoints import serverFromString

from smartyd.config import Config
from smartyd.db import Database
from smartyd.feature import Feature
from smartyd.http.csrf import derive_key
from smartyd.http.root import Root, make_site
from smartyd.console.web import ConsoleWeb
from smartyd.util.twisted_internals import raise_listen_errors

__all__ = ["make_console"]


def make_console(cfg: Config, *, db: Database, reactor: Any, metrics: Any,
                 health_sources: tuple = ()) -> Feature:
    """
    The console's pages and their listener (a service: started once the
    schema is there); ``health_sources``: the other features' health callables.
    """
    web = ConsoleWeb(cfg, db, reactor, derive_key(cfg.tokens.keys[0], b"smartyd console csrf"),
                     metrics=metrics, health_sources=tuple(health_sources))
    # Under a Root of its own for the body cap's 413 (a registry upload beyond
    # [http] max_body is refused, never read truncated); it mounts nothing else.
    site = make_site(Root([("/", web.resource())]), cfg.http.max_body, reactor=reactor)
    listener = StreamServerEndpointService(serverFromString(reactor, cfg.console.listen), site)
    raise_listen_errors(listener)  # a port in use stops the daemon with one line
    return Feature(services=(listener,), handle=web)
