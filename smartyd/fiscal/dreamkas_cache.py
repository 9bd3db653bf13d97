"""
Dreamkas devices and positions (products), cached for ``cache_lifetime`` seconds.

The cache lives in PostgreSQL (``dreamkas_cache``) so that every instance and
``smartyd-admin receipts refresh-cache`` share one copy: N instances do not
each fetch it, and an admin refresh takes effect on every instance's next
run.  Freshness is judged on the injected clock.  When a refresh fails, a
stale copy is used (and said so in the log); with no copy at all the caller
gets the partner error and retries later.
"""

from __future__ import annotations

import json
from typing import Any

from attrs import define, frozen
from twisted.logger import Logger

from smartyd.db import Database, Tx
from smartyd.partners import PartnerError

log = Logger()

KINDS = ("devices", "products")


@frozen
class CachedCatalog:
    devices: list
    products: list
    stale: bool = False

    def device_ids(self) -> list[int]:
        out = []
        for d in self.devices:
            v = d.get("id")
            if isinstance(v, int) and not isinstance(v, bool):
                out.append(v)
            elif isinstance(v, str) and v.isdigit():
                out.append(int(v))
        return out


async def _read(tx: Tx) -> dict[str, tuple[Any, float]]:
    rows = await tx.fetchall(
        "SELECT kind, data, fetched_at FROM dreamkas_cache WHERE kind = ANY(%s)", (list(KINDS),)
    )
    return {kind: (data, fetched_at) for kind, data, fetched_at in rows}


async def _store(tx: Tx, kind: str, data: Any, fetched_at: float) -> None:
    await tx.execute(
        "INSERT INTO dreamkas_cache (kind, data, fetched_at) VALUES (%s, %s, %s)"
        " ON CONFLICT (kind) DO UPDATE SET data = excluded.data, fetched_at = excluded.fetched_at",
        (kind, json.dumps(data, ensure_ascii=False), fetched_at),
    )


async def invalidate(tx: Tx, kind: str | None = None) -> None:
    """Make the next read refetch (a PRODUCT or DEVICE webhook changed them)."""
    if kind is None:
        await tx.execute("UPDATE dreamkas_cache SET fetched_at = '-infinity'")
    else:
        await tx.execute(
            "UPDATE dreamkas_cache SET fetched_at = '-infinity' WHERE kind = %s", (kind,)
        )


@define
class DreamkasCache:
    db: Database
    api: Any  # DreamkasAPI
    clock: Any
    lifetime: float = 1800.0

    async def get(self) -> CachedCatalog:
        """Devices and products, refetching whatever is older than ``lifetime``."""
        now = self.clock.seconds()
        cached = await self.db.run(_read)
        values: dict[str, Any] = {}
        stale = False
        for kind in KINDS:
            data, fetched_at = cached.get(kind, (None, None))
            if data is not None and fetched_at + self.lifetime > now:
                values[kind] = data
                continue
            try:
                values[kind] = await self._fetch(kind)
            except PartnerError as e:
                if data is None:
                    raise
                log.warn("dreamkas {kind}: refresh failed ({error}); using the cached copy",
                         kind=kind, error=e.message)
                values[kind], stale = data, True
        return CachedCatalog(values["devices"], values["products"], stale)

    async def refresh(self) -> CachedCatalog:
        """Fetch both now (the admin command)."""
        values = {kind: await self._fetch(kind) for kind in KINDS}
        return CachedCatalog(values["devices"], values["products"])

    async def _fetch(self, kind: str) -> list:
        data = await (self.api.devices() if kind == "devices" else self.api.products())
        await self.db.run(_store, kind, data, self.clock.seconds())
        log.info("dreamkas {kind} refreshed: {count}", kind=kind, count=len(data))
        return data
