"""
The TV guide: programmes imported from an XMLTV feed (``[epg] xmltv_url``).

XMLTV (https://github.com/XMLTV/xmltv/blob/master/xmltv.dtd)::

    <tv>
      <channel id="first.example"><display-name>First</display-name></channel>
      <programme start="20260101120000 +0300" stop="20260101130000 +0300"
                 channel="first.example">
        <title lang="ru">News</title><desc>...</desc>
      </programme>
    </tv>

The feed is parsed with ``lxml.etree.iterparse`` under the untrusted-XML
settings of L{smartyd.gateways.untrusted_xml} (no entities, no network, no
DTD, no huge trees), elements cleared as they are done, a batch at a time
in a worker thread: a week of a few hundred channels keeps memory flat and
the reactor free.  Programmes of channels without a matching ``xmltv_id``
are skipped; programmes that ended a day ago are pruned.  The import is a
L{Poller} job (at start-up, then every ``sync_interval``, once cluster-wide);
``smartyd-admin epg sync`` runs one.
"""

from __future__ import annotations

import io
import re
from datetime import datetime, timedelta, timezone
from typing import IO, Any, Callable, Iterator

from attrs import define, frozen
from lxml import etree
from twisted.internet import threads
from twisted.logger import Logger

from smartyd.db import Database
from smartyd.widgets import repo

log = Logger()

PARTNER = "xmltv"
POLLER_JOB = "epg-sync"
BATCH = 500
KEEP = timedelta(days=1)
MAX_TITLE = 500
MAX_DESC = 4000
_INTERNAL_SUBSET = re.compile(rb"<!DOCTYPE[^>\[]*\[")


@frozen
class Programme:
    channel: str
    start: datetime
    stop: datetime
    title: str
    description: str = ""


@frozen
class SyncResult:
    programmes: int
    stored: int
    skipped: int
    pruned: int

    def to_json(self) -> dict:
        return {"programmes": self.programmes, "stored": self.stored, "skipped": self.skipped,
                "pruned": self.pruned}


class EPGError(Exception):
    pass


def parse_time(value: str | None) -> datetime | None:
    """An XMLTV time (``20260101120000 +0300``; no zone = UTC), or None when unreadable."""
    if not value:
        return None
    parts = value.strip().split()
    try:
        moment = datetime.strptime(parts[0][:14], "%Y%m%d%H%M%S")
        zone = timezone.utc
        if len(parts) > 1:
            sign = -1 if parts[1][0] == "-" else 1
            digits = parts[1].lstrip("+-")
            if len(digits) != 4 or not digits.isdigit():
                return None
            zone = timezone(sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:])))
    except (ValueError, IndexError):
        return None
    return moment.replace(tzinfo=zone)


def _text(e) -> str:
    return " ".join((e.text or "").split()) if e is not None else ""


def read_xmltv(source: IO[bytes]) -> Iterator[Programme | None]:
    """
    Every ``<programme>`` as a L{Programme}; None for one that cannot be
    read (no channel, bad times, no title), so the caller counts it.
    """
    for _event, elem in etree.iterparse(
            source, events=("end",), tag="programme", resolve_entities=False, no_network=True,
            load_dtd=False, huge_tree=False, remove_comments=True, remove_pis=True):
        start, stop = parse_time(elem.get("start")), parse_time(elem.get("stop"))
        title = _text(elem.find("title"))[:MAX_TITLE]
        channel = elem.get("channel") or ""
        if channel and start and stop and stop > start and title:
            yield Programme(channel, start, stop, title, _text(elem.find("desc"))[:MAX_DESC])
        else:
            yield None
        elem.clear(keep_tail=False)
        while elem.getprevious() is not None:
            del elem.getparent()[0]


def _batches(items: Iterator, size: int) -> Callable[[], list]:
    def next_batch() -> list:
        out = []
        for item in items:
            out.append(item)
            if len(out) >= size:
                break
        return out

    return next_batch


@define
class EPGSync:
    """One import: ``fetch()`` returns the feed's bytes; parsing runs in a thread."""

    fetch: Callable[[], Any]
    db: Database
    clock: Any
    batch: int = BATCH
    in_thread: Callable[..., Any] = threads.deferToThread

    async def run(self) -> SyncResult:
        body = await self.fetch()
        if _INTERNAL_SUBSET.search(body[:65536]):
            # Feeds name xmltv.dtd (never loaded: load_dtd=False, no network);
            # an internal subset could declare entities libxml2 still
            # substitutes in attributes, so it is refused (as untrusted_xml does).
            raise EPGError("XMLTV feed declares a DTD internal subset; refused")
        result = await self.sync_bytes(body)
        log.info("EPG sync: {programmes} programmes, {stored} stored, {skipped} skipped,"
                 " {pruned} pruned", **result.to_json())
        return result

    async def sync_bytes(self, body: bytes) -> SyncResult:
        channels = await self.db.run(repo.xmltv_channels)
        next_batch = _batches(read_xmltv(io.BytesIO(body)), self.batch)
        seen = stored = skipped = 0
        while True:
            try:
                batch = await self.in_thread(next_batch)
            except etree.XMLSyntaxError as e:
                raise EPGError(f"XMLTV feed is not well-formed: {e}")
            if not batch:
                break
            seen += len(batch)
            rows = [(channels[p.channel], p.start, p.stop, p.title, p.description)
                    for p in batch if p is not None and p.channel in channels]
            skipped += len(batch) - len(rows)
            stored += await self.db.run(repo.store_programmes, rows)
        now = datetime.fromtimestamp(self.clock.seconds(), timezone.utc)
        pruned = await self.db.run(repo.prune_programmes, now - KEEP)
        return SyncResult(seen, stored, skipped, pruned)
