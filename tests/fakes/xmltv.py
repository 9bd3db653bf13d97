"""
A fake XMLTV feed: serves ``body`` at any path (as an EPG provider's web server does);
``gzipped`` serves it as a ``guide.xml.gz`` is served (gzip bytes, application/gzip).
L{xmltv} writes a guide; ``stops=False`` leaves ``stop`` out and ``time`` picks another of
the forms the DTD admits (L{minutes}: ``YYYYMMDDhhmm``; L{unspaced}: ``...+0300``).
"""

from __future__ import annotations

import gzip
from datetime import datetime, timedelta, timezone

from xml.sax.saxutils import escape, quoteattr

from twisted.web.resource import Resource

from fakes import in_memory_client


def xmltv_time(moment: datetime) -> str:
    return moment.astimezone(timezone(timedelta(hours=3))).strftime("%Y%m%d%H%M%S +0300")


def minutes(moment: datetime) -> str:
    """To the minute, no offset: UT (the DTD's own example, ``200006031633``)."""
    return moment.astimezone(timezone.utc).strftime("%Y%m%d%H%M")


def unspaced(moment: datetime) -> str:
    return xmltv_time(moment).replace(" ", "")


def xmltv(programmes: list[tuple[str, datetime, datetime, str]], doctype: str = "",
          stops: bool = True, time=xmltv_time) -> bytes:
    """A guide: ``(channel, start, stop, title)`` rows (titles escaped as XMLTV does)."""
    def stop(b):
        return f' stop="{time(b)}"' if stops else ""

    rows = "".join(
        f'<programme start="{time(a)}"{stop(b)} channel={quoteattr(ch)}>'
        f'<title lang="en">{escape(title)}</title><desc>About {escape(title)}</desc></programme>\n'
        for ch, a, b, title in programmes)
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n{doctype}<tv generator-info-name="fake">\n'
            f'<channel id="first.example"><display-name>First</display-name></channel>\n'
            f'{rows}</tv>\n').encode("utf-8")


class FakeXMLTV(Resource):
    isLeaf = True

    def __init__(self, body: bytes = b"", gzipped: bool = False):
        super().__init__()
        self.body = body
        self.gzipped = gzipped
        self.requests: list[bytes] = []

    def render_GET(self, request):
        self.requests.append(request.path)
        if self.gzipped:
            request.setHeader(b"content-type", b"application/gzip")
            return gzip.compress(self.body)
        request.setHeader(b"content-type", b"application/xml")
        return self.body

    def client(self):
        return in_memory_client(self)


def now_utc() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)
