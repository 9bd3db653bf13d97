"""
``smartyd-admin``: the operator's command line.

Every command prints one JSON object on stdout and exits 0, or prints one
line ``smartyd-admin: <reason>`` on stderr and exits non-zero.  It works
beside a running daemon on the same database: with the embedded default it
uses the cluster the daemon runs.  It starts the cluster when it is down and
stops it again on exit only if it started it and no daemon holds the state
dir: the daemon's cluster is never stopped from here (a daemon whose cluster
is down gets it back; its own supervisor would restart it anyway).  Database work goes through the same async db layer as the
daemon, on a reactor run by ``task.react``.

A command runs on the daemon's own assembly (L{assemble}: L{build_app} on
this process's reactor and database, nothing started): what moves money or
entitlements goes through the same payment hooks (settlement, receipts),
autopayment and partner clients as the daemon, never through a copy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from twisted.internet.defer import Deferred

from twisted.internet import task

from smartyd import catalog, config as configmod, ledger, logs, payments
from smartyd.admin import (
    backup as backup_admin,
    billing as billing_admin,
    console as console_admin,
    fiscal as fiscal_admin,
    gateways as gateways_admin,
    journals as journals_admin,
    transfer as transfer_admin,
    vod as vod_admin,
    widgets as widgets_admin,
)
from smartyd.billing import engine
from smartyd.admin.errors import AdminError
from smartyd.billing_api import repo as billing_api_repo
from smartyd.db import Database, DatabaseUnavailable
from smartyd.db.embedded import EmbeddedCluster, EmbeddedError
from smartyd.db.migrate import current_version, migrate
from smartyd.metrics import Metrics
from smartyd.partners import HTTPClientService
from smartyd.tvmw import devices as tvmw_devices
from smartyd.widgets import repo as widgets_repo
from smartyd.wiring import App, build_app, needs_http_client

__all__ = ["AdminError", "main", "run"]

# The feature command groups: each module's ``register(subparsers)`` returns
# ``{command name: async handler(db, args, cfg, reactor, app)}`` (``app``: L{assemble}).
FEATURE_COMMANDS = (gateways_admin, fiscal_admin, billing_admin, vod_admin, widgets_admin,
                    journals_admin, backup_admin, transfer_admin, console_admin)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smartyd-admin", description="Administer smartyd.")
    p.add_argument("--config", "-c", default=os.environ.get("SMARTYD_CONFIG"),
                   help="TOML configuration (default: $SMARTYD_CONFIG or built-in defaults)")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("migrate", help="apply pending schema migrations")

    acc = sub.add_parser("account", help="accounts").add_subparsers(dest="action", required=True)
    c = acc.add_parser("create")
    c.add_argument("--login", required=True)
    c.add_argument("--password")
    c.add_argument("--id", type=int)
    c.add_argument("--customer", type=int, help="the customer (default: a new one)")
    c.add_argument("--name", default="", help="customer name (a new customer)")
    c.add_argument("--phone")
    c.add_argument("--email")
    for action in ("show", "block", "unblock"):
        a = acc.add_parser(action)
        if action == "show":  # by id, or --login (an account signed up on a widget)
            a.add_argument("id", type=int, nargs="?")
            a.add_argument("--login")
        else:
            a.add_argument("id", type=int)
        if action != "show":
            a.add_argument("--reason", help="status_reason (default BLOCK / ACTIVE)")
    a = acc.add_parser("limit", help="the account's own limits of sessions and devices")
    a.add_argument("id", type=int)
    a.add_argument("--sessions", type=int, help="concurrent streams; 0 clears (tariffs decide)")
    a.add_argument("--devices", type=int,
                   help="devices in session on the TV Middleware API; 0 clears (tariffs decide)")
    a = acc.add_parser("devices", help="the devices bound to the account")
    a.add_argument("id", type=int)

    dev = sub.add_parser("device", help="devices").add_subparsers(dest="action", required=True)
    a = dev.add_parser("unbind", help="free a device from its account (its sessions end)")
    a.add_argument("uid")

    ch = sub.add_parser("channel", help="channels").add_subparsers(dest="action", required=True)
    c = ch.add_parser("create")
    c.add_argument("--name", required=True)
    c.add_argument("--url-mask", required=True)
    c.add_argument("--streamer-id", help="the streamer's own channel id (Astra X-Channel-ID)")
    c.add_argument("--xmltv-id", help="the channel's id in the XMLTV guide ([epg] xmltv_url)")
    c.add_argument("--category", help="the channel's category (created when new)")

    tr = sub.add_parser("tariff", help="tariffs").add_subparsers(dest="action", required=True)
    c = tr.add_parser("create")
    c.add_argument("--name", required=True)
    c.add_argument("--price", required=True)
    c.add_argument("--channel", type=int, action="append", default=[])
    c.add_argument("--kind", choices=("tv", "svod", "tvod"), default="tv")
    period = c.add_mutually_exclusive_group()
    period.add_argument("--period-days", type=int, default=30)
    period.add_argument("--period-months", type=int)
    c.add_argument("--activation-price", default="0")
    c.add_argument("--additional", action="store_true", help="an additional (not basic) tariff")
    c.add_argument("--hidden", action="store_true")
    c.add_argument("--sessions", type=int, help="concurrent sessions allowed (default: no limit)")
    c.add_argument("--devices", type=int,
                   help="devices in session at once on the TV Middleware API (default: no limit)")
    for action in ("assign", "remove"):
        a = tr.add_parser(action)
        a.add_argument("--customer", type=int, help="the customer's tariff (all its accounts)")
        a.add_argument("--at", help="ISO-8601 moment of the assignment (default now)")
        a.add_argument("ids", type=int, nargs="+", metavar="[ACCOUNT] TARIFF")

    pay = sub.add_parser("payment", help="payments").add_subparsers(dest="action", required=True)
    s = pay.add_parser("show")
    s.add_argument("--provider", required=True)
    s.add_argument("--txn-id", required=True)

    for module in FEATURE_COMMANDS:
        EXTENSION_COMMANDS.update(module.register(sub))

    lg = sub.add_parser("logs", help="print the daemon's JSON log readably")
    lg.add_argument("--follow", "-f", action="store_true")
    lg.add_argument("--grep", action="append", default=[], metavar="KEY=VALUE")
    lg.add_argument("--file", help="log file (default: [log] file of the config)")
    lg.add_argument("--json", action="store_true", help="print matching records as JSON lines")
    return p


EXTENSION_COMMANDS: dict = {}


# -- commands over the database --------------------------------------------------------------
async def cmd_migrate(db: Database, args) -> dict:
    applied = await migrate(db)
    return {"applied": applied, "version": await current_version(db)}


def assemble(cfg: configmod.Config, reactor, db: Database, http_client=None) -> App:
    """
    The daemon's assembly for one command: L{build_app} with this process's
    reactor, database and HTTP client (None when no enabled feature talks to a
    partner), its services not started.  Commands call its handles --
    ``app.billing.handle`` (the charging run with autopayment),
    ``app.payments`` (the payment hooks), ``app.features[name].handle``.
    """
    return build_app(cfg, reactor=reactor, db=db, metrics=Metrics(), http_client=http_client,
                     ready=True)


class _Assembly:
    """
    L{assemble}'s app for a command, built on its first use (``app.billing``,
    ``app.features``) with the HTTP pool it needs: most commands only read or
    change rows and never build the daemon's features.
    """

    def __init__(self, cfg: configmod.Config, reactor, db: Database):
        self._cfg, self._reactor, self._db = cfg, reactor, db
        self._app: App | None = None
        self._pool: HTTPClientService | None = None

    def __getattr__(self, name: str):
        if self._app is None:
            if needs_http_client(self._cfg):
                self._pool = HTTPClientService(self._reactor)
            self._app = assemble(self._cfg, self._reactor, self._db,
                                 self._pool.client if self._pool else None)
        return getattr(self._app, name)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.pool.closeCachedConnections()


async def cmd_account(db: Database, args, cfg, reactor, app) -> dict:
    if args.action == "create":
        password_hash = ledger.hash_password(args.password) if args.password else ""

        async def create(tx):
            # Without --customer, the account gets a customer of its own (with
            # the account's id when free: its payment code is the account's).
            # With one, the customer's tariffs cover it now (a DEBT customer's
            # new account starts in DEBT): the engine's account creation.
            account = await engine.create_account(
                tx, cfg.billing, args.login, password_hash, account_id=args.id,
                customer_id=args.customer, at=billing_admin.moment(None, reactor))
            if args.customer is None:
                await ledger.update_customer(tx, account.customer_id, name=args.name,
                                             phone=args.phone, email=args.email)
            return account

        return (await console_admin.audited(db, reactor, "account.create", create)).to_json()
    if args.action == "show":

        if (args.id is None) == (args.login is None):
            raise AdminError("account show: give an id or --login")

        async def show(tx):
            if args.login is not None:
                account = await ledger.find_account_by_login(tx, args.login)
                if account is None:
                    raise AdminError(f"no account with login {args.login!r}")
                args.id = account.id
            account = await ledger.get_account(tx, args.id)
            if account is None:
                raise AdminError(f"no account {args.id}")
            out = account.to_json()
            out["ledger_sum"] = str(await ledger.ledger_sum(tx, account.customer_id))
            out["tariffs"] = await catalog.account_tariffs(tx, args.id)
            out["channels"] = await catalog.account_channels(tx, args.id)
            out["messages"] = await billing_api_repo.account_messages(tx, args.id)
            return out

        return await db.run(show)
    if args.action == "limit":
        if args.sessions is None and args.devices is None:
            raise AdminError("account limit ID --sessions N and/or --devices N")

        async def limit(tx):
            out = {"account": args.id}
            if args.sessions is not None:
                out.update(await catalog.set_account_sessions(tx, args.id, args.sessions))
            if args.devices is not None:
                out.update(await tvmw_devices.set_account_devices(tx, args.id, args.devices))
            return out

        return await console_admin.audited(db, reactor, "account.limit", limit)
    if args.action == "devices":
        return await db.run(tvmw_devices.account_devices, args.id)
    # A block is the operator's: a payment never lifts it (only DEBT is lifted).
    active = args.action == "unblock"
    reason = args.reason or (ledger.ACTIVE if active else ledger.BLOCK)
    return await console_admin.set_account_active(db, args.id, active, reason, reactor)


async def cmd_channel(db: Database, args, cfg, reactor, app) -> dict:
    async def create(tx):
        channel = await catalog.create_channel(tx, args.name, args.url_mask,
                                               streamer_id=args.streamer_id)
        if args.xmltv_id is not None:
            await widgets_repo.set_xmltv_id(tx, channel["id"], args.xmltv_id)
            channel["xmltv_id"] = args.xmltv_id
        if args.category is not None:
            channel["category_id"] = await tvmw_devices.category_id(tx, args.category)
            await tx.execute("UPDATE channels SET category_id = %s WHERE id = %s",
                             (channel["category_id"], channel["id"]))
        return channel

    return await console_admin.audited(db, reactor, "channel.create", create)


async def cmd_tariff(db: Database, args, cfg, reactor, app) -> dict:
    if args.action == "create":
        return await console_admin.audited(
            db, reactor, "tariff.create", lambda tx: catalog.create_tariff(
                tx, args.name, args.price, args.channel, args.kind, args.period_days,
                args.hidden, period_months=args.period_months,
                activation_price=args.activation_price, additional=args.additional,
                sessions=args.sessions, devices=args.devices))
    if args.customer is None:
        if len(args.ids) != 2:
            raise AdminError(f"tariff {args.action} ACCOUNT TARIFF (or --customer ID TARIFF)")
        account, tariff = args.ids
    else:
        if len(args.ids) != 1:
            raise AdminError(f"tariff {args.action} --customer ID TARIFF")
        account, [tariff] = None, args.ids
    at = billing_admin.moment(args.at, reactor)
    op = engine.assign if args.action == "assign" else engine.remove
    out = await console_admin.audited(
        db, reactor, f"tariff.{args.action}",
        lambda tx: op(tx, cfg.billing, account, tariff, customer_id=args.customer, at=at),
        after=lambda out: {"account": account, "tariff": tariff, **out},
        customer_id=args.customer if args.customer is not None else (
            lambda tx, _: console_admin.customer_of_account(tx, account)))
    return {"account": account, "customer": args.customer, "tariff": tariff,
            "action": args.action, **out}


async def cmd_device(db: Database, args, cfg, reactor, app) -> dict:
    return await console_admin.audited(db, reactor, "device.unbind",
                                       lambda tx: tvmw_devices.unbind(tx, args.uid))


async def cmd_payment(db: Database, args) -> dict:
    async def show(tx):
        payment = await payments.get(tx, args.provider, args.txn_id)
        if payment is None:
            raise AdminError(f"no {args.provider} payment {args.txn_id}")
        out = payment.to_json()
        entry = await ledger.get_entry_by_id(tx, payment.ledger_id) if payment.ledger_id else None
        out["ledger_entry"] = entry.to_json() if entry else None
        return out

    return await db.run(show)


DB_COMMANDS = {
    "migrate": cmd_migrate,
    "payment": cmd_payment,
}
# Commands that need the configuration ([billing]), the reactor's clock and the app.
# Every change they make is an audit row of ``cli`` (L{console_admin.audited}).
EXTENSION_COMMANDS.update(account=cmd_account, channel=cmd_channel, tariff=cmd_tariff,
                          device=cmd_device)


# -- logs ----------------------------------------------------------------------------------------
def cmd_logs(cfg: configmod.Config, args, out=sys.stdout) -> int:
    path = args.file or cfg.log.file
    grep = logs.parse_grep(args.grep)

    def emit(record: dict) -> None:
        if logs.matches(record, grep):
            out.write((json.dumps(record, ensure_ascii=False) if args.json
                       else logs.render(record)) + "\n")
            out.flush()

    try:
        f = open(path, encoding="utf-8", errors="replace")
    except FileNotFoundError:
        if not args.follow:
            raise AdminError(f"{path}: no such log file")
        f = None
    if f is not None:
        for record in logs.read_records(f):
            emit(record)
    if not args.follow:
        return 0
    tail = _Tail(path, f, emit)
    task.react(lambda reactor: tail.run(reactor))
    return 0


class _Tail:
    """Follow a file across rotation (a new inode or a shrunk file is reopened)."""

    def __init__(self, path, f, emit):
        self.path, self.f, self.emit = path, f, emit
        self.partial = ""

    def run(self, reactor) -> Deferred:
        loop = task.LoopingCall(self.poll)
        loop.clock = reactor
        return loop.start(0.25)

    def poll(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return
        if self.f is None or os.fstat(self.f.fileno()).st_ino != st.st_ino \
                or st.st_size < self.f.tell():
            if self.f is not None:
                self._drain()
                self.f.close()
            self.f = open(self.path, encoding="utf-8", errors="replace")
            self.partial = ""
        self._drain()

    def _drain(self) -> None:
        chunk = self.f.read()
        if not chunk:
            return
        data = self.partial + chunk
        lines = data.split("\n")
        self.partial = lines.pop()
        for record in logs.read_records(lines):
            self.emit(record)


# -- running -------------------------------------------------------------------------------------
def _database_dsn(cfg: configmod.Config) -> tuple[str, EmbeddedCluster | None]:
    """The DSN to use, and the cluster to stop afterwards (unless a daemon runs) if we started it."""
    if cfg.database.dsn:
        return cfg.database.dsn, None
    cluster = EmbeddedCluster.in_state_dir(cfg.state.dir)
    was_running = cluster.running() is not None
    dsn = cluster.ensure_running()
    return dsn, (None if was_running else cluster)


def run(argv: list[str] | None = None, out=sys.stdout) -> int:
    args = _parser().parse_args(argv)
    cfg = configmod.load(args.config)
    if args.command == "logs":
        return cmd_logs(cfg, args, out)
    dsn, started = _database_dsn(cfg)
    result: dict[str, Any] = {}
    try:
        async def main(reactor):
            db = Database(dsn, reactor, size=1, timeout=cfg.database.timeout)
            try:
                if args.command not in ("migrate", *backup_admin.NO_MIGRATE):
                    await migrate(db)
                if args.command in DB_COMMANDS:
                    result["out"] = await DB_COMMANDS[args.command](db, args)
                else:
                    app = _Assembly(cfg, reactor, db)
                    try:
                        result["out"] = await EXTENSION_COMMANDS[args.command](
                            db, args, cfg, reactor, app)
                    finally:
                        await app.close()
            finally:
                db.close()

        failure: list = []

        def react_main(reactor):
            d = Deferred.fromCoroutine(main(reactor))
            d.addErrback(lambda f: failure.append(f))
            return d

        try:
            task.react(react_main)
        except SystemExit as e:
            if e.code not in (0, None):
                raise
        if failure:
            failure[0].raiseException()
    finally:
        if started is not None:
            started.stop_unless_daemon(cfg.state.dir)
    out.write(json.dumps(result["out"], default=str, ensure_ascii=False) + "\n")
    return 0


def main(argv: list[str] | None = None) -> None:
    try:
        code = run(argv)
    except transfer_admin.ImportRefused as e:
        # The report (every bad line) on stdout, the verdict on stderr.
        sys.stdout.write(json.dumps(e.out, default=str, ensure_ascii=False) + "\n")
        sys.stderr.write(f"smartyd-admin: {e}\n")
        sys.exit(1)
    except (AdminError, configmod.ConfigError, ledger.LedgerError, EmbeddedError,
            DatabaseUnavailable, ValueError) as e:
        sys.stderr.write(f"smartyd-admin: {e}\n")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:  # one line, never a traceback wall
        sys.stderr.write(f"smartyd-admin: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}\n")
        sys.exit(1)
    sys.exit(code)

