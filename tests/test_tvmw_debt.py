"""
A debtor on the TV Middleware API (issue 23): an account the built-in
billing deactivates for lack of money (inactive, ``status_reason`` DEBT)
logs in and stays logged in, as Smarty answers it and as operators' apps
expect (samandarkuchkarov/tvcom_iOS: ``pages/Authentication`` reads
``error == 0`` and ``status_reason == 'DEBT'`` for its debt banner,
``context.js`` ``checkToken`` drops the session only on ``account/status``'s
``status == 1``).  While in DEBT it watches nothing (ChannelList all locked,
ChannelUrl refused, earlier tokens refused by the fast listener) and sees
its money; an OSMP payment through the daemon lifts the DEBT and the same
session zaps again.  A block, or any other deactivation, still ends the
sessions at once on every instance (migration 0022's trigger).

The world (tests/streams_world.py): alice (tariff "basic" 100.00 with ch1,
balance 0, due now), carol (blocked); ch2 in no tariff.
"""

from __future__ import annotations

import pytest_twisted
from twisted.internet import reactor

from conftest import make_config
from smartyd import catalog, ledger, osmp
from smartyd.billing import engine
from smartyd.tvmw import films
from smartyd.tvmw.sessions import insert_session, key_hash
from streams_world import within
from test_tvmw import KEY, Device, Running, config, token_check
from test_tvmw_content import CATALOG, T0, Cinema, account_with, clock_at

PHONE_IP = "192.168.1.23"  # tvcom_iOS sends its IP address as device_uid


def debt_config():
    """test_tvmw's daemon, with OSMP payments by login from the loopback."""
    return make_config(
        tvmw={"enabled": True, "clients": [{"client_id": "1", "api_key": KEY, "shared": True}]},
        tokens={"secret": "s3cret-long-enough-for-config",
                "fast_listen": "tcp:0:interface=127.0.0.1"},
        osmp={"username": "", "account": "login", "allow": ["127.0.0.0/8"]})


@pytest_twisted.async_yield_fixture
async def daemon(db, world):
    running = Running(db, debt_config())
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


async def charging_run(instance, db) -> engine.RunResult:
    """The charging job's body, now; returns once every instance's snapshot has the result."""
    reloaded = instance.entitlements.next_reload()
    result = await engine.run(db, instance.app.cfg.billing, engine.utc(reactor.seconds()))
    if result.suspended or result.reactivated:
        await within(reloaded, 5)
    return result


async def osmp_pay(instance, login: str, amount: str, txn_id: str) -> bytes:
    reloaded = instance.entitlements.next_reload()
    query = (f"command=pay&txn_id={txn_id}&account={login}&sum={amount}"
             f"&txn_date={osmp.format_txn_date(reactor.seconds())}")
    response = await instance.http.get(f"http://127.0.0.1/payments/osmp?{query}")
    body = await response.content()
    await within(reloaded, 5)
    return body


# -- the flow ----------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_a_debtor_stays_logged_in_watches_nothing_and_zaps_again_once_it_pays(
        daemon, world, db):
    phone = Device(daemon.http, device="ios", uid=PHONE_IP)
    assert (await phone.login())["status_reason"] == "ACTIVE"
    await phone.ok("channel/list")
    before = (await phone.ok("channel/url", cid=world.ch1, redirect=0))["uri"]
    assert await token_check(daemon, before) == 200

    # alice's basic tariff falls due with no money: the billing suspends it, alice in DEBT.
    assert (await charging_run(daemon, db)).suspended == 2  # alice's and carol's
    account = await db.run(ledger.get_account, world.alice)
    assert (account.active, account.status_reason) == (False, "DEBT")
    # Her session lives on (the billing's DEBT ends none).
    assert await db.fetchval("SELECT count(*) FROM tvmw_sessions") == 1
    status = await phone.ok("account/status")
    assert (status["status"], status["status_reason"]) == (2, "DEBT")
    assert status["channel_list_changed"] == 1  # every channel is locked now

    # Watches nothing: the list all locked, ChannelUrl refused, the earlier token refused.
    channels = (await phone.ok("channel/list"))["channels"]
    assert [(c["id"], c["has_subscription"], c["url"]) for c in channels] == [
        (world.ch1, 0, ""), (world.ch2, 0, "")]
    assert (await phone.ok("account/status"))["channel_list_changed"] == 0
    assert (await phone("channel/url", cid=world.ch1, redirect=0))["error"] == 2
    resp = await phone.raw("channel/url", cid=world.ch1)  # redirect=1: no redirect either
    assert resp.code == 403
    assert await token_check(daemon, before) == 403

    # Sees its money and its tariffs (the debt banner lists the assigned ones).
    info = await phone.ok("customer/info")
    assert info["balance"] == "0.00" and info["activation_days_left"] == 0
    assert info["current_debt_amount"] == "100.00"  # what the suspended tariff needs
    assert [(t["name"], t["is_assigned"]) for t in info["tariffs"]] == [("basic", 1)]
    assert [s["tariff_id"] for s in info["subscriptions"]] == [world.basic]
    assert (await phone.ok("payment/list"))["payments"] == []
    assert [t["is_assigned"] for t in (await phone.ok("customer/tariff/list"))["tariffs"]] == [
        True]
    # Subscribing still follows the money: nothing to pay with, refused, nothing written.
    extra = (await db.run(catalog.create_tariff, "extra", "50.00", [world.ch2],
                          additional=True))["id"]
    assert (await phone("customer/tariff/subscribe", tariff_id=extra))["error"] == 2
    assert await db.fetchval("SELECT count(*) FROM subscriptions WHERE tariff_id = %s",
                             (extra,)) == 0

    # Another device logs in while in DEBT: error 0, status_reason DEBT; it watches nothing.
    box = Device(daemon.http, device="smarttv", uid="box-2")
    again = await box.login()
    assert (again["error"], again["status_reason"]) == (0, "DEBT")
    assert (await box("channel/url", cid=world.ch1, redirect=0))["error"] == 2
    await box.ok("logout")

    # A payment settles the debt: the suspended tariff is charged, the DEBT lifted.
    body = await osmp_pay(daemon, "alice", "100.00", "7001")
    assert b"<result>0</result>" in body, body
    account = await db.run(ledger.get_account, world.alice)
    assert (account.active, account.status_reason, account.balance) == (True, "ACTIVE", 0)

    # The same session, without logging in again: status 0, its list changed, it zaps.
    status = await phone.ok("account/status")
    assert (status["status"], status["status_reason"], status["channel_list_changed"]) == (
        0, "ACTIVE", 1)
    channels = (await phone.ok("channel/list"))["channels"]
    assert [(c["id"], c["has_subscription"]) for c in channels] == [(world.ch1, 1),
                                                                    (world.ch2, 0)]
    uri = (await phone.ok("channel/url", cid=world.ch1, redirect=0))["uri"]
    assert await token_check(daemon, uri) == 200
    assert [p["amount"] for p in (await phone.ok("payment/list"))["payments"]] == [
        "-100.00", "100.00"]
    assert (await phone.ok("customer/info"))["current_debt_amount"] == "0.00"


@pytest_twisted.ensureDeferred
async def test_a_blocked_or_otherwise_inactive_account_still_gets_login_error_2(
        daemon, world, db):
    device = Device(daemon.http, uid="box-1")
    carol = await device.login(abonement="carol")  # blocked by the operator
    assert (carol["error"], carol["status_reason"]) == (2, "BLOCK")
    for reason in ("INACTIVE", "WAIT"):
        await db.run(ledger.set_active, world.alice, False, reason)
        refused = await device.login()
        assert (refused["error"], refused["status_reason"]) == (2, reason)
        assert "authkey" not in refused
    # A DEBT an external billing set (the Billing API's account/modify) is a DEBT too:
    # logged in, and locked out although its tariff stays active (the billing's).
    reloaded = daemon.entitlements.next_reload()
    await db.run(ledger.set_active, world.alice, False, "DEBT")
    await within(reloaded, 5)
    debtor = await device.login()
    assert (debtor["error"], debtor["status_reason"]) == (0, "DEBT")
    assert await db.fetchval("SELECT count(*) FROM tvmw_sessions") == 1
    channels = (await device.ok("channel/list"))["channels"]
    assert [(c["has_subscription"], c["url"]) for c in channels] == [(0, ""), (0, "")]
    assert (await device("channel/url", cid=world.ch1, redirect=0))["error"] == 2
    actions = (await device.ok("channel/detail", cid=world.ch1))["actions"]
    assert [(a["action"], a["tariff_id"]) for a in actions] == [("subscribe", world.basic)]
    # The external billing lifts it: the same session zaps.
    reloaded = daemon.entitlements.next_reload()
    await db.run(ledger.set_active, world.alice, True, "ACTIVE")
    await within(reloaded, 5)
    actions = (await device.ok("channel/detail", cid=world.ch1))["actions"]
    assert [a["action"] for a in actions] == ["get_channel_url"]
    uri = (await device.ok("channel/url", cid=world.ch1, redirect=0))["uri"]
    assert await token_check(daemon, uri) == 200


@pytest_twisted.ensureDeferred
async def test_a_debtor_gets_no_film_url_even_for_a_title_it_bought(db):
    clock = clock_at(T0)
    cinema = await Cinema(db, clock).setup(*CATALOG)
    account = await account_with(db, "ann", "100.00")
    dev = await cinema.device(account, tariffs=[cinema.catalog])
    vid = await cinema.title_id("5")
    assert await dev.ok(films.video_action, vid=vid, action="buy") == {"result": "ok"}
    assert (await dev.ok(films.video_url, vid=vid))["ext_id"] == "5"
    await db.run(ledger.set_active, account.id, False, "DEBT")
    assert (await dev.error(films.video_url, vid=vid)).code == 3
    await db.run(ledger.set_active, account.id, True, "ACTIVE")
    assert (await dev.ok(films.video_url, vid=vid))["ext_id"] == "5"


# -- the trigger: DEBT keeps the sessions, a block ends them on every instance ------------------
@pytest_twisted.ensureDeferred
async def test_debt_keeps_the_sessions_and_a_block_ends_them_on_every_instance(db, world):
    one, two = Running(db, config()), Running(db, config())
    await one.start()
    await two.start()
    try:
        on_one = Device(one.http, uid="box-1")
        await on_one.login()
        on_two = Device(two.http, uid="box-1")
        on_two.authkey = on_one.authkey
        assert (await on_two("channel/list"))["error"] == 0  # instance two has it too
        first_on_one, first_on_two = one.store.next_end(), two.store.next_end()

        assert (await charging_run(one, db)).suspended == 2  # alice in DEBT (and carol)
        # A barrier: another session of alice's (logged in while in DEBT) ends.
        # Notifications arrive in commit order, so had the DEBT ended a session
        # its end would be the first either instance hears of.
        other = Device(one.http, uid="box-2")
        assert (await other.login())["status_reason"] == "DEBT"
        await other.ok("logout")
        assert await within(first_on_one, 5) == key_hash(other.authkey)
        assert await within(first_on_two, 5) == key_hash(other.authkey)
        for device in (on_one, on_two):
            status = await device.ok("account/status")
            assert (status["status"], status["status_reason"]) == (2, "DEBT")

        # Blocked while in DEBT (active stays false, the reason changes): ended everywhere.
        ended_on_one, ended_on_two = one.store.next_end(), two.store.next_end()
        await db.run(ledger.set_status, world.alice, "blocked")
        assert await within(ended_on_one, 5) == key_hash(on_one.authkey)
        assert await within(ended_on_two, 5) == key_hash(on_one.authkey)
        for device in (on_one, on_two):
            gone = await device("account/status")
            assert (gone["error"], gone["status"]) == (-1, 1)  # the app logs in again...
        refused = await on_one.login()
        assert (refused["error"], refused["status_reason"]) == (2, "BLOCK")  # ...and is refused
        assert await db.fetchval("SELECT count(*) FROM tvmw_sessions") == 0
    finally:
        await one.stop()
        await two.stop()


@pytest_twisted.ensureDeferred
async def test_which_account_changes_end_its_sessions(db, world):
    """Migration 0022's trigger, every path being plain SQL: only DEBT is kept."""

    async def state(reason: str) -> None:
        await db.execute("UPDATE accounts SET active = %s, status_reason = %s WHERE id = %s",
                         (reason == "ACTIVE", reason, world.alice))

    async def sessions_after(before: str, change: str, params=()) -> int:
        await state(before)
        await db.execute("DELETE FROM tvmw_sessions")
        await db.run(insert_session, b"k" * 32, world.alice, "1", "box-1", "", "10.0.0.1",
                     reactor.seconds())
        await db.execute(change, (*params, world.alice))
        return await db.fetchval("SELECT count(*) FROM tvmw_sessions")

    set_reason = "UPDATE accounts SET active = %s, status_reason = %s WHERE id = %s"
    kept = [
        ("ACTIVE", set_reason, (False, "DEBT")),          # the billing's DEBT
        ("DEBT", set_reason, (True, "ACTIVE")),           # lifted
        ("DEBT", set_reason, (False, "DEBT")),            # declared again
        ("DEBT", "UPDATE accounts SET updated = now(), last_active = now() WHERE id = %s", ()),
    ]
    ended = [
        ("ACTIVE", set_reason, (False, "BLOCK")),
        ("ACTIVE", set_reason, (False, "INACTIVE")),
        ("DEBT", set_reason, (False, "BLOCK")),
        ("DEBT", "UPDATE accounts SET status_reason = 'INACTIVE' WHERE id = %s", ()),
        ("DEBT", "UPDATE accounts SET password_hash = 'x' WHERE id = %s", ()),
        ("DEBT", "UPDATE accounts SET deleted_at = now() WHERE id = %s", ()),
    ]
    for before, change, params in kept:
        assert await sessions_after(before, change, params) == 1, (before, change, params)
    for before, change, params in ended:
        assert await sessions_after(before, change, params) == 0, (before, change, params)
