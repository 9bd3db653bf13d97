"""
The Billing API's methods: a call's parameters in, a JSON answer out, the
database in between.  No HTTP here (L{smartyd.billing_api.web} puts it on
the wire).  L{BillingAPIService.handle} never raises: every outcome is an
answer ``{"error": code, "error_message": text, ...}``.

Codes (../shared/BILLING_API.md §3): 0 OK; any method may answer -1
(unknown error: the database is unreachable, smartyd is starting, an
unknown or disabled method; the PHP client retries it), -2 (wrong
signature), -3 (unknown client id, or a client calling from outside its
``allow``).  Per-method codes are small positive numbers, as documented;
where the documentation has no code for a bad parameter, the method's
validation code is the one in L{METHODS} (``error_fields`` names the field).
"""

from __future__ import annotations

import secrets
from datetime import datetime, timezone
from decimal import Decimal
from typing import Awaitable, Callable

import psycopg2
import psycopg2.errors
from attrs import frozen
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from smartyd import ledger
from smartyd.billing import engine
from smartyd.billing_api import repo, signature
from smartyd.billing_api.params import FieldError, Params
from smartyd.billing_api.repo import Scope
from smartyd.config import Billing as BillingConfig, BillingAPI as BillingAPIConfig
from smartyd.config import BillingAPIClient
from smartyd.db import Database, DatabaseUnavailable, Tx
from smartyd.http.addresses import in_networks

log = Logger(namespace="smartyd.billing_api")

OK, UNKNOWN, WRONG_SIGNATURE, UNKNOWN_CLIENT = 0, -1, -2, -3
MAX_PAGE = 100


class APIError(Exception):
    """A call answered with a non-zero ``error``."""

    def __init__(self, code: int, message: str, fields: dict | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.fields = fields


@frozen
class Call:
    client: BillingAPIClient
    scope: Scope
    params: Params
    method: str
    at: datetime
    # What the call touched, for its log line.
    touched: dict


def _num(v: Decimal | None) -> float | None:
    """Money as a JSON number (DOCS: Number); two places survive a float exactly."""
    return None if v is None else float(v)


def _day(v) -> str | None:
    return None if v is None else v.date().isoformat()


def _password_hash(password: str):
    return deferToThread(ledger.hash_password, password)


# Fields of customer/create|modify smartyd keeps without acting on them.
CUSTOMER_TEXT_FIELDS = (
    "passport_number", "passport_series", "passport_issued_by",
    "postal_address_street", "postal_address_bld", "postal_address_apt", "postal_address_zip",
    "postal_address_city", "postal_address_country", "billing_address_street",
    "billing_address_bld", "billing_address_apt", "billing_address_zip", "phone_number_1",
    "phone_number_2", "fax_phone_number", "company_name", "bank_account_blz",
    "bank_account_bic", "bank_account_number", "bank_account_iban", "bank_account_bank_name",
    "bank_account_owner_name", "dealer_id", "custom_billing_api", "auto_activation_period",
)
CUSTOMER_BOOL_FIELDS = ("send_sms", "send_sms_messages", "send_email_messages")
CUSTOMER_DATE_FIELDS = ("birthdate", "passport_issue_date")
NAME_FIELDS = ("firstname", "middlename", "lastname", "comment")

# account/create|modify fields smartyd stores and shows (account/info).
ACCOUNT_BOOL_FIELDS = {"allow_multiple_login": False, "allow_login_by_abonement": False,
                       "allow_login_by_device_uid": True, "allow_login_by_ip": False,
                       "use_timeshift": False}
ACCOUNT_INT_FIELDS = ("auto_activation_period", "preferred_timeshift_offset", "data_center",
                      "template")
ACCOUNT_DATE_FIELDS = ("extension_date", "activation_date", "deactivation_date")
ACCOUNT_TEXT_FIELDS = ("parent_code", "subnets", "option1", "option2", "option3")

MESSAGE_FLAGS = {"urgent": True, "delete_after_reading": True,
                 "send_message_to_tv_screen": True, "send_message_by_sms": False,
                 "send_message_by_email": False, "send_message_by_cas": False}


class BillingAPIService:
    """
    The methods against the database.

    @param cfg: the ``[billing_api]`` section (clients, methods).
    @param billing: the ``[billing]`` section: ``mode`` (``reduced`` answers
        only ``cfg.methods``; the charging modes charge an assigned tariff
        and settle a customer after a transaction).
    @param hasher: password -> Deferred of its hash (scrypt in a thread).
    """

    def __init__(self, cfg: BillingAPIConfig, billing: BillingConfig, db: Database, clock,
                 metrics, ready: Callable[[], bool] | None = None,
                 hasher: Callable[[str], Awaitable[str]] = _password_hash):
        self.cfg = cfg
        self.billing = billing
        self.db = db
        self.clock = clock
        self.metrics = metrics
        self.ready = ready or (lambda: True)
        self.hasher = hasher
        self.clients = {c.client_id: c for c in cfg.clients}
        self.methods: dict[str, tuple[Callable, int]] = {
            name: (getattr(self, name.replace("/", "_")), invalid)
            for name, invalid in METHODS.items()
        }

    # -- one call -----------------------------------------------------------------------------
    async def handle(self, method: str, pairs: list[tuple[str, str]], ip: str) -> dict:
        """The answer to one call (never raises); logged and counted."""
        method = method.strip("/")
        client_id = next((v for k, v in pairs if k == "client_id"), None)
        touched: dict = {}
        try:
            answer = await self._handle(method, pairs, ip, touched)
        except APIError as e:
            answer = {"error": e.code, "error_message": e.message}
            if e.fields:
                answer["error_fields"] = e.fields
        except DatabaseUnavailable as e:
            log.warn("billing api {method}: database unavailable ({error}); answered -1",
                     method=method, client=client_id, error=str(e))
            answer = {"error": UNKNOWN, "error_message": "temporarily unavailable, retry"}
        except Exception:
            log.failure("billing api {method} failed unexpectedly; answered -1",
                        method=method, client=client_id)
            answer = {"error": UNKNOWN, "error_message": "internal error"}
        label = method if method in self.methods else "unknown"
        if self.metrics is not None:
            self.metrics.billing_api_answers.labels(label, str(answer["error"])).inc()
        log.info("billing api {method} by client {client}: error {error}",
                 method=label, client=client_id, ip=ip, error=answer["error"],
                 error_message=answer["error_message"], **touched)
        return answer

    async def _handle(self, method: str, pairs: list, ip: str, touched: dict) -> dict:
        ids = [v for k, v in pairs if k == "client_id"]
        client = self.clients.get(ids[0]) if len(ids) == 1 else None
        if client is None:
            raise APIError(UNKNOWN_CLIENT, "client_id not found")
        if client.allow and not in_networks(ip, client.allow):
            raise APIError(UNKNOWN_CLIENT, "client_id not allowed from this address")
        sigs = [v for k, v in pairs if k == "signature"]
        if len(sigs) != 1 or not signature.verify(pairs, client.api_key, sigs[0]):
            raise APIError(WRONG_SIGNATURE, "wrong signature")
        entry = self.methods.get(method)
        if entry is None:
            raise APIError(UNKNOWN, "unknown method")
        if self.billing.mode == "reduced" and method not in self.cfg.methods:
            raise APIError(UNKNOWN, "method not enabled ([billing] mode = reduced)")
        if not self.ready():
            raise APIError(UNKNOWN, "starting, retry")
        handler, invalid = entry
        call = Call(client, Scope(client.client_id, client.shared), Params(pairs), method,
                    datetime.fromtimestamp(self.clock.seconds(), timezone.utc), touched)
        try:
            result = await handler(call)
        except FieldError as e:
            raise APIError(invalid, f"validation failed: {e}", {e.field: [e.message]})
        return {"error": OK, "error_message": "", **(result or {})}

    # -- lookups --------------------------------------------------------------------------------
    async def _customer(self, tx: Tx, call: Call, lock: bool = False,
                        id_name: str = "customer_id", ext_name: str = "ext_id") -> dict:
        """The customer a call names (``customer_id`` preferred, ``-1`` = not given), or 1."""
        p = call.params
        customer_id, ext_id = p.ident(id_name), p.ref(ext_name)
        c = await repo.find_customer(tx, call.scope, customer_id,
                                     None if customer_id is not None else ext_id, lock=lock)
        if c is None:
            raise APIError(1, "customer not found")
        call.touched["customer_id"] = c["id"]
        return c

    async def _account(self, tx: Tx, call: Call, lock: bool = False) -> dict:
        """The account a call names (``account_id`` preferred, else ``abonement``), or 1."""
        p = call.params
        account_id, abonement = p.ident("account_id"), p.ref("abonement")
        a = await repo.find_account(tx, call.scope, account_id,
                                    None if account_id is not None else abonement, lock=lock)
        if a is None:
            raise APIError(1, "account not found")
        call.touched["account_id"] = a["id"]
        call.touched["customer_id"] = a["customer_id"]
        return a

    async def _tariff(self, tx: Tx, call: Call) -> int:
        p = call.params
        if p.ref("vtariff_id") is not None and p.ref("tariff_id") is None:
            raise APIError(2, "tariff not found (virtual tariffs are not supported)")
        tariff = await repo.find_tariff(tx, p.ident("tariff_id"), p.ref("tariff_ext_id"))
        if tariff is None:
            raise APIError(2, "tariff not found")
        call.touched["tariff_id"] = tariff
        return tariff

    def _page(self, call: Call) -> tuple[int, int]:
        p = call.params
        limit = p.integer("limit", MAX_PAGE)
        page = p.integer("page", 1)
        if not 1 <= limit <= MAX_PAGE:
            raise FieldError("limit", f"1-{MAX_PAGE}")
        if page < 1:
            raise FieldError("page", "at least 1")
        return limit, (page - 1) * limit

    # -- customers ------------------------------------------------------------------------------
    def _customer_fields(self, p: Params, creating: bool) -> tuple[dict, dict]:
        """``(columns, api_fields)`` from the create/modify parameters present."""
        columns: dict = {}
        for name in NAME_FIELDS:
            v = p.text(name, 255)
            if v is not None:
                columns[name] = v
        if creating and not any(columns.get(n) for n in NAME_FIELDS) \
                and not p.text("company_name"):
            raise FieldError("firstname",
                             "one of firstname, middlename, lastname, comment is required")
        for name, column, size in (("mobile_phone_number", "phone", 32), ("email", "email", 254),
                                   ("contract_number", "contract_number", 64)):
            v = p.text(name, size)
            if v is not None:
                columns[column] = v
        meta = p.json_object("meta")
        if meta is not None:
            columns["meta"] = meta
        api: dict = {}
        for name in CUSTOMER_TEXT_FIELDS:
            v = p.text(name, 255)
            if v is not None:
                api[name] = v
        for name in CUSTOMER_BOOL_FIELDS:
            v = p.boolean(name)
            if v is not None:
                api[name] = v
        for name in CUSTOMER_DATE_FIELDS:
            v = p.day(name)
            if v is not None:
                api[name] = v
        return columns, api

    async def _customer_view(self, tx: Tx, c: dict, with_active: bool = False) -> dict:
        accounts = await repo.customer_accounts(tx, c["id"])
        subs = await repo.subscriptions(tx, c["id"], None)
        api = c["api_fields"] or {}
        return {
            "id": c["id"],
            "ext_id": c["ext_id"],
            "firstname": c["firstname"], "middlename": c["middlename"],
            "lastname": c["lastname"], "comment": c["comment"],
            "mobile_phone_number": c["phone"], "email": c["email"],
            "accounts": [
                {"id": a["id"], "abonement": a["login"], "activation_days_left": None,
                 "on_trial_period": False, "active": int(a["active"]),
                 "status_reason": a["status_reason"]}
                for a in accounts],
            "subscriptions": [self._subscription(s) for s in subs],
            "balance": _num(c["balance"]),
            "payments_count": await repo.payments_count(tx, c["id"]),
            "tariffs_info": [{"id": s["tariff_id"], "ext_id": s["tariff_ext_id"]} for s in subs],
            "vtariffs_info": [],
            "tariffs": [s["tariff_id"] for s in subs],
            "meta": c["meta"] or {},
            "birthdate": api.get("birthdate"),
            # Payture autopayment (`customer autopay ID on|off`, issue 17).
            "autopayment_enabled": bool(c["autopay"]),
        }

    def _subscription(self, s: dict) -> dict:
        charging = self.billing.charges
        return {"tariff_id": s["tariff_id"], "api_config_id": None, "price": _num(s["price"]),
                "start_date": _day(s["anchor"]),
                "end_date": _day(s["paid_until"]) if charging else None,
                "is_periodical": True, "price_expiration": None, "is_price_overridden": False,
                "is_closed": s["state"] != "active"}

    async def customer_create(self, call: Call) -> dict:
        p = call.params
        columns, api = self._customer_fields(p, creating=True)
        ext_id = p.text("ext_id", 64)
        if ext_id == "":
            ext_id = None

        async def create(tx: Tx) -> int:
            if ext_id is not None:
                if await repo.ext_id_taken(tx, call.client.client_id, ext_id):
                    raise APIError(1, "a customer with this ext_id exists")
                columns["ext_id"] = ext_id
            columns["name"] = _display_name(columns, api)
            return await repo.create_customer(tx, call.client.client_id, columns, api)

        try:
            customer_id = await self.db.run(create)
        except psycopg2.errors.UniqueViolation:
            raise APIError(1, "a customer with this ext_id exists")  # a racing create
        call.touched["customer_id"] = customer_id
        return {"id": customer_id}

    async def customer_modify(self, call: Call) -> None:
        p = call.params
        columns, api = self._customer_fields(p, creating=False)

        async def modify(tx: Tx) -> None:
            # customer_id names it when given; ext_id is then its new ext_id (DOCS).
            by_id = p.ident("customer_id") is not None
            c = await self._customer(tx, call, lock=True)
            ext_id = p.ref("ext_id")
            if by_id and ext_id is not None and ext_id != c["ext_id"]:
                if len(ext_id) > 64:
                    raise FieldError("ext_id", "at most 64 characters")
                if await repo.ext_id_taken(tx, c["client_id"], ext_id, but=c["id"]):
                    raise APIError(2, "validation failed: ext_id is taken",
                                   {"ext_id": ["a customer with this ext_id exists"]})
                columns["ext_id"] = ext_id
            if any(n in columns for n in NAME_FIELDS) or "company_name" in api:
                columns["name"] = _display_name({**c, **columns},
                                                {**(c["api_fields"] or {}), **api})
            await repo.update_customer(tx, c["id"], columns, api)

        await self.db.run(modify)

    async def customer_info(self, call: Call) -> dict:
        async def info(tx: Tx) -> dict:
            return await self._customer_view(tx, await self._customer(tx, call))

        return await self.db.run(info)

    async def customer_delete(self, call: Call) -> None:
        async def delete(tx: Tx) -> None:
            c = await self._customer(tx, call, lock=True)
            await repo.delete_customer(tx, c["id"])

        await self.db.run(delete)

    async def customer_list(self, call: Call) -> dict:
        p = call.params
        limit, offset = self._page(call)
        tariff_ids = p.ids("tariff_id")
        regexp = p.text("abonement_regexp", 255) or None
        phone = p.text("mobile_phone_number", 32) or None

        async def listing(tx: Tx) -> dict:
            for tid in tariff_ids:
                if await repo.find_tariff(tx, tid) is None:
                    raise APIError(1, f"tariff {tid} not found")
            rows = await repo.list_customers(tx, call.scope, tariff_ids, regexp, phone, limit,
                                             offset)
            return {"customers": [await self._customer_view(tx, c) for c in rows]}

        return await self._regexp_guard(listing)

    async def _regexp_guard(self, work) -> dict:
        try:
            return await self.db.run(work)
        except psycopg2.DataError as e:
            raise APIError(UNKNOWN, f"bad abonement_regexp: {str(e).strip().splitlines()[0]}",
                           {"abonement_regexp": ["not a regular expression"]})

    async def customer_tariff_assign(self, call: Call) -> None:
        async def assign(tx: Tx) -> None:
            c = await self._customer(tx, call, lock=True)
            tariff = await self._tariff(tx, call)
            await engine.assign(tx, self.billing, None, tariff, customer_id=c["id"], at=call.at)

        await self.db.run(assign)

    async def customer_tariff_remove(self, call: Call) -> None:
        async def remove(tx: Tx) -> None:
            c = await self._customer(tx, call, lock=True)
            tariff = await self._tariff(tx, call)
            await engine.remove(tx, self.billing, None, tariff, customer_id=c["id"], at=call.at)

        await self.db.run(remove)

    # -- accounts -------------------------------------------------------------------------------
    def _account_fields(self, p: Params, creating: bool) -> dict:
        api: dict = {}
        for name, default in ACCOUNT_BOOL_FIELDS.items():
            v = p.boolean(name, default if creating else None)
            if v is not None:
                api[name] = v
        for name in ACCOUNT_INT_FIELDS:
            v = p.integer(name)
            if v is not None:
                api[name] = v
        for name in ACCOUNT_DATE_FIELDS:
            v = p.day(name)
            if v is not None:
                api[name] = v
        for name in ACCOUNT_TEXT_FIELDS:
            v = p.text(name, 1024)
            if v is not None:
                api[name] = v
        if "allowed_device_groups" in p or "allowed_device_groups[]" in p:
            api["allowed_device_groups"] = p.ids("allowed_device_groups")
        return api

    def _status(self, p: Params, active: bool | None) -> str | None:
        reason = p.text("status_reason")
        if reason is None or reason == "":
            return None
        if not ledger.STATUS_REASON_RE.match(reason):
            raise FieldError("status_reason", "1-20 characters of A-Z a-z 0-9 _ . - and space")
        return reason

    async def account_create(self, call: Call) -> dict:
        p = call.params
        api = self._account_fields(p, creating=True)
        active = p.boolean("active", True)
        reason = self._status(p, active) or (ledger.ACTIVE if active else "INACTIVE")
        abonement = p.ref("abonement")
        if abonement is not None and not ledger.LOGIN_RE.match(abonement):
            raise FieldError("abonement", "1-64 characters of A-Z a-z 0-9 _ . @ + -")
        account_ext_id = p.text("account_ext_id", 255) or None
        password = p.text("password", 128) or f"{secrets.randbelow(10 ** 6):06d}"
        password_hash = await self.hasher(password)

        async def create(tx: Tx) -> dict:
            c = await self._customer(tx, call, lock=True)
            login = abonement
            account_id = None
            if login is None:
                for _ in range(5):  # a numeric abonement from the id sequence
                    account_id = await repo.next_id(tx)
                    if not await repo.login_taken(tx, str(account_id)):
                        login = str(account_id)
                        break
                else:
                    raise APIError(3, "could not generate a free abonement")
            elif await repo.login_taken(tx, login):
                raise APIError(2, "validation failed: abonement exists",
                               {"abonement": ["an account with this abonement exists"]})
            account = await engine.create_account(tx, self.billing, login, password_hash,
                                                  account_id=account_id, customer_id=c["id"],
                                                  at=call.at)
            await repo.set_account_fields(tx, account.id, ext_id=account_ext_id, api_fields=api)
            if not active or reason != ledger.ACTIVE:
                await ledger.set_active(tx, account.id, active, reason)
            call.touched["account_id"] = account.id
            return {"abonement": login, "password": password, "account_id": account.id}

        try:
            return await self.db.run(create)
        except psycopg2.errors.UniqueViolation:  # a racing create
            raise APIError(2, "validation failed: abonement exists",
                           {"abonement": ["an account with this abonement exists"]})

    async def _account_view(self, tx: Tx, a: dict) -> dict:
        api = a["api_fields"] or {}
        devices = await repo.account_devices(tx, a["id"])
        subs = await repo.subscriptions(tx, a["customer_id"], a["id"])
        view = {
            "id": a["id"], "abonement": a["login"], "active": int(a["active"]),
            "last_active": _day(a["last_active"]),
            "created_at": a["created"].isoformat(), "status_reason": a["status_reason"],
            "account_ext_id": a["ext_id"], "customer_id": a["customer_id"],
            "devices": [{"id": d["id"], "system_name": d["system_name"], "device_uid": d["uid"],
                         "serial_number": d["serial"], "created_at": d["created"].isoformat(),
                         "is_basic": d["is_basic"]} for d in devices],
            "tariffs": [s["tariff_id"] for s in subs],
            "subscriptions": [self._subscription(s) for s in subs],
            "subnets": api.get("subnets", ""),
            "allowed_device_groups": api.get("allowed_device_groups", []),
        }
        for name, default in ACCOUNT_BOOL_FIELDS.items():
            view[name] = int(api.get(name, default))
        for name in (*ACCOUNT_INT_FIELDS, *ACCOUNT_DATE_FIELDS, "parent_code", "option1",
                     "option2", "option3"):
            view[name] = api.get(name)
        return view

    async def account_info(self, call: Call) -> dict:
        async def info(tx: Tx) -> dict:
            return await self._account_view(tx, await self._account(tx, call))

        return await self.db.run(info)

    async def account_modify(self, call: Call) -> None:
        p = call.params
        api = self._account_fields(p, creating=False)
        active = p.boolean("active")
        reason = self._status(p, active)
        new_ext_id = p.text("account_ext_id", 255)
        password = p.text("password", 128)
        password_hash = await self.hasher(password) if password else None
        rename = p.ref("abonement") if p.ident("account_id") is not None else None
        if rename is not None and not ledger.LOGIN_RE.match(rename):
            raise FieldError("abonement", "1-64 characters of A-Z a-z 0-9 _ . @ + -")

        async def modify(tx: Tx) -> None:
            a = await self._account(tx, call, lock=True)
            login = None
            if rename is not None and rename != a["login"]:
                if await repo.login_taken(tx, rename):
                    raise APIError(2, "validation failed: abonement exists",
                                   {"abonement": ["an account with this abonement exists"]})
                login = rename
            await repo.set_account_fields(tx, a["id"], ext_id=new_ext_id or None,
                                          api_fields=api, login=login,
                                          password_hash=password_hash)
            if active is not None or reason is not None:
                now_active = a["active"] if active is None else active
                await ledger.set_active(tx, a["id"], now_active,
                                        reason or _default_reason(now_active, a))

        await self.db.run(modify)

    async def _set_active(self, call: Call, active: bool) -> None:
        async def change(tx: Tx) -> None:
            a = await self._account(tx, call, lock=True)
            await ledger.set_active(tx, a["id"], active, _default_reason(active, a))

        await self.db.run(change)

    async def account_activate(self, call: Call) -> None:
        await self._set_active(call, True)

    async def account_deactivate(self, call: Call) -> None:
        await self._set_active(call, False)

    async def account_delete(self, call: Call) -> None:
        async def delete(tx: Tx) -> None:
            a = await self._account(tx, call, lock=True)
            await repo.delete_account(tx, a["id"])

        await self.db.run(delete)

    async def account_list(self, call: Call) -> dict:
        p = call.params
        limit, offset = self._page(call)
        status = p.raw("status")
        active = None
        if status is not None and status.strip() not in ("", "-1"):
            active = {"active": True, "inactive": False}.get(status.strip().lower())
            if active is None:
                active = p.boolean("status")
        reason = p.text("status_reason", 20) or None
        device = p.text("device", 255) or None
        regexp = p.text("abonement_regexp", 255) or None

        async def listing(tx: Tx) -> dict:
            rows = await repo.list_accounts(tx, call.scope, active, reason, device, regexp,
                                            limit, offset)
            return {"accounts": [await self._account_view(tx, a) for a in rows]}

        return await self._regexp_guard(listing)

    async def account_tariff_assign(self, call: Call) -> None:
        async def assign(tx: Tx) -> None:
            a = await self._account(tx, call)
            tariff = await self._tariff(tx, call)
            await engine.assign(tx, self.billing, a["id"], tariff, at=call.at)

        await self.db.run(assign)

    async def account_tariff_remove(self, call: Call) -> None:
        async def remove(tx: Tx) -> None:
            a = await self._account(tx, call)
            tariff = await self._tariff(tx, call)
            await engine.remove(tx, self.billing, a["id"], tariff, at=call.at)

        await self.db.run(remove)

    # -- devices and messages -------------------------------------------------------------------
    async def account_device_create(self, call: Call) -> dict:
        p = call.params
        uid = p.text("device_uid", 255)
        if not uid:
            raise FieldError("device_uid", "required")
        system_name = p.text("system_name", 255) or p.text("client_play_device_id", 255) or ""
        serial = p.text("serial_number", 255) or None
        is_basic = p.boolean("is_basic", False)

        async def create(tx: Tx) -> dict:
            a = await self._account(tx, call, lock=True)
            device_id = await repo.create_device(tx, a["id"], uid, system_name, serial, is_basic)
            if device_id is None:
                raise APIError(4, "a device with this device_uid exists")
            return {"id": device_id, "device_id": device_id}

        return await self.db.run(create)

    async def account_device_modify(self, call: Call) -> None:
        p = call.params
        device_id = p.ident("device_id")
        changes: dict = {}
        for name, column in (("device_uid", "uid"), ("system_name", "system_name"),
                             ("serial_number", "serial")):
            v = p.text(name, 255)
            if v:
                changes[column] = v
        if p.boolean("is_basic") is not None:
            changes["is_basic"] = p.boolean("is_basic")

        async def modify(tx: Tx) -> None:
            a = await self._account(tx, call, lock=True)
            device = None if device_id is None else await repo.get_device(tx, a["id"], device_id)
            if device is None:
                raise APIError(3, "device not found")
            if "uid" in changes and await repo.device_uid_taken(tx, changes["uid"], device_id):
                raise APIError(4, "a device with this device_uid exists")
            await repo.update_device(tx, device_id, changes)

        await self.db.run(modify)

    async def account_device_delete(self, call: Call) -> None:
        device_id = call.params.ident("device_id")

        async def delete(tx: Tx) -> None:
            a = await self._account(tx, call, lock=True)
            device = None if device_id is None else await repo.get_device(tx, a["id"], device_id)
            if device is None:
                raise APIError(3, "device not found")
            await repo.delete_device(tx, device_id)

        await self.db.run(delete)

    async def account_message_create(self, call: Call) -> dict:
        p = call.params
        text = p.text("text", 10_000)
        if not text:
            raise FieldError("text", "required")
        subject = p.text("subject", 255) or ""
        flags = {name: p.boolean(name, default) for name, default in MESSAGE_FLAGS.items()}

        async def create(tx: Tx) -> dict:
            a = await self._account(tx, call)
            message_id = await repo.create_message(tx, a["id"], call.client.client_id, subject,
                                                   text, flags)
            return {"id": message_id}

        return await self.db.run(create)

    # -- tariffs --------------------------------------------------------------------------------
    async def _tariffs(self, additional: bool | None) -> dict:
        rows = await self.db.run(repo.list_tariffs, additional)
        return {"tariffs": [
            {"id": t["id"], "name": t["name"], "ext_id": t["ext_id"],
             "period": t["period_days"], "period_months": t["period_months"],
             "price": _num(t["price"]), "activation_price": _num(t["activation_price"]),
             "basic_tariff_priority": 0, "sessions_count": 0, "basic_sessions_count": 0,
             "ip_restriction": False, "channels": t["channels"]}
            for t in rows]}

    async def tariff_list(self, call: Call) -> dict:
        return await self._tariffs(None)

    async def tariff_basic_list(self, call: Call) -> dict:
        return await self._tariffs(False)

    async def tariff_additional_list(self, call: Call) -> dict:
        return await self._tariffs(True)

    # -- transactions ---------------------------------------------------------------------------
    @staticmethod
    def _transaction_id(p: Params) -> str | None:
        """The transaction's id: ``ext_id`` (DOCS since 2017) or ``id`` (every client)."""
        return p.ref("ext_id") or p.ref("id")

    async def transaction_create(self, call: Call) -> None:
        p = call.params
        ext_id = self._transaction_id(p)
        if ext_id is None:
            raise APIError(2, "no transaction ext_id")
        if len(ext_id) > 255:
            raise FieldError("ext_id", "at most 255 characters")
        amount = p.amount("amount")
        processed = p.boolean("processed", False)
        comment = p.text("comment", 1024) or ""
        ttype = p.integer("transaction_type")
        video = p.ref("video_ext_id")
        if ttype == 1 and video is None:
            raise APIError(3, "no video_ext_id")
        if p.raw("video_available_until") not in (None, ""):
            p.day("video_available_until")
        call.touched["transaction"] = ext_id

        async def create(tx: Tx) -> tuple[dict, bool]:
            # customer_ext_id wins over customer_id (DOCS).
            ext = p.ref("customer_ext_id")
            c = await repo.find_customer(tx, call.scope, None if ext else p.ident("customer_id"),
                                         ext)
            if c is None:
                existing = await repo.get_transaction(tx, call.client.client_id, ext_id)
                if existing is not None:
                    return existing, False
                raise APIError(TRANSACTION_INVALID, "customer not found",
                               {"customer_id": ["customer not found"]})
            call.touched["customer_id"] = c["id"]
            row, created = await repo.create_transaction(
                tx, call.client.client_id, ext_id, c["id"], amount, processed, comment, ttype,
                video)
            if created and self.billing.charges:
                # Transactional mode: money in may pay what is due (DEBT lifted).
                await engine.settle(tx, self.billing, [c["id"]], call.at)
            return row, created

        row, created = await self.db.run(create)
        if not created:
            raise APIError(1, "a transaction with this ext_id exists")
        if self.metrics is not None and amount > 0:
            self.metrics.payments.labels("billing-api").inc()
            self.metrics.payment_amount.labels("billing-api").inc(float(amount))

    async def transaction_delete(self, call: Call) -> None:
        ext_id = self._transaction_id(call.params)
        if ext_id is None:
            raise APIError(2, "no transaction ext_id")
        call.touched["transaction"] = ext_id
        row = await self.db.run(repo.delete_transaction, call.client.client_id, ext_id)
        if row is None:
            raise APIError(1, "no such transaction")
        call.touched["customer_id"] = row["customer_id"]


def _display_name(columns: dict, api: dict) -> str:
    parts = [columns.get(n) or "" for n in ("lastname", "firstname", "middlename")]
    return " ".join(x for x in parts if x) or api.get("company_name") or ""


def _default_reason(active: bool, account: dict) -> str:
    """ACTIVE when activated; when deactivated, INACTIVE unless it has a reason already."""
    if active:
        return ledger.ACTIVE
    current = account["status_reason"]
    return current if not account["active"] and current != ledger.ACTIVE else "INACTIVE"


TRANSACTION_INVALID = 6

# method -> the code of a parameter that does not parse (error_fields names it).
METHODS: dict[str, int] = {
    "customer/create": 3, "customer/modify": 2, "customer/info": 1, "customer/delete": 1,
    "customer/list": 2, "customer/tariff/assign": 4, "customer/tariff/remove": 3,
    "account/create": 2, "account/modify": 2, "account/info": 1, "account/delete": 1,
    "account/activate": 1, "account/deactivate": 1, "account/list": UNKNOWN,
    "account/tariff/assign": 3, "account/tariff/remove": 2,
    "account/device/create": 2, "account/device/modify": 2, "account/device/delete": 3,
    "account/message/create": 2,
    "tariff/list": UNKNOWN, "tariff/basic/list": UNKNOWN, "tariff/additional/list": UNKNOWN,
    "transaction/create": TRANSACTION_INVALID, "transaction/delete": 2,
}
