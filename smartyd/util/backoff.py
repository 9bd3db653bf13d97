"""
Exponential backoff, written once.

Two shapes cover every retry loop in the daemon:

- L{exponential}: the delay after ``failures`` consecutive failures,
  ``base * 2**failures`` capped at ``maximum`` -- for state kept elsewhere
  (a poller's failure count, a receipt job's attempts column);
- L{Backoff}: the same sequence as a small stateful object for a loop that
  retries in memory (reconnects, reloads, restarts): ``next()`` returns the
  delay to wait now and doubles the one after, ``reset()`` after a success.
"""

from __future__ import annotations

from attrs import define, field

# 2**30 times anything is past every cap; stops float overflow on a long outage.
_MAX_EXPONENT = 30


def exponential(base: float, failures: int, maximum: float) -> float:
    """``base * 2**failures`` capped at ``maximum`` (``failures`` < 0 counts as 0)."""
    return min(base * 2 ** min(max(failures, 0), _MAX_EXPONENT), maximum)


@define
class Backoff:
    """
    Delays ``initial, 2*initial, 4*initial, ...`` up to ``maximum``.

    @ivar initial: the first delay, and the delay again after L{reset}.
    @ivar maximum: the cap.
    """

    initial: float
    maximum: float
    failures: int = field(default=0, init=False)

    def next(self) -> float:
        """The delay to wait before the next attempt; the following one doubles."""
        delay = exponential(self.initial, self.failures, self.maximum)
        self.failures += 1
        return delay

    def peek(self) -> float:
        """The delay L{next} would return, without counting a failure."""
        return exponential(self.initial, self.failures, self.maximum)

    def reset(self) -> None:
        """A success: the next failure waits ``initial`` again."""
        self.failures = 0
