"""
The daemon's app as the tests drive it: L{smartyd.wiring.build_app} (the
composition root's own assembly) with the test's reactor or ``task.Clock``,
database, metrics and, for partners, a ``StubTreq`` client.
"""

from __future__ import annotations

from typing import Any

from attrs import define, field

from smartyd.config import Config
from smartyd.metrics import Metrics
from smartyd.wiring import App, build_app


@define
class TestApp:
    """
    An assembled app plus what tests poke at: ``payment_hooks`` is a list a
    test may append to after building (run inside every accepting
    transaction, after the configured hooks), ``ready`` is the readiness.
    """

    __test__ = False  # not a test class for pytest

    app: App
    cfg: Config
    metrics: Metrics
    payment_hooks: list = field(factory=list)

    @property
    def root(self):
        return self.app.root

    @property
    def services(self) -> list:
        return self.app.services

    @property
    def ready(self) -> bool:
        return self.app.readiness.ready

    @ready.setter
    def ready(self, value: bool) -> None:
        self.app.readiness.ready = value


class _TestHooks:
    """
    The test's payment hooks, run in order.  While there are none, payments
    take the one-statement path (``in_sql`` is empty: nothing to do in SQL),
    as the daemon's do; a test that adds a hook puts them on the Python path.
    """

    def __init__(self, hooks: list):
        self.hooks = hooks

    @property
    def in_sql(self) -> tuple | None:
        return None if self.hooks else ()

    async def __call__(self, tx, payment) -> None:
        for hook in list(self.hooks):
            await hook(tx, payment)


def build(cfg: Config, reactor: Any, db: Any, metrics: Metrics | None = None,
          http_client: Any = None) -> TestApp:
    metrics = metrics or Metrics()
    hooks: list = []
    app = build_app(cfg, reactor=reactor, db=db, metrics=metrics, http_client=http_client,
                    extra_hooks=(_TestHooks(hooks),), ready=True)
    return TestApp(app=app, cfg=cfg, metrics=metrics, payment_hooks=hooks)
