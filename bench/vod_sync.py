"""
The MEGOGO catalog sync over a 100,000-title feed: first sync, second
(unchanged) sync, peak RSS of the syncing process, longest reactor stall.

    PYTHONPATH=. python bench/vod_sync.py [--titles 100000] [--dsn DSN]

Generates an ``all_mgg.xml``-shaped feed (about 1 KB a title: info, ratings,
poster, duration, story, directors, actors, gallery) into a temporary file,
serves it with ``http.server`` on 127.0.0.1 in a separate process, and runs
the daemon's own L{smartyd.vod.catalog_sync.CatalogSync} (streamed over real
HTTP through L{smartyd.partners.PartnerHTTP}) twice in a child process, so
the peak RSS measured (``ru_maxrss``) is the syncing process's alone.  Per
sync it also prints the longest reactor stall (a 5 ms LoopingCall's lateness)
and the longest full (generation 2) garbage collection, which stops every
thread; the start-up heap is frozen first, as the daemon does.
Without --dsn an embedded cluster is created in a temporary state dir (and
removed).  Prints one JSON line.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from xml.sax.saxutils import escape, quoteattr

from twisted.internet import task
from twisted.internet.defer import Deferred

from smartyd import catalog
from smartyd.db import Database
from smartyd.db.embedded import EmbeddedCluster
from smartyd.db.migrate import migrate
from smartyd.partners import HTTPClientService, PartnerHTTP
from smartyd.vod.catalog_sync import CatalogSync

GENRES = ["drama", "comedy", "thriller", "action", "horror", "documentary", "family",
          "crime", "fantasy", "romance", "мелодрама", "комедия"]
WORDS = ("lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor"
         " incididunt ut labore et dolore magna aliqua история фильм герой").split()


def generate(path: str, n: int) -> int:
    """Write an n-title feed to ``path``; its size in bytes."""
    rnd = random.Random(15)
    with open(path, "w", encoding="utf-8") as f:
        f.write("<?xml version='1.0' encoding='utf-8'?>\n<objects>\n")
        for i in range(1, n + 1):
            genres = ",".join(rnd.sample(GENRES, 2))
            vod = "svod" if i % 5 else "svod,tvod"
            price = ' price="99.00"' if i % 5 == 0 else ""
            story = escape(" ".join(rnd.choice(WORDS) for _ in range(60)))
            people = "".join(f"<person name={quoteattr(f'Actor {i}-{k}')}/>" for k in range(4))
            gallery = "".join(f'<image url="https://img.test/{i}/g{k}.jpg"/>' for k in range(3))
            f.write(
                f'  <object id="{i}" title={quoteattr(f"Title {i}")} title_en="Title {i}"'
                f' categories="films" genres="{genres}" vod="{vod}"{price}>\n'
                f'    <info year="{1950 + i % 70}" country="US"/>\n'
                f'    <ratings imdb="{rnd.randint(10, 99) / 10}" kinopoisk="7.{i % 10}"/>\n'
                f'    <poster url="https://img.test/{i}.jpg"/>\n'
                f"    <duration_sec>{3600 + i % 3600}</duration_sec>\n"
                f"    <story>{story}</story>\n"
                f"    <directors><person name=\"Director {i}\"/></directors>\n"
                f"    <actors>{people}</actors>\n"
                f"    <gallery>{gallery}</gallery>\n"
                f"  </object>\n")
        f.write("</objects>\n")
    return os.path.getsize(path)


# -- the child: one process that syncs twice ------------------------------------------------
async def child(reactor, dsn: str, url: str) -> dict:
    db = Database(dsn, reactor, size=4)
    await migrate(db)
    await db.run(lambda tx: tx.execute(
        "TRUNCATE vod_titles, vod_genre_map, vod_genres, vod_purchases CASCADE"))
    tariff = (await db.run(catalog.create_tariff, f"megogo-catalog-{time.time()}", "0.00"))["id"]
    pool = HTTPClientService(reactor)
    http = PartnerHTTP("megogo-feed", pool.client, reactor, timeout=600.0,
                       max_body=512 * 1024 * 1024)

    async def fetch(on_chunk):
        await http.stream("GET", url, on_chunk)

    sync = CatalogSync("megogo", fetch, db, reactor, tariff)
    stall = {"max": 0.0, "last": reactor.seconds()}

    def probe():
        now = reactor.seconds()
        stall["max"] = max(stall["max"], now - stall["last"] - 0.005)
        stall["last"] = now

    loop = task.LoopingCall(probe)
    loop.start(0.005)
    out = {}
    gc_pauses = []
    gc_started = {}

    def on_gc(phase, info):
        # The collector stops every thread: a long full collection is a reactor stall.
        if phase == "start":
            gc_started["at"] = time.perf_counter()
        elif info["generation"] == 2:
            gc_pauses.append(time.perf_counter() - gc_started.pop("at", time.perf_counter()))

    # As the daemon does once started (SmartyService.startService): the start-up
    # heap frozen out of the collector, so a full collection stays short.
    gc.collect()
    gc.freeze()
    gc.callbacks.append(on_gc)
    for name in ("first", "second"):
        started = time.monotonic()
        stall["max"], gc_pauses[:] = 0.0, []
        result = await sync.run()
        out[name] = {**result.to_json(), "seconds": round(time.monotonic() - started, 2),
                     "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                          / 1024, 1),
                     "max_stall_ms": round(stall["max"] * 1000, 1),
                     "full_gc_max_ms": round(max(gc_pauses, default=0.0) * 1000, 1)}
    gc.callbacks.remove(on_gc)
    loop.stop()
    out["max_stall_ms"] = max(out["first"]["max_stall_ms"], out["second"]["max_stall_ms"])
    await pool.pool.closeCachedConnections()
    db.close()
    return out


def run_child(dsn: str, url: str) -> None:
    out = {}

    def main(reactor):
        return Deferred.fromCoroutine(child(reactor, dsn, url)).addCallback(out.update)

    try:
        task.react(main)
    except SystemExit as e:
        if e.code:
            raise
    print(json.dumps(out))
    sys.stdout.flush()


# -- the parent --------------------------------------------------------------------------------
SERVER = """
import http.server, socketserver, sys, functools
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
handler.func.log_message = lambda *a: None
with socketserver.TCPServer(("127.0.0.1", 0), handler) as httpd:
    print(httpd.server_address[1], flush=True)
    httpd.serve_forever()
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--titles", type=int, default=100_000)
    p.add_argument("--dsn")
    p.add_argument("--child-url", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child_url:
        run_child(args.dsn, args.child_url)
        return
    work = tempfile.mkdtemp(prefix="smartyd-bench-vod-")
    state = None
    server = None
    try:
        started = time.monotonic()
        size = generate(os.path.join(work, "all_mgg.xml"), args.titles)
        generated = time.monotonic() - started
        server = subprocess.Popen([sys.executable, "-c", SERVER, work], stdout=subprocess.PIPE,
                                  text=True)
        port = int(server.stdout.readline())
        dsn = args.dsn
        if dsn is None:
            state = os.path.join(work, "pg")
            dsn = EmbeddedCluster.in_state_dir(state).ensure_running()
        child = subprocess.run(
            [sys.executable, __file__, "--dsn", dsn,
             "--child-url", f"http://127.0.0.1:{port}/all_mgg.xml"],
            stdout=subprocess.PIPE, text=True)
        if child.returncode != 0:  # its own error went to stderr above
            raise SystemExit(f"the syncing child exited with status {child.returncode}")
        result = json.loads(child.stdout.strip().splitlines()[-1])
        result = {"titles": args.titles, "feed_mb": round(size / 1e6, 1),
                  "generate_seconds": round(generated, 1), **result,
                  "second_over_first": round(result["second"]["seconds"]
                                             / result["first"]["seconds"], 3)}
    finally:
        if server is not None:
            server.terminate()
            server.wait()
        if state is not None:
            EmbeddedCluster.in_state_dir(state).stop(mode="immediate")
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
