"""
Login's rate limit (smartyd/tvmw/ratelimit.py), ``auth.login`` called directly
with a L{Call} on the real database and a ``task.Clock`` as its reactor: a
failure is answered "not found" after a delay that grows per abonement and
(with a NAT-sized threshold) per address; the answer comes only when the
clock has advanced; the owner's right password still gets in; wrong api_keys
count against the address; a client that left is not checked; nothing is
written by a failed login.

The world (tests/streams_world.py): alice (tariff "basic", password PASSWORD).
"""

from __future__ import annotations

import pytest_twisted
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import Clock

from smartyd.billing.engine import utc
from smartyd.metrics import Metrics
from smartyd.tvmw import auth
from smartyd.tvmw.call import Call
from smartyd.tvmw.errors import TvmwError
from smartyd.tvmw.ratelimit import ADDRESS_FREE, LoginLimiter
from smartyd.tvmw.sessions import SessionStore
from streams_world import PASSWORD, within
from test_tvmw import KEY, Running, config


class Logins:
    """Logins of one daemon instance: its limiter, its metrics, its clock."""

    def __init__(self, db, limiter: LoginLimiter | None = None):
        self.db = db
        self.cfg = config()
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.limiter = limiter or LoginLimiter()
        self.metrics = Metrics()
        self.store = SessionStore(db, self.clock, self.cfg.tvmw.session_ttl)

    def start(self, ip="10.0.0.1", abonement="alice", password=PASSWORD, api_key=KEY,
              left=lambda: False) -> Deferred:
        """A login under way: fires with its error code (0: logged in)."""
        params = {"client_id": "1", "api_key": api_key, "abonement": abonement,
                  "password": password, "device": "smarttv", "device_uid": "box-7"}
        call = Call(params=params, session=None, ip=ip, now=utc(self.clock.seconds()),
                    reactor=self.clock, db=self.db, cfg=self.cfg, metrics=self.metrics,
                    deps={"limiter": self.limiter, "sessions": self.store, "client_left": left})

        async def run() -> int:
            try:
                await auth.login(call)
            except TvmwError as e:
                return e.code
            return 0

        return ensureDeferred(run())

    async def now(self, **kw) -> int:
        """A login that must be answered without the clock moving."""
        return await within(self.start(**kw), 10)

    async def after(self, wait: float, **kw) -> int:
        """A login answered only once the clock has advanced C{wait} seconds."""
        d = self.start(**kw)
        self.clock.advance(wait - 0.01)
        assert not d.called  # still waiting, its password unchecked
        self.clock.advance(0.01)
        return await within(d, 10)

    def value(self, name: str, **labels) -> float:
        return self.metrics.registry.get_sample_value(name, labels or None) or 0


async def written(db) -> tuple:
    return (await db.fetchval("SELECT count(*) FROM tvmw_sessions"),
            await db.fetchval("SELECT count(*) FROM devices WHERE uid = 'box-7'"))


@pytest_twisted.ensureDeferred
async def test_failures_wait_a_growing_delay_and_write_nothing(db, world):
    logins = Logins(db)
    for _ in range(3):  # the first few cost nothing
        assert await logins.now(password="wrong") == 1
    checked = logins.value("smartyd_tvmw_login_failures_total", reason="bad_credentials")
    for wait in (1, 2, 4, 8, 10, 10):
        d = logins.start(password="wrong")
        logins.clock.advance(wait - 0.01)
        assert not d.called
        # No password was checked while it waits.
        assert logins.value("smartyd_tvmw_login_failures_total",
                            reason="bad_credentials") == checked
        logins.clock.advance(0.01)
        assert await within(d, 10) == 1
        checked += 1
    assert checked == 9
    assert logins.value("smartyd_tvmw_login_delayed_total") == 6
    assert logins.value("smartyd_tvmw_login_failures_total", reason="rate_limited") == 0
    assert await written(db) == (0, 0)


@pytest_twisted.ensureDeferred
async def test_the_owner_still_logs_in_while_strangers_guess(db, world):
    logins = Logins(db)
    # Strangers, each from an address of its own, guess alice's password.
    for i, wait in enumerate((0, 0, 0, 1, 2, 4, 8, 10, 10, 10)):
        ip = f"192.0.2.{i}"
        code = await (logins.after(wait, ip=ip, password="guess") if wait
                      else logins.now(ip=ip, password="guess"))
        assert code == 1
    # The owner, with the right password, gets in after the delay, not never.
    assert await logins.after(10, ip="198.51.100.7") == 0
    assert (await written(db))[0] == 1
    # And the abonement's count is cleared by it.
    assert await logins.now(ip="198.51.100.7") == 0


@pytest_twisted.ensureDeferred
async def test_many_abonements_behind_one_nat_address_are_not_slowed(db, world):
    logins = Logins(db)
    for i in range(12):  # a dozen subscribers behind one address mistype their abonements
        assert await logins.now(ip="100.64.0.1", abonement=f"nobody-{i}") == 1
    assert await logins.now(ip="100.64.0.1") == 0
    assert logins.value("smartyd_tvmw_login_delayed_total") == 0


def test_the_address_threshold_is_nat_sized_and_delays_are_forgotten():
    limiter = LoginLimiter()
    for i in range(ADDRESS_FREE - 1):
        limiter.failed(limiter.keys("100.64.0.1", f"ab-{i}"), 0)
    assert limiter.delay(limiter.keys("100.64.0.1", "alice"), 0) == 0
    limiter.failed(limiter.keys("100.64.0.1", "ab-x"), 0)
    assert limiter.delay(limiter.keys("100.64.0.1", "alice"), 0) == 1
    assert limiter.delay(limiter.keys("100.64.0.2", "alice"), 0) == 0
    # Per abonement: three free, then doubling to the cap.
    keys = limiter.keys("10.0.0.1", "alice")
    waits = []
    for t in range(8):
        waits.append(limiter.delay(keys, t))
        limiter.failed(keys, t)
    assert waits == [0, 0, 0, 1, 2, 4, 8, 10]
    # A success clears the abonement's count, never the address's.
    limiter.succeeded(limiter.keys("100.64.0.1", "ab-x"))
    assert limiter.delay(limiter.keys("100.64.0.1", None), 8) == 1
    assert limiter.delay(keys, 8 + 901) == 0  # forgotten after a quiet while
    small = LoginLimiter(max_keys=3)
    for i in range(5):
        small.failed(small.keys(f"10.0.1.{i}", None), 200)
    assert len(small._keys) == 3  # bounded


@pytest_twisted.ensureDeferred
async def test_wrong_api_keys_count_against_the_address(db, world):
    logins = Logins(db, LoginLimiter(address_free=2))
    assert await logins.now(api_key="guess-1") == 4
    assert await logins.now(api_key="guess-2") == 4
    assert await logins.after(1, api_key="guess-3") == 4
    assert logins.value("smartyd_tvmw_login_failures_total", reason="bad_client") == 3
    # The address is slowed for its next login, whatever it names.
    assert await logins.after(2) == 0
    # Another address is not.
    assert await logins.now(ip="10.0.0.2") == 0


@pytest_twisted.ensureDeferred
async def test_a_client_that_left_while_delayed_is_not_checked(db, world):
    logins = Logins(db, LoginLimiter(abonement_free=1))
    assert await logins.now(password="wrong") == 1
    assert await logins.after(1, left=lambda: True) == 1  # even the right password: unchecked
    assert logins.value("smartyd_tvmw_login_failures_total", reason="bad_credentials") == 1
    assert logins.limiter.delay(logins.limiter.keys("10.0.0.1", "alice"),
                                logins.clock.seconds()) == 1  # not counted as a failure
    assert await written(db) == (0, 0)


@pytest_twisted.ensureDeferred
async def test_one_address_may_keep_only_so_many_logins_waiting(db, world):
    logins = Logins(db, LoginLimiter(abonement_free=0, max_waiting=2))
    assert await logins.now(password="wrong") == 1
    waiting = [logins.start(password="wrong") for _ in range(2)]
    # A third from that address is refused at once, unchecked.
    assert await logins.now(password="wrong") == 1
    assert logins.value("smartyd_tvmw_login_failures_total", reason="rate_limited") == 1
    # Another address naming the same abonement still waits its turn and is checked.
    other = logins.start(ip="10.0.0.9")
    logins.clock.advance(2)
    assert [await within(d, 10) for d in waiting] == [1, 1]
    assert await within(other, 10) == 0


@pytest_twisted.ensureDeferred
async def test_a_login_knows_when_its_client_has_left(db, world):
    """The web layer's ``client_left``, which a delayed login reads before its check."""
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure
    from twisted.web.server import Request
    from twisted.web.test.requesthelper import DummyChannel

    web = Running(db, config()).tvmw
    request = Request(DummyChannel())
    call = await web._call(request, "login", {})
    assert call.deps["client_left"]() is False
    request.connectionLost(Failure(ConnectionDone()))
    assert call.deps["client_left"]() is True
