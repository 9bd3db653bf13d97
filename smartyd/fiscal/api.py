"""
The Dreamkas Kabinet API client (``https://kabinet.dreamkas.ru/api``).

JSON over HTTPS, ``Authorization: Bearer <token>``.  What we use:

  - ``POST /receipts`` a receipt body (L{smartyd.fiscal.receipt}) -> an
    Operation ``{id, externalId, createdAt, status, data}``; fiscalization
    itself is asynchronous;
  - ``GET /operations/{id}`` -> the Operation; ``status`` is PENDING,
    IN_PROGRESS, SUCCESS or ERROR; on SUCCESS ``data.receiptId``, on ERROR
    ``data.error{code, message}``;
  - ``GET /operations?externalId=...&limit=...&offset=...`` -> operations,
    filtered here again by ``externalId`` (the crash-recovery look-up; see
    L{DreamkasAPI.find_operation});
  - ``GET /devices`` and ``GET /v2/products``: cash devices and positions,
    read to the end of the list: they page like every Kabinet list (public
    clients read ``/api/products`` in ``limit=1000``/``offset`` steps), so the
    first page is not the whole list -- and a position past it would print
    its payments' receipts without the position's VAT.

The crash-recovery look-up rests on an assumption the public docs do not
spell out for ``/operations``: that the operation list pages like the other
Kabinet lists (``GET /api/receipts``, ``/api/products``: ``limit`` and
``offset`` query parameters, a bare array or ``{"data": [...]}``), and that
an operation a POST created is listed there, on some page, whether or not
the ``externalId`` filter is honoured.  So the look-up reads page after page
(``offset`` advanced by what each page held) and stops as soon as the
operation is found -- at most ``max_pages`` pages.  The list ends at an
empty page (a server may cap ``limit`` below what we asked, so a short page
is not the end) or at a page that brings no operation id not already seen:
a server that ignores ``limit``/``offset`` (Ubilling's integration notes
that this endpoint ignores its filters) answers the same list for every
page, and that list is all there is to read.  When ``max_pages`` is reached
before the end of the list, the answer is "unknown", not "not found": the
job is not re-POSTed on a guess.

The HTTP rules (time-outs, body caps, typed errors) are L{PartnerHTTP}'s.
The token travels in a header only and never reaches a log event.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from attrs import define, frozen

from smartyd.partners import (
    PartnerHTTP,
    PartnerProtocolError,
    PartnerUnavailable,
)
from smartyd.util.json_guard import BadJSON, parse_json

PARTNER = "dreamkas"
STATUSES = ("PENDING", "IN_PROGRESS", "SUCCESS", "ERROR")
TERMINAL = ("SUCCESS", "ERROR")
# Dreamkas answers a created receipt operation 202 Accepted; tolerate 200/201.
CREATED = (200, 201, 202)
# The crash-recovery look-up: operations asked per page, and pages read at most.
PAGE_SIZE = 1000
MAX_PAGES = 10


def _text(v: Any, limit: int = 200) -> str | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, str)):
        s = str(v).strip()
        return s[:limit] if s else None
    return None


@frozen
class Operation:
    """A Dreamkas operation, parsed defensively from untrusted JSON."""

    id: str
    status: str
    external_id: str | None = None
    receipt_id: str | None = None
    error_code: str | None = None
    error_message: str | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def error(self) -> str:
        code = self.error_code or "?"
        return f"Dreamkas operation {self.id} ERROR {code}: {self.error_message or 'no message'}"

    @classmethod
    def from_json(cls, obj: Any) -> "Operation":
        """Raise ValueError unless ``obj`` is an operation we understand."""
        if not isinstance(obj, dict):
            raise ValueError("an operation is a JSON object")
        op_id = _text(obj.get("id"), 128)
        if op_id is None:
            raise ValueError("operation without an id")
        status = obj.get("status")
        status = status.upper() if isinstance(status, str) else None
        if status not in STATUSES:
            raise ValueError(f"operation {op_id}: unknown status {obj.get('status')!r}")
        data = obj.get("data") if isinstance(obj.get("data"), dict) else {}
        error = data.get("error") if isinstance(data.get("error"), dict) else {}
        return cls(
            id=op_id,
            status=status,
            external_id=_text(obj.get("externalId"), 128),
            receipt_id=_text(data.get("receiptId"), 128),
            error_code=_text(error.get("code"), 64),
            error_message=_text(error.get("message"), 500),
        )


def _json(response, what: str) -> Any:
    try:
        return parse_json(response.body)
    except BadJSON as e:
        raise PartnerProtocolError(PARTNER, f"{what}: the answer is not usable JSON ({e})")


class _Unfinished(Exception):
    """A list read L{DreamkasAPI.max_pages} pages (``read`` items) without reaching its end."""

    def __init__(self, read: int):
        super().__init__(read)
        self.read = read


def _items(payload: Any, what: str) -> list:
    """A list answer: a bare array, or an object carrying it in ``data``/``items``."""
    if isinstance(payload, list):
        return payload
    if isinstance(payload, dict):
        for key in ("data", "items", "result"):
            if isinstance(payload.get(key), list):
                return payload[key]
    raise PartnerProtocolError(PARTNER, f"{what}: expected a list")


@define
class DreamkasAPI:
    http: PartnerHTTP
    base_url: str
    token: str
    page_size: int = PAGE_SIZE
    max_pages: int = MAX_PAGES

    def _url(self, path: str) -> str:
        return self.base_url.rstrip("/") + path

    def _headers(self) -> dict:
        return {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}

    def _operation(self, response, what: str) -> Operation:
        try:
            return Operation.from_json(_json(response, what))
        except ValueError as e:
            raise PartnerProtocolError(PARTNER, f"{what}: {e}")

    async def create_receipt(self, body: dict) -> Operation:
        """
        POST a receipt.  L{PartnerRefused} (code "409" for an ``externalId``
        Dreamkas has seen) means no new operation was created;
        L{PartnerUnavailable}/L{PartnerProtocolError} mean we do not know.
        """
        response = await self.http.request(
            "POST", self._url("/receipts"), json=body, headers=self._headers(), ok_codes=CREATED
        )
        return self._operation(response, "POST /receipts")

    async def operation(self, op_id: str) -> Operation:
        response = await self.http.request(
            "GET", self._url("/operations/" + quote(op_id, safe="")), headers=self._headers()
        )
        op = self._operation(response, "GET /operations/{id}")
        if op.id != op_id:
            raise PartnerProtocolError(PARTNER, f"asked for operation {op_id}, got {op.id}")
        return op

    async def _pages(self, path: str, what: str, params: dict | None = None):
        """
        The pages of a Kabinet list, one at a time (an async iterator): ``limit``
        = L{page_size}, ``offset`` advanced by what each page held.  The list
        ends at an empty page or one that brings no id not already seen (a
        server that ignores ``limit``/``offset`` answers the whole list every
        time).  Reading L{max_pages} pages before the end raises L{_Unfinished}.
        """
        offset = 0
        seen: set[str] = set()
        for _ in range(self.max_pages):
            response = await self.http.request(
                "GET", self._url(path),
                params={**(params or {}), "limit": str(self.page_size), "offset": str(offset)},
                headers=self._headers(),
            )
            page = _items(_json(response, what), what)
            ids = {_text(item.get("id"), 128) for item in page if isinstance(item, dict)}
            ids.discard(None)
            if page and not ids:
                raise PartnerProtocolError(PARTNER, f"{what}: a page without ids")
            if not ids - seen:
                return  # empty, or a page seen before: paging ignored, the list ended
            seen |= ids
            yield page
            offset += len(page)
        raise _Unfinished(offset)

    async def find_operation(self, external_id: str) -> Operation | None:
        """
        The operation created for ``external_id``, or None when Dreamkas lists none.

        The public docs do not promise a server-side ``externalId`` filter on
        the operation list, so every page is filtered here as well, and the
        list is paged through (see the module docstring) until the operation
        turns up, the list ends (an empty page, or one that brings no id not
        already seen), or ``max_pages`` pages were read -- then
        L{PartnerUnavailable}: whether it exists is not known, and the caller
        must not POST again on the strength of a partial list.
        """
        try:
            async for page in self._pages("/operations", "GET /operations",
                                          {"externalId": external_id}):
                found = None
                for item in page:
                    if isinstance(item, dict) and item.get("externalId") == external_id:
                        try:
                            op = Operation.from_json(item)
                        except ValueError:
                            continue
                        # A SUCCESS beats anything else; otherwise the first one listed.
                        if found is None or op.status == "SUCCESS":
                            found = op
                if found is not None:
                    return found
        except _Unfinished as e:
            raise PartnerUnavailable(
                PARTNER, f"GET /operations: externalId {external_id} not among the first"
                f" {e.read} operations ({self.max_pages} pages); whether it exists is unknown",
            )
        return None

    async def _whole_list(self, path: str) -> list[dict]:
        """
        Every item of a Kabinet list, each id once, read page by page: the
        lists page (``limit``/``offset``, a short default page), so one GET
        is only the start of the list.  A list longer than L{max_pages} pages
        is L{PartnerUnavailable} (the cache keeps its older copy), never a
        silently partial list.
        """
        what = f"GET {path}"
        out: list[dict] = []
        ids: set[str] = set()
        try:
            async for page in self._pages(path, what):
                for item in page:
                    key = _text(item.get("id"), 128) if isinstance(item, dict) else None
                    if key is not None and key not in ids:
                        ids.add(key)
                        out.append(item)
        except _Unfinished as e:
            raise PartnerUnavailable(
                PARTNER, f"{what}: more than {e.read} items ({self.max_pages} pages of"
                f" {self.page_size}); not read", )
        return out

    async def devices(self) -> list[dict]:
        return await self._whole_list("/devices")

    async def products(self) -> list[dict]:
        return await self._whole_list("/v2/products")
