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

What the public record says feeds do, and what is made of it:
  - served gzipped (``guide.xml.gz``: iptv-org/epg publishes only those since
    2022, iptv-org/epg#1028; LaQuay/TDTChannels#3836): a body that starts
    with the gzip magic is decompressed as it is parsed, in the worker
    thread, at most L{MAX_XML} bytes of XML;
  - times to the minute (``200006031633``: the DTD's own example) and an
    offset with or without the space (``20260101120000+0300``); no offset is UT;
  - no ``stop`` (the DTD: ``stop CDATA #IMPLIED``, "stop time will usually be
    the start time of the next programme"): the programme ends where the
    channel's next one starts; the last one of a channel, with no next, is
    skipped.
"""

from __future__ import annotations

import gzip
import io
import re
import zlib
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
_GZIP_MAGIC = b"\x1f\x8b"
# XML read from a gzipped feed at most (a bomb ends here, not in the disk or memory).
MAX_XML = 1024 * 1024 * 1024
_HEAD = 65536
# YYYYMMDDhhmm[ss], then an optional offset, spaced or not.
_TIME = re.compile(r"^(\d{12})(\d{2})?\s*(?:([+-])(\d{2})(\d{2}))?$")


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
    """
    An XMLTV time (``20260101120000 +0300``, ``202601011200``,
    ``20260101120000+0300``; no zone = UT), or None when unreadable.
    """
    m = _TIME.match(value.strip()) if value else None
    if m is None:
        return None
    try:
        moment = datetime.strptime(m.group(1) + (m.group(2) or "00"), "%Y%m%d%H%M%S")
    except ValueError:
        return None
    zone = timezone.utc
    if m.group(3):
        hours, minutes = int(m.group(4)), int(m.group(5))
        if hours > 23 or minutes > 59:
            return None
        sign = -1 if m.group(3) == "-" else 1
        zone = timezone(sign * timedelta(hours=hours, minutes=minutes))
    return moment.replace(tzinfo=zone)


def _text(e) -> str:
    return " ".join((e.text or "").split()) if e is not None else ""


def read_xmltv(source: IO[bytes]) -> Iterator[Programme | None]:
    """
    Every ``<programme>`` as a L{Programme}; None for one that cannot be
    read (no channel, bad times, no title), so the caller counts it.  A
    programme without ``stop`` is held until its channel's next programme
    starts (and yielded then, ending there); one with no next is None.
    """
    held: dict[str, tuple[datetime, str, str]] = {}  # channel -> a programme without stop
    for _event, elem in etree.iterparse(
            source, events=("end",), tag="programme", resolve_entities=False, no_network=True,
            load_dtd=False, huge_tree=False, remove_comments=True, remove_pis=True):
        start, stop = parse_time(elem.get("start")), parse_time(elem.get("stop"))
        title = _text(elem.find("title"))[:MAX_TITLE]
        desc = _text(elem.find("desc"))[:MAX_DESC]
        channel = elem.get("channel") or ""
        no_stop = elem.get("stop") is None
        elem.clear(keep_tail=False)
        while elem.getprevious() is not None:
            del elem.getparent()[0]
        if channel and start and title:
            if channel in held:
                h_start, h_title, h_desc = held.pop(channel)
                yield (Programme(channel, h_start, start, h_title, h_desc)
                       if start > h_start else None)
            if no_stop:
                held[channel] = (start, title, desc)
                continue
        if channel and start and stop and stop > start and title:
            yield Programme(channel, start, stop, title, desc)
        else:
            yield None
    for _ in held:
        yield None


class _Capped:
    """A file's ``read`` that fails past ``limit`` bytes (a gzip bomb stops here)."""

    def __init__(self, raw, limit: int):
        self.raw, self.limit, self.left = raw, limit, limit

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size if size is not None and size >= 0 else self.left + 1)
        self.left -= len(data)
        if self.left < 0:
            raise EPGError(f"XMLTV feed: more than {self.limit} bytes of XML once decompressed")
        return data


def _xml_of(body: bytes, limit: int = MAX_XML):
    """The feed's XML as a file: the body, or the body decompressed as it is read."""
    if body[:2] == _GZIP_MAGIC:
        return _Capped(gzip.GzipFile(fileobj=io.BytesIO(body), mode="rb"), limit)
    return io.BytesIO(body)


def _head(body: bytes) -> bytes:
    """The first bytes of the feed's XML (decompressed when gzipped)."""
    if body[:2] != _GZIP_MAGIC:
        return body[:_HEAD]
    try:
        return zlib.decompressobj(wbits=zlib.MAX_WBITS | 16).decompress(body, _HEAD)
    except zlib.error as e:
        raise EPGError(f"XMLTV feed: gzip that cannot be read ({e})")


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
    max_xml: int = MAX_XML
    in_thread: Callable[..., Any] = threads.deferToThread

    async def run(self) -> SyncResult:
        body = await self.fetch()
        if _INTERNAL_SUBSET.search(_head(body)):
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
        next_batch = _batches(read_xmltv(_xml_of(body, self.max_xml)), self.batch)
        seen = stored = skipped = 0
        while True:
            try:
                batch = await self.in_thread(next_batch)
            except etree.XMLSyntaxError as e:
                raise EPGError(f"XMLTV feed is not well-formed: {e}")
            except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
                raise EPGError(f"XMLTV feed: gzip that cannot be read ({e})")
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
