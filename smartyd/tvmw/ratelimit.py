"""
Login failures per client address and per abonement, in memory (per
instance), with a growing lockout.

Each failed ``Login`` counts against the caller's address and the abonement
it named.  From the L{FREE}-th failure on, that key is locked for
``2 ** (failures - FREE)`` seconds (1, 2, 4, ... up to L{MAX_LOCK}): a login
under a locked key is answered the spec's "not found" (error 1) at once,
without looking at the password -- so guessing costs no scrypt and learns
nothing -- and is counted (``smartyd_tvmw_login_failures{reason="rate_limited"}``).
A key forgets its failures after L{FORGET} quiet seconds; a successful login
clears the abonement's and the address's count.  At most L{MAX_KEYS} keys are
kept (the oldest go first), so a flood of addresses cannot grow memory.
"""

from __future__ import annotations

from collections import OrderedDict

FREE = 5
MAX_LOCK = 300.0
FORGET = 900.0
MAX_KEYS = 100_000


class LoginLimiter:
    def __init__(self, free: int = FREE, max_lock: float = MAX_LOCK, forget: float = FORGET,
                 max_keys: int = MAX_KEYS):
        self.free = free
        self.max_lock = max_lock
        self.forget = forget
        self.max_keys = max_keys
        # key -> [failures, time of the last failure]
        self._keys: OrderedDict[str, list] = OrderedDict()

    @staticmethod
    def keys(ip: str, abonement: str | None) -> tuple[str, ...]:
        return ("ip:" + ip,) + (("ab:" + abonement,) if abonement else ())

    def locked(self, keys: tuple[str, ...], now: float) -> float:
        """Seconds until these keys may try again (0: not locked)."""
        wait = 0.0
        for key in keys:
            state = self._keys.get(key)
            if state is None:
                continue
            failures, last = state
            if now - last > self.forget:
                del self._keys[key]
                continue
            if failures >= self.free:
                until = last + min(2.0 ** (failures - self.free), self.max_lock)
                wait = max(wait, until - now)
        return wait

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
        for key in keys:
            self._keys.pop(key, None)
