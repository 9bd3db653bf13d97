"""
Numbered SQL migrations, applied under a PostgreSQL advisory lock.

Files ``smartyd/db/migrations/NNNN_name.sql`` are applied in order, each in
its own transaction together with its row in ``schema_migrations``.  The
advisory lock is transaction-scoped and taken first in every migration
transaction, so two instances starting at once apply each file exactly once:
the second waits, then sees the version recorded and skips it.
"""

from __future__ import annotations

import re
from importlib import resources

from attrs import frozen
from twisted.logger import Logger

from smartyd.db import Database, Tx

log = Logger()

# pg_advisory_xact_lock key: "smartyd" + "mig" as an int64.
MIGRATION_LOCK = 0x736D61727479_6D69

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@frozen
class Migration:
    version: int
    name: str
    sql: str


def available() -> list[Migration]:
    found = []
    for entry in resources.files("smartyd.db").joinpath("migrations").iterdir():
        m = _NAME.match(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration numbers: {versions}")
    return found


async def _prepare(tx: Tx) -> None:
    await tx.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
    await tx.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version integer PRIMARY KEY,"
        " name text NOT NULL,"
        " applied timestamptz NOT NULL DEFAULT now())"
    )


async def _apply_one(tx: Tx, m: Migration) -> bool:
    await tx.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
    done = await tx.fetchval("SELECT 1 FROM schema_migrations WHERE version = %s", (m.version,))
    if done:
        return False
    await tx.execute(m.sql)
    await tx.execute(
        "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (m.version, m.name)
    )
    return True


async def migrate(db: Database) -> list[int]:
    """Apply every pending migration; return the versions applied by this call."""
    await db.run(_prepare)
    applied = []
    for m in available():
        if await db.run(_apply_one, m):
            log.info("applied migration {version} {name}", version=m.version, name=m.name)
            applied.append(m.version)
    return applied


async def current_version(db: Database) -> int:
    return await db.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations") or 0
