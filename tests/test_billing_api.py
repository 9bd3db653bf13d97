"""
The Smarty Billing API through HTTP, as the billings call it: signed form
POSTs (and GETs) on the daemon's own root resource (``testapp.build``),
real PostgreSQL.  The client here is written from the contract
(../shared/BILLING_API.md), not from our signature module, so that a
mistake in one does not hide in the other.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys
import time
from decimal import Decimal
from urllib.parse import urlencode

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task, utils

from conftest import make_config
from fakes import in_memory_client
from smartyd import catalog, config as configmod, ledger
from smartyd.billing import engine
from smartyd.config import Billing as BillingConfig
from smartyd.billing_api import signature
from smartyd.gateways import cards
from smartyd.billing_api.params import FieldError, Params
from smartyd.streams.check import Checker, prometheus_counters
from smartyd.streams.entitlements import BLOCKED, OK as ENTITLED, Entitlements
from smartyd.streams.tokens import TokenCodec
from smartyd.streams.web import StreamsApp
from streams_world import PASSWORD, within
from testapp import build

KEY1, KEY7, KEY9, KEY5 = "k1-secret-of-billing", "k7-other-billing", "k9-shared", "k5-allowed"
BASE = "http://smartyd/billing/api/"


def config(mode: str = "full", methods: tuple = ()) -> object:
    return make_config(
        billing={"mode": mode},
        billing_api={"enabled": True, "methods": list(methods), "clients": [
            {"client_id": "1", "api_key": KEY1},
            {"client_id": "7", "api_key": KEY7},
            {"client_id": "9", "api_key": KEY9, "shared": True},
            {"client_id": 5, "api_key": KEY5, "allow": ["10.0.0.0/8"]},
        ]})


def contract_signature(pairs: list[tuple[str, str]], key: str) -> str:
    """§2 of the contract: sorted key:value; pairs + key, utf-8, base64, md5 hex."""
    src = "".join(f"{k}:{v};" for k, v in sorted(pairs)) + key
    return hashlib.md5(base64.b64encode(src.encode("utf-8"))).hexdigest()


class Billing:
    """An external billing: signs every call as the vendor's clients do."""

    def __init__(self, http, client_id: str = "1", key: str = KEY1):
        self.http, self.client_id, self.key = http, client_id, key

    def pairs(self, params) -> list[tuple[str, str]]:
        items = params.items() if isinstance(params, dict) else params
        return [(k, str(v)) for k, v in items] + [("client_id", self.client_id)]

    async def raw(self, method: str, pairs: list[tuple[str, str]], *, get: bool = False,
                  slash: bool = True, sig: str | None = None, query: str = "") -> dict:
        pairs = list(pairs) + [("signature", sig or contract_signature(pairs, self.key))]
        url = BASE + method + ("/" if slash else "")
        if get:
            resp = await self.http.get(url + "?" + urlencode(pairs))
        else:
            resp = await self.http.post(
                url + query, data=urlencode(pairs).encode(),
                headers={b"content-type": [b"application/x-www-form-urlencoded"]})
        assert resp.code == 200
        assert resp.headers.getRawHeaders("content-type")[0].startswith("application/json")
        answer = json.loads(await resp.content())
        assert isinstance(answer["error"], int) and isinstance(answer["error_message"], str)
        assert (answer["error"] == 0) == (answer["error_message"] == "")
        return answer

    async def __call__(self, method: str, params=(), **kw) -> dict:
        return await self.raw(method, self.pairs(params), **kw)

    async def ok(self, method: str, params=(), **kw) -> dict:
        answer = await self(method, params, **kw)
        assert answer["error"] == 0, answer
        return answer


@pytest.fixture
def clock():
    return reactor


def make(db, cfg=None):
    app = build(cfg or config(), reactor, db)
    http = in_memory_client(app.root)
    return app, Billing(http), http


async def balance(db, customer_id) -> Decimal:
    c = await db.run(ledger.get_customer, customer_id)
    assert c.balance == await db.run(ledger.ledger_sum, customer_id)
    return c.balance


async def tariff(db, name="basic", price="100.00", **kw) -> int:
    async def create(tx):
        return (await catalog.create_tariff(tx, name, price, **kw))["id"]
    return await db.run(create)


# -- the signature ------------------------------------------------------------------------
WORKED = [
    ([("allowed_device_groups", "1"), ("allowed_device_groups", "3"), ("client_id", "1"),
      ("customer_id", "1")], "7e4210d744341f4e3bbdf1d779bd4142"),
    ([("amount", "1"), ("client_id", "1"), ("customer_id", "1"), ("id", "45")],
     "5da94074db60083cc1393e3fd08b1735"),
    ([("amount", "1"), ("client_id", "1"), ("comment", ""), ("customer_id", "1"), ("id", "45")],
     "7a69f4c4d8e6722584e63f23e3976120"),
    ([("firstname", "Иван"), ("comment", "a b+c&d"), ("ext_id", "hyd-42"), ("client_id", "1")],
     "05ccddf16ac1c50c45da918effa05f02"),
    ([("client_id", "1"), ("customer_id", "-1"), ("ext_id", "50157001"), ("tariff_id", "2")],
     "7d6974117573f90b2c1be4f902a0a473"),
]


@pytest.mark.parametrize("pairs,expected", WORKED)
def test_the_worked_signature_examples(pairs, expected):
    assert signature.sign(pairs, "secretkey") == expected
    assert contract_signature(pairs, "secretkey") == expected
    assert signature.verify(pairs + [("signature", expected)], "secretkey", expected)
    assert signature.verify(pairs, "secretkey", expected.upper())
    assert not signature.verify(pairs, "secretkeY", expected)
    assert not signature.verify(pairs + [("x", "")], "secretkey", expected)  # blank counts


def test_the_worked_source_and_base64():
    pairs = WORKED[3][0]
    src = signature.sign_source(sorted(pairs), "secretkey")
    assert src == "client_id:1;comment:a b+c&d;ext_id:hyd-42;firstname:Иван;secretkey"
    assert base64.b64encode(src.encode()).decode() == (
        "Y2xpZW50X2lkOjE7Y29tbWVudDphIGIrYyZkO2V4dF9pZDpoeWQtNDI7Zmlyc3RuYW1lOtCY0LLQsNC9O3NlY3JldGtleQ==")


def test_repeated_keys_verify_sorted_by_value_or_as_sent():
    sent = [("client_id", "1"), ("g", "9"), ("g", "10")]
    by_value = contract_signature(sent, "k")  # sorted(): g:10 before g:9
    as_sent = hashlib.md5(base64.b64encode("client_id:1;g:9;g:10;k".encode())).hexdigest()
    assert signature.verify(sent, "k", by_value)
    assert signature.verify(sent, "k", as_sent)
    assert not signature.verify([("client_id", "1"), ("g", "9")], "k", as_sent)


def test_parameter_shapes():
    p = Params([("a", "True"), ("b", "false"), ("c", "0"), ("l", "[1, 2, 3]"), ("r", "4"),
                ("r", "5"), ("cid", "-1"), ("e", "")])
    assert (p.boolean("a"), p.boolean("b"), p.boolean("c")) == (True, False, False)
    assert p.ids("l") == [1, 2, 3] and p.ids("r") == [4, 5]
    assert p.ident("cid") is None and p.ref("e") is None
    with pytest.raises(FieldError):
        p.boolean("l")
    with pytest.raises(FieldError):
        Params([("amount", "1.005")]).amount("amount")
    assert Params([("amount", "150.50")]).amount("amount") == Decimal("150.50")


# -- envelope and general codes ---------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_general_codes(db):
    app, billing, http = make(db)
    assert (await billing("tariff/list"))["error"] == 0
    bad = await billing.raw("tariff/list", billing.pairs({}), sig="0" * 32)
    assert bad == {"error": -2, "error_message": "wrong signature"}
    unsigned = await http.post(BASE + "tariff/list/", data=b"client_id=1")
    assert json.loads(await unsigned.content())["error"] == -2
    assert (await Billing(http, "42", KEY1)("tariff/list"))["error"] == -3
    assert (await Billing(http, "7", KEY1)("tariff/list"))["error"] == -2  # another's key
    nobody = await http.post(BASE + "tariff/list/", data=b"")
    assert json.loads(await nobody.content())["error"] == -3
    assert (await billing("no/such/method"))["error"] == -1
    app.ready = False
    assert (await billing("tariff/list"))["error"] == -1
    counted = app.metrics.billing_api_answers.labels("tariff/list", "-2")._value.get()
    assert counted == 3


@pytest_twisted.ensureDeferred
async def test_allow_list_refuses_other_addresses(db):
    _, _, http = make(db)
    refused = await Billing(http, "5", KEY5)("tariff/list")
    assert refused["error"] == -3 and "address" in refused["error_message"]


@pytest_twisted.ensureDeferred
async def test_reduced_mode_answers_only_its_methods(db):
    _, billing, _ = make(db, config("reduced", ("customer/create", "customer/info")))
    cid = (await billing.ok("customer/create", {"firstname": "A"}))["id"]
    await billing.ok("customer/info", {"customer_id": cid})
    refused = await billing("transaction/create", {"customer_id": cid, "id": 1, "amount": 5})
    assert refused["error"] == -1 and "reduced" in refused["error_message"]
    assert await balance(db, cid) == 0


# -- customers --------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_customer_create_info_modify_delete(db):
    _, billing, _ = make(db)
    created = await billing.ok("customer/create", {
        "firstname": "Иван", "comment": "a b+c&d", "ext_id": "hyd-42", "birthdate": "1980-02-03",
        "mobile_phone_number": "+79990001122", "meta": '{"k": 1}', "send_sms": "True",
        "auto_activation_period": "3"})
    cid = created["id"]
    assert isinstance(cid, int)
    assert (await billing("customer/create", {"firstname": "B", "ext_id": "hyd-42"}))["error"] == 1
    invalid = await billing("customer/create", {"email": "x@y"})
    assert invalid["error"] == 3 and "firstname" in invalid["error_fields"]
    bad_date = await billing("customer/create", {"firstname": "A", "birthdate": "03.02.1980"})
    assert bad_date["error"] == 3 and "birthdate" in bad_date["error_fields"]

    info = await billing.ok("customer/info", {"customer_id": -1, "ext_id": "hyd-42"})  # HYDRA
    assert info["id"] == cid and info["firstname"] == "Иван" and info["comment"] == "a b+c&d"
    assert info["balance"] == 0 and info["payments_count"] == 0 and info["tariffs"] == []
    assert info["meta"] == {"k": 1} and info["birthdate"] == "1980-02-03"
    assert info["accounts"] == [] and info["vtariffs_info"] == []
    assert (await billing("customer/info", {"customer_id": cid + 999}))["error"] == 1
    assert (await billing("customer/info", {"customer_id": -1, "ext_id": -1}))["error"] == 1

    # AXbills attaches its ext_id to an existing customer_id.
    await billing.ok("customer/modify", {"customer_id": cid, "ext_id": "ax-1", "lastname": "П"})
    info = await billing.ok("customer/info", {"ext_id": "ax-1"})
    assert info["id"] == cid and info["lastname"] == "П"
    assert (await billing("customer/modify", {"customer_id": 10**9, "comment": "x"}))["error"] == 1
    bad = await billing("customer/modify", {"customer_id": cid, "birthdate": "x"})
    assert bad["error"] == 2 and "birthdate" in bad["error_fields"]

    acc = await billing.ok("account/create", {"customer_id": cid, "abonement": "700100"})
    await billing.ok("customer/delete", {"ext_id": "ax-1"})
    assert (await billing("customer/info", {"customer_id": cid}))["error"] == 1
    assert (await billing("customer/delete", {"customer_id": cid}))["error"] == 1
    assert (await billing("account/info", {"abonement": "700100"}))["error"] == 1
    gone = await db.run(ledger.get_account, acc["account_id"])
    assert gone.active is False and gone.status_reason == "DELETED"
    # The ext_id and the abonement are free again.
    await billing.ok("customer/create", {"firstname": "again", "ext_id": "ax-1"})


@pytest_twisted.ensureDeferred
async def test_customer_list_by_get_and_post_with_list_shapes(db):
    _, billing, http = make(db)
    t1, t2 = await tariff(db, "t1"), await tariff(db, "t2", additional=True)
    a = (await billing.ok("customer/create", {"firstname": "a", "mobile_phone_number": "111"}))["id"]
    b = (await billing.ok("customer/create", {"firstname": "b"}))["id"]
    await billing.ok("account/create", {"customer_id": a, "abonement": "55501"})
    for t in (t1, t2):
        await billing.ok("customer/tariff/assign", {"customer_id": a, "tariff_id": t})
    await billing.ok("customer/tariff/assign", {"customer_id": b, "tariff_id": t1})

    everyone = await billing.ok("customer/list", get=True)
    assert [c["id"] for c in everyone["customers"]] == [a, b]
    assert everyone["customers"][0]["accounts"][0]["active"] == 1
    repeated = await billing.ok("customer/list", [("tariff_id", t1), ("tariff_id", t2)], get=True)
    literal = await billing.ok("customer/list", {"tariff_id": f"[{t1}, {t2}]"})  # VENDOR-PY POST
    assert [c["id"] for c in repeated["customers"]] == [a] == [c["id"] for c in literal["customers"]]
    # VENDOR-PY puts the params in the query too; signature over the body.
    pairs = billing.pairs({"tariff_id": f"[{t1}]"})
    both = await billing.raw("customer/list", pairs, query="?" + urlencode({"tariff_id": f"[{t1}]"}))
    assert [c["id"] for c in both["customers"]] == [a, b]
    assert [c["id"] for c in (await billing.ok("customer/list", {"abonement_regexp": "^555"}))
            ["customers"]] == [a]
    assert [c["id"] for c in (await billing.ok("customer/list", {"mobile_phone_number": "111"}))
            ["customers"]] == [a]
    page2 = await billing.ok("customer/list", {"limit": 1, "page": 2}, slash=False)
    assert [c["id"] for c in page2["customers"]] == [b]
    assert (await billing("customer/list", {"tariff_id": 10**9}))["error"] == 1
    assert (await billing("customer/list", {"tariff_id": "x"}))["error"] == 2
    assert (await billing("customer/list", {"abonement_regexp": "("}))["error"] != 0


@pytest_twisted.ensureDeferred
async def test_customer_tariffs_cover_later_accounts_and_are_idempotent(db):
    _, billing, _ = make(db)
    t = await tariff(db, "basic")
    ext = await tariff(db, "ext")
    await db.run(lambda tx: tx.execute("UPDATE tariffs SET ext_id = 'T-EXT' WHERE id = %s", (ext,)))
    cid = (await billing.ok("customer/create", {"lastname": "x", "ext_id": "50157001"}))["id"]
    for _ in range(2):  # HYDRA assigns every mapped tariff on every event
        await billing.ok("customer/tariff/assign",
                         {"tariff_id": t, "customer_id": -1, "ext_id": "50157001"})
    await billing.ok("customer/tariff/assign", {"customer_id": cid, "tariff_ext_id": "T-EXT"})
    info = await billing.ok("customer/info", {"customer_id": cid})
    assert info["tariffs"] == [t, ext]
    assert info["tariffs_info"] == [{"id": t, "ext_id": None}, {"id": ext, "ext_id": "T-EXT"}]
    assert info["subscriptions"][0]["tariff_id"] == t
    acc = await billing.ok("account/create", {"customer_id": cid})
    assert acc["abonement"].isdigit() and acc["password"].isdigit()
    assert await db.run(catalog.account_channels, acc["account_id"]) == []  # no channels yet
    assert (await billing("customer/tariff/assign", {"customer_id": cid, "tariff_id": 10**9}))[
        "error"] == 2
    assert (await billing("customer/tariff/assign", {"customer_id": cid, "vtariff_id": 3}))[
        "error"] == 2
    assert (await billing("customer/tariff/assign", {"customer_id": 10**9, "tariff_id": t}))[
        "error"] == 1
    for _ in range(2):
        await billing.ok("customer/tariff/remove", {"customer_id": cid, "tariff_id": t})
    assert (await billing.ok("customer/info", {"customer_id": cid}))["tariffs"] == [ext]
    assert (await billing("customer/tariff/remove", {"customer_id": cid, "tariff_id": 10**9}))[
        "error"] == 2


# -- accounts ---------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_account_lifecycle_with_hydra_and_axbills_shapes(db):
    _, billing, _ = make(db)
    cid = (await billing.ok("customer/create", {"firstname": "a", "ext_id": "c1"}))["id"]
    # HYDRA: Python 2 booleans, its own abonement and password.
    created = await billing.ok("account/create", {
        "ext_id": "c1", "abonement": "1001", "password": "4321", "active": "True",
        "allow_login_by_abonement": "True", "allow_multiple_login": "True",
        "allow_login_by_device_uid": "False", "allowed_device_groups": "[1, 3]"})
    assert created["abonement"] == "1001" and created["password"] == "4321"
    account_id = created["account_id"]
    dup = await billing("account/create", {"customer_id": cid, "abonement": "1001"})
    assert dup["error"] == 2 and "abonement" in dup["error_fields"]
    assert (await billing("account/create", {"customer_id": 10**9}))["error"] == 1
    bad = await billing("account/create", {"customer_id": cid, "active": "maybe"})
    assert bad["error"] == 2 and "active" in bad["error_fields"]

    # AXbills sends an undocumented ext_id to account/info (signed, ignored).
    info = await billing.ok("account/info", {"abonement": "1001", "ext_id": "whatever"},
                            slash=False)
    assert info["id"] == account_id and info["abonement"] == "1001" and info["active"] == 1
    assert info["allow_login_by_abonement"] == 1 and info["allow_login_by_device_uid"] == 0
    assert info["allowed_device_groups"] == [1, 3] and info["customer_id"] == cid
    assert info["status_reason"] == "ACTIVE" and info["last_active"] is None
    assert (await billing("account/info", {"abonement": "nope"}))["error"] == 1

    stored = await db.run(ledger.get_account, account_id)
    assert ledger.verify_password("4321", stored.password_hash)
    await billing.ok("account/modify", {"abonement": "1001", "active": 0, "status_reason": "DEBT",
                                        "parent_code": "0000", "password": ""})
    info = await billing.ok("account/info", {"account_id": account_id})
    assert (info["active"], info["status_reason"], info["parent_code"]) == (0, "DEBT", "0000")
    assert ledger.verify_password("4321", (await db.run(ledger.get_account, account_id))
                                  .password_hash)  # empty password: unchanged
    await billing.ok("account/modify", {"abonement": "1001", "active": 1,
                                        "status_reason": "ACTIVE"})
    assert (await billing.ok("account/info", {"abonement": "1001"}))["active"] == 1
    bad = await billing("account/modify", {"abonement": "1001", "status_reason": "x" * 21})
    assert bad["error"] == 2 and "status_reason" in bad["error_fields"]
    assert (await billing("account/modify", {"abonement": "x", "active": 0}))["error"] == 1

    await billing.ok("account/deactivate", {"abonement": "1001"})
    info = await billing.ok("account/info", {"abonement": "1001"})
    assert (info["active"], info["status_reason"]) == (0, "INACTIVE")
    await billing.ok("account/activate", {"abonement": "1001"})
    assert (await billing.ok("account/info", {"abonement": "1001"}))["active"] == 1
    for m in ("account/activate", "account/deactivate", "account/delete"):
        assert (await billing(m, {"abonement": "none"}))["error"] == 1

    listed = await billing.ok("account/list", get=True)
    assert [a["id"] for a in listed["accounts"]] == [account_id]
    await billing.ok("account/create", {"customer_id": cid, "abonement": "1002", "active": 0})
    assert [a["abonement"] for a in (await billing.ok("account/list", {"status": 0}))
            ["accounts"]] == ["1002"]
    assert [a["abonement"] for a in (await billing.ok("account/list", {"abonement_regexp": "1$"}))
            ["accounts"]] == ["1001"]
    everyone = await billing.ok("account/list")  # VENDOR-PY message_mass_send: POST, no params
    assert len(everyone["accounts"]) == 2

    await billing.ok("account/delete", {"abonement": "1002"})
    assert (await billing("account/info", {"abonement": "1002"}))["error"] == 1


@pytest_twisted.ensureDeferred
async def test_account_tariffs_devices_and_messages(db, pg_dsn, tmp_path):
    cfg = tmp_path / "smartyd.toml"
    cfg.write_text(f'[database]\ndsn = "{pg_dsn}"\n[log]\nfile = "{tmp_path}/smartyd.jsonl"\n')

    async def admin_run(*args):
        out = await utils.getProcessOutput(
            sys.executable, ["-m", "smartyd.admin", "--config", str(cfg), *args],
            env=dict(os.environ), errortoo=False)
        return json.loads(out)

    _, billing, _ = make(db)
    t = await tariff(db)
    cid = (await billing.ok("customer/create", {"firstname": "a"}))["id"]
    acc = await billing.ok("account/create", {"customer_id": cid, "abonement": "2001"})
    for _ in range(2):
        await billing.ok("account/tariff/assign", {"abonement": "2001", "tariff_id": t})
    assert (await billing.ok("account/info", {"abonement": "2001"}))["tariffs"] == [t]
    assert (await billing.ok("customer/info", {"customer_id": cid}))["tariffs"] == []
    assert (await billing("account/tariff/assign", {"abonement": "x", "tariff_id": t}))[
        "error"] == 1
    assert (await billing("account/tariff/assign", {"abonement": "2001", "tariff_id": 10**9}))[
        "error"] == 2
    for _ in range(2):
        await billing.ok("account/tariff/remove", {"abonement": "2001", "tariff_id": t})
    assert (await billing.ok("account/info", {"abonement": "2001"}))["tariffs"] == []

    dev = await billing.ok("account/device/create", {"abonement": "2001", "device_uid": "AA:BB",
                                                     "system_name": "stb"})
    assert (await billing("account/device/create", {"abonement": "2001",
                                                     "device_uid": "AA:BB"}))["error"] == 4
    assert (await billing("account/device/create", {"abonement": "2001"}))["error"] == 2
    await billing.ok("account/device/modify", {"abonement": "2001", "device_id": dev["id"],
                                               "serial_number": "SN1"})
    devices = (await billing.ok("account/info", {"abonement": "2001"}))["devices"]
    assert [(d["id"], d["device_uid"], d["system_name"], d["serial_number"]) for d in devices] \
        == [(dev["id"], "AA:BB", "stb", "SN1")]
    assert (await billing("account/device/modify", {"abonement": "2001", "device_id": 10**9}))[
        "error"] == 3
    await billing.ok("account/device/delete", {"abonement": "2001", "device_id": dev["id"]})
    assert (await billing("account/device/delete", {"abonement": "2001",
                                                    "device_id": dev["id"]}))["error"] == 3

    msg = await billing.ok("account/message/create", {"abonement": "2001", "subject": "Hi",
                                                      "text": "Pay, please", "urgent": 0})
    # `smartyd-admin account show` lists them.
    shown = (await admin_run("account", "show", str(acc["account_id"])))["messages"]
    assert [(m["id"], m["subject"], m["text"], m["urgent"]) for m in shown] == [
        (msg["id"], "Hi", "Pay, please", False)]
    assert (await billing("account/message/create", {"abonement": "2001"}))["error"] == 2
    assert (await billing("account/message/create", {"abonement": "x", "text": "t"}))[
        "error"] == 1


@pytest_twisted.ensureDeferred
async def test_tariff_lists(db):
    _, billing, _ = make(db)
    async def seed(tx):
        ch = await catalog.create_channel(tx, "ch1", "http://s/$channel?t=$token")
        basic = await catalog.create_tariff(tx, "basic", "150.50", [ch["id"]])
        extra = await catalog.create_tariff(tx, "extra", "10", additional=True,
                                            activation_price="5")
        await catalog.create_tariff(tx, "secret", "1", hidden=True)
        return ch["id"], basic["id"], extra["id"]
    ch, basic, extra = await db.run(seed)
    tariffs = (await billing.ok("tariff/list"))["tariffs"]
    assert [t["id"] for t in tariffs] == [basic, extra]
    assert tariffs[0]["price"] == 150.5 and tariffs[0]["period"] == 30
    assert tariffs[0]["channels"] == [{"id": ch, "name": "ch1", "icon": ""}]
    assert tariffs[1]["activation_price"] == 5
    assert [t["id"] for t in (await billing.ok("tariff/basic/list"))["tariffs"]] == [basic]
    assert [t["id"] for t in (await billing.ok("tariff/additional/list", slash=False))
            ["tariffs"]] == [extra]


# -- transactions -----------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_transactions_create_repeat_delete(db):
    _, billing, _ = make(db)
    cid = (await billing.ok("customer/create", {"firstname": "a", "ext_id": "c-1"}))["id"]
    # VENDOR-PY: id + comment= always; HYDRA: processed not sent.
    await billing.ok("transaction/create", {"customer_id": cid, "id": 45, "amount": "150.50",
                                            "comment": "", "processed": 1})
    assert await balance(db, cid) == Decimal("150.50")
    again = await billing("transaction/create", {"customer_id": cid, "id": 45, "amount": "999"})
    assert again["error"] == 1
    # DOCS: ext_id names the transaction, customer_ext_id the customer (and wins).
    await billing.ok("transaction/create", {"customer_ext_id": "c-1", "customer_id": 10**9,
                                            "ext_id": "T-2", "amount": "-50.25"})
    await billing.ok("transaction/create", {"customer_id": cid, "id": "zero"})  # amount 0
    assert await balance(db, cid) == Decimal("100.25")
    info = await billing.ok("customer/info", {"customer_id": cid})
    assert info["balance"] == 100.25 and info["payments_count"] == 1  # processed only

    assert (await billing("transaction/create", {"customer_id": cid, "amount": 1}))["error"] == 2
    assert (await billing("transaction/create", {"customer_id": cid, "id": -1}))["error"] == 2
    assert (await billing("transaction/create", {"customer_id": cid, "id": "v",
                                                 "transaction_type": 1}))["error"] == 3
    bad = await billing("transaction/create", {"customer_id": cid, "id": "b", "amount": "1.001"})
    assert bad["error"] == 6 and "amount" in bad["error_fields"]
    nobody = await billing("transaction/create", {"customer_id": 10**9, "id": "n", "amount": 1})
    assert nobody["error"] == 6 and "customer_id" in nobody["error_fields"]
    assert await balance(db, cid) == Decimal("100.25")

    await billing.ok("transaction/delete", {"customer_id": cid, "id": 45})
    assert await balance(db, cid) == Decimal("-50.25")
    assert (await billing("transaction/delete", {"customer_id": cid, "id": 45}))["error"] == 1
    assert (await billing("transaction/delete", {"ext_id": "nope"}))["error"] == 1
    assert (await billing("transaction/delete", {"customer_id": cid}))["error"] == 2
    # An id stays taken after its deletion.
    assert (await billing("transaction/create", {"customer_id": cid, "id": 45, "amount": 1}))[
        "error"] == 1
    kinds = [e.kind for e in (await db.run(ledger.statement, cid)).rows]
    assert kinds == ["transaction", "transaction", "transaction-reversal"]


@pytest_twisted.ensureDeferred
async def test_twenty_copies_of_a_transaction_at_once_credit_once(db, make_db):
    _, billing, http = make(db)
    other = await make_db()  # a second instance on the same database
    _, billing2, _ = make(other)
    cid = (await billing.ok("customer/create", {"firstname": "a"}))["id"]
    calls = [(billing if i % 2 else billing2)("transaction/create",
                                              {"customer_id": cid, "id": "T-20", "amount": "10"})
             for i in range(20)]
    answers = await defer.gatherResults([defer.ensureDeferred(c) for c in calls])
    assert sorted(a["error"] for a in answers) == [0] + [1] * 19
    assert await balance(db, cid) == Decimal("10.00")
    assert len((await db.run(ledger.statement, cid)).rows) == 1


@pytest_twisted.ensureDeferred
async def test_transactional_mode_charges_and_full_mode_does_not(db):
    _, billing, _ = make(db, config("transactional"))
    t = await tariff(db, price="30.00")
    cid = (await billing.ok("customer/create", {"firstname": "a"}))["id"]
    await billing.ok("transaction/create", {"customer_id": cid, "id": 1, "amount": "100"})
    await billing.ok("customer/tariff/assign", {"customer_id": cid, "tariff_id": t})
    assert await balance(db, cid) == Decimal("70.00")

    _, full, _ = make(db, config("full"))
    cid2 = (await full.ok("customer/create", {"firstname": "b"}))["id"]
    await full.ok("transaction/create", {"customer_id": cid2, "id": 2, "amount": "100"})
    await full.ok("customer/tariff/assign", {"customer_id": cid2, "tariff_id": t})
    assert await balance(db, cid2) == Decimal("100.00")


@pytest.mark.parametrize("mode", ["transactional", "builtin"])
@pytest_twisted.ensureDeferred
async def test_charging_modes_settle_on_a_transaction(db, mode):
    # transactional (and builtin): the external billing's transaction is money
    # in like any payment: the suspended charge is taken and DEBT lifted at once.
    _, billing, _ = make(db, config(mode))
    t = await tariff(db, price="30.00")
    cid = (await billing.ok("customer/create", {"firstname": "a"}))["id"]
    await billing.ok("account/create", {"customer_id": cid, "abonement": "5001"})
    await billing.ok("customer/tariff/assign", {"customer_id": cid, "tariff_id": t})
    acc = await billing.ok("account/info", {"abonement": "5001"})
    assert (acc["active"], acc["status_reason"]) == (0, "DEBT")
    assert (await billing.ok("customer/info", {"customer_id": cid}))["subscriptions"][0][
        "is_closed"] is True
    await billing.ok("transaction/create", {"customer_id": cid, "id": "T-1", "amount": "100"})
    assert await balance(db, cid) == Decimal("70.00")
    acc = await billing.ok("account/info", {"abonement": "5001"})
    assert (acc["active"], acc["status_reason"]) == (1, "ACTIVE")
    info = await billing.ok("customer/info", {"customer_id": cid})
    assert info["subscriptions"][0]["is_closed"] is False and info["balance"] == 70
    kinds = [e.kind for e in (await db.run(ledger.statement, cid)).rows]
    assert kinds == ["transaction", "charge"]


@pytest_twisted.ensureDeferred
async def test_transactional_mode_lifts_only_the_debt_it_declared(db):
    # HYDRA blocks for its own debt with active=0 + DEBT; money in (a
    # transaction, a run) must not undo the external billing's decision.
    _, billing, _ = make(db, config("transactional"))
    t = await tariff(db, price="30.00")
    cid = (await billing.ok("customer/create", {"firstname": "a"}))["id"]
    await billing.ok("account/create", {"customer_id": cid, "abonement": "5003"})
    await billing.ok("transaction/create", {"customer_id": cid, "id": "T-1", "amount": "100"})
    await billing.ok("customer/tariff/assign", {"customer_id": cid, "tariff_id": t})
    await billing.ok("account/modify", {"abonement": "5003", "active": 0,
                                        "status_reason": "DEBT"})
    await billing.ok("transaction/create", {"customer_id": cid, "id": "T-2", "amount": "5"})
    acc = await billing.ok("account/info", {"abonement": "5003"})
    assert (acc["active"], acc["status_reason"]) == (0, "DEBT")
    assert await balance(db, cid) == Decimal("75.00")
    # The next period, charged by a run: still the billing's DEBT.
    run = await engine.run(db, BillingConfig(mode="transactional"),
                           engine.utc(time.time() + 31 * 86400))
    assert run.charged == 1 and await balance(db, cid) == Decimal("45.00")
    assert (await billing.ok("account/info", {"abonement": "5003"}))["active"] == 0
    await billing.ok("account/modify", {"abonement": "5003", "active": 1,
                                        "status_reason": "ACTIVE"})
    assert (await billing.ok("account/info", {"abonement": "5003"}))["active"] == 1


@pytest_twisted.ensureDeferred
async def test_full_mode_transactions_are_bookkeeping_only(db):
    # full: the balance shows the transactions, but nothing is charged and
    # nothing the external billing set about access changes with money.
    _, billing, _ = make(db, config("full"))
    t = await tariff(db, price="30.00")
    cid = (await billing.ok("customer/create", {"firstname": "a"}))["id"]
    await billing.ok("account/create", {"customer_id": cid, "abonement": "5002"})
    await billing.ok("customer/tariff/assign", {"customer_id": cid, "tariff_id": t})
    await billing.ok("account/modify", {"abonement": "5002", "active": 0,
                                        "status_reason": "DEBT"})  # HYDRA's debt
    await billing.ok("transaction/create", {"customer_id": cid, "id": "T-1", "amount": "100"})
    await billing.ok("transaction/create", {"customer_id": cid, "id": "T-2", "amount": "-150"})
    assert await balance(db, cid) == Decimal("-50.00")
    acc = await billing.ok("account/info", {"abonement": "5002"})
    assert (acc["active"], acc["status_reason"]) == (0, "DEBT")  # still the billing's word
    await billing.ok("account/activate", {"abonement": "5002"})
    info = await billing.ok("customer/info", {"customer_id": cid})
    assert info["subscriptions"][0]["is_closed"] is False  # entitled while assigned
    assert info["subscriptions"][0]["end_date"] is None
    assert [e.kind for e in (await db.run(ledger.statement, cid)).rows] == [
        "transaction", "transaction"]
    # A charging run (the job never runs in full mode; by hand) charges nothing.
    assert (await engine.run(db, BillingConfig(mode="full"), engine.utc(2**31))).charged == 0
    assert (await billing.ok("account/info", {"abonement": "5002"}))["active"] == 1


@pytest_twisted.ensureDeferred
async def test_autopayment_enabled_follows_the_customers_autopay(db):
    _, billing, _ = make(db)
    cid = (await billing.ok("customer/create", {"firstname": "a"}))["id"]
    other = (await billing.ok("customer/create", {"firstname": "b"}))["id"]

    async def flags() -> tuple:
        info = await billing.ok("customer/info", {"customer_id": cid})
        listed = {c["id"]: c["autopayment_enabled"]
                  for c in (await billing.ok("customer/list", get=True))["customers"]}
        return info["autopayment_enabled"], listed

    assert await flags() == (False, {cid: False, other: False})
    await db.run(cards.set_autopay, cid, True)  # `smartyd-admin customer autopay ID on`
    assert await flags() == (True, {cid: True, other: False})
    await db.run(cards.set_autopay, cid, False)
    assert await flags() == (False, {cid: False, other: False})


# -- last_active ------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_last_active_is_the_last_stream_url_minted(db, world, entitlements, metrics):
    # The contract leaves it open; smartyd: a successful POST /streams/url
    # (the viewer's device logging in for a stream), written in the mint's
    # own transaction at most once an hour per account (token checks never
    # write).
    _, _, http = make(db)
    shared = Billing(http, "9", KEY9)
    clock = task.Clock()
    clock.advance(1_700_000_000)  # 2023-11-14T22:13:20Z
    codec = TokenCodec(["s3cret"])
    streams = in_memory_client(StreamsApp(
        db, codec, Checker(codec, entitlements, clock, prometheus_counters(metrics, "http")),
        clock, metrics, ttl=3600).resource())

    async def mint(login="alice", channel="ch1") -> int:
        r = await streams.post("http://smartyd/streams/url", data={
            "login": login, "password": PASSWORD, "channel": channel, "ip": "203.0.113.9"})
        return r.code

    async def last_active(account_id):
        return await db.fetchval("SELECT last_active FROM accounts WHERE id = %s",
                                 (account_id,))

    info = await shared.ok("account/info", {"account_id": world.alice})
    assert info["last_active"] is None
    assert await mint() == 200
    first = await last_active(world.alice)
    assert first == engine.utc(clock.seconds())
    info = await shared.ok("account/info", {"account_id": world.alice})
    assert info["last_active"] == "2023-11-14"
    listed = {a["id"]: a["last_active"] for a in (await shared.ok("account/list"))["accounts"]}
    assert listed[world.alice] == "2023-11-14" and listed[world.bob] is None

    clock.advance(1800)  # within the hour: no write
    assert await mint() == 200
    assert await last_active(world.alice) == first
    clock.advance(3600)  # past it: written again (now the 15th)
    assert await mint() == 200
    assert await last_active(world.alice) == engine.utc(clock.seconds())
    assert (await shared.ok("account/info", {"account_id": world.alice}))["last_active"] \
        == "2023-11-14"
    clock.advance(3 * 3600)
    assert (await mint(), await mint("carol"), await mint("bob")) == (200, 403, 403)
    assert (await shared.ok("account/info", {"account_id": world.alice}))["last_active"] \
        == "2023-11-15"
    # Refused mints (blocked carol, bob without the channel) are no activity.
    assert (await last_active(world.carol), await last_active(world.bob)) == (None, None)


# -- tenancy ----------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_clients_see_only_their_customers_unless_shared(db):
    _, one, http = make(db)
    seven, shared = Billing(http, "7", KEY7), Billing(http, "9", KEY9)
    t = await tariff(db)
    mine = (await one.ok("customer/create", {"firstname": "a", "ext_id": "X"}))["id"]
    await one.ok("account/create", {"customer_id": mine, "abonement": "3001"})
    theirs = (await seven.ok("customer/create", {"firstname": "b", "ext_id": "X"}))["id"]
    assert theirs != mine  # ext_ids are per client
    assert (await seven.ok("customer/info", {"ext_id": "X"}))["id"] == theirs
    for method, params in [("customer/info", {"customer_id": mine}),
                           ("customer/modify", {"customer_id": mine, "comment": "x"}),
                           ("customer/delete", {"customer_id": mine}),
                           ("customer/tariff/assign", {"customer_id": mine, "tariff_id": t}),
                           ("account/info", {"abonement": "3001"}),
                           ("account/deactivate", {"abonement": "3001"}),
                           ("account/create", {"customer_id": mine})]:
        assert (await seven(method, params))["error"] == 1, method
    assert (await seven("transaction/create", {"customer_id": mine, "id": 1, "amount": 5}))[
        "error"] == 6
    assert [c["id"] for c in (await seven.ok("customer/list"))["customers"]] == [theirs]
    assert (await seven.ok("account/list"))["accounts"] == []
    assert await balance(db, mine) == 0
    # Transaction ids are per client too.
    await one.ok("transaction/create", {"customer_id": mine, "id": 1, "amount": 5})
    await seven.ok("transaction/create", {"customer_id": theirs, "id": 1, "amount": 7})
    assert (await balance(db, mine), await balance(db, theirs)) == (5, 7)
    # A shared client sees everyone's.
    assert (await shared.ok("customer/info", {"customer_id": mine}))["id"] == mine
    assert {c["id"] for c in (await shared.ok("customer/list"))["customers"]} == {mine, theirs}


# -- streams stop -----------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_deactivate_stops_stream_entitlement_via_notify(db, world, metrics):
    _, billing, _ = make(db)
    cid = (await billing.ok("customer/create", {"firstname": "a"}))["id"]
    acc = (await billing.ok("account/create", {"customer_id": cid, "abonement": "4001"}))
    await billing.ok("customer/tariff/assign", {"customer_id": cid, "tariff_id": world.basic})
    # The snapshot service starts after the set-up: none of its notifications
    # is pending, so each reload below is the one a change's NOTIFY caused.
    entitlements = Entitlements(db, metrics=metrics, clock=reactor)
    entitlements.startService()
    try:
        snap = await within(entitlements.when_loaded(), 10)
        assert snap.entitlement(acc["account_id"], world.ch1) == ENTITLED
        for method, params, expected in [
                ("account/deactivate", {"abonement": "4001"}, BLOCKED),
                ("account/modify", {"abonement": "4001", "active": "true"}, ENTITLED),
                ("account/modify", {"abonement": "4001", "active": "0"}, BLOCKED)]:
            reloaded = entitlements.next_reload()
            await billing.ok(method, params)
            assert (await within(reloaded, 10)).entitlement(acc["account_id"], world.ch1) \
                == expected, method
    finally:
        await entitlements.stopService()


# -- configuration ----------------------------------------------------------------------------
def test_config_section():
    cfg = config("reduced", ("customer/info/",))
    assert cfg.billing_api.methods == ("customer/info",)
    assert [c.client_id for c in cfg.billing_api.clients] == ["1", "7", "9", "5"]
    assert cfg.billing_api.clients[2].shared and str(cfg.billing_api.clients[3].allow[0]) \
        == "10.0.0.0/8"
    assert KEY1 not in repr(cfg) and configmod.redacted(cfg)["billing_api"]["clients"] == "***"
    for section, message in [
        ({"enabled": True}, "[billing_api] clients: required"),
        ({"clients": [{"client_id": "1"}]}, "api_key is empty"),
        ({"clients": [{"client_id": "1", "api_key": "k", "secret": 1}]}, "unknown key secret"),
        ({"clients": [{"client_id": "1", "api_key": "k"}, {"client_id": 1, "api_key": "j"}]},
         "appears twice"),
        ({"clients": [{"client_id": "1", "api_key": "k", "allow": ["x"]}]}, "not an address"),
        ({"methods": ["customer/fly"]}, "unknown Billing API method"),
    ]:
        with pytest.raises(configmod.ConfigError, match=message.replace("[", r"\[")
                           .replace("]", r"\]")):
            make_config(billing_api=section)
    with pytest.raises(configmod.ConfigError, match="methods: required"):
        make_config(billing={"mode": "reduced"},
                    billing_api={"enabled": True, "clients": [{"client_id": "1", "api_key": "k"}]})


@pytest_twisted.ensureDeferred
async def test_a_form_body_without_content_type_and_unencoded_is_read(db):
    # AXbills builds key=value&... itself (no URL-encoding of its digits/words).
    _, billing, http = make(db)
    pairs = billing.pairs({"firstname": "ax", "ext_id": "77"})
    body = "&".join(f"{k}={v}" for k, v in pairs) + "&signature=" + contract_signature(pairs, KEY1)
    resp = await http.post(BASE + "customer/create", data=body.encode())
    assert json.loads(await resp.content())["error"] == 0
    assert (await billing.ok("customer/info", {"ext_id": "77"}))["firstname"] == "ax"
