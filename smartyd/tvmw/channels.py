"""
The channel catalog a device sees, in memory: channels (id, name, URL mask,
category) and categories.  Reloaded by the session store's notification
connection when channels or categories change (``smartyd_entitlements``
payloads ``channels`` / ``channel_categories``) and after every reconnect,
so a zap reads no catalog row.
"""

from __future__ import annotations

from typing import Any

from attrs import define, field, frozen

from smartyd.db import Database, Tx
from smartyd.util.singleflight import SingleFlight


@frozen
class Catalog:
    channels: dict[int, dict]          # id -> {id, name, url_mask, category_id}
    order: tuple[int, ...]             # channel ids in list order
    categories: tuple[dict, ...]       # {id, name, color}


async def load_catalog(tx: Tx) -> Catalog:
    channels = {}
    order = []
    for cid, name, mask, category in await tx.fetchall(
            "SELECT id, name, url_mask, category_id FROM channels ORDER BY id"):
        channels[cid] = {"id": cid, "name": name, "url_mask": mask, "category_id": category}
        order.append(cid)
    categories = tuple(
        {"id": i, "name": n, "color": c}
        for i, n, c in await tx.fetchall(
            "SELECT id, name, color FROM channel_categories ORDER BY id"))
    return Catalog(channels, tuple(order), categories)


@define(eq=False)
class ChannelCache:
    db: Database
    catalog: Catalog | None = field(default=None, init=False)
    _flight: Any = field(init=False)

    def __attrs_post_init__(self) -> None:
        self._flight = SingleFlight(self._load)

    def reload(self):
        """Reload now, or once more right after the reload in flight."""
        return self._flight.run()

    async def _load(self) -> Catalog:
        self.catalog = await self.db.run(load_catalog)
        return self.catalog

    async def current(self) -> Catalog:
        """The catalog (loaded on first use if the listener has not yet)."""
        if self.catalog is None:
            await self.reload()
        return self.catalog
