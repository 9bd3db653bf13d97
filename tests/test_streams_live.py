"""
Entitlements live: a block made in the database by another client reaches
both listeners within a second (NOTIFY -> reload); a notification connection
that drops reconnects and reloads; ``workers = 2`` processes share the fast
socket, each with its own snapshot.
"""

import os
import signal
import time

import psycopg2
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.threads import deferToThread

from smartyd.config import load
from smartyd.streams.check import Checker, Tallies, prometheus_counters
from smartyd.streams.entitlements import Entitlements
from smartyd.streams.fast import FastCheckFactory
from smartyd.streams.pool import WorkerPool
from smartyd.streams.tokens import TokenCodec
from smartyd.streams.web import StreamsApp
from fakes import in_memory_client as stub_treq
from streams_world import connect, get, seed, within

IP = "127.0.0.1"


def admin_sql(dsn: str, sql: str, params=(), replica: bool = False) -> None:
    """Run SQL the way an administrator would: its own connection, committed."""
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        if replica:  # triggers off: a change nobody is notified of
            cur.execute("SET session_replication_role = replica")
        cur.execute(sql, params)
    conn.close()


class Listeners:
    """Both listeners on one snapshot: the Klein route (StubTreq) and the fast port."""

    def __init__(self, db, entitlements, metrics):
        self.codec = TokenCodec(["s3cret"], bind_ip=True)
        http_checker = Checker(self.codec, entitlements, reactor,
                               prometheus_counters(metrics, "http"))
        self.http = stub_treq(
            StreamsApp(db, self.codec, http_checker, reactor, metrics, ttl=3600).resource())
        self.factory = FastCheckFactory(
            Checker(self.codec, entitlements, reactor, Tallies(), listener="fast"), reactor)
        self.port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")

    async def both(self, token: str) -> tuple[int, int]:
        """The status each listener answers for C{token}."""
        r = await self.http.get("http://smartyd/streams/check",
                                params={"token": token, "ip": IP, "name": "ch1"})
        client = await connect(self.port.getHost().port)
        client.send(get(f"/streams/check?token={token}&ip={IP}&name=ch1"))
        [answer] = await client.wait(1)
        await client.close()
        return r.code, answer["status"]

    async def stop(self):
        await self.port.stopListening()
        await self.factory.close_all()


@pytest_twisted.ensureDeferred
async def test_a_block_reaches_both_listeners_within_a_second(db, world, entitlements,
                                                              metrics, pg_dsn):
    listeners = Listeners(db, entitlements, metrics)
    try:
        token = listeners.codec.mint(world.alice, world.ch1, int(time.time()) + 3600, ip=IP)
        assert await listeners.both(token) == (200, 200)

        reloaded = entitlements.next_reload()
        await deferToThread(admin_sql, pg_dsn,
                            "UPDATE accounts SET active = false, status_reason = 'BLOCK' WHERE id = %s",
                            (world.alice,))
        committed = reactor.seconds()
        await within(reloaded, 1.0)
        assert await listeners.both(token) == (403, 403)
        assert reactor.seconds() - committed < 1.0

        # Unblocked: access comes back the same way.
        reloaded = entitlements.next_reload()
        await deferToThread(admin_sql, pg_dsn,
                            "UPDATE accounts SET active = true, status_reason = 'ACTIVE' WHERE id = %s",
                            (world.alice,))
        await within(reloaded, 1.0)
        assert await listeners.both(token) == (200, 200)

        # The tariff taken away: not entitled any more.
        reloaded = entitlements.next_reload()
        await deferToThread(admin_sql, pg_dsn,
                            "DELETE FROM subscriptions WHERE account_id = %s", (world.alice,))
        await within(reloaded, 1.0)
        assert await listeners.both(token) == (403, 403)
        assert entitlements.snapshot.entitlement(world.alice, world.ch1) == "not_entitled"
    finally:
        await listeners.stop()
    value = metrics.registry.get_sample_value
    assert value("smartyd_token_checks_total",
                 {"listener": "http", "outcome": "denied", "reason": "blocked"}) == 1
    assert value("smartyd_entitlement_reloads_total") >= 4


@pytest_twisted.ensureDeferred
async def test_a_burst_of_reload_requests_is_one_reload_and_one_more(db, world, entitlements):
    before = entitlements.reloads
    burst = [entitlements.reload() for _ in range(10)]
    snapshots = [await within(d, 5) for d in burst]
    # The first runs; the nine that arrive meanwhile share the one queued after it.
    assert entitlements.reloads - before == 2
    assert snapshots[0] is not snapshots[1]
    assert all(s is snapshots[1] for s in snapshots[1:])


@pytest_twisted.ensureDeferred
async def test_the_snapshot_reloads_after_the_notification_connection_reconnects(
        own_cluster, make_db, metrics):
    db = await make_db(size=2, dsn=own_cluster.dsn())
    w = await seed(db)
    service = Entitlements(db, metrics=metrics, clock=reactor, heartbeat=0.5)
    service.startService()
    try:
        await within(service.when_loaded(), 10)
        assert service.snapshot.entitlement(w.alice, w.ch1) == "ok"
        assert service.listener.connects == 1
        # Changed behind the notification's back: only a reload on reconnect sees it.
        admin_sql(own_cluster.dsn(), "UPDATE accounts SET active = false, status_reason = 'BLOCK' WHERE id = %s",
                  (w.alice,), replica=True)
        own_cluster.stop(mode="fast")
        own_cluster.start()
        reloaded = service.next_reload()
        await within(reloaded, 30)
        assert service.listener.connects == 2
        assert service.snapshot.entitlement(w.alice, w.ch1) == "blocked"
    finally:
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_two_worker_processes_share_the_socket(db, world, metrics, pg_dsn, tmp_path):
    config = tmp_path / "smartyd.toml"
    config.write_text(
        f'[database]\ndsn = "{pg_dsn}"\n'
        f'[state]\ndir = "{tmp_path / "var"}"\n'
        f'[log]\nfile = "{tmp_path / "smartyd.jsonl"}"\n'
        '[tokens]\nsecret = "s3cret-long-enough-for-config"\nfast_listen = "tcp:0:interface=127.0.0.1"\nworkers = 2\n'
    )
    cfg = load(str(config))
    pool = WorkerPool(reactor, cfg.tokens.fast_listen, cfg.tokens.workers, str(config),
                      metrics=metrics)
    pool.startService()
    try:
        await within(pool.ready, 20)
        port = pool.port.getHost().port
        token = TokenCodec(cfg.tokens.keys).mint(world.alice, world.ch1,
                                                 int(time.time()) + 60, ip=IP)
        request = get(f"/streams/check?token={token}&name=ch1")
        pids = [child.transport.pid for child in pool.children.values()]
        assert len(pids) == 2
        # Each worker alone: stop the other one (it cannot accept while stopped).
        for stopped, serving in ((pids[0], pids[1]), (pids[1], pids[0])):
            os.kill(stopped, signal.SIGSTOP)
            try:
                client = await connect(port)
                client.send(request)
                [answer] = await client.wait(1, seconds=5)
                assert answer["status"] == 200
                assert answer["headers"]["X-UserId"] == str(world.alice)
                await client.close()
            finally:
                os.kill(stopped, signal.SIGCONT)

        # A worker that dies is restarted.
        ready_again = pool.next_ready()
        os.kill(pids[0], signal.SIGKILL)
        await within(ready_again, 20)
        assert pool.spawned == 3 and len(pool.children) == 2
    finally:
        await within(pool.stopService(), 15)
    assert not pool.children
    assert metrics.registry.get_sample_value(
        "smartyd_token_checks_total",
        {"listener": "fast", "outcome": "allowed", "reason": "ok"}) >= 1
    # The workers' check times reach the daemon's histogram with their counts.
    assert metrics.registry.get_sample_value(
        "smartyd_token_check_seconds_count", {"listener": "fast"}) >= 1
