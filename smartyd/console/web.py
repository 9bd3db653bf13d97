"""
The console's pages (its own listener; see L{smartyd.console}).

  GET  /login, POST /login, POST /logout
  GET  /search?q=...                      one match: 303 to its card
  GET  /customers/<id>                    the customer card
  POST /customers/<id>/accounts/<a>/block|unblock    support
  POST /customers/<id>/accounts/<a>/password         support: a new password, shown once
  POST /customers/<id>/accounts/<a>/limits           support: own sessions/devices limits
  POST /customers/<id>/devices/<d>/unbind            support (its TV sessions end)
  POST /customers/<id>/tariffs/assign|remove         support (the customer's or an account's)
  POST /customers/<id>/promise                       support: a promised payment
  POST /customers/<id>/autopay                       support: Payture autopayment on/off
  GET  /customers/<id>?from=&to=&before=  the card; its statement of a period (paged back)
  GET  /customers/<id>/statement.csv?from=&to=   the statement of the period, as CSV
  POST /customers/<id>/money              admin: credit or debit with a reason
  GET  /journals/payments?from=&to=&provider=   payments per day and provider, with totals
  GET  /journals/payments/day?day=&provider=    one day's payments of a provider
  GET  /journals/reconcile, POST (multipart)   a provider's registry against our payments
  GET  /journals/receipts?state=          the Dreamkas receipt queue
  POST /journals/receipts/<job>/retry     support: a failed receipt handed back
  GET  /journals/health                   pollers, partner outbox, EPG sync, receipts
  GET  /catalog; GET, POST /catalog/tariffs/<id>, /catalog/channels/<id>;
  POST /catalog/tariffs, /catalog/channels   tariffs and channels (editing: admin)
  GET  /audit?actor=&action=&customer=&since=&until=   the audit journal
  GET  /operators, POST /operators, POST /operators/<login>/disable   admin
  GET  /static/console.css

Pages are ``twisted.web.template`` documents (every string escaped), with a
content security policy that allows no inline script and no framing.  The
session is server-side (L{smartyd.operators}); its cookie is ``HttpOnly``,
``SameSite=Strict`` and ``Secure`` with ``[console] secure_cookies``.  Every
form carries a CSRF token bound to the session (the login form: to a
pre-login cookie); a POST without a valid one is a 403 with a visible
message and changes nothing.  A role that may not do something gets a 403
with a message saying which role may.  Every change asks for a reason and is
an audit row (L{smartyd.console.actions}); a viewer changes nothing (its
registry upload's columns serve that comparison only).  One operator day: the
days of every filter and every time shown are in L{ConsoleWeb.tz} (the
journals' Moscow time), which each page states.
"""

from __future__ import annotations

import csv
import io
import json
import re
import secrets
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from urllib.parse import quote, urlencode

from attrs import define, field
from klein import Klein
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.web.server import Request
from twisted.web.template import Tag, tags

from smartyd import catalog, journals, ledger, operators, reconcile
from smartyd.console import actions, repo
from smartyd.console.static import CONSOLE_CSS
from smartyd.console.texts import language, texts
from smartyd.fiscal import jobs as fiscal_jobs
from smartyd.http import csrf, pages
from smartyd.http.auth import DUMMY_HASH
from smartyd.http.handlers import endpoint
from smartyd.util.text import spreadsheet_text
from smartyd.widgets.web import new_password as new_account_password

log = Logger()

SESSION_COOKIE = b"smartyd_console"
LOGIN_COOKIE = b"smartyd_console_login"  # the login form's CSRF binding, before a session
MAX_FIELD = 500
MAX_AMOUNT = Decimal("1000000.00")
STATEMENT_ROWS = 50  # the card's statement: a page of the latest rows of the period
PROVIDER_RE = re.compile(r"^[a-z0-9_-]{1,32}$")  # as payments name their providers
AMOUNT_RE = re.compile(r"^[0-9]{1,7}(\.[0-9]{1,2})?$")  # as the ledger keeps it: two places


def _safe_next(target: str) -> str:
    """A path of this console to go to after login; anything else (another site) is /search."""
    if (not target.startswith("/") or target.startswith("//") or "\\" in target
            or not target.isprintable() or len(target) > 300):
        return "/search"
    return target


@define(slots=False)  # Klein binds its router to the instance
class ConsoleWeb:
    cfg: Any  # smartyd.config.Config: [console], [billing]
    db: Any
    clock: Any
    key: bytes  # CSRF tokens' key
    metrics: Any = None
    health_sources: tuple = ()  # the features' health callables (L{Feature.health})
    statement_rows: int = STATEMENT_ROWS  # a page of the card's statement
    thread: Any = field(default=deferToThread)
    # The operator's zone: the days of every filter and every time shown (the
    # journals' and OSMP's Moscow time, L{journals.MOSCOW}), stated on each page.
    tz: Any = journals.MOSCOW

    app = Klein()

    def resource(self):
        return self.app.resource()

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.seconds(), timezone.utc)

    def _when(self, value: Any) -> str:
        """A moment (a datetime or an ISO-8601 string) in the operator's zone, or —."""
        if isinstance(value, str) and value:
            try:
                value = datetime.fromisoformat(value)
            except ValueError:
                return value
        if not isinstance(value, datetime) or value.year < 2:  # None, '-infinity'
            return "—"
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.astimezone(self.tz).strftime("%Y-%m-%d %H:%M:%S")

    def _day(self, text: str) -> datetime | None:
        """The start of a YYYY-MM-DD day in the operator's zone; ValueError for anything else."""
        if not text:
            return None
        return journals.day_bounds(date.fromisoformat(text), self.tz)[0]

    # -- plumbing ---------------------------------------------------------------------------------
    def _t(self, request: Request) -> dict[str, str]:
        return texts(language(request.getHeader(b"accept-language")))

    def _arg(self, request: Request, name: str) -> str:
        return pages.arg(request, name, MAX_FIELD * 2)

    def _cookie(self, request: Request, name: bytes, value: str, max_age: int | None) -> None:
        pages.set_cookie(request, name, value, same_site="Strict",
                         secure=self.cfg.console.secure_cookies, max_age=max_age)

    async def _session(self, request: Request):
        """(operator, session id) of the request's live session, or (None, None)."""
        sid = pages.cookie(request, SESSION_COOKIE)
        if not sid or len(sid) > 100:
            return None, None
        op = await self.db.run(operators.touch_session, sid, self.now())
        return (op, sid) if op is not None else (None, None)

    def _csrf_field(self, sid: str) -> Tag:
        return tags.input(type="hidden", name="csrf", value=csrf.token(self.key, sid))

    def _message(self, text: str, kind: str = "message") -> Tag:
        return tags.p(text, class_=kind, role="alert" if kind == "message" else "status")

    async def _page(self, request: Request, status: int, title: str, body: list,
                    op: operators.Operator | None = None, sid: str | None = None) -> bytes:
        t = self._t(request)
        header = [tags.strong(t["title"], class_="brand")]
        if op is not None:
            nav = [tags.a(t["search"], href="/search"),
                   tags.a(t["payments_journal"], href="/journals/payments"),
                   tags.a(t["reconcile"], href="/journals/reconcile"),
                   tags.a(t["receipts"], href="/journals/receipts"),
                   tags.a(t["health"], href="/journals/health"),
                   tags.a(t["catalog"], href="/catalog"),
                   tags.a(t["journal"], href="/audit")]
            if operators.may(op.role, "admin"):
                nav.append(tags.a(t["operators"], href="/operators"))
            header += [
                tags.nav(*nav),
                tags.form(tags.input(name="q", type="search", placeholder=t["search_hint"],
                                     **{"aria-label": t["search"]}),
                          tags.button(t["find"], type="submit"),
                          method="get", action="/search", class_="quick"),
                tags.span(t["signed_in"].format(login=op.login, role=op.role), id="whoami"),
                tags.form(self._csrf_field(sid), tags.button(t["logout"], type="submit"),
                          method="post", action="/logout", class_="logout"),
            ]
        document = tags.html(
            tags.head(tags.meta(charset="utf-8"),
                      tags.meta(name="viewport", content="width=device-width, initial-scale=1"),
                      tags.title(f"{title} — {t['title']}"),
                      tags.link(rel="stylesheet", href="/static/console.css")),
            tags.body(tags.header(*header), Tag("main")(
                tags.h1(title),
                *([tags.p(t["times_in"].format(zone=journals.zone_name(self.tz)),
                          class_="hint", id="zone")] if op is not None else []),
                *body)),
            lang=language(request.getHeader(b"accept-language")))
        return await pages.html_page(request, status, document, pages.csp())

    async def _refused(self, request, op, sid, needed: str) -> bytes:
        t = self._t(request)
        log.info("console: {operator} ({role}) refused an action needing {needed}",
                 operator=op.login, role=op.role, needed=needed)
        return await self._page(request, 403, t["title"], [self._message(
            t["refused"].format(role=op.role, needed=needed))], op, sid)

    async def _guard(self, request: Request, needed: str = "viewer", form: bool = False):
        """
        The operator of a request that may go on, or the answer to send
        instead: to the login page without a session, a 403 without a valid
        CSRF token (a form) or with too small a role.
        """
        op, sid = await self._session(request)
        if op is None:
            target = request.uri.decode("utf-8", "replace") if request.method == b"GET" \
                else "/search"
            return None, None, pages.redirect(request, "/login?" + urlencode({"next": target}))
        if form and not csrf.valid(self.key, sid, self._arg(request, "csrf")):
            log.info("console: a form of {operator} refused without a valid CSRF token",
                     operator=op.login)
            t = self._t(request)
            return None, None, await self._page(request, 403, t["title"],
                                                [self._message(t["bad_csrf"])], op, sid)
        if not operators.may(op.role, needed):
            return None, None, await self._refused(request, op, sid, needed)
        return op, sid, None

    # -- static, login, logout ------------------------------------------------------------------
    @app.route("/static/console.css", methods=["GET"])
    def css(self, request: Request):
        request.setHeader(b"content-type", b"text/css; charset=utf-8")
        request.setHeader(b"cache-control", b"public, max-age=3600")
        request.setHeader(b"x-content-type-options", b"nosniff")
        return CONSOLE_CSS

    @app.route("/", methods=["GET"])
    def home(self, request: Request):
        return pages.redirect(request, "/search")

    @app.route("/login", methods=["GET"])
    @endpoint("console_login")
    async def login_page(self, request: Request):
        return await self._login_form(request, 200, [])

    async def _login_form(self, request: Request, status: int, before: list) -> bytes:
        t = self._t(request)
        nonce = pages.cookie(request, LOGIN_COOKIE)
        if not nonce or len(nonce) > 64:
            nonce = secrets.token_urlsafe(24)
            self._cookie(request, LOGIN_COOKIE, nonce, 3600)
        form = tags.form(
            self._csrf_field(nonce),
            tags.input(type="hidden", name="next", value=_safe_next(self._arg(request, "next"))),
            tags.label(t["login"], tags.input(name="login", required="required",
                                              autocomplete="username", maxlength="64")),
            tags.label(t["password"], tags.input(name="password", type="password",
                                                 required="required",
                                                 autocomplete="current-password")),
            tags.button(t["submit_login"], type="submit"),
            method="post", action="/login", id="login")
        return await self._page(request, status, t["submit_login"], before + [form])

    @app.route("/login", methods=["POST"])
    @endpoint("console_login")
    async def login(self, request: Request):
        t = self._t(request)
        nonce = pages.cookie(request, LOGIN_COOKIE)
        if not csrf.valid(self.key, nonce, self._arg(request, "csrf")):
            return await self._login_form(request, 403, [self._message(t["bad_csrf"])])
        login, password = self._arg(request, "login")[:64], self._arg(request, "password")
        now = self.now()
        op = await self.db.run(operators.get, login)
        usable = op is not None and not op.disabled and not (
            op.locked_until is not None and op.locked_until > now)
        # The same scrypt work whatever the case: no timing tells a login exists.
        ok = await self.thread(ledger.verify_password, password,
                               op.password_hash if usable else DUMMY_HASH)
        if not (usable and ok):
            if op is not None and usable:
                await self.db.run(operators.login_failed, op.id, now)
            log.info("console: login refused for {login}", login=login)
            return await self._login_form(request, 401, [self._message(t["bad_login"])])

        previous = pages.cookie(request, SESSION_COOKIE)

        async def open_(tx):
            if previous and len(previous) <= 100:
                await operators.close_session(tx, previous)  # a new id at every login
            await operators.login_succeeded(tx, op.id)
            return await operators.open_session(tx, op.id, now)

        sid = await self.db.run(open_)
        log.info("console: {operator} logged in", operator=op.login)
        self._cookie(request, SESSION_COOKIE, sid, None)
        self._cookie(request, LOGIN_COOKIE, "", 0)
        return pages.redirect(request, _safe_next(self._arg(request, "next")))

    @app.route("/logout", methods=["POST"])
    @endpoint("console_logout")
    async def logout(self, request: Request):
        op, sid, answer = await self._guard(request, form=True)
        if op is None:
            return answer
        await self.db.run(operators.close_session, sid)
        self._cookie(request, SESSION_COOKIE, "", 0)
        return pages.redirect(request, "/login")

    # -- search ---------------------------------------------------------------------------------
    @app.route("/search", methods=["GET"])
    @endpoint("console_search")
    async def search(self, request: Request):
        op, sid, answer = await self._guard(request)
        if op is None:
            return answer
        t = self._t(request)
        q = self._arg(request, "q")[:repo.MAX_QUERY]
        body: list = [tags.form(
            tags.label(t["search_hint"], tags.input(name="q", value=q, type="search",
                                                    autofocus="autofocus")),
            tags.button(t["find"], type="submit"), method="get", action="/search",
            id="search")]
        if q:
            found = await self.db.run(repo.search, q)
            if len(found) == 1:
                return pages.redirect(request, f"/customers/{found[0]['customer_id']}")
            if not found:
                body.append(self._message(t["nothing_found"].format(q=q)))
            else:
                body.append(self._table(
                    [t["customer"], t["name"], t["balance"], t["how"]],
                    [[tags.a(str(r["customer_id"]), href=f"/customers/{r['customer_id']}"),
                      r["name"], _money(r["balance"]), r["how"]] for r in found],
                    t, id="results"))
        return await self._page(request, 200, t["search"], body, op, sid)

    # -- the customer card ----------------------------------------------------------------------
    @app.route("/customers/<int:customer_id>", methods=["GET"])
    @endpoint("console_card")
    async def card(self, request: Request, customer_id: int):
        op, sid, answer = await self._guard(request)
        if op is None:
            return answer
        return await self._card(request, op, sid, customer_id, 200, [])

    def _period(self, request: Request, limit: int) -> tuple[dict, dict] | None:
        """
        The statement's period from the query (``from``, ``to``: the operator's days,
        both included; ``before``: a ledger row, the next page back) as
        L{ledger.statement}'s arguments, and the query that repeats it; None
        when it is not understood.
        """
        shown = {k: self._arg(request, k)[:10] for k in ("from", "to")}
        try:
            start = self._day(shown["from"])
            end = self._day(shown["to"])
        except ValueError:
            return None
        end = end + timedelta(days=1) if end else None
        if start and end and start >= end:
            return None
        return ({"start": start, "end": end, "limit": limit,
                 "before": self._id(request, "before")},
                {k: v for k, v in shown.items() if v})

    async def _card(self, request, op, sid, customer_id: int, status: int, notes: list) -> bytes:
        t = self._t(request)
        found = self._period(request, self.statement_rows)
        if found is None:
            found = self._period_whole()
            notes, status = notes + [self._message(t["bad_period"])], 400
        period, query = found
        data = await self.db.run(repo.card, customer_id, self.clock.seconds(), period)
        if data is None:
            return await self._page(request, 404, t["customer"], [self._message(
                t["no_customer"])], op, sid)
        audit = await self.db.run(operators.audit_rows, customer_id=customer_id, limit=100)
        c = data["customer"]
        base = f"/customers/{c.id}"
        promise = data["promise"]
        facts = tags.dl(
            tags.dt(t["customer"]), tags.dd(str(c.id)),
            tags.dt(t["ppc"]), tags.dd(c.ppc, id="ppc"),
            tags.dt(t["name"]), tags.dd(c.name, id="name"),
            tags.dt(t["phone"]), tags.dd(c.phone or "—"),
            tags.dt(t["email"]), tags.dd(c.email or "—"),
            tags.dt(t["balance"]), tags.dd(_money(c.balance), id="balance"),
            tags.dt(t["credit_limit"]), tags.dd(_money(self.cfg.billing.credit_limit)),
            tags.dt(t["promise"]), tags.dd(
                t["promise_due"].format(amount=_money(promise["amount"]), due=self._when(
                    promise["due"])) if promise else t["none"]),
            id="facts")
        account_rows = []
        for a in data["accounts"]:
            action = "unblock" if not a.active else "block"
            account_rows.append([
                str(a.id), a.login, t["active"] if a.active else t["blocked"], a.status_reason,
                tags.form(self._csrf_field(sid),
                          tags.input(name="reason", required="required", maxlength="500",
                                     placeholder=t["reason"],
                                     **{"aria-label": f"{t['reason']} {a.login}"}),
                          tags.button(t[action], type="submit"),
                          tags.small(t["needs"].format(role="support")),
                          method="post", action=f"{base}/accounts/{a.id}/{action}",
                          class_="inline"),
                self._small_form(sid, f"{base}/accounts/{a.id}/password", t["new_password"],
                                 t, a.login),
                self._limits_form(sid, t, f"{base}/accounts/{a.id}/limits", a.login,
                                  data["limits"][a.id])])
        money_form = tags.form(
            self._csrf_field(sid),
            tags.input(type="hidden", name="key", value=secrets.token_urlsafe(18)),
            tags.label(t["direction"], tags.select(
                tags.option(t["credit"], value="credit"), tags.option(t["debit"], value="debit"),
                name="direction")),
            tags.label(t["amount"], tags.input(name="amount", inputmode="decimal",
                                               required="required", maxlength="20")),
            tags.label(t["reason"], tags.input(name="reason", required="required",
                                               maxlength="500")),
            tags.button(t["do_money"], type="submit"),
            tags.small(t["needs"].format(role="admin")),
            method="post", action=f"{base}/money", id="money")
        body = notes + [
            tags.section(facts, class_="facts"),
            tags.section(tags.h2(t["accounts"]), self._table(
                ["#", t["login"], t["status"], t["reason"], "", "", t["limits"]], account_rows,
                t, id="accounts")),
            tags.section(tags.h2(t["devices"]), self._table(
                [t["uid"], t["account"], t["model"], t["created"], ""],
                [[d["uid"], str(d["account_id"]), d["model"] or "", self._when(d["created"]),
                  self._small_form(sid, f"{base}/devices/{d['id']}/unbind", t["unbind"], t,
                                   d["uid"])]
                 for d in data["devices"]], t, id="devices"),
                tags.h3(t["tv_sessions"]), self._table(
                    [t["uid"], t["account"], t["device_type"], t["ip"], t["created"],
                     t["last_seen"]],
                    [[x["device_uid"], str(x["account_id"]), x["device"], x["ip"],
                      self._when(x["created"]), self._when(x["last_seen"])]
                     for x in data["tv_sessions"]], t, id="tv-sessions")),
            tags.section(tags.h2(t["subscriptions"]), self._table(
                [t["tariff"], t["account"], t["paid_until"], t["state"], ""],
                [[s["tariff"], str(s["account_id"] or "—"), self._when(s["paid_until"]),
                  s["state"],
                  self._small_form(sid, f"{base}/tariffs/remove", t["remove"], t, s["tariff"],
                                   tariff=str(s["tariff_id"]),
                                   account=str(s["account_id"] or ""))]
                 for s in data["subscriptions"]], t, id="subscriptions"),
                tags.form(
                    self._csrf_field(sid),
                    tags.label(t["account"], tags.select(
                        tags.option(t["whole_customer"], value=""),
                        *[tags.option(a.login, value=str(a.id)) for a in data["accounts"]],
                        name="account")),
                    tags.label(t["tariff"], tags.select(
                        *[tags.option(f"{x['name']} ({_money(x['price'])})", value=str(x["id"]))
                          for x in data["tariffs"]], name="tariff")),
                    tags.label(t["reason"], tags.input(name="reason", required="required",
                                                       maxlength="500")),
                    tags.button(t["assign"], type="submit"),
                    tags.small(t["needs"].format(role="support")),
                    method="post", action=f"{base}/tariffs/assign", id="assign",
                    class_="inline")),
            tags.section(tags.h2(t["grant_promise"]), tags.form(
                self._csrf_field(sid),
                tags.label(t["amount"], tags.input(name="amount", inputmode="decimal",
                                                   required="required", maxlength="20")),
                tags.label(t["days"], tags.input(name="days", inputmode="numeric",
                                                 required="required", maxlength="3")),
                tags.label(t["reason"], tags.input(name="reason", required="required",
                                                   maxlength="500")),
                tags.button(t["grant_promise"], type="submit"),
                tags.small(t["needs"].format(role="support")),
                method="post", action=f"{base}/promise", id="promise", class_="inline")),
            tags.section(tags.h2(t["sessions_now"]), self._table(
                [t["account"], t["session"], t["started"], t["expires"]],
                [[str(x["account_id"]), x["session"], self._when(x["since"]),
                  self._when(x["expires"])]
                 for x in data["sessions"]], t, id="sessions")),
            tags.section(tags.h2(t["cards"]), self._table(
                [t["card"], t["expiry"], t["status"]],
                [[c["masked"], c["expiry"] or "", c["status"] or ""] for c in data["cards"]],
                t, id="cards"),
                tags.p(t["autopay"], ": ", tags.strong(
                    t["autopay_on"] if data["autopay"] else t["autopay_off"], id="autopay")),
                self._small_form(sid, f"{base}/autopay",
                                 t["turn_off"] if data["autopay"] else t["turn_on"], t,
                                 t["autopay"], state="off" if data["autopay"] else "on")),
            tags.section(tags.h2(t["outbox"]), self._table(
                [t["created"], t["provider"], t["operation"], t["state"], t["attempts"],
                 t["last_error"]],
                [[self._when(x["created"]), x["provider"], x["op"], x["state"], str(x["attempts"]),
                  x["last_error"] or ""] for x in data["outbox"]], t, id="outbox")),
            tags.section(tags.h2(t["money"]), money_form),
            self._statement(t, base, data["statement"], query),
            tags.section(tags.h2(t["payments"]), self._table(
                [t["time"], t["provider"], t["external_id"], t["amount"], t["receipt"]],
                [[self._when(p["created"]), p["provider"], p["external_id"], _money(p["amount"]),
                  p["receipt"] or t["no_receipt"]] for p in data["payments"]], t,
                id="payments")),
            tags.section(tags.h2(t["audit"]), self._audit_table(audit, t, "audit")),
        ]
        return await self._page(request, status, f"{t['customer']} {c.id}", body, op, sid)

    def _period_whole(self) -> tuple[dict, dict]:
        return {"start": None, "end": None, "limit": self.statement_rows, "before": None}, {}

    def _statement(self, t: dict, base: str, st: ledger.Statement, query: dict) -> Tag:
        """The card's statement: the period's form, opening + rows = closing, paging, CSV."""
        period = tags.form(
            tags.label(t["period_from"], tags.input(name="from", type="date",
                                                    value=query.get("from", ""))),
            tags.label(t["period_to"], tags.input(name="to", type="date",
                                                  value=query.get("to", ""))),
            tags.button(t["show"], type="submit"),
            tags.a(t["statement_csv"], href=f"{base}/statement.csv"
                   + (("?" + urlencode(query)) if query else ""), id="statement-csv"),
            method="get", action=base, class_="filters", id="period")
        rows = self._table(
            [t["time"], t["amount"], t["kind"], t["cause"], t["balance_after"]],
            [[self._when(e.at or e.created), _money(e.amount), e.kind, e.cause,
              _money(e.balance_after)] for e in st.rows], t, id="statement")
        parts = [tags.h2(t["statement"]), period,
                 tags.p(t["opening_balance"], ": ",
                        tags.strong(_money(st.opening_balance), id="opening"))]
        if st.more:
            parts.append(tags.p(tags.a(t["earlier_rows"], id="earlier", href=f"{base}?"
                                       + urlencode({**query, "before": st.rows[0].id}))))
        parts += [rows, tags.p(t["closing_balance"], ": ",
                               tags.strong(_money(st.closing_balance), id="closing"))]
        return tags.section(*parts, id="statement-section")

    @app.route("/customers/<int:customer_id>/accounts/<int:account_id>/<any(block,unblock):what>",
               methods=["POST"])
    @endpoint("console_account")
    async def account_state(self, request: Request, customer_id: int, account_id: int,
                            what: str):
        async def change(op, t):
            await self.db.run(actions.set_account_state, op, customer_id, account_id,
                              what == "unblock", self._arg(request, "reason"), self.now())
            log.info("console: {operator} set account {account} {what}", operator=op.login,
                     account=account_id, what=what)
            return self._message(t[f"done_{what}"].format(account=account_id), "notice")

        return await self._act(request, customer_id, "support", change)

    @app.route("/customers/<int:customer_id>/money", methods=["POST"])
    @endpoint("console_money")
    async def money(self, request: Request, customer_id: int):
        op, sid, answer = await self._guard(request, "admin", form=True)
        if op is None:
            return answer
        t = self._t(request)
        direction = self._arg(request, "direction")
        try:
            if direction not in ("credit", "debit"):
                raise actions.ActionError("bad_amount")
            amount = self._amount(request)
            signed = amount if direction == "credit" else -amount
            entry, created = await self.db.run(
                actions.adjust, self.cfg.billing, op, customer_id, signed,
                self._arg(request, "reason"), self._arg(request, "key"), self.now())
        except actions.ActionError as e:
            return await self._card(request, op, sid, customer_id,
                                    404 if str(e) == "no_customer" else 400,
                                    [self._message(t[str(e)])])
        if not created:
            return await self._card(request, op, sid, customer_id, 200,
                                    [self._message(t["repeated"])])
        log.info("console: {operator} posted {amount} to customer {customer}",
                 operator=op.login, amount=str(signed), customer=customer_id)
        customer = await self.db.run(ledger.get_customer, customer_id)
        return await self._card(request, op, sid, customer_id, 200, [self._message(
            t["done_money"].format(amount=_money(signed), balance=_money(customer.balance)),
            "notice")])

    def _limits_form(self, sid: str, t: dict, action: str, login: str, limits: dict) -> Tag:
        """An account's own limits of sessions and devices (empty: its tariffs decide)."""
        def limit(name: str, label: str) -> Tag:
            value = limits[name]
            return tags.label(t[label], tags.input(
                name=name.removeprefix("max_"), value="" if value is None else str(value),
                inputmode="numeric", maxlength="6", size="10", placeholder=t["tariffs_decide"],
                **{"aria-label": f"{t[label]} {login}"}))

        return tags.form(
            self._csrf_field(sid), limit("max_sessions", "max_sessions"),
            limit("max_devices", "max_devices"),
            tags.input(name="reason", required="required", maxlength="500",
                       placeholder=t["reason"], **{"aria-label": f"{t['reason']} {login}"}),
            tags.button(t["set_limits"], type="submit"),
            tags.small(t["limits_hint"], "; ", t["needs"].format(role="support")),
            method="post", action=action, class_="inline limits")

    def _small_form(self, sid: str, action: str, label: str, t: dict, what: str,
                    **hidden: str) -> Tag:
        """A one-button form of a row: a reason and the button (support)."""
        return tags.form(
            self._csrf_field(sid),
            *[tags.input(type="hidden", name=k, value=v) for k, v in hidden.items()],
            tags.input(name="reason", required="required", maxlength="500",
                       placeholder=t["reason"], **{"aria-label": f"{t['reason']} {what}"}),
            tags.button(label, type="submit"),
            method="post", action=action, class_="inline")

    async def _act(self, request: Request, customer_id: int, needed: str, change) -> bytes:
        """
        Run ``change(op, t)`` (a coroutine returning the notice to show) for
        an operator with the ``needed`` role and a valid CSRF token; its
        refusal is shown on the card with a 400 and has changed nothing.
        """
        op, sid, answer = await self._guard(request, needed, form=True)
        if op is None:
            return answer
        t = self._t(request)
        try:
            notice = await change(op, t)
        except actions.ActionError as e:
            return await self._card(request, op, sid, customer_id,
                                    404 if str(e) == "no_customer" else 400,
                                    [self._message(t[str(e)])])
        except ledger.LedgerError as e:  # the billing's refusal, in its words
            return await self._card(request, op, sid, customer_id, 400,
                                    [self._message(t["not_done"].format(why=str(e)))])
        return await self._card(request, op, sid, customer_id, 200, [notice])

    def _amount(self, request: Request) -> Decimal:
        text = self._arg(request, "amount").replace(",", ".").replace(" ", "")
        amount = Decimal(text) if AMOUNT_RE.match(text) else Decimal(0)
        if not 0 < amount <= MAX_AMOUNT:
            raise actions.ActionError("bad_amount")
        return amount

    def _id(self, request: Request, name: str) -> int | None:
        value = self._arg(request, name)
        return int(value) if value.isdigit() and len(value) < 19 else None

    @app.route("/customers/<int:customer_id>/autopay", methods=["POST"])
    @endpoint("console_autopay")
    async def autopay(self, request: Request, customer_id: int):
        async def change(op, t):
            on = self._arg(request, "state") == "on"
            await self.db.run(actions.autopay, op, customer_id, on,
                              self._arg(request, "reason"), self.now())
            return self._message(t["done_autopay"].format(
                state=t["autopay_on"] if on else t["autopay_off"]), "notice")

        return await self._act(request, customer_id, "support", change)

    @app.route("/customers/<int:customer_id>/statement.csv", methods=["GET"])
    @endpoint("console_statement")
    async def statement_csv(self, request: Request, customer_id: int):
        op, sid, answer = await self._guard(request)
        if op is None:
            return answer
        if await self.db.run(ledger.get_customer, customer_id) is None:
            t = self._t(request)
            return await self._page(request, 404, t["customer"], [self._message(
                t["no_customer"])], op, sid)
        # The period the card shows, whole (up to STATEMENT_MAX_ROWS rows; the
        # opening balance counts any older ones of the period).
        found = self._period(request, ledger.STATEMENT_MAX_ROWS)
        if found is None:
            t = self._t(request)
            return await self._page(request, 400, t["customer"], [self._message(
                t["bad_period"])], op, sid)
        st = await self.db.run(ledger.statement, customer_id, **found[0])
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["time", "amount", "kind", "cause", "balance_after", "ledger_id"])
        writer.writerow(["", "", "opening_balance", "", st.opening_balance, ""])
        for e in st.rows:
            writer.writerow([(e.at or e.created).astimezone(self.tz).isoformat(), e.amount, e.kind,
                             spreadsheet_text(e.cause), e.balance_after, e.id])
        writer.writerow(["", "", "closing_balance", "", st.closing_balance, ""])
        return _csv(request, f"statement-{customer_id}.csv", out.getvalue().encode("utf-8"))

    @app.route("/customers/<int:customer_id>/promise", methods=["POST"])
    @endpoint("console_promise")
    async def promise(self, request: Request, customer_id: int):
        async def change(op, t):
            amount = self._amount(request)
            days = self._id(request, "days") or 0
            out = await self.db.run(actions.promise, self.cfg.billing, op, customer_id, amount,
                                    days, self._arg(request, "reason"), self.now())
            return self._message(t["done_promise"].format(
                amount=out["amount"], due=self._when(datetime.fromisoformat(out["due"]))), "notice")

        return await self._act(request, customer_id, "support", change)

    @app.route("/customers/<int:customer_id>/tariffs/<any(assign,remove):what>",
               methods=["POST"])
    @endpoint("console_tariff")
    async def tariff(self, request: Request, customer_id: int, what: str):
        async def change(op, t):
            tariff_id = self._id(request, "tariff")
            if tariff_id is None:
                raise actions.ActionError("not_found")
            await self.db.run(actions.tariff, self.cfg.billing, op, customer_id,
                              self._id(request, "account"), tariff_id, what == "assign",
                              self._arg(request, "reason"), self.now())
            return self._message(t[f"done_{what}"].format(tariff=tariff_id), "notice")

        return await self._act(request, customer_id, "support", change)

    @app.route("/customers/<int:customer_id>/accounts/<int:account_id>/password",
               methods=["POST"])
    @endpoint("console_password")
    async def account_password(self, request: Request, customer_id: int, account_id: int):
        async def change(op, t):
            password = new_account_password()
            pw_hash = await self.thread(ledger.hash_password, password)
            login = await self.db.run(actions.account_password, op, customer_id, account_id,
                                      pw_hash, self._arg(request, "reason"), self.now())
            return tags.p(t["done_password"].format(login=login, password=password),
                          class_="notice", id="new-password")

        return await self._act(request, customer_id, "support", change)

    @app.route("/customers/<int:customer_id>/accounts/<int:account_id>/limits",
               methods=["POST"])
    @endpoint("console_account")
    async def account_limits(self, request: Request, customer_id: int, account_id: int):
        def limit(name: str) -> int:
            value = self._arg(request, name).strip()
            if value == "":
                return 0  # the account's own limit cleared: its tariffs decide
            if not value.isdigit() or len(value) > 6 or int(value) < 1:
                raise actions.ActionError("bad_limit")
            return int(value)

        async def change(op, t):
            sessions, devices = limit("sessions"), limit("devices")
            await self.db.run(actions.account_limits, op, customer_id, account_id, sessions,
                              devices, self._arg(request, "reason"), self.now())
            log.info("console: {operator} set the limits of account {account}",
                     operator=op.login, account=account_id)
            return self._message(t["done_limits"].format(
                account=account_id, sessions=sessions or t["tariffs_decide"],
                devices=devices or t["tariffs_decide"]), "notice")

        return await self._act(request, customer_id, "support", change)

    @app.route("/customers/<int:customer_id>/devices/<int:device_id>/unbind", methods=["POST"])
    @endpoint("console_device")
    async def unbind(self, request: Request, customer_id: int, device_id: int):
        async def change(op, t):
            device = await self.db.run(actions.unbind_device, op, customer_id, device_id,
                                       self._arg(request, "reason"), self.now())
            return self._message(t["done_unbind"].format(uid=device["uid"],
                                                           sessions=device["sessions_ended"]), "notice")

        return await self._act(request, customer_id, "support", change)

    # -- the audit journal ----------------------------------------------------------------------
    @app.route("/audit", methods=["GET"])
    @endpoint("console_audit")
    async def journal(self, request: Request):
        op, sid, answer = await self._guard(request)
        if op is None:
            return answer
        t = self._t(request)
        f = {k: self._arg(request, k)[:64] for k in ("actor", "action", "customer", "since",
                                                     "until")}
        notes, status = [], 200
        try:
            since = self._day(f["since"])
            until = self._day(f["until"])
        except ValueError:
            since = until = None
            notes, status = [self._message(t["bad_date"])], 400
        customer = int(f["customer"]) if f["customer"].isdigit() and len(f["customer"]) < 19 \
            else None
        rows = await self.db.run(
            operators.audit_rows, customer_id=customer, actor=f["actor"] or None,
            action=f["action"] or None, since=since,
            until=until + timedelta(days=1) if until else None, limit=500)
        form = tags.form(
            *[tags.label(t[label], tags.input(name=k, value=f[k], maxlength="64",
                                              **({"type": "date"} if k in ("since", "until")
                                                 else {})))
              for k, label in (("actor", "actor"), ("action", "action"),
                               ("customer", "customer"), ("since", "since"),
                               ("until", "until"))],
            tags.button(t["filter"], type="submit"), method="get", action="/audit",
            id="filter", class_="filters")
        body = notes + [form, self._audit_table(rows, t, "journal", customer_column=True)]
        return await self._page(request, status, t["journal"], body, op, sid)

    # -- journals (smartyd.journals and smartyd.reconcile: the CLI's functions) -----------------
    def _days_default(self, days_back: int) -> tuple[date, date]:
        """``days_back`` days ago and today, the operator's days (L{journals.MOSCOW})."""
        today = datetime.fromtimestamp(self.clock.seconds(), self.tz).date()
        return today - timedelta(days=days_back), today

    def _days(self, request: Request, days_back: int) -> tuple[date, date]:
        """The ``from``/``to`` days of a journal's filter; L{journals.JournalError}."""
        start, end = self._days_default(days_back)
        given = self._arg(request, "from")[:10], self._arg(request, "to")[:10]
        return (journals.parse_day(given[0]) if given[0] else start,
                journals.parse_day(given[1]) if given[1] else end)

    @app.route("/journals/payments", methods=["GET"])
    @endpoint("console_journal")
    async def payments_journal(self, request: Request):
        op, sid, answer = await self._guard(request)
        if op is None:
            return answer
        t = self._t(request)
        provider = self._arg(request, "provider")[:32] or None
        notes, status = [], 200
        try:
            start, end = self._days(request, 6)
            found = await self.db.run(journals.payments_by_day, start, end, provider,
                                      self.tz)
        except journals.JournalError as e:
            notes, status = [self._message(t["bad_range"].format(why=str(e)))], 400
            start, end = self._days_default(6)
            found = await self.db.run(journals.payments_by_day, start, end, provider,
                                      self.tz)
        form = tags.form(
            tags.label(t["since"], tags.input(name="from", type="date", value=found["from"])),
            tags.label(t["until"], tags.input(name="to", type="date", value=found["to"])),
            tags.label(t["provider"], tags.input(name="provider", value=provider or "",
                                                 maxlength="32")),
            tags.button(t["filter"], type="submit"), method="get", action="/journals/payments",
            class_="filters", id="filter")
        table = self._table(
            [t["day"], t["provider"], t["count"], t["total"]],
            [[r["day"], r["provider"], str(r["count"]),
              tags.a(r["total"], href="/journals/payments/day?" + urlencode(
                  {"day": r["day"], "provider": r["provider"]}))] for r in found["days"]],
            t, id="per-day")
        summary = self._table(
            [t["provider"], t["count"], t["total"]],
            [[p, str(v["count"]), v["total"]] for p, v in found["providers"].items()]
            + ([[t["all_providers"], str(found["count"]), found["total"]]]
               if found["providers"] else []), t, id="totals")
        body = notes + [form, tags.p(t["days_in"].format(zone=found["timezone"]),
                                     class_="hint"),
                        tags.section(table), tags.section(tags.h2(t["total"]), summary)]
        return await self._page(request, status, t["payments_journal"], body, op, sid)

    @app.route("/journals/payments/day", methods=["GET"])
    @endpoint("console_journal")
    async def day_payments(self, request: Request):
        op, sid, answer = await self._guard(request)
        if op is None:
            return answer
        t = self._t(request)
        provider = self._arg(request, "provider")[:32]
        try:
            day = journals.parse_day(self._arg(request, "day")[:10])
        except journals.JournalError:
            return await self._page(request, 400, t["day_payments"], [self._message(
                t["bad_date"])], op, sid)
        found = await self.db.run(journals.day_payments, day, provider, self.tz)
        table = self._table(
            [t["time"], t["external_id"], t["account"], t["amount"], t["customer"],
             t["receipt"]],
            [[self._when(p["time"]), p["external_id"], p["account"] or "—", p["amount"],
              self._customer_link(p["customer_id"]), p["receipt"] or t["no_receipt"]]
             for p in found["payments"]], t, id="day-payments")
        body = [tags.p(t["day_total"].format(provider=provider, day=found["day"],
                                             count=found["count"], total=found["total"],
                                             zone=found["timezone"]), id="day-total"), table]
        return await self._page(request, 200, t["day_payments"], body, op, sid)

    def _customer_link(self, customer_id: int | None):
        return tags.a(str(customer_id), href=f"/customers/{customer_id}") \
            if customer_id else "—"

    @app.route("/journals/reconcile", methods=["GET"])
    @endpoint("console_reconcile")
    async def reconcile_page(self, request: Request):
        op, sid, answer = await self._guard(request)
        if op is None:
            return answer
        provider = self._arg(request, "provider")[:32]
        day = self._days_default(1)[0]
        return await self._reconcile(request, op, sid, 200, [], provider, day)

    async def _reconcile(self, request, op, sid, status: int, notes: list, provider: str,
                         day: date, columns: str | None = None,
                         result: dict | None = None) -> bytes:
        t = self._t(request)
        known = await self.db.run(repo.providers)
        if columns is None:
            layout = await self.db.run(reconcile.get_layout, provider) \
                if PROVIDER_RE.match(provider) else None
            columns = ",".join(layout or reconcile.ROLES)
        form = tags.form(
            self._csrf_field(sid),
            tags.label(t["provider"], tags.input(name="provider", value=provider,
                                                 list="providers", required="required",
                                                 maxlength="32")),
            tags.datalist(*[tags.option(value=p) for p in known], id="providers"),
            tags.label(t["day"], tags.input(name="day", type="date", value=day.isoformat(),
                                            required="required")),
            tags.label(t["registry"], tags.input(name="registry", type="file",
                                                 accept=".csv,text/csv,text/plain",
                                                 required="required")),
            tags.label(t["columns"], tags.input(name="columns", value=columns,
                                                required="required", maxlength="200")),
            tags.small(t["columns_hint"] if operators.may(op.role, "support")
                       else t["columns_hint_viewer"], id="columns-hint"),
            tags.button(t["compare"], type="submit", name="format", value="html"),
            tags.button(t["download_csv"], type="submit", name="format", value="csv"),
            method="post", action="/journals/reconcile", enctype="multipart/form-data",
            id="reconcile")
        body = notes + [form]
        if result is not None:
            n = result["totals"]
            body.append(tags.p(t["summary"].format(
                provider=provider, day=result["day"], matched=n["matched"]["count"],
                only_registry=n["only_registry"]["count"], only_ours=n["only_ours"]["count"],
                mismatched=n["amount_mismatch"]["count"]), class_="notice", id="summary"))
            body.append(tags.p(t["reconcile_totals"].format(
                registry=n["registry"]["total"], ours=n["ours"]["total"],
                difference=n["difference"], zone=result["timezone"]), id="reconcile-totals"))
            link = self._customer_link
            body += [
                tags.section(tags.h2(t["mismatched"]), self._table(
                    [t["external_id"], t["registry_amount"], t["our_amount"], t["customer"]],
                    [[m["txn_id"], m["registry_amount"], m["our_amount"],
                      link(m["customer_id"])] for m in result["amount_mismatch"]], t,
                    id="mismatched")),
                tags.section(tags.h2(t["only_registry"]), self._table(
                    [t["external_id"], t["registry_amount"], t["day"], t["account"],
                     t["our_day"]],
                    [[r["txn_id"], r["amount"], r["date"] or "", r["account"] or "",
                      r["our_day"] or "—"] for r in result["only_registry"]], t,
                    id="only-registry")),
                tags.section(tags.h2(t["only_ours"]), self._table(
                    [t["external_id"], t["our_amount"], t["time"], t["customer"]],
                    [[p["external_id"], p["amount"], self._when(p["time"]),
                      link(p["customer_id"])]
                     for p in result["only_ours"]], t, id="only-ours")),
                tags.section(tags.h2(t["account_mismatch"]), self._table(
                    [t["external_id"], t["registry_account"], t["our_account"],
                     t["customer"]],
                    [[m["txn_id"], m["registry_account"], m["our_account"],
                      link(m["customer_id"])] for m in result["account_mismatch"]], t,
                    id="account-mismatch")),
                tags.section(tags.h2(t["other_days"]), self._table(
                    [t["external_id"], t["registry_amount"], t["day"]],
                    [[r["txn_id"], r["amount"], r["date"] or ""]
                     for r in result["other_days"]], t, id="other-days")),
                tags.section(tags.h2(t["matched"]), self._table(
                    [t["external_id"], t["amount"], t["customer"]],
                    [[m["txn_id"], m["our_amount"], link(m["customer_id"])]
                     for m in result["matched"]], t, id="matched")),
            ]
        return await self._page(request, status, t["reconcile"], body, op, sid)

    @app.route("/journals/reconcile", methods=["POST"])
    @endpoint("console_reconcile")
    async def reconcile(self, request: Request):
        op, sid, answer = await self._guard(request, form=True)
        if op is None:
            return answer
        t = self._t(request)
        provider = self._arg(request, "provider")[:32]
        columns = self._arg(request, "columns")[:200]
        day = self._days_default(1)[0]
        try:
            day = journals.parse_day(self._arg(request, "day")[:10])
        except journals.JournalError:
            return await self._reconcile(request, op, sid, 400, [self._message(
                t["bad_date"])], provider, day, columns)
        if not PROVIDER_RE.match(provider):
            return await self._reconcile(request, op, sid, 400, [self._message(
                t["bad_provider"])], provider, day, columns)
        data = (request.args.get(b"registry") or [b""])[0]
        # The layout chosen on upload is remembered for the provider (a change:
        # audited) when support or admin upload; a viewer changes nothing, its
        # columns serve this comparison only.
        remember = operators.may(op.role, "support")
        try:
            result = await reconcile.reconcile_registry(
                self.db, provider, day, data, columns, tz=self.tz,
                actor=operators.Actor(op.login, self.now(), op.id), remember=remember)
        except reconcile.RegistryError as e:
            return await self._reconcile(request, op, sid, 400, [self._message(
                t["bad_registry"].format(why=str(e)))], provider, day, columns)
        if self._arg(request, "format") == "csv":
            return _csv(request, f"reconcile-{provider}-{day.isoformat()}.csv",
                        reconcile.to_csv(result))
        notes = []
        if not remember and tuple(result["layout"]) != await self.db.run(reconcile.get_layout,
                                                                          provider):
            notes = [self._message(t["layout_once"], "notice")]
        return await self._reconcile(request, op, sid, 200, notes, provider, day, columns,
                                     result)

    @app.route("/journals/receipts", methods=["GET"])
    @endpoint("console_journal")
    async def receipts(self, request: Request):
        op, sid, answer = await self._guard(request)
        if op is None:
            return answer
        return await self._receipts(request, op, sid, 200, [])

    async def _receipts(self, request, op, sid, status: int, notes: list) -> bytes:
        t = self._t(request)
        state = self._arg(request, "state")
        state = state if state in fiscal_jobs.STATES else None
        queue = await self.db.run(journals.receipt_queue, state, 200, tz=self.tz)
        counts = queue["counts"]
        links = tags.p(*[tags.a(f"{s}: {counts[s]}", href=f"/journals/receipts?state={s}",
                                class_="count") for s in fiscal_jobs.STATES], id="counts")
        table = self._table(
            [t["created"], t["payment"], t["customer"], t["amount"], t["state"], t["since_state"],
             t["attempts"], t["last_error"], ""],
            [[self._when(j["created"]), f"{j['provider']} {j['payment_external_id']}",
              self._customer_link(j["customer_id"]), j["amount"], j["state"],
              self._when(j["since"]),
              str(j["attempts"]), j["last_error"] or "",
              tags.form(self._csrf_field(sid), tags.button(t["retry"], type="submit"),
                        tags.small(t["needs"].format(role="support")), method="post",
                        action=f"/journals/receipts/{j['id']}/retry", class_="inline")
              if j["retryable"] else ""]
             for j in queue["jobs"]], t, id="receipts")
        return await self._page(request, status, t["receipts"], notes + [links, table], op, sid)

    @app.route("/journals/receipts/<int:job_id>/retry", methods=["POST"])
    @endpoint("console_receipt")
    async def retry_receipt(self, request: Request, job_id: int):
        op, sid, answer = await self._guard(request, "support", form=True)
        if op is None:
            return answer
        t = self._t(request)
        try:
            await self.db.run(actions.retry_receipt, op, job_id, self.now())
        except journals.ReceiptNotRetryable as e:
            return await self._receipts(request, op, sid, 400, [self._message(
                t["not_done"].format(why=str(e)))])
        log.info("console: {operator} retried receipt job {job}", operator=op.login, job=job_id)
        return await self._receipts(request, op, sid, 200, [self._message(
            t["done_retry"].format(job=job_id), "notice")])

    @app.route("/journals/health", methods=["GET"])
    @endpoint("console_journal")
    async def health(self, request: Request):
        op, sid, answer = await self._guard(request)
        if op is None:
            return answer
        t = self._t(request)
        found = await self.db.run(journals.partner_health, self.clock.seconds(),
                                  tz=self.tz)
        outcome = {"ok": t["ok"], "error": t["failed"], "running": t["running"],
                   "never": t["never"]}
        pollers = self._table(
            [t["job"], t["last_started"], t["last_finished"], t["outcome"], t["last_error"],
             t["runs"], t["failures"]],
            [[r["job"], self._when(r["last_started"]), self._when(r["last_finished"]),
              outcome[r["outcome"]], r["last_error"] or "", str(r["runs"]), str(r["failures"])]
             for r in found["pollers"]], t, id="jobs")
        box = found["outbox"]
        depth = self._table(
            [t["provider"], t["state"], t["count"]],
            [[provider, state, str(n)] for provider, states in box["depth"].items()
             for state, n in sorted(states.items())], t, id="outbox-depth")
        stuck = self._table(
            [t["created"], t["provider"], t["operation"], t["state"], t["attempts"],
             t["last_error"]],
            [[self._when(c["created"]), c["provider"], c["op"], c["state"], str(c["attempts"]),
              c["last_error"] or ""] for c in box["stuck"]], t, id="outbox-stuck")
        epg = found["epg"]
        receipts = found["receipts"]
        body = [
            tags.section(tags.h2(t["pollers"]), pollers),
            tags.section(tags.h2(t["outbox"]), depth, tags.h3(t["stuck"]), stuck),
            tags.section(tags.h2(t["epg_sync"]), tags.p(t["epg_state"].format(
                last=self._when(epg["last_sync"]) if epg["last_sync"] else t["never"],
                outcome=outcome[epg["outcome"]], programmes=epg["programmes"],
                until=self._when(epg["guide_until"])), id="epg"),
                tags.p(epg["last_error"] or "", class_="error")),
            tags.section(tags.h2(t["receipts"]), tags.p(*[
                tags.a(f"{s}: {n}", href=f"/journals/receipts?state={s}", class_="count")
                for s, n in receipts.items()], id="receipt-counts")),
        ]
        extra: dict = {}
        for source in self.health_sources:
            try:
                extra.update(await source() or {})
            except Exception as e:  # informational, as on /health
                extra.setdefault("errors", []).append(str(e)[:200])
        if extra:
            body.append(tags.section(tags.h2(t["features"]), tags.pre(
                json.dumps(extra, ensure_ascii=False, indent=2, sort_keys=True, default=str),
                id="features")))
        return await self._page(request, 200, t["health"], body, op, sid)

    # -- the catalog ------------------------------------------------------------------------------
    @app.route("/catalog", methods=["GET"])
    @endpoint("console_catalog")
    async def catalog_page(self, request: Request):
        op, sid, answer = await self._guard(request)
        if op is None:
            return answer
        return await self._catalog(request, op, sid, 200, [])

    async def _catalog(self, request, op, sid, status: int, notes: list) -> bytes:
        t = self._t(request)
        tariffs = await self.db.run(catalog.list_tariffs)
        channels = await self.db.run(catalog.list_channels)
        names = {c["id"]: c["name"] for c in channels}
        body = notes + [
            tags.section(tags.h2(t["tariffs"]), self._table(
                [t["name"], t["price"], t["period_days"], t["activation_price"],
                 t["sessions"], t["devices_limit"], t["hidden"], t["channels"], ""],
                [[x["name"], _money(x["price"]),
                  f"{x['period_months']} mo" if x["period_months"] else str(x["period_days"]),
                  _money(x["activation_price"]), str(x["sessions"] or "—"),
                  str(x["devices"] or "—"),
                  t["yes"] if x["hidden"] else t["no"],
                  ", ".join(names.get(c, str(c)) for c in x["channels"]),
                  tags.a(t["edit"], href=f"/catalog/tariffs/{x['id']}")] for x in tariffs],
                t, id="tariffs"),
                tags.h2(t["new_tariff"]),
                self._tariff_form(sid, t, None, channels, "/catalog/tariffs", "new-tariff")),
            tags.section(tags.h2(t["channels"]), self._table(
                ["#", t["name"], t["url_mask"], t["streamer_id"], t["xmltv_id"], ""],
                [[str(c["id"]), c["name"], c["url_mask"], c["streamer_id"] or "",
                  c["xmltv_id"] or "", tags.a(t["edit"], href=f"/catalog/channels/{c['id']}")]
                 for c in channels], t, id="channels"),
                tags.h2(t["new_channel"]),
                self._channel_form(sid, t, None, "/catalog/channels", "new-channel")),
        ]
        return await self._page(request, status, t["catalog"], body, op, sid)

    def _tariff_form(self, sid, t, tariff: dict | None, channels: list, action: str,
                     form_id: str) -> Tag:
        v = tariff or {}

        def field_(name: str, label: str, value: Any, **kw) -> Tag:
            return tags.label(t[label], tags.input(name=name, value="" if value is None
                                                   else str(value), **kw))

        return tags.form(
            self._csrf_field(sid),
            field_("name", "name", v.get("name"), required="required", maxlength="128"),
            field_("price", "price", v.get("price"), required="required", inputmode="decimal"),
            field_("period_days", "period_days", v.get("period_days", 30), inputmode="numeric"),
            field_("period_months", "period_months", v.get("period_months"),
                   inputmode="numeric"),
            field_("activation_price", "activation_price", v.get("activation_price", "0.00"),
                   inputmode="decimal"),
            field_("sessions", "sessions", v.get("sessions"), inputmode="numeric"),
            field_("devices", "devices_limit", v.get("devices"), inputmode="numeric"),
            tags.label(tags.input(type="checkbox", name="hidden", value="1",
                                  **({"checked": "checked"} if v.get("hidden") else {})),
                       t["hidden"]),
            tags.fieldset(tags.legend(t["channels"]), *[
                tags.label(tags.input(type="checkbox", name="channel", value=str(c["id"]),
                                      **({"checked": "checked"} if c["id"] in v.get(
                                          "channels", ()) else {})), c["name"])
                for c in channels]),
            tags.button(t["save"], type="submit"),
            tags.small(t["needs"].format(role="admin")),
            method="post", action=action, id=form_id)

    def _channel_form(self, sid, t, channel: dict | None, action: str, form_id: str) -> Tag:
        v = channel or {}
        rows = [self._csrf_field(sid)]
        if channel is None:
            rows.append(tags.label(t["name"], tags.input(name="name", required="required",
                                                         maxlength="64")))
        rows += [
            tags.label(t["url_mask"], tags.input(name="url_mask", value=v.get("url_mask") or "",
                                                 required="required", maxlength="500")),
            tags.label(t["streamer_id"], tags.input(name="streamer_id",
                                                    value=v.get("streamer_id") or "",
                                                    maxlength="64")),
            tags.label(t["xmltv_id"], tags.input(name="xmltv_id", value=v.get("xmltv_id") or "",
                                                 maxlength="128")),
            tags.button(t["save"], type="submit"), tags.small(t["needs"].format(role="admin"))]
        return tags.form(*rows, method="post", action=action, id=form_id)

    def _tariff_fields(self, request: Request) -> tuple[dict, list[int]]:
        def number(name: str, optional: bool = False) -> int | None:
            value = self._arg(request, name)
            if optional and value == "":
                return None
            if not value.isdigit() or len(value) > 6:
                raise catalog.CatalogError(f"{name.replace('_', ' ')} must be a whole number")
            return int(value)

        def amount(name: str) -> str:
            value = self._arg(request, name).replace(",", ".") or "0"
            if not AMOUNT_RE.match(value):
                raise catalog.CatalogError(f"{name.replace('_', ' ')} is not an amount")
            return value

        channels = []
        for raw in request.args.get(b"channel", []):
            if not raw.isdigit() or len(raw) > 18:
                raise catalog.CatalogError("no such channel")
            channels.append(int(raw))
        return ({"name": self._arg(request, "name")[:129], "price": amount("price"),
                 "period_days": number("period_days"),
                 "period_months": number("period_months", True),
                 "activation_price": amount("activation_price"),
                 "sessions": number("sessions", True),
                 "devices": number("devices", True),
                 "hidden": self._arg(request, "hidden") == "1"}, channels)

    async def _catalog_create(self, request: Request, create) -> bytes:
        """An admin's new tariff or channel: ``create(op)``; refused: the catalog with a 400."""
        op, sid, answer = await self._guard(request, "admin", form=True)
        if op is None:
            return answer
        t = self._t(request)
        try:
            await create(op)
        except ledger.LedgerError as e:
            return await self._catalog(request, op, sid, 400, [self._message(
                t["bad_operator"].format(why=str(e)))])
        return await self._catalog(request, op, sid, 200, [self._message(t["saved"],
                                                                         "notice")])

    async def _catalog_item(self, request: Request, kind: str, item_id: int, edit,
                            form) -> bytes:
        """
        A tariff's or channel's page (``kind``), read by anyone; a POST is an
        admin's ``edit(op)``.  ``form(sid, t, item)``: its form.
        """
        post = request.method == b"POST"
        op, sid, answer = await self._guard(request, "admin" if post else "viewer", form=post)
        if op is None:
            return answer
        t = self._t(request)
        notes, status = [], 200
        if post:
            try:
                await edit(op)
                notes = [self._message(t["saved"], "notice")]
            except actions.ActionError:
                pass  # no such item: the 404 below
            except ledger.LedgerError as e:
                notes, status = [self._message(t["bad_operator"].format(why=str(e)))], 400
        listing = catalog.list_tariffs if kind == "tariff" else catalog.list_channels
        item = next((x for x in await self.db.run(listing) if x["id"] == item_id), None)
        if item is None:
            return await self._page(request, 404, t["catalog"], [self._message(
                t["not_found"])], op, sid)
        return await self._page(request, status, t[f"{kind}_title"].format(name=item["name"]),
                                notes + [await form(sid, t, item)], op, sid)

    @app.route("/catalog/tariffs", methods=["POST"])
    @endpoint("console_catalog")
    async def create_tariff(self, request: Request):
        async def create(op):
            fields, channels = self._tariff_fields(request)
            await self.db.run(actions.create_tariff, op, fields, channels, self.now())

        return await self._catalog_create(request, create)

    @app.route("/catalog/tariffs/<int:tariff_id>", methods=["GET", "POST"])
    @endpoint("console_catalog")
    async def tariff_page(self, request: Request, tariff_id: int):
        async def edit(op):
            fields, channels = self._tariff_fields(request)
            await self.db.run(actions.edit_tariff, op, tariff_id, fields, channels, self.now())

        async def form(sid, t, tariff):
            channels = await self.db.run(catalog.list_channels)
            return self._tariff_form(sid, t, tariff, channels, f"/catalog/tariffs/{tariff_id}",
                                     "tariff")

        return await self._catalog_item(request, "tariff", tariff_id, edit, form)

    def _channel_fields(self, request: Request) -> tuple[str, str, str]:
        return (self._arg(request, "url_mask"), self._arg(request, "streamer_id"),
                self._arg(request, "xmltv_id"))

    @app.route("/catalog/channels", methods=["POST"])
    @endpoint("console_catalog")
    async def create_channel(self, request: Request):
        async def create(op):
            await self.db.run(actions.create_channel, op, self._arg(request, "name"),
                              *self._channel_fields(request), self.now())

        return await self._catalog_create(request, create)

    @app.route("/catalog/channels/<int:channel_id>", methods=["GET", "POST"])
    @endpoint("console_catalog")
    async def channel_page(self, request: Request, channel_id: int):
        async def edit(op):
            await self.db.run(actions.edit_channel, op, channel_id,
                              *self._channel_fields(request), self.now())

        async def form(sid, t, channel):
            return self._channel_form(sid, t, channel, f"/catalog/channels/{channel_id}",
                                      "channel")

        return await self._catalog_item(request, "channel", channel_id, edit, form)

    # -- operators (admin) ------------------------------------------------------------------------
    @app.route("/operators", methods=["GET"])
    @endpoint("console_operators")
    async def operators_page(self, request: Request):
        op, sid, answer = await self._guard(request, "admin")
        if op is None:
            return answer
        return await self._operators(request, op, sid, 200, [])

    async def _operators(self, request, op, sid, status: int, notes: list) -> bytes:
        t = self._t(request)
        rows = []
        for o in await self.db.run(operators.listing):
            rows.append([o.login, o.role, t["disabled"] if o.disabled else t["enabled"],
                         "" if o.disabled else tags.form(
                             self._csrf_field(sid), tags.button(t["disable"], type="submit"),
                             method="post", action=f"/operators/{quote(o.login)}/disable",
                             class_="inline")])
        form = tags.form(
            self._csrf_field(sid),
            tags.label(t["login"], tags.input(name="login", required="required",
                                              maxlength="64")),
            tags.label(t["role"], tags.select(*[tags.option(r, value=r)
                                                for r in operators.ROLES], name="role")),
            tags.button(t["create"], type="submit"),
            method="post", action="/operators", id="new-operator")
        body = notes + [self._table([t["login"], t["role"], t["status"], ""], rows, t,
                                    id="operators"),
                        tags.section(tags.h2(t["create_operator"]), form)]
        return await self._page(request, status, t["operators"], body, op, sid)

    @app.route("/operators", methods=["POST"])
    @endpoint("console_operators")
    async def create_operator(self, request: Request):
        op, sid, answer = await self._guard(request, "admin", form=True)
        if op is None:
            return answer
        t = self._t(request)
        login, role = self._arg(request, "login"), self._arg(request, "role")
        password = operators.new_password()
        pw_hash = await self.thread(ledger.hash_password, password)
        try:
            new = await self.db.run(actions.create_operator, op, login, role, pw_hash,
                                    self.now())
        except operators.OperatorError as e:
            return await self._operators(request, op, sid, 400, [self._message(
                t["bad_operator"].format(why=str(e)))])
        log.info("console: {operator} created operator {login} ({role})", operator=op.login,
                 login=new.login, role=new.role)
        return await self._operators(request, op, sid, 200, [tags.p(
            t["operator_created"].format(login=new.login, password=password),
            class_="notice", id="created")])

    @app.route("/operators/<string:login>/disable", methods=["POST"])
    @endpoint("console_operators")
    async def disable_operator(self, request: Request, login: str):
        op, sid, answer = await self._guard(request, "admin", form=True)
        if op is None:
            return answer
        t = self._t(request)
        try:
            await self.db.run(actions.disable_operator, op, login, self.now())
        except operators.OperatorError:
            return await self._operators(request, op, sid, 404, [self._message(t["not_found"])])
        if login == op.login:  # disabled oneself: the session has ended
            return pages.redirect(request, "/login")
        return await self._operators(request, op, sid, 200, [self._message(
            t["operator_disabled"].format(login=login), "notice")])

    # -- tables ---------------------------------------------------------------------------------
    def _table(self, head: list, rows: list, t: dict, **attrs: str) -> Tag:
        if not rows:
            return tags.p(t["empty"], class_="empty", **attrs)
        return tags.table(tags.thead(tags.tr(*[tags.th(h) for h in head])),
                          tags.tbody(*[tags.tr(*[tags.td(c) for c in row]) for row in rows]),
                          **attrs)

    def _audit_table(self, rows: list[dict], t: dict, table_id: str,
                     customer_column: bool = False) -> Tag:
        head = [t["time"], t["actor"], t["action"]] + ([t["customer"]] if customer_column
                                                         else []) + [
            t["before"], t["after"], t["reason"]]
        out = []
        for r in rows:
            customer = [tags.a(str(r["customer_id"]), href=f"/customers/{r['customer_id']}")
                        if r["customer_id"] else "—"] if customer_column else []
            out.append([self._when(r["at"]), r["actor"], r["action"], *customer,
                        _json(r["before"]), _json(r["after"]), r["reason"]])
        return self._table(head, out, t, id=table_id)


def _money(value: Any) -> str:
    return f"{Decimal(value):.2f}"


def _json(value: Any) -> str:
    return "" if value is None else json.dumps(value, ensure_ascii=False, sort_keys=True)



def _csv(request: Request, filename: str, body: bytes) -> bytes:
    """``body`` as a CSV download named ``filename``."""
    request.setHeader(b"content-type", b"text/csv; charset=utf-8")
    request.setHeader(b"content-disposition", f'attachment; filename="{filename}"'.encode("ascii"))
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"x-content-type-options", b"nosniff")
    return body
