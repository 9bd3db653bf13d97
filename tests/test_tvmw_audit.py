"""
Regressions found by an audit that drove the TV Middleware API as a device
would, with values an app (or a fuzzer) sends: each answered a 500 or a
misleading message before its fix.
"""

from __future__ import annotations

import pytest_twisted

from test_tvmw import Device, instance  # noqa: F401 (the fixture)


@pytest_twisted.ensureDeferred
async def test_integers_with_repeated_signs_are_a_parameter_error(instance, world):
    device = Device(instance.http)
    await device.login()
    for value in ("--5", "-", "+5", "5-"):
        answer = await device("channel/detail", cid=value)
        assert answer["error"] == 1 and answer["error_messages"] == {
            "cid": "must be an integer"}, (value, answer)
    answer = await device("payment/list", limit="--1")
    assert answer["error"] == 1 and "limit" in answer["error_messages"]


@pytest_twisted.ensureDeferred
async def test_times_and_days_past_the_calendar_are_a_parameter_error(instance, world):
    device = Device(instance.http)
    await device.login()
    far = str(253402300000)  # 9999-12-31: one day more overflows Python's datetime
    for params, name in (({"time_from": far}, "time_from"), ({"time_to": far}, "time_to"),
                         ({"pid_from": far}, "pid_from"), ({"time_from": str(2**40)}, "time_from"),
                         ({"date": "9999-12-31"}, "date"), ({"date": "0001-01-01"}, "date")):
        answer = await device("program/list", cid=world.ch1, **params)
        assert answer["error"] == 1 and name in answer["error_messages"], (params, answer)
    for params, name in (({"date_to": "9999-12-31"}, "date_to"),
                         ({"date_to": "0001-01-01"}, "date_to"),
                         ({"date_from": "0001-01-01"}, "date_from")):
        answer = await device("customer/info", **params)
        assert answer["error"] == 1 and name in answer["error_messages"], (params, answer)
    # Ordinary days still answer.
    assert (await device.ok("program/list", cid=world.ch1, date="2026-01-31"))["programs"] == []
    assert (await device.ok("customer/info", date_from="2026-01-01",
                            date_to="2026-01-31"))["payments"]["other"] == []


@pytest_twisted.ensureDeferred
async def test_a_nul_byte_is_refused_for_what_it_is(instance, world):
    device = Device(instance.http)
    answer = await device("login", abonement="al\x00ice", password="x", api_key="k")
    assert answer["error"] == 1
    assert answer["error_messages"] == {"abonement": "must not contain NUL"}


@pytest_twisted.ensureDeferred
async def test_channel_detail_prices_are_numbers_as_the_spec_types_them(instance, world):
    device = Device(instance.http)
    await device.login()
    detail = await device.ok("channel/detail", cid=world.ch1)
    [action] = detail["actions"]
    # The spec: actions.price and actions.activation_price are Number (as CustomerTariffList's).
    assert (action["price"], action["activation_price"]) == (100.0, 0.0)
    assert isinstance(action["price"], float) and isinstance(action["activation_price"], float)


@pytest_twisted.ensureDeferred
async def test_payment_list_without_limit_answers_the_specs_default_of_100(db):
    from conftest import make_config
    from smartyd.tvmw import customer
    from test_tvmw_content import T0, Device as CallDevice, account_with, clock_at, seed_ledger

    account = await account_with(db)
    await seed_ledger(db, account, 25)
    dev = CallDevice(db, make_config(), account, clock_at(T0))
    assert len((await dev.ok(customer.payment_list))["payments"]) == 25
    assert len((await dev.ok(customer.payment_list, limit=20))["payments"]) == 20


@pytest_twisted.ensureDeferred
async def test_video_url_without_a_stream_address_is_not_a_403_saying_error_0(db, world):
    """
    A device of no MEGOGO class (no key pair, so no ``uri``) calling VideoUrl
    with the spec's default ``redirect=1``: nothing to redirect to, so the
    answer is the body with the ``ext_*`` fields (200), as with ``redirect=0``
    -- before, an HTTP 403 whose body said ``error: 0``.
    """
    import json

    from smartyd import ledger
    from smartyd.billing import engine
    from fakes import in_memory_client
    from fakes.megogo import FakeMegogo
    from test_tvmw_content import (CATALOG, KEYS, MEGOGO, T0, Daemon, feed, tv_tariff,
                                   tvmw_config)

    fake = FakeMegogo(partner_id=7)
    cat = await tv_tariff(db, "megogo-catalog", "0.00", hidden=True)
    svod = await tv_tariff(db, "megogo-svod", "0.00", additional=True)
    cfg = tvmw_config(megogo={**MEGOGO, "catalog_tariff_id": cat, "tariff_id": svod, **KEYS})
    daemon = Daemon(db, cfg, http_client=in_memory_client(fake.resource()))
    await daemon.app.app.features["vod"].handle.syncs["megogo"].sync_bytes(feed(*CATALOG))
    await daemon.start()
    try:
        alice = await db.run(ledger.get_account, world.alice)
        for t in (cat, svod):
            await db.run(engine.assign, cfg.billing, alice.id, t, at=T0)
        device = Device(daemon.http, device="browser", uid="web-1")
        assert (await device.login())["error"] == 0
        vid = (await device.ok("video/list", search="alpha"))["videos"][0]["id"]
        resp = await device.raw("video/url", vid=vid)
        answer = json.loads(await resp.content())
        assert (resp.code, answer["error"], answer["uri"]) == (200, 0, "")
        assert answer["ext_id"] == "1" and answer["ext_partner_id"] == "7"
        # Refusals in redirect mode stay a 403 with the error.
        resp = await device.raw("video/url", vid=999999)
        assert resp.code == 403 and json.loads(await resp.content())["error"] == 1
    finally:
        await daemon.stop()
