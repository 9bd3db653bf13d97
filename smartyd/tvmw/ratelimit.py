"""
Login failures per client address and per abonement, in memory (per
instance): a failed login is answered after a delay that grows with the
recent failures, never a lockout.

Each failed ``Login`` (and ``AccountPasswordChange``'s wrong current
password) counts against the caller's address and the abonement it named; a
wrong ``client_id``/``api_key`` counts against the address only.  Before the
password is checked, a login waits (``deferLater`` on the injected clock,
never blocking) for the larger of its keys' delays:

- per abonement: the first L{ABONEMENT_FREE} (3) failures cost nothing, then
  1, 2, 4, 8, 10, 10, ... seconds (doubling, capped at L{CAP});
- per address: the first L{ADDRESS_FREE} (50) failures cost nothing, then
  the same doubling up to L{CAP}.  The threshold is much higher because many
  subscribers share one address behind a carrier-grade NAT: a handful of
  typos there must not slow everyone else down;
- a key forgets its failures after L{FORGET} (15 min) without one.  A
  successful login clears its abonement's count, never the address's (an
  attacker with an account of his own would otherwise reset his address).

After the wait the password *is* checked (one scrypt): the owner who types the
right password while strangers guess it gets in after at most L{CAP} seconds
-- a stranger can slow the owner down but cannot lock him out.  The trade-off
is that guessing is slowed, not stopped: per abonement, guesses are bounded by
the delays of the attacker's addresses.  To bound the scrypt work one address
can cause, at most L{MAX_WAITING} (32) of its logins wait at a time; one
more, while they wait, is answered "not found" at once without a password
check (``smartyd_tvmw_login_failures{reason="rate_limited"}``) -- so a
flooding address can refuse the subscribers behind that same address, but
nobody elsewhere.  The per-abonement count has no such cap, precisely so
that strangers cannot use it to refuse the owner.

No password hash is computed while a login waits; a client that disconnects
while it waits is not checked at all (it costs a timer).  Delayed logins are
counted (``smartyd_tvmw_login_delayed``).  At most L{MAX_KEYS} keys are kept
(the oldest go first), so a flood of addresses cannot grow memory.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable

from twisted.internet.task import deferLater

ABONEMENT_FREE = 3
ADDRESS_FREE = 50
CAP = 10.0
FORGET = 900.0
MAX_WAITING = 32
MAX_KEYS = 100_000

_ADDRESS = "ip:"


class LoginLimiter:
    def __init__(self, abonement_free: int = ABONEMENT_FREE, address_free: int = ADDRESS_FREE,
                 cap: float = CAP, forget: float = FORGET, max_waiting: int = MAX_WAITING,
                 max_keys: int = MAX_KEYS):
        self.abonement_free = abonement_free
        self.address_free = address_free
        self.cap = cap
        self.forget = forget
        self.max_waiting = max_waiting
        self.max_keys = max_keys
        # key -> [failures, time of the last failure]
        self._keys: OrderedDict[str, list] = OrderedDict()
        # address key -> logins of that address waiting now
        self._waiting: dict[str, int] = {}

    @staticmethod
    def keys(ip: str, abonement: str | None) -> tuple[str, ...]:
        return (_ADDRESS + ip,) + (("ab:" + abonement,) if abonement else ())

    def delay(self, keys: tuple[str, ...], now: float) -> float:
        """Seconds a login under these keys waits before its check (0: none)."""
        wait = 0.0
        for key in keys:
            state = self._keys.get(key)
            if state is None:
                continue
            failures, last = state
            if now - last > self.forget:
                del self._keys[key]
                continue
            free = self.address_free if key.startswith(_ADDRESS) else self.abonement_free
            if failures >= free:
                wait = max(wait, min(2.0 ** (failures - free), self.cap))
        return wait

    async def hold(self, keys: tuple[str, ...], reactor: Any,
                   left: Callable[[], bool] = lambda: False) -> bool | None:
        """
        Wait out these keys' delay on C{reactor}.

        @return: C{None} if there was nothing to wait for, C{True} after a
            wait, C{False} when the login must be answered "not found"
            without a check: its address has L{MAX_WAITING} logins waiting
            already, or its client left while it waited.
        """
        wait = self.delay(keys, reactor.seconds())
        if wait <= 0:
            return None
        addresses = [k for k in keys if k.startswith(_ADDRESS)]
        if any(self._waiting.get(k, 0) >= self.max_waiting for k in addresses):
            return False
        for k in addresses:
            self._waiting[k] = self._waiting.get(k, 0) + 1
        try:
            await deferLater(reactor, wait, lambda: None)
        finally:
            for k in addresses:
                n = self._waiting.pop(k) - 1
                if n:
                    self._waiting[k] = n
        return not left()

    def failed(self, keys: tuple[str, ...], now: float) -> None:
        for key in keys:
            state = self._keys.pop(key, None)
            if state is None or now - state[1] > self.forget:
                state = [0, now]
            state[0] += 1
            state[1] = now
            self._keys[key] = state
        while len(self._keys) > self.max_keys:
            self._keys.popitem(last=False)

    def succeeded(self, keys: tuple[str, ...]) -> None:
        """The abonement's count is cleared; the address's is kept (see the module)."""
        for key in keys:
            if not key.startswith(_ADDRESS):
                self._keys.pop(key, None)


async def held(call, keys: tuple[str, ...]) -> bool:
    """
    Wait out the delay of C{keys} for C{call} (a L{smartyd.tvmw.call.Call}); False: answer
    the refusal now, without a password check (counted ``rate_limited`` when
    the address has too many logins waiting; not counted when the client left).
    """
    limiter = call.deps["limiter"]
    outcome = await limiter.hold(keys, call.reactor, call.deps.get("client_left", _stayed))
    if outcome is None:
        return True
    if outcome:
        call.metrics.tvmw_login_delayed.inc()
        return True
    if not call.deps.get("client_left", _stayed)():
        call.metrics.tvmw_login_failures.labels("rate_limited").inc()
    return False


def _stayed() -> bool:
    return False
