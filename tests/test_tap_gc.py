"""
The daemon's start-up heap is frozen out of the garbage collector: a full
(generation 2) collection otherwise walks every object the daemon built at
start-up and stops every thread meanwhile -- 25-70 ms measured in the middle
of a 100,000-title catalog sync (bench/vod_sync.py ``full_gc_max_ms``), the
sync's one reactor stall above 50 ms; with the heap frozen it is under 1 ms.
"""

from __future__ import annotations

import gc
import signal

from twisted.internet.task import Clock

from conftest import make_config
from smartyd import tap
from smartyd.db import embedded


def test_start_freezes_the_startup_heap(tmp_path):
    cfg = make_config(log={"file": str(tmp_path / "smartyd.jsonl")})
    service = tap.SmartyService(cfg, Clock())
    previous = signal.getsignal(signal.SIGUSR1)
    gc.unfreeze()
    try:
        assert gc.get_freeze_count() == 0
        service.startService()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        signal.signal(signal.SIGUSR1, previous)
        embedded.guard_reactor_thread(False)  # process-wide, like the signal: undone
        service.observer.close()
