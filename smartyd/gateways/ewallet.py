"""
Payture eWallet: customers' wallets and bound cards, on L{PartnerHTTP}.

The wire format, as Payture's public eWallet documentation
(payture.com/docs/ewallet: Register, Check, Init, Add, Pay, GetList, Remove)
and the public clients (payture-node ``/vwapi/GetList`` with ``VWID`` +
``DATA``; pulyavin/payture ``EWallet::GetList`` on the Add merchant;
Necronru/payture ``PaymentService`` /vwapi/Init, Pay, PayStatus and the
GetList ``Item`` attributes) describe it:

  - a form POST to ``{host}/vwapi/{Command}`` with ``VWID`` (the merchant
    terminal) and ``DATA``: ``key=value`` pairs joined by ``;`` (the form
    encoding URL-encodes it);
  - the answer is one XML element named after the command, with
    ``Success="True"|"False"`` and, on failure, ``ErrCode``.

Commands we use, and on which terminal:

  ========================  ==========  =============================================
  command                   VWID        what for
  ========================  ==========  =============================================
  ``Check``                 Add         does the customer's wallet user exist?
  ``Register``              Add         create it (VWUserLgn, VWUserPsw)
  ``Init`` SessionType=Pay  Pay         a payment page on which the card is bound
                                        (``/vwapi/Pay?SessionId=``), TemplateTag
  ``GetList``               Add         the customer's cards: ``<Item CardName CardId
                                        CardHolder Status NoCVV Expired/>``
  ``Remove``                Add         unbind a card (CardId)
  ``Pay`` (recurring)       Pay         charge a bound card without the customer
                                        (CardId, OrderId, Amount; no CVV, no 3-D Secure)
  ========================  ==========  =============================================

The outcome of a recurring Pay is confirmed with the InPay ``GetState`` of
L{smartyd.gateways.payture.PaytureClient} (the Pay terminal's Key), as a
notification is: the Pay answer alone never credits.  ``PaySubmit3DS`` is not
used: a payment with the customer present goes through Payture's own page
(3-D Secure happens there), and a recurring payment needs none -- a Pay
answering with a 3-D Secure challenge is treated as declined.

No card number ever reaches us: Payture's pages take it.  From GetList we
keep the CardId, the masked ``CardName`` (re-masked should it ever carry a
whole number) and the expiry when Payture gives one (``ExpDate``; the
documented Item has only the ``Expired`` flag).
"""

from __future__ import annotations

import re
from urllib.parse import urlencode

from attrs import define, field, frozen

from smartyd.gateways.payture import PARTNER, PaytureAnswer, answer_element, parse_answer
from smartyd.partners import PartnerHTTP, PartnerProtocolError, PartnerRefused

USER_NOT_FOUND = "USER_NOT_FOUND"
DUPLICATE_USER = "DUPLICATE_USER"
DUPLICATE_ORDER_ID = "DUPLICATE_ORDER_ID"

_CARD_ID_RE = re.compile(r"^[A-Za-z0-9-]{1,64}$")
_LONG_DIGITS_RE = re.compile(r"[0-9]{13,}")
_EXPIRY_RE = re.compile(r"^[0-9]{2}/[0-9]{2,4}$")


@frozen
class Card:
    """A bound card as GetList lists it: never its number."""

    card_id: str
    masked: str
    expiry: str | None = None
    holder: str | None = None
    status: str | None = None
    no_cvv: bool = False
    expired: bool = False

    def to_json(self) -> dict:
        return {"card_id": self.card_id, "masked": self.masked, "expiry": self.expiry,
                "holder": self.holder, "status": self.status, "expired": self.expired}


def mask(name: str) -> str:
    """Payture's masked number; a whole card number (should one come) keeps 6 + 4 digits."""
    name = name.strip()[:32]
    return _LONG_DIGITS_RE.sub(lambda m: m.group(0)[:6] + "x" * (len(m.group(0)) - 10)
                               + m.group(0)[-4:], name)


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def encode_data(pairs: list[tuple[str, object]]) -> str:
    """``DATA``: ``key=value;...``.  A value with ``;`` would split a pair: refused."""
    out = []
    for key, value in pairs:
        if value is None:
            continue
        text = str(value)
        if ";" in text or "\x00" in text:
            raise ValueError(f"{key}: a ';' cannot be sent in DATA")
        out.append(f"{key}={text}")
    return ";".join(out)


def parse(body: bytes, command: str) -> PaytureAnswer:
    return parse_answer(body, (command,))


def parse_cards(body: bytes) -> tuple[PaytureAnswer, list[Card]]:
    """A GetList answer and its cards (an Item without a usable CardId is skipped)."""
    root = answer_element(body, ("GetList",))
    answer = PaytureAnswer.of(root)
    cards = []
    for item in root:
        if not isinstance(item.tag, str) or item.tag != "Item":
            continue
        card_id = (item.get("CardId") or "").strip()
        if not _CARD_ID_RE.match(card_id):
            continue
        expiry = (item.get("ExpDate") or "").strip()
        cards.append(Card(
            card_id=card_id,
            masked=mask(item.get("CardName") or ""),
            expiry=expiry if _EXPIRY_RE.match(expiry) else None,
            holder=(item.get("CardHolder") or "").strip()[:64] or None,
            status=(item.get("Status") or "").strip()[:32] or None,
            no_cvv=_flag(item.get("NoCVV")),
            expired=_flag(item.get("Expired")),
        ))
    return answer, cards


@frozen
class PayResult:
    """A recurring Pay's answer: only a hint -- GetState decides."""

    success: bool
    err_code: str | None


@define
class EWalletClient:
    http: PartnerHTTP
    host: str
    pay_key: str = field(repr=False)
    add_key: str = field(repr=False)

    async def _call(self, command: str, vwid: str, pairs: list[tuple[str, object]]) -> bytes:
        response = await self.http.request(
            "POST", f"{self.host}/vwapi/{command}",
            data=[("VWID", vwid), ("DATA", encode_data(pairs))],
        )
        return response.body

    @staticmethod
    def _refused(command: str, answer: PaytureAnswer) -> PartnerRefused:
        code = answer.get("ErrCode") or "UNKNOWN"
        return PartnerRefused(PARTNER, f"{command} refused: {code}", code=code)

    async def check(self, login: str, password: str) -> bool:
        """True when the wallet user exists."""
        answer = parse(await self._call("Check", self.add_key, [
            ("VWUserLgn", login), ("VWUserPsw", password)]), "Check")
        if answer.success:
            return True
        if answer.get("ErrCode") == USER_NOT_FOUND:
            return False
        raise self._refused("Check", answer)

    async def register(self, login: str, password: str) -> None:
        """Create the wallet user (one that exists already is fine)."""
        answer = parse(await self._call("Register", self.add_key, [
            ("VWUserLgn", login), ("VWUserPsw", password)]), "Register")
        if not answer.success and answer.get("ErrCode") != DUPLICATE_USER:
            raise self._refused("Register", answer)

    async def init_pay(self, login: str, password: str, order_id: str, amount_kop: int,
                       ip: str, template: str = "", url: str | None = None) -> str:
        """An eWallet payment session (the card is bound on it); its SessionId."""
        pairs: list[tuple[str, object]] = [
            ("SessionType", "Pay"), ("VWUserLgn", login), ("VWUserPsw", password),
            ("OrderId", order_id), ("Amount", amount_kop), ("IP", ip)]
        if template:
            pairs.append(("TemplateTag", template))
        if url:
            pairs.append(("Url", url))
        answer = parse(await self._call("Init", self.pay_key, pairs), "Init")
        if not answer.success:
            raise self._refused("Init", answer)
        session = answer.get("SessionId")
        if not session:
            raise PartnerProtocolError(PARTNER, "Init: no SessionId")
        return session

    def pay_url(self, session_id: str) -> str:
        return f"{self.host}/vwapi/Pay?{urlencode({'SessionId': session_id})}"

    async def get_list(self, login: str, password: str) -> list[Card]:
        answer, cards = parse_cards(await self._call("GetList", self.add_key, [
            ("VWUserLgn", login), ("VWUserPsw", password)]))
        if answer.success:
            return cards
        if answer.get("ErrCode") == USER_NOT_FOUND:
            return []
        raise self._refused("GetList", answer)

    async def remove(self, login: str, password: str, card_id: str) -> None:
        answer = parse(await self._call("Remove", self.add_key, [
            ("VWUserLgn", login), ("VWUserPsw", password), ("CardId", card_id)]), "Remove")
        if not answer.success:
            raise self._refused("Remove", answer)

    async def pay(self, login: str, password: str, card_id: str, order_id: str,
                  amount_kop: int) -> PayResult:
        """A recurring payment from a bound card (the customer is not present)."""
        answer = parse(await self._call("Pay", self.pay_key, [
            ("VWUserLgn", login), ("VWUserPsw", password), ("CardId", card_id),
            ("OrderId", order_id), ("Amount", amount_kop)]), "Pay")
        if answer.get("ACSUrl") or answer.get("ThreeDSKey"):
            return PayResult(False, "3DS")  # no customer here to pass 3-D Secure
        return PayResult(answer.success, None if answer.success else
                         (answer.get("ErrCode") or "UNKNOWN"))
