"""
What every feature factory returns (L{Feature}), and the daemon's one
readiness flag (L{Readiness}).  A module of its own so that feature packages
depend on it, not on the composition root that imports them.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from attrs import define, frozen
from twisted.web.resource import Resource


@frozen
class Feature:
    """
    What a feature factory returns.

    @ivar mounts: ``(path prefix, resource)`` pairs for the root resource.
    @ivar services: started once the schema is in place, stopped with the daemon.
    @ivar handle: the feature's main object (its service), for admin commands
        and tests; None when there is nothing to hand out.
    @ivar health: optional; called by ``/health`` (while the database answers)
        for a dict merged into its body, e.g. ``{"outbox": {"megogo": "stuck"}}``.
        Informational: it never turns ``/health`` into a 503 (the database does).
    """

    mounts: tuple[tuple[str, Resource], ...] = ()
    services: tuple[Any, ...] = ()
    handle: Any = None
    health: Callable[[], Awaitable[dict]] | None = None


@define
class Readiness:
    """
    False while the daemon starts (schema, caches): ``/health`` answers 503,
    OSMP answers "retry" to a pay and 243 to a check.  Flipped once by L{Daemon}.
    """

    ready: bool = False

    def __call__(self) -> bool:
        return self.ready
