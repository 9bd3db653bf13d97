"""
The feature registry: each feature module has ``install(parts)``, which adds
its HTTP mounts (``parts.mounts``), its services (``parts.services``, started
once the schema is in place) and health fields (``parts.health_extra``).
"""

from __future__ import annotations

import importlib

FEATURES = (
    "smartyd.osmp",
    "smartyd.streams",
)


def install(parts) -> None:
    for name in FEATURES:
        importlib.import_module(name).install(parts)
