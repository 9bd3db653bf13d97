"""
The Dreamkas receipt body for one payment: pure functions, no I/O.

Wire format (``POST /api/receipts``, amounts in kopecks)::

    {"externalId": "...", "deviceId": 123, "type": "SALE", "timeout": 15,
     "taxMode": "SIMPLE",
     "positions": [{"name": "...", "type": "SERVICE", "quantity": 1,
                    "price": 10045, "priceSum": 10045,
                    "tax": "NDS_NO_TAX", "taxSum": 0}],
     "payments": [{"sum": 10045, "type": "CASHLESS"}],
     "attributes": {"phone": "+79001234567", "email": "a@example.com"},
     "total": {"priceSum": 10045}}

Dreamkas refuses a receipt without a customer contact (the receipt goes to the
customer's phone or e-mail), so L{build} raises L{NoContact} instead of
letting the API say no.
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal

from smartyd.ledger import kopecks

DEFAULT_POSITION = "Оплата услуг"
DEFAULT_TAX = "NDS_NO_TAX"
POSITION_TYPE = "SERVICE"
RECEIPT_TYPE = "SALE"
# Minutes Dreamkas may take to print the receipt before it gives the
# operation up (ERROR).  The unit is minutes in both public clients read
# (Ubilling: 7, OpenFS lbpay: 5 and 15).
RECEIPT_TIMEOUT_MINUTES = 15
# 54-FZ tag 1030: the position name is at most 128 characters.
MAX_POSITION_NAME = 128
PAYMENT_TYPES = ("CASH", "CASHLESS")
# Providers whose money is cash at our own desk; every other source (terminals,
# gateways, banks) reaches us as electronic money.
CASH_PROVIDERS = frozenset({"cash"})

_TAX = re.compile(r"^NDS_(NO_TAX|(\d{1,2})(_CALCULATED)?)$")
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s.]{2,}$")
_PHONE_NOISE = re.compile(r"[\s\-().]")
_DIGITS = re.compile(r"^[0-9]+$")


class NoContact(ValueError):
    """The customer has neither a mobile phone nor an e-mail."""


def normalize_phone(raw: object) -> str | None:
    """
    A mobile number in international form (``+79001234567``), or None.

    Russian numbers written nationally (``8 900 123-45-67``, ``9001234567``)
    get their country code.  Russian geographic and toll-free numbers
    (``+7 3xx``, ``+7 4xx``, ``+7 8xx``) are not mobile and give None.
    """
    if not isinstance(raw, str):
        return None
    text = raw.strip()
    international = text.startswith("+")
    digits = _PHONE_NOISE.sub("", text[1:] if international else text)
    if not _DIGITS.match(digits):
        return None
    if not international:
        if len(digits) == 11 and digits[0] == "8":
            digits = "7" + digits[1:]
        elif len(digits) == 10 and digits[0] == "9":
            digits = "7" + digits
    if not 11 <= len(digits) <= 15 or digits[0] == "0":
        return None
    if digits[0] == "7" and (len(digits) != 11 or digits[1] in "348"):
        return None
    return "+" + digits


def normalize_email(raw: object) -> str | None:
    if not isinstance(raw, str):
        return None
    text = raw.strip()
    if len(text) > 254 or not _EMAIL.match(text):
        return None
    return text


def contacts(phone: object, email: object) -> dict:
    """The receipt's ``attributes``; L{NoContact} when neither is usable."""
    out = {}
    p, e = normalize_phone(phone), normalize_email(email)
    if p:
        out["phone"] = p
    if e:
        out["email"] = e
    if not out:
        raise NoContact("customer has neither a mobile phone nor an e-mail")
    return out


def valid_tax(tax: object) -> str | None:
    return tax if isinstance(tax, str) and _TAX.match(tax) else None


def tax_sum(price: int, tax: str) -> int:
    """VAT included in ``price`` kopecks: rate/(100+rate), rounded half up."""
    m = _TAX.match(tax)
    if m is None:
        raise ValueError(f"unknown tax {tax!r}")
    if m.group(1) == "NO_TAX":
        return 0
    rate = int(m.group(2))
    value = Decimal(price) * rate / (100 + rate)
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _product_tax(product: dict) -> str | None:
    tax = product.get("tax")
    if isinstance(tax, dict):  # v2 products may describe the tax as an object
        tax = tax.get("type") or tax.get("value") or tax.get("name")
    return valid_tax(tax)


def choose_position(details: dict, tariff_name: str | None, products: list) -> tuple[str, str]:
    """
    The position name and VAT for a payment, chosen by the service it was for.

    The service is named by the payment's details (``dreamkas_product``: a
    Dreamkas product id; ``position`` or ``service``: a name) or, failing
    those, by the tariff in ``details["tariff_id"]``.  A Dreamkas product of
    that id or name lends its name and tax; otherwise the service's own name
    is printed with no VAT; without any service, L{DEFAULT_POSITION}.
    """
    details = details if isinstance(details, dict) else {}
    products = [p for p in products if isinstance(p, dict) and isinstance(p.get("name"), str)]
    product = None
    wanted_id = details.get("dreamkas_product")
    if wanted_id is not None:
        product = next((p for p in products if str(p.get("id")) == str(wanted_id)), None)
    service = None
    for key in ("position", "service"):
        if isinstance(details.get(key), str) and details[key].strip():
            service = details[key].strip()
            break
    service = service or (tariff_name.strip() if tariff_name and tariff_name.strip() else None)
    if product is None and service:
        folded = service.casefold()
        product = next((p for p in products if p["name"].strip().casefold() == folded), None)
    if product is not None:
        return product["name"].strip()[:MAX_POSITION_NAME], _product_tax(product) or DEFAULT_TAX
    return (service or DEFAULT_POSITION)[:MAX_POSITION_NAME], DEFAULT_TAX


def payment_type(provider: str, details: dict) -> str:
    wanted = details.get("payment_type") if isinstance(details, dict) else None
    if wanted in PAYMENT_TYPES:
        return wanted
    return "CASH" if provider in CASH_PROVIDERS else "CASHLESS"


def build(
    *,
    external_id: str,
    device_id: int,
    tax_mode: str,
    amount: Decimal,
    provider: str,
    details: dict,
    phone: object,
    email: object,
    tariff_name: str | None = None,
    products: list = (),
) -> dict:
    """The receipt body; raises L{NoContact}."""
    attributes = contacts(phone, email)
    price = kopecks(amount)
    if price <= 0:
        raise ValueError("a receipt sums a positive amount")
    name, tax = choose_position(details, tariff_name, list(products))
    return {
        "externalId": external_id,
        "deviceId": device_id,
        "type": RECEIPT_TYPE,
        "timeout": RECEIPT_TIMEOUT_MINUTES,
        "taxMode": tax_mode,
        "positions": [
            {
                "name": name,
                "type": POSITION_TYPE,
                "quantity": 1,
                "price": price,
                "priceSum": price,
                "tax": tax,
                "taxSum": tax_sum(price, tax),
            }
        ],
        "payments": [{"sum": price, "type": payment_type(provider, details)}],
        "attributes": attributes,
        "total": {"priceSum": price},
    }
