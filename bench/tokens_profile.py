"""
The fast listener alone, with a synthetic snapshot and no database: for
profiling the hot path and for quick load tests.  Prints one line,
``port token``, then serves until interrupted::

    taskset -c 0 py-spy record -r 500 -o fast.svg -- python bench/tokens_profile.py --port 18081
    taskset -c 1 wrk -t1 -c50 -d10s "http://127.0.0.1:18081/streams/check?token=TOKEN&name=ch7"
"""

from __future__ import annotations

import argparse
import time

from twisted.internet import reactor

from smartyd.streams.check import Checker, Tallies
from smartyd.streams.entitlements import Snapshot, SnapshotBuilder
from smartyd.streams.fast import FastCheckFactory
from smartyd.streams.tokens import TokenCodec


class Fixed:
    """A snapshot holder whose snapshot never changes."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--accounts", type=int, default=100_000)
    args = p.parse_args()
    channels = range(1, 50)
    builder = SnapshotBuilder()
    for account in range(1, args.accounts + 1):
        builder.add(account, True, channels)
    snapshot = builder.build({f"ch{i}": i for i in channels}, 0.0)
    codec = TokenCodec(["bench-secret"], bind_ip=True)
    token = codec.mint(42, 7, int(time.time()) + 3600, ip="127.0.0.1")
    checker = Checker(codec, Fixed(snapshot), reactor, Tallies(), listener="fast")
    port = reactor.listenTCP(args.port, FastCheckFactory(checker, reactor),
                             interface="127.0.0.1", backlog=1024)
    print(port.getHost().port, token, flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
