"""
The feature registry: each feature module has ``install(parts)``, which adds
its HTTP mounts (``parts.mounts``), its services (``parts.services``, started
once the schema is in place) and health fields (``parts.health_extra``), and may add
``parts.payment_hooks`` (run inside every payment's accepting transaction)
and ``admin_commands(subparsers)`` for ``smartyd-admin``.
"""

from __future__ import annotations

import importlib

FEATURES = (
    "smartyd.osmp",
    "smartyd.streams",
    "smartyd.gateways",
    "smartyd.fiscal",
)


def install(parts) -> None:
    for name in FEATURES:
        importlib.import_module(name).install(parts)
