"""
The one catalog sync (MEGOGO and tvzavr share it; only the feed reader
differs) and the VOD catalog's SQL (a repository module).

A sync streams the feed (L{PartnerHTTP.stream}: time-out, body cap,
back-pressure) into the partner's incremental reader (L{FeedParser}, elements
cleared) in a worker thread as the body arrives, and writes each batch of
titles in its own transaction:

  - the element digests (L{smartyd.vod.feeds.element_digest}) of the visible
    titles are loaded once, a page at a time, before the body: the parser
    thread does not even convert an element whose digest is unchanged (and
    whose catalog tariff is the sync's), and such a title costs the reactor
    an id in a set -- an unchanged feed is parsed and hashed, nothing more;
  - any other title is converted, and its row and the digest of its parsed
    content built, in the parser thread; it is then compared by that digest
    and its catalog tariff: unchanged titles are not written (only a stale
    element digest is refreshed), so an identical feed writes nothing;
  - new titles are inserted, changed (or hidden and back) ones updated, both
    linked to the partner's ``catalog_tariff_id`` (the hidden tariff that
    makes imported titles visible);
  - partner genres never seen before are added to the genre map unmapped;
    the map itself is applied when titles are read (L{get_title}), so an
    operator's edit counts at once and on every sync;
  - titles of ours that the feed no longer lists are hidden, never deleted.

The reactor's share of each step is bounded: pages of L{PAGE} rows, batches
of L{BATCH} rows prepared off the reactor.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, Callable

import attrs
from attrs import define, field, frozen
from lxml import etree
from twisted.internet import threads
from twisted.logger import Logger

from smartyd.db import Database, Tx
from smartyd.ledger import LedgerError
from smartyd.vod.feeds import FeedParser, Title

log = Logger()

BATCH = 1000
PAGE = 5000


class VodError(LedgerError):
    """A VOD catalog operation was refused; the message says why."""


@frozen
class SyncResult:
    titles: int = 0
    added: int = 0
    updated: int = 0
    hidden: int = 0
    seconds: float = 0.0
    # Titles skipped by their unchanged element digest, never converted (a metric;
    # not in the CLI's JSON, whose keys the issue fixes).
    unchanged: int = 0

    def to_json(self) -> dict:
        return {"titles": self.titles, "added": self.added, "updated": self.updated,
                "hidden": self.hidden, "seconds": round(self.seconds, 3)}


# -- repository ------------------------------------------------------------------------------
async def known_genres(tx: Tx, provider: str) -> set[str]:
    rows = await tx.fetchall(
        "SELECT partner_genre FROM vod_genre_map WHERE provider = %s", (provider,))
    return {r[0] for r in rows}


async def existing(tx: Tx, provider: str, ids: list[str]) -> dict[str, tuple]:
    rows = await tx.fetchall(
        "SELECT external_id, digest, tariff_id, hidden, element_digest FROM vod_titles"
        " WHERE provider = %s AND external_id = ANY(%s)", (provider, ids))
    return {r[0]: r[1:] for r in rows}


async def visible_page(tx: Tx, provider: str, tariff_id: int | None, after: str,
                       limit: int) -> list[tuple[str, str | None]]:
    """
    Visible titles after ``after`` (in external id order): ``(external_id,
    element digest)``, the digest None when the title is not linked to
    ``tariff_id`` (so it is converted and rewritten).
    """
    return await tx.fetchall(
        "SELECT external_id, CASE WHEN tariff_id IS NOT DISTINCT FROM %s THEN element_digest"
        " END FROM vod_titles WHERE provider = %s AND NOT hidden AND external_id > %s"
        " ORDER BY external_id LIMIT %s", (tariff_id, provider, after, limit))


def _row(provider: str, t: Title, tariff_id: int | None,
         element_digest: str) -> tuple[tuple, tuple[str, ...]]:
    """
    ``(row, partner genres)`` of the title, built in the parser thread so the
    JSON and the hashing stay off the reactor.
    """
    return (provider, t.external_id, t.name, t.name_en, t.year, t.country, t.story,
            t.duration_sec, t.poster_url, _pg_array(t.genres),
            json.dumps(t.info, ensure_ascii=False), t.svod, t.tvod, t.price, tariff_id,
            t.digest(), element_digest), t.genres


_COLS = ("provider, external_id, name, name_en, year, country, story, duration_sec, poster_url,"
         " partner_genres, info, svod, tvod, price, tariff_id, digest, element_digest")
# partner_genres travels as one array literal per row (unnest flattens arrays of arrays).
_SELECT = ", ".join("u.partner_genres::text[]" if c.strip() == "partner_genres" else f"u.{c.strip()}"
                    for c in _COLS.split(","))
_UNNEST = ("unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::int[], %s::text[],"
           " %s::text[], %s::int[], %s::text[], %s::text[], %s::jsonb[], %s::bool[],"
           " %s::bool[], %s::numeric[], %s::bigint[], %s::text[], %s::text[])")
_INSERT = (f"INSERT INTO vod_titles ({_COLS}) SELECT {_SELECT} FROM {_UNNEST} AS u({_COLS})"
           " ON CONFLICT (provider, external_id) DO NOTHING")
_UPDATE = (f"UPDATE vod_titles v SET ({_COLS.replace('provider, external_id, ', '')},"
           " hidden, updated) = (u.name, u.name_en, u.year, u.country, u.story,"
           " u.duration_sec, u.poster_url, u.partner_genres::text[], u.info, u.svod, u.tvod,"
           " u.price, u.tariff_id, u.digest, u.element_digest, false, now())"
           f" FROM {_UNNEST} AS u({_COLS})"
           " WHERE v.provider = u.provider AND v.external_id = u.external_id")


async def write_batch(tx: Tx, provider: str, titles: list[tuple],
                      genres_known: set[str]) -> tuple[int, int]:
    """
    Insert new titles and update changed ones (``titles`` from L{_row});
    returns (added, updated).  A title whose parsed content and tariff are
    unchanged is not written, except to store its element digest when stale.
    """
    have = await existing(tx, provider, [r[1] for r, _g in titles])
    new, changed, stale = [], [], []
    for r, _g in titles:
        old = have.get(r[1])
        if old is None:
            new.append(r)
        elif old[0] != r[15] or old[1] != r[14] or old[2]:
            changed.append(r)
        elif old[3] != r[16]:
            stale.append(r)
    genres = sorted({g for _r, gs in titles for g in gs} - genres_known)
    if genres:
        await tx.execute(
            "INSERT INTO vod_genre_map (provider, partner_genre) SELECT %s, unnest(%s::text[])"
            " ON CONFLICT DO NOTHING", (provider, genres))
        genres_known.update(genres)
    for batch, sql in ((new, _INSERT), (changed, _UPDATE)):
        if batch:
            await tx.execute(sql, [list(c) for c in zip(*batch)])
    if stale:
        await tx.execute(
            "UPDATE vod_titles v SET element_digest = u.d FROM unnest(%s::text[], %s::text[])"
            " AS u(id, d) WHERE v.provider = %s AND v.external_id = u.id",
            ([r[1] for r in stale], [r[16] for r in stale], provider))
    return len(new), len(changed)


def _pg_array(items) -> str:
    return "{" + ",".join('"' + i.replace("\\", "\\\\").replace('"', '\\"') + '"'
                          for i in items) + "}"


async def hide(tx: Tx, provider: str, ids: list[str]) -> int:
    if not ids:
        return 0
    rows = await tx.fetchall(
        "UPDATE vod_titles SET hidden = true, updated = now() WHERE provider = %s"
        " AND external_id = ANY(%s) AND NOT hidden RETURNING 1", (provider, ids))
    return len(rows)


_TITLE = (
    "SELECT v.id, v.provider, v.external_id, v.name, v.name_en, v.year, v.country,"
    " v.duration_sec, v.poster_url, v.partner_genres, v.svod, v.tvod, v.price, v.tariff_id,"
    " v.hidden, coalesce((SELECT array_agg(DISTINCT g.name ORDER BY g.name)"
    "  FROM vod_genre_map m JOIN vod_genres g ON g.id = m.genre_id"
    "  WHERE m.provider = v.provider AND m.partner_genre = ANY(v.partner_genres)), '{}')"
    " AS genres FROM vod_titles v"
)


async def get_title(tx: Tx, provider: str, external_id: str) -> dict | None:
    """The title with our genres (the map applied) and ``hidden``."""
    t = await tx.fetchdict(f"{_TITLE} WHERE v.provider = %s AND v.external_id = %s",
                           (provider, external_id))
    if t is not None and t["price"] is not None:
        t["price"] = str(t["price"])
    return t


async def genres(tx: Tx, provider: str) -> list[dict]:
    """The partner's genres, each with the genre of ours it maps to (or null)."""
    return await tx.fetchdicts(
        "SELECT m.partner_genre, g.name AS genre FROM vod_genre_map m"
        " LEFT JOIN vod_genres g ON g.id = m.genre_id WHERE m.provider = %s"
        " ORDER BY m.partner_genre", (provider,))


async def map_genre(tx: Tx, provider: str, partner_genre: str, genre: str) -> dict:
    """Map a partner genre onto our genre ``genre`` (created when new)."""
    genre = genre.strip()
    if not genre or len(genre) > 128:
        raise VodError("a genre name is 1-128 characters")
    gid = await tx.fetchval(
        "INSERT INTO vod_genres (name) VALUES (%s) ON CONFLICT (name) DO UPDATE"
        " SET name = EXCLUDED.name RETURNING id", (genre,))
    await tx.execute(
        "INSERT INTO vod_genre_map (provider, partner_genre, genre_id) VALUES (%s, %s, %s)"
        " ON CONFLICT (provider, partner_genre) DO UPDATE SET genre_id = EXCLUDED.genre_id",
        (provider, partner_genre, gid))
    return {"provider": provider, "partner_genre": partner_genre, "genre": genre}


# -- the sync ----------------------------------------------------------------------------------
SLICE = 256 * 1024


def _one_thread() -> tuple[Callable[..., Any], Callable[[], None]]:
    """
    ``(run, shutdown)``: ``run(f, *args)`` -> a Deferred of ``f(*args)`` called in
    one dedicated thread, calls in order (an lxml parser stays on the thread
    that fed it first).  The reactor's thread pool only waits for the result.
    """
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vod-feed")

    def run(f: Callable[..., Any], *args: Any):
        return threads.deferToThread(lambda: executor.submit(f, *args).result())

    return run, lambda: executor.shutdown(wait=False)


@define(eq=False)
class CatalogSync:
    """
    One partner's catalog sync.  ``fetch(on_chunk)`` streams the feed's body
    into ``on_chunk`` (the partner client's business: L{PartnerHTTP.stream}),
    pausing the body while the awaitable ``on_chunk`` returns runs.  The body
    is parsed as it arrives, a slice of at most L{SLICE} bytes at a time, in
    one worker thread (never on the reactor), and written a batch at a time,
    so neither the body nor more than a batch and a slice of titles is held.
    """

    provider: str
    fetch: Callable[[Callable[[bytes], Any]], Any]
    db: Database
    clock: Any
    catalog_tariff_id: int | None = None
    metrics: Any = None
    batch: int = BATCH

    async def run(self) -> SyncResult:
        started = self.clock.seconds()
        async with self._session() as session:
            await self.fetch(session.on_chunk)
            result = await session.finish()
        result = attrs.evolve(result, seconds=self.clock.seconds() - started)
        if self.metrics is not None:
            self.metrics.vod_sync_seconds.labels(self.provider).set(result.seconds)
            for kind in ("titles", "added", "updated", "hidden", "unchanged"):
                self.metrics.vod_sync_titles.labels(self.provider, kind).set(getattr(result, kind))
        log.info("{provider} catalog sync: {titles} titles, {added} added, {updated} updated,"
                 " {hidden} hidden", provider=self.provider, titles=result.titles,
                 added=result.added, updated=result.updated, hidden=result.hidden)
        return result

    async def sync_bytes(self, body: bytes) -> SyncResult:
        """One sync of a feed already in memory (tests, tools): the same path as L{run}."""
        async with self._session() as session:
            await session.feed(body)
            return await session.finish()

    @asynccontextmanager
    async def _session(self):
        run, shutdown = _one_thread()
        genres_known = await self.db.run(known_genres, self.provider)
        visible = await self._visible()
        try:
            yield _Session(self, FeedParser(self.provider, visible), run, genres_known,
                           visible)
        finally:
            shutdown()

    async def _visible(self) -> dict[str, str | None]:
        """
        The visible titles and their element digests, a page at a time (no
        page costs the reactor more than L{PAGE} rows): 100,000 ids and
        digests are a few MB, and they spare both the conversion of every
        unchanged title and a query per batch of them.
        """
        out: dict[str, str | None] = {}
        after = ""
        while True:
            page = await self.db.run(visible_page, self.provider,
                                     self.catalog_tariff_id or None, after, PAGE)
            out.update(page)
            if len(page) < PAGE:
                return out
            after = page[-1][0]


@define(eq=False)
class _Session:
    """One sync in progress: chunks in, titles out in batches, counts kept."""

    sync: CatalogSync
    parser: FeedParser
    in_thread: Callable[..., Any]
    genres_known: set
    visible: dict
    buffered: list = field(factory=list)
    size: int = 0
    pending: list = field(factory=list)
    seen: set = field(factory=set)
    titles: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0

    def on_chunk(self, data: bytes):
        """Buffer small chunks; a full slice is parsed (the body waits meanwhile)."""
        self.buffered.append(data)
        self.size += len(data)
        if self.size < SLICE:
            return None
        return self.feed(self._take())

    def _take(self) -> bytes:
        data = b"".join(self.buffered)
        self.buffered, self.size = [], 0
        return data

    async def feed(self, data: bytes) -> None:
        for i in range(0, len(data), SLICE):
            same, rows = await self.in_thread(self._parse, data[i:i + SLICE])
            self._unchanged(same)
            self.pending.extend(rows)
            while len(self.pending) >= self.sync.batch:
                batch = self.pending[:self.sync.batch]
                del self.pending[:self.sync.batch]
                await self._write(batch)

    def _parse(self, data: bytes) -> tuple[list[str], list[tuple]]:
        """
        In the parser thread: the slice's unchanged titles (ids) and the rows
        of the others (L{_row}: converted, hashed, serialised here).
        """
        try:
            parsed = self.parser.feed(data) if data else self.parser.close()
        except etree.XMLSyntaxError as e:
            raise VodError(f"{self.sync.provider} feed is not well-formed XML: {e}")
        provider, tariff = self.sync.provider, self.sync.catalog_tariff_id or None
        same, rows = [], []
        for key, title, digest in parsed:
            if title is None:
                same.append(key)
            else:
                rows.append(_row(provider, title, tariff, digest))
        return same, rows

    def _unchanged(self, ids: list[str]) -> None:
        # A feed listing an id twice: counted once (the first copy wins).
        fresh = [i for i in ids if i not in self.seen]
        self.seen.update(fresh)
        self.titles += len(fresh)
        self.unchanged += len(fresh)

    async def _write(self, batch: list[tuple]) -> None:
        # A feed listing an id twice: counted once (within a batch the last copy wins).
        unique = list({r[1]: (r, g) for r, g in batch}.values())
        unique = [t for t in unique if t[0][1] not in self.seen]
        if not unique:
            return
        self.seen.update(r[1] for r, _g in unique)
        self.titles += len(unique)
        a, u = await self.sync.db.run(write_batch, self.sync.provider, unique,
                                      self.genres_known)
        self.added, self.updated = self.added + a, self.updated + u

    async def finish(self) -> SyncResult:
        await self.feed(self._take())
        same, rows = await self.in_thread(self._parse, b"")
        self._unchanged(same)
        self.pending.extend(rows)
        await self._write(self.pending)
        self.pending = []
        sync = self.sync
        if self.titles == 0:
            # An empty (or unparsable) feed is a partner fault, not "everything vanished".
            raise VodError(f"{sync.provider} feed lists no titles; nothing hidden")
        # Visible when the sync began and not in the feed (a title this sync
        # inserted or showed again is in ``seen``).
        gone = [i for i in self.visible if i not in self.seen]
        hidden = 0
        for i in range(0, len(gone), sync.batch):
            hidden += await sync.db.run(hide, sync.provider, gone[i:i + sync.batch])
        return SyncResult(self.titles, self.added, self.updated, hidden, unchanged=self.unchanged)
