"""
The partners' catalog feeds: one element reader per partner (an element ->
L{Title}), driven by L{FeedParser}, an incremental parser
(``lxml.etree.XMLPullParser``, the feed-driven form of ``iterparse``) that is
fed the body chunk by chunk as it arrives and returns the titles each chunk
completed; elements are cleared as they are done and their finished siblings
dropped, so neither the body nor its tree is ever held whole and a 100 MB
feed keeps memory flat.  Parser settings are those of
L{smartyd.gateways.untrusted_xml}: no entities resolved, no network, no DTD.

Each title element also gets an L{element_digest}: a hash of the element's
canonical form (C14N: attribute order, quoting, entity and empty-element forms
normalised) with the whitespace-only text between its elements dropped, so it
depends on the parsed element alone, never on the body's bytes, indentation or
how the parser was fed.  Given the digests a sync stored last time
(``known``), an element whose digest is unchanged is not converted at all:
the same element always converts to the same L{Title}, and conversion is the
parse's costliest step.

MEGOGO (``all_mgg.xml``; the shape the public record shows)::

    <objects>
      <object id="123" title="..." title_en="..." categories="..." genres="drama,comedy"
              vod="svod,tvod" price="99.00">
        <info year="2014" country="US"/>     (or <year>/<country> children)
        <ratings imdb="7.1" kinopoisk="7.4"/>
        <poster url="https://..."/>          (or the URL as text)
        <duration_sec>7200</duration_sec>    (or <duration>)
        <story>...</story>
        <directors><person name="..."/></directors>   (or names as text)
        <actors>...</actors>
        <gallery><image url="..."/></gallery>
      </object>
    </objects>

tvzavr publishes no partner API or feed description: ours, documented in
L{smartyd.vod.tvzavr}, is::

    <catalog>
      <clip id="77" title="..." title_orig="..." year="2012" country="RU" genres="drama;comedy"
            duration="5400" poster="https://..." svod="1" tvod="0" price="">
        <description>...</description>
      </clip>
    </catalog>
"""

from __future__ import annotations

import hashlib
import json
import re
from decimal import Decimal, InvalidOperation
from typing import IO, Iterator, Mapping

from attrs import asdict, field, frozen
from lxml import etree


@frozen
class Title:
    """One partner title as parsed: what the catalog stores and compares."""

    external_id: str
    name: str
    name_en: str = ""
    year: int | None = None
    country: str = ""
    story: str = ""
    duration_sec: int | None = None
    poster_url: str = ""
    genres: tuple[str, ...] = ()
    info: dict = field(factory=dict)
    svod: bool = False
    tvod: bool = False
    price: Decimal | None = None

    def digest(self) -> str:
        """
        A hash of the parsed content: the same title gives the same digest
        whatever whitespace or attribute order the XML had.
        """
        data = asdict(self, recurse=False)
        data["price"] = None if self.price is None else str(self.price)
        data["genres"] = list(self.genres)
        raw = json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(raw.encode("utf-8")).hexdigest()


# Whitespace-only text between two pieces of markup.  In C14N output "<" never
# occurs raw inside text or attribute values, so this matches nothing else.
_BETWEEN_TAGS = re.compile(rb">\s+<")


def element_digest(elem) -> str:
    """
    A hash of the element's parsed content: its C14N form (without its tail)
    with whitespace-only text between elements dropped.  Every reader treats
    whitespace-only text as no text, so equal digests mean equal titles.
    """
    c14n = etree.tostring(elem, method="c14n", with_tail=False)
    return hashlib.blake2b(_BETWEEN_TAGS.sub(b"><", c14n), digest_size=16).hexdigest()


class FeedParser:
    """
    One feed, parsed incrementally: L{feed} each chunk of the body as it
    arrives, then L{close}; each returns ``(external_id, title, digest)`` for
    the titles its bytes completed (``digest``: L{element_digest}).  ``title``
    is None when ``known`` (external id -> the element digest stored last
    time) has this digest: the element is unchanged and was not converted.
    Not thread-safe: one parser is fed from one thread at a time; ``known`` is
    only read.
    """

    def __init__(self, provider: str, known: Mapping[str, str | None] | None = None):
        self.tag, self.convert = READERS[provider]
        self.known = known if known is not None else {}
        self.parser = etree.XMLPullParser(
            events=("end",), tag=self.tag, resolve_entities=False, no_network=True,
            load_dtd=False, huge_tree=False, remove_comments=True, remove_pis=True)

    def feed(self, data: bytes) -> list[tuple[str, Title | None, str]]:
        self.parser.feed(data)
        return self._drain()

    def close(self) -> list[tuple[str, Title | None, str]]:
        self.parser.close()
        return self._drain()

    def _drain(self) -> list[tuple[str, Title | None, str]]:
        out = []
        known = self.known
        for _event, elem in self.parser.read_events():
            digest = element_digest(elem)
            # Every reader's external id is the element's "id" attribute, stripped.
            key = (elem.get("id") or "").strip()
            if key and known.get(key) == digest:
                out.append((key, None, digest))
            else:
                title = self.convert(elem)
                if title is not None:
                    out.append((title.external_id, title, digest))
            elem.clear(keep_tail=False)
            # Drop the finished siblings the root still holds.
            while elem.getprevious() is not None:
                del elem.getparent()[0]
        return out


def read(provider: str, source: IO[bytes], chunk: int = 64 * 1024) -> Iterator[Title]:
    """Every title of a whole feed read from a file (tests, tools)."""
    parser = FeedParser(provider)
    while data := source.read(chunk):
        yield from (t for _key, t, _digest in parser.feed(data))
    yield from (t for _key, t, _digest in parser.close())


def _text(e) -> str:
    return " ".join((e.text or "").split()) if e is not None else ""


def _int(v) -> int | None:
    try:
        return int(str(v).strip())
    except (TypeError, ValueError):
        return None


def _price(v) -> Decimal | None:
    if v in (None, ""):
        return None
    try:
        d = Decimal(str(v).strip())
    except InvalidOperation:
        return None
    return d.quantize(Decimal("0.01")) if d.is_finite() and d >= 0 else None


def _split(v: str | None, seps: str = ",;|") -> tuple[str, ...]:
    out = [v or ""]
    for sep in seps:
        out = [p for part in out for p in part.split(sep)]
    return tuple(dict.fromkeys(p.strip() for p in out if p.strip()))


def _names(e) -> list[str]:
    if e is None:
        return []
    kids = [c.get("name") or _text(c) for c in e]
    return [k for k in kids if k] or list(_split(e.text))


def megogo_title(obj) -> Title | None:
    """MEGOGO's ``all_mgg.xml``: one L{Title} per ``<object>`` with an id and a title."""
    external_id = (obj.get("id") or "").strip()
    name = (obj.get("title") or "").strip()
    if not external_id or not name:
        return None
    # One pass over the children (the first of each tag), not a find() per field:
    # this is the sync's hot loop (100,000 titles).
    kids: dict = {}
    for child in obj:
        kids.setdefault(child.tag, child)
    info_e = kids.get("info")
    year = country = None
    if info_e is not None:
        year = info_e.get("year") or _text(info_e.find("year")) or None
        country = info_e.get("country") or _text(info_e.find("country"))
    ratings_e = kids.get("ratings")
    poster_e = kids.get("poster")
    poster = "" if poster_e is None else (poster_e.get("url") or _text(poster_e))
    duration = _int(_text(kids.get("duration_sec")) or _text(kids.get("duration"))
                    or obj.get("duration"))
    gallery_e = kids.get("gallery")
    info = {
        "categories": list(_split(obj.get("categories"))),
        "ratings": dict(sorted(ratings_e.attrib.items())) if ratings_e is not None else {},
        "directors": _names(kids.get("directors")),
        "actors": _names(kids.get("actors")),
        "gallery": [g.get("url") or _text(g) for g in gallery_e] if gallery_e is not None
        else [],
    }
    vod = {v.lower() for v in _split(obj.get("vod"))}
    return Title(
        external_id=external_id, name=name, name_en=(obj.get("title_en") or "").strip(),
        year=_int(year), country=(country or "").strip(), story=_text(kids.get("story")),
        duration_sec=duration, poster_url=poster.strip(), genres=_split(obj.get("genres")),
        info=info, svod="svod" in vod, tvod="tvod" in vod, price=_price(obj.get("price")),
    )


def tvzavr_title(clip) -> Title | None:
    """Our documented tvzavr feed: one L{Title} per ``<clip>``."""
    external_id = (clip.get("id") or "").strip()
    name = (clip.get("title") or "").strip()
    if not external_id or not name:
        return None
    return Title(
        external_id=external_id, name=name, name_en=(clip.get("title_orig") or "").strip(),
        year=_int(clip.get("year")), country=(clip.get("country") or "").strip(),
        story=_text(clip.find("description")), duration_sec=_int(clip.get("duration")),
        poster_url=(clip.get("poster") or "").strip(), genres=_split(clip.get("genres")),
        svod=clip.get("svod") == "1", tvod=clip.get("tvod") == "1",
        price=_price(clip.get("price")),
    )


# provider -> (the element a title is, its reader)
READERS = {"megogo": ("object", megogo_title), "tvzavr": ("clip", tvzavr_title)}
