"""
``HealthCheck`` (``/health/check/``): may a device (or a balancer) use this server.

The spec computes ``usage`` from Smarty's MAX_LA / MAX_USED_MEM settings and
answers ``alive`` 0 past them.  smartyd has no such limits: ``usage`` here is
the one-minute load average per CPU, capped at 1, for information only, and
``alive`` is 1 -- with ``check_db_conn=1``, while the database answers
(``connection_errors`` then says why not).  A busy server is not a dead one:
a balancer that followed the load average would take every instance out at
the peak.  No session needed; smartyd knows no reserve servers.
"""

from __future__ import annotations

import os

from smartyd.tvmw import params as P
from smartyd.tvmw.call import Call


def load_usage() -> float:
    try:
        load = os.getloadavg()[0]
    except OSError:
        return 0.0
    return round(min(load / (os.cpu_count() or 1), 1.0), 3)


async def health_check(call: Call) -> dict:
    check_db = P.flag(call.params, "check_db_conn")
    alive = True
    answer = {"usage": load_usage(), "reserved_server_addresses": []}
    if check_db:
        errors = [] if await call.db.ping() else ["database: not answering"]
        answer["connection_errors"] = errors
        alive = alive and not errors
    answer["alive"] = 1 if alive else 0
    return answer


METHODS = {"health/check": health_check}
NO_SESSION = {"health/check"}
