"""
Test fixtures: a real PostgreSQL (the embedded cluster, or SMARTYD_TEST_DSN),
a clean database per test, and a guard that fails any test leaving unhandled
Deferred errors or pending delayed calls behind.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg2
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.logger import globalLogPublisher

from smartyd.config import Config, from_dict
from smartyd.db import Database
from smartyd.db.embedded import EmbeddedCluster
from smartyd.db.migrate import migrate
from smartyd.metrics import Metrics
from smartyd.streams.entitlements import Entitlements
from streams_world import World, seed, within

# Tables emptied between tests (schema_migrations stays).
def _data_tables(dsn: str) -> list[str]:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            " AND tablename <> 'schema_migrations'"
        )
        return [r[0] for r in cur.fetchall()]


@pytest.fixture
def tmp_path():
    """
    A directory of its own under the temp dir, not pytest's: as root, the
    embedded cluster runs as another user, who must traverse to it, and
    pytest (ours, or a parallel run) may take that right from its base dir
    (/tmp/pytest-of-root is reset to 0700).  Every test that starts a
    cluster or a daemon under tmp_path needs this.
    """
    path = Path(tempfile.mkdtemp(prefix="smartyd-tmp-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_root() -> Path:
    # Short path: the cluster's Unix socket lives in pgdata.
    root = Path(tempfile.mkdtemp(prefix="smartyd-t-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_dsn(pg_root) -> str:
    """DSN of the shared test database (created once per session)."""
    env = os.environ.get("SMARTYD_TEST_DSN")
    if env:
        yield env
        return
    cluster = EmbeddedCluster(pg_root / "pgdata")
    cluster.ensure_running()
    yield cluster.dsn()
    cluster.stop(mode="immediate")


@pytest.fixture
def own_cluster(pg_root, request) -> EmbeddedCluster:
    """A private embedded cluster a test may stop and start (outage tests)."""
    cluster = EmbeddedCluster(pg_root / f"own-{request.node.name[:20]}-{os.getpid()}")
    cluster.ensure_running()
    yield cluster
    cluster.stop(mode="immediate")
    shutil.rmtree(cluster.pgdata, ignore_errors=True)


def truncate_all(dsn: str) -> None:
    tables = _data_tables(dsn)
    if tables:
        with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
            cur.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")


@pytest.fixture
def make_db(pg_dsn):
    """Factory of migrated, clean L{Database} pools on the test database."""
    pools = []

    async def make(size: int = 8, dsn: str | None = None, **kw) -> Database:
        db = Database(dsn or pg_dsn, reactor, size=size, **kw)
        pools.append(db)
        await migrate(db)
        return db

    yield make
    for db in pools:
        db.close()


@pytest_twisted.async_fixture
async def db(make_db, pg_dsn):
    database = await make_db()
    truncate_all(pg_dsn)
    return database


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest_twisted.async_fixture
async def world(db) -> World:
    """The stream tests' catalog (tests/streams_world.py) in a clean database."""
    return await seed(db)


@pytest_twisted.async_yield_fixture
async def entitlements(db, world, metrics):
    """The entitlement snapshot service on ``world``, loaded."""
    service = Entitlements(db, metrics=metrics, clock=reactor)
    service.startService()
    try:
        await within(service.when_loaded(), 10)
        yield service
    finally:
        await service.stopService()


def make_config(**sections) -> Config:
    """A Config from section dicts, e.g. make_config(osmp={"account": "id"})."""
    return from_dict(sections)


@contextmanager
def captured_events(namespace: str | None = None):
    """The log events emitted inside the block (of one namespace, if given), as a list."""
    events: list = []

    def observer(event):
        if namespace is None or event.get("log_namespace") == namespace:
            events.append(event)

    globalLogPublisher.addObserver(observer)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(observer)


@pytest.fixture
def log_events():
    """Every log event emitted during the test."""
    with captured_events() as events:
        yield events


@pytest.fixture(autouse=True)
def observe_errors():
    """Fail a test that leaves unhandled Deferred errors or delayed calls behind."""
    errors = []

    def observer(event):
        if event.get("log_failure") is not None and (
            "Unhandled error in Deferred" in str(event.get("log_format", ""))
            or event.get("isError")
        ):
            errors.append(event)

    globalLogPublisher.addObserver(observer)
    before = set(reactor.getDelayedCalls())
    yield errors
    globalLogPublisher.removeObserver(observer)
    import gc

    gc.collect()  # Deferreds collected with an unhandled failure log it now
    leftover = [
        c for c in reactor.getDelayedCalls()
        if c not in before and c.active() and not _harmless(c)
    ]
    for c in leftover:
        c.cancel()
    messages = [str(e["log_failure"].getErrorMessage()) for e in errors]
    assert not messages, f"unhandled errors: {messages}"
    assert not leftover, f"delayed calls left behind: {leftover}"


def _harmless(call) -> bool:
    # twisted's Cooperator (txpostgres notify delivery) and HTTP channel
    # time-outs of connections that close on their own.
    text = repr(call)
    return "Cooperator" in text or "_tick" in text or "timeoutConnection" in text \
        or "forceAbortClient" in text


@pytest.fixture
def admin(tmp_path, pg_dsn):
    """
    ``smartyd-admin`` as an operator runs it (its own process) on the test
    database: ``admin(*args)`` -> (exit code, its JSON or None, stderr).  A
    test module may define its own ``admin`` (another config) instead.
    """
    cfg = tmp_path / "smartyd.toml"
    cfg.write_text(f'[database]\ndsn = "{pg_dsn}"\n[log]\nfile = "{tmp_path}/smartyd.jsonl"\n')

    def run(*args):
        proc = subprocess.run(
            [sys.executable, "-m", "smartyd.admin", "--config", str(cfg), *args],
            capture_output=True, text=True, timeout=60)
        return proc.returncode, json.loads(proc.stdout) if proc.returncode == 0 else None, \
            proc.stderr

    return run
