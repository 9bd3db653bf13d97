"""
The widgets' HTTP side (``/widgets``, ``/captcha``).

  - ``GET /widgets/api/get/<ID>?container_id=C[&...]``: the snippet's
    script (L{smartyd.widgets.static.loader}): an iframe of
    ``/widgets/page/<ID>`` in the element C, sized to its content, every
    other query parameter passed on (``time`` is the snippet's cache buster).
  - ``GET /widgets/page/<ID>``: the widget, server-rendered with
    ``twisted.web.template`` (everything escaped); ``POST`` the same URL for
    its form (sign-up, cabinet login, payment), ``POST .../tariff`` and
    ``.../logout`` in the cabinet, ``GET .../result`` after a payment.
  - ``GET /captcha``: a new question ``{"id", "question"}`` (JSON).
  - ``GET /widgets/static/widget.js|widget.css``.

Every page carries a content security policy (``frame-ancestors`` =
``[widgets] allowed_origins``, scripts and styles from us only); every
form a CSRF token bound to the session (L{smartyd.widgets.session}): a POST
without a valid one is answered 403 with a visible message and changes
nothing.  The session is the cookie's; a browser that does not send it back
(a frame on another site, third-party cookies blocked) gets a page that
carries it in each form, and a form's answer is then the page itself rather
than a redirect (whose GET would come without it).
"""

from __future__ import annotations

import hmac
import secrets
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlencode, urlsplit

from attrs import define, evolve, field
from klein import Klein
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.web.server import Request
from twisted.web.template import Tag, tags

from smartyd import catalog, ledger
from smartyd.billing import engine
from smartyd.gateways import orders
from smartyd.gateways.assist import payment_form, server_url
from smartyd.gateways.assist_service import NEW_DAYS as ORDER_DAYS
from smartyd.http import pages
from smartyd.http.addresses import client_ip
from smartyd.http.auth import password_login
from smartyd.http.handlers import endpoint, json_body
from smartyd.partners import PartnerError
from smartyd.widgets import repo
from smartyd.widgets.session import PAGE_FIELD, Session, Sessions
from smartyd.widgets.static import PAGE_CSS, PAGE_JS, loader
from smartyd.widgets.texts import texts

log = Logger()

CAPTCHA_LIFETIME = 1800
MAX_FIELD = 200
MAX_AMOUNT = Decimal("1000000.00")
SEED_ONLY_METHODS = ("w1", "arca", "paypal")  # the seed's; not offered here
STATEMENT_ROWS = 20  # the cabinet's statement: the latest rows
PASSWORD_ALPHABET = "abcdefghjkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"


class Refusal(Exception):
    """A form refused: ``status`` and the text key (with its arguments) shown to the person."""

    def __init__(self, status: int, key: str, **args: Any):
        super().__init__(key)
        self.status, self.key, self.args_ = status, key, args


def new_password() -> str:
    return "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(10))


def new_login() -> str:
    return str(secrets.randbelow(9 * 10**9) + 10**9)  # ten digits, an abonement number


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else ""


@define(slots=False)  # Klein binds its router to the instance
class WidgetsWeb:
    """The widgets' pages; ``assist`` / ``payture``: the gateway services (None: not offered)."""

    cfg: Any  # smartyd.config.Config: [widgets], [billing], [assist]
    db: Any
    clock: Any
    sessions: Sessions
    metrics: Any = None
    assist: Any = None
    payture: Any = None
    trusted_proxies: tuple = ()
    thread: Any = field(default=deferToThread)

    app = Klein()

    def resource(self):
        return self.app.resource()

    @property
    def t(self) -> dict[str, str]:
        return texts(self.cfg.widgets.language)

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.seconds(), timezone.utc)

    # -- the snippet's script and the static files ---------------------------------------------
    @app.route("/widgets/api/get/<int:widget_id>", methods=["GET"])
    @endpoint("widgets_script")
    async def script(self, request: Request, widget_id: int):
        widget = await self.db.run(repo.get_widget, widget_id)
        request.setHeader(b"content-type", b"application/javascript; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-content-type-options", b"nosniff")
        if widget is None:
            request.setResponseCode(404)
            return b"/* smartyd: no such widget */\n"
        params = {}
        for name, values in request.args.items():
            try:
                key, value = name.decode("utf-8"), values[0].decode("utf-8")
            except UnicodeDecodeError:
                continue
            if key not in ("container_id", "time") and len(key) <= 64 and len(value) <= 256:
                params[key] = value
        container = (request.args.get(b"container_id") or [b"widget-content"])[0]
        return loader(widget.id, container.decode("utf-8", "replace")[:128], params,
                      widget.title or self.t[widget.kind])

    @app.route("/widgets/static/widget.js", methods=["GET"])
    def page_js(self, request: Request):
        return self._static(request, b"application/javascript; charset=utf-8", PAGE_JS)

    @app.route("/widgets/static/widget.css", methods=["GET"])
    def page_css(self, request: Request):
        return self._static(request, b"text/css; charset=utf-8", PAGE_CSS)

    def _static(self, request: Request, kind: bytes, body: bytes) -> bytes:
        request.setHeader(b"content-type", kind)
        request.setHeader(b"cache-control", b"public, max-age=3600")
        request.setHeader(b"x-content-type-options", b"nosniff")
        return body

    @app.route("/captcha", methods=["GET"])
    @endpoint("widgets_captcha")
    async def captcha(self, request: Request):
        captcha_id, question = await self._new_captcha()
        return json_body(request, 200, {"id": captcha_id, "question": question})

    async def _new_captcha(self) -> tuple[str, str]:
        a, b = secrets.randbelow(9) + 1, secrets.randbelow(9) + 1
        captcha_id = secrets.token_urlsafe(16)
        await self.db.run(repo.new_captcha, captcha_id, a + b,
                          self.now() + timedelta(seconds=CAPTCHA_LIFETIME))
        return captcha_id, f"{a} + {b} ="

    # -- pages ----------------------------------------------------------------------------------
    @app.route("/widgets/page/<int:widget_id>", methods=["GET"])
    @endpoint("widgets_page")
    async def page(self, request: Request, widget_id: int):
        widget, session = await self._open(request, widget_id)
        if widget is None:
            return await self._html(request, 404, None, session, [self._message("no_widget")])
        show = getattr(self, f"_show_{widget.kind}")
        return await self._html(request, 200, widget, session, await show(request, widget,
                                                                           session))

    @app.route("/widgets/page/<int:widget_id>", methods=["POST"])
    @endpoint("widgets_form")
    async def form(self, request: Request, widget_id: int):
        return await self._post(request, widget_id, "submit")

    @app.route("/widgets/page/<int:widget_id>/tariff", methods=["POST"])
    @endpoint("widgets_form")
    async def tariff(self, request: Request, widget_id: int):
        return await self._post(request, widget_id, "tariff")

    @app.route("/widgets/page/<int:widget_id>/account", methods=["POST"])
    @endpoint("widgets_form")
    async def add_account(self, request: Request, widget_id: int):
        return await self._post(request, widget_id, "account")

    @app.route("/widgets/page/<int:widget_id>/password", methods=["POST"])
    @endpoint("widgets_form")
    async def password(self, request: Request, widget_id: int):
        return await self._post(request, widget_id, "password")

    @app.route("/widgets/page/<int:widget_id>/profile", methods=["POST"])
    @endpoint("widgets_form")
    async def profile(self, request: Request, widget_id: int):
        return await self._post(request, widget_id, "profile")

    @app.route("/widgets/page/<int:widget_id>/logout", methods=["POST"])
    @endpoint("widgets_form")
    async def logout(self, request: Request, widget_id: int):
        return await self._post(request, widget_id, "logout")

    @app.route("/widgets/page/<int:widget_id>/result", methods=["GET"])
    @endpoint("widgets_page")
    async def result(self, request: Request, widget_id: int):
        widget, session = await self._open(request, widget_id)
        if widget is None or widget.kind != "payment":
            return await self._html(request, 404, None, session, [self._message("no_widget")])
        provider = self._arg(request, "provider") or "assist"
        number = next((v for v in (self._arg(request, n) for n in (
            "order", "ordernumber", "OrderNumber", "Order_IDP")) if v), "")
        order = None
        if provider in ("assist", "payture") and number.isdigit():
            order = await self.db.run(orders.get, provider, number)
        if order is None:
            return await self._html(request, 404, widget, session, [self._message("no_order")])
        state = self.t["credited"] if order.credited else self.t["pending"]
        text = self.t["result"].format(order=order.order_number, amount=f"{order.amount:.2f}",
                                       state=state)
        return await self._html(request, 200, widget, session, [tags.p(text, class_=(
            "notice" if order.credited else "message"), id="result")])

    async def _post(self, request: Request, widget_id: int, action: str):
        widget, session = await self._open(request, widget_id, create=False)
        if widget is None:
            return await self._html(request, 404, None, session, [self._message("no_widget")])
        if not self.sessions.csrf_ok(session, self._arg(request, "csrf")):
            log.info("widget {widget}: form refused without a valid CSRF token",
                     widget=widget_id)
            if session is None:
                session = self.sessions.new()
                self.sessions.write(request, session)
            body = [self._message("bad_csrf")]
            return await self._html(request, 403, widget, session, body)
        handler = getattr(self, f"_{action}_{widget.kind}", None)
        if handler is None:
            return await self._html(request, 404, widget, session, [self._message("no_widget")])
        try:
            return await handler(request, widget, session)
        except Refusal as e:
            shown = await getattr(self, f"_show_{widget.kind}")(request, widget, session)
            return await self._html(request, e.status, widget, session,
                                    [self._message(e.key, **e.args_)] + shown)

    async def _open(self, request: Request, widget_id: int, create: bool = True
                    ) -> tuple[repo.Widget | None, Session | None]:
        """
        The widget and the session: the cookie's, else the one a form of this
        widget's page carried; else (``create``) a new one, sent as a cookie
        and carried by the page too (whether the cookie comes back is not known yet).
        """
        session = self.sessions.read(request) or self.sessions.read_page(request, widget_id)
        if session is None and create:
            session = evolve(self.sessions.new(), in_page=widget_id)
            self.sessions.write(request, session)
        return await self.db.run(repo.get_widget, widget_id), session

    # -- rendering --------------------------------------------------------------------------------
    def _arg(self, request: Request, name: str) -> str:
        return pages.arg(request, name, MAX_FIELD * 4)

    def _message(self, key: str, **args: Any) -> Tag:
        return tags.p(self.t[key].format(**args), class_="message", role="alert")

    def _csrf(self, session: Session) -> list[Tag]:
        """A form's CSRF token and, when the session lives in the page, the session."""
        fields = [tags.input(type="hidden", name="csrf", value=self.sessions.csrf_token(session))]
        if session.in_page is not None:
            fields.append(tags.input(type="hidden", name=PAGE_FIELD,
                                     value=self.sessions.page_token(session, session.in_page)))
        return fields

    def _csp(self, form_action: tuple[str, ...] = ()) -> bytes:
        """Framed by ``[widgets] allowed_origins`` only (L{pages.csp})."""
        return pages.csp(form_action, tuple(self.cfg.widgets.allowed_origins))

    async def _html(self, request: Request, status: int, widget: repo.Widget | None,
                    session: Session | None, body: list, form_action: tuple[str, ...] = ()
                    ) -> bytes:
        title = (widget.title or self.t[widget.kind]) if widget else "smartyd"
        document = tags.html(
            tags.head(tags.meta(charset="utf-8"),
                      tags.meta(name="viewport", content="width=device-width, initial-scale=1"),
                      tags.title(title),
                      tags.link(rel="stylesheet", href="/widgets/static/widget.css"),
                      tags.script(src="/widgets/static/widget.js", defer="defer")),
            tags.body(tags.div(tags.h1(title), *body, class_=f"widget widget-{widget.kind}"
                                if widget else "widget")),
            lang=self.cfg.widgets.language, **{"data-widget": str(widget.id if widget else 0)},
        )
        return await pages.html_page(request, status, document, self._csp(form_action),
                                     framed=True)

    async def _after(self, request: Request, widget: repo.Widget, session: Session,
                     new: Session | None = None) -> bytes:
        """
        The widget's page after a form, with ``new`` (a session just rotated)
        or ``session``: a 303 to it, or -- when the session lives in the page,
        as a GET would come without it -- the page itself.
        """
        if session.in_page is None:
            return self._redirect(request, widget)
        shown = evolve(new or session, in_page=session.in_page)
        body = await getattr(self, f"_show_{widget.kind}")(request, widget, shown)
        return await self._html(request, 200, widget, shown, body)

    def _redirect(self, request: Request, widget: repo.Widget) -> bytes:
        return pages.redirect(request, f"/widgets/page/{widget.id}")

    # -- channels ---------------------------------------------------------------------------------
    async def _show_channels(self, request, widget, session) -> list:
        offered = await self.db.run(repo.tariffs_with_channels, widget.tariff_ids)
        if not offered:
            return [tags.p(self.t["no_channels"])]
        out = []
        for tariff in offered:
            out.append(tags.section(
                tags.h2(tariff["name"]),
                tags.p(self.t["per_period"].format(price=f"{tariff['price']:.2f}",
                                                   days=tariff["period_days"]), class_="price"),
                tags.ul([tags.li(c["name"]) for c in tariff["channels"]], class_="channels"),
                class_="tariff"))
        return out

    # -- sign-up ----------------------------------------------------------------------------------
    async def _show_signup(self, request, widget, session) -> list:
        t = self.t
        rows = [self._csrf(session),
                tags.label(t["name"], tags.input(name="name", required="required",
                                                 maxlength=str(MAX_FIELD), autocomplete="name")),
                tags.label(t["phone"], tags.input(name="phone", type="tel", maxlength="20",
                                                  autocomplete="tel")),
                tags.label(t["email"], tags.input(name="email", type="email",
                                                  maxlength=str(MAX_FIELD),
                                                  autocomplete="email"))]
        if self.cfg.widgets.captcha:
            captcha_id, question = await self._new_captcha()
            rows += [tags.input(type="hidden", name="captcha_id", value=captcha_id),
                     tags.label(tags.span(t["captcha_label"].format(question=question),
                                          id="captcha-question"),
                                tags.input(name="captcha", inputmode="numeric",
                                           required="required", autocomplete="off",
                                           **{"aria-describedby": "captcha-question"}))]
        rows.append(tags.button(t["submit_signup"], type="submit"))
        return [tags.form(*rows, method="post", action=f"/widgets/page/{widget.id}",
                          id="signup")]

    def _check_contacts(self, phone: str | None, email: str | None) -> None:
        if phone is not None and (len(phone) > 20 or not all(c in "+0123456789 ()-"
                                                             for c in phone)):
            raise Refusal(400, "bad_input", why=self.t["phone"])
        if email is not None and (len(email) > MAX_FIELD or "@" not in email[1:-1]
                                  or not email.isprintable() or " " in email):
            raise Refusal(400, "bad_input", why=self.t["email"])

    async def _submit_signup(self, request, widget, session) -> bytes:
        if self.cfg.widgets.captcha:
            answer = await self.db.run(repo.take_captcha, self._arg(request, "captcha_id")[:64],
                                       self.now())
            if answer is None or self._arg(request, "captcha") != str(answer):
                raise Refusal(400, "bad_captcha")
        name = self._arg(request, "name")
        phone = self._arg(request, "phone") or None
        email = self._arg(request, "email") or None
        if not 1 <= len(name) <= MAX_FIELD or not name.isprintable():
            raise Refusal(400, "bad_input", why=self.t["name"])
        self._check_contacts(phone, email)
        password = new_password()
        pw_hash = await self.thread(ledger.hash_password, password)
        ip = client_ip(request, self.trusted_proxies)
        now = self.now()

        async def sign_up(tx):
            if await repo.lock_signups(tx, ip, now - timedelta(hours=1)) >= \
                    self.cfg.widgets.signup_limit:
                return None
            customer_id = await ledger.create_customer(tx, name, phone, email,
                                                       comment="widget sign-up")
            login = new_login()
            while await ledger.find_account_by_login(tx, login) is not None:
                login = new_login()
            account = await engine.create_account(tx, self.cfg.billing, login, pw_hash,
                                                  customer_id=customer_id, at=now)
            for tariff_id in widget.tariff_ids:
                await engine.assign(tx, self.cfg.billing, account.id, tariff_id, at=now)
            await repo.record_signup(tx, ip, customer_id, now)
            return account

        account = await self.db.run(sign_up)
        if account is None:
            log.info("widget sign-up refused: limit reached for {ip}", ip=ip)
            raise Refusal(429, "too_many")
        log.info("widget {widget}: customer {customer} signed up with account {account}",
                 widget=widget.id, customer=account.customer_id, account=account.id)
        t = self.t
        return await self._html(request, 200, widget, session, [
            tags.p(t["signed_up"], class_="notice"),
            tags.dl(tags.dt(t["login"]), tags.dd(account.login, id="new-login"),
                    tags.dt(t["password"]), tags.dd(password, id="new-password"),
                    class_="credentials")])

    # -- cabinet -----------------------------------------------------------------------------------
    async def _show_cabinet(self, request, widget, session) -> list:
        t = self.t
        account = await self._logged_in(session)
        if account is None:
            return [tags.form(
                self._csrf(session),
                tags.label(t["login"], tags.input(name="login", required="required",
                                                  autocomplete="username")),
                tags.label(t["password"], tags.input(name="password", type="password",
                                                     required="required",
                                                     autocomplete="current-password")),
                tags.button(t["submit_login"], type="submit"),
                method="post", action=f"/widgets/page/{widget.id}", id="login")]

        async def look(tx):
            # The statement's latest rows (newest first below), then the
            # balance before them: the table adds up to the balance shown.
            entries = await ledger.statement(tx, account.customer_id, limit=STATEMENT_ROWS)
            offered = await repo.tariffs_with_channels(tx, widget.tariff_ids)
            subs = await catalog.customer_subscriptions(tx, account.customer_id)
            accounts = await ledger.customer_accounts(tx, account.customer_id)
            customer = await ledger.get_customer(tx, account.customer_id)
            return entries, offered, subs, accounts, customer

        entries, offered, subs, accounts, customer = await self.db.run(look)
        mine = {s["tariff_id"]: s for s in subs
                if s["account_id"] in (None, account.id)}
        tariff_rows = []
        for tariff in offered:
            on = tariff["id"] in mine
            tariff_rows.append(tags.tr(
                tags.td(tariff["name"]),
                tags.td(self.t["per_period"].format(price=f"{tariff['price']:.2f}",
                                                    days=tariff["period_days"])),
                tags.td(t["connected"] if on else ""),
                tags.td(tags.form(
                    self._csrf(session),
                    tags.input(type="hidden", name="tariff_id", value=str(tariff["id"])),
                    tags.input(type="hidden", name="action",
                               value="disconnect" if on else "connect"),
                    tags.button(t["disconnect"] if on else t["connect"], type="submit",
                                class_="secondary" if on else ""),
                    method="post", action=f"/widgets/page/{widget.id}/tariff",
                    class_="inline"))))
        return [
            tags.p(f"{t['login']}: ", tags.strong(account.login)),
            tags.p(f"{t['balance']}: ", tags.strong(f"{account.balance:.2f}", id="balance")),
            tags.h2(t["tariffs"]), tags.table(tariff_rows, id="tariffs"),
            tags.h2(t["statement"]),
            tags.table([*(tags.tr(tags.td((e.at or e.created).strftime("%Y-%m-%d %H:%M")),
                                  tags.td(f"{e.amount:+.2f}"), tags.td(e.cause))
                          for e in reversed(entries.rows)),
                        tags.tr(tags.td(t["opening_balance"]),
                                tags.td(f"{entries.opening_balance:.2f}"), tags.td(""),
                                id="opening")], id="statement"),
            *self._accounts_part(widget, session, accounts),
            *self._profile_part(widget, session, customer),
            tags.form(self._csrf(session), tags.button(t["logout"], type="submit",
                                                       class_="secondary"),
                      method="post", action=f"/widgets/page/{widget.id}/logout")]

    def _accounts_part(self, widget, session, accounts: list) -> list:
        t = self.t
        action = f"/widgets/page/{widget.id}"
        return [
            tags.h2(t["accounts"]),
            tags.ul([tags.li(a.login) for a in accounts], id="accounts"),
            tags.form(self._csrf(session), tags.button(t["add_account"], type="submit",
                                                       class_="secondary"),
                      method="post", action=action + "/account", id="add-account"),
            tags.h3(t["change_password"]),
            tags.form(
                self._csrf(session),
                tags.label(t["account"], tags.select(
                    [tags.option(a.login, value=str(a.id)) for a in accounts],
                    name="account_id")),
                tags.label(t["new_password"], tags.input(
                    name="new_password", type="password", required="required", minlength="8",
                    maxlength="256", autocomplete="new-password")),
                tags.label(t["repeat_password"], tags.input(
                    name="new_password2", type="password", required="required",
                    minlength="8", maxlength="256", autocomplete="new-password")),
                tags.label(t["current_password"], tags.input(
                    name="password", type="password", required="required",
                    autocomplete="current-password")),
                tags.button(t["change_password"], type="submit"),
                method="post", action=action + "/password", id="change-password")]

    def _profile_part(self, widget, session, customer) -> list:
        t = self.t
        return [
            tags.h2(t["profile"]),
            tags.form(
                self._csrf(session),
                tags.label(t["phone"], tags.input(name="phone", type="tel", maxlength="20",
                                                  value=customer.phone or "",
                                                  autocomplete="tel")),
                tags.label(t["email"], tags.input(name="email", type="email",
                                                  maxlength=str(MAX_FIELD),
                                                  value=customer.email or "",
                                                  autocomplete="email")),
                tags.button(t["save"], type="submit"),
                method="post", action=f"/widgets/page/{widget.id}/profile", id="profile")]

    async def _logged_in(self, session) -> ledger.Account | None:
        """
        The session's account while its login and password are the ones it
        logged in with (L{Sessions.credentials}); None once either changed.
        """
        if session is None or session.account_id is None:
            return None
        account = await self.db.run(ledger.get_account, session.account_id)
        return account if self.sessions.current(session, account) else None

    async def _cabinet_notice(self, request, widget, session, notice: list) -> bytes:
        """The cabinet with ``notice`` above it (a change done; credentials shown once)."""
        shown = await self._show_cabinet(request, widget, session)
        return await self._html(request, 200, widget, session, notice + shown)

    async def _account_cabinet(self, request, widget, session) -> bytes:
        """Add an account to the logged-in customer; its login and password are shown once."""
        account = await self._logged_in(session)
        if account is None:
            return await self._after(request, widget, session)
        password = new_password()
        pw_hash = await self.thread(ledger.hash_password, password)

        async def add(tx):
            if await repo.lock_customer_accounts(tx, account.customer_id) >= repo.MAX_ACCOUNTS:
                return None
            login = new_login()
            while await ledger.find_account_by_login(tx, login) is not None:
                login = new_login()
            return await engine.create_account(tx, self.cfg.billing, login, pw_hash,
                                               customer_id=account.customer_id, at=self.now())

        added = await self.db.run(add)
        if added is None:
            raise Refusal(400, "too_many_accounts")
        log.info("widget {widget}: customer {customer} added account {account}",
                 widget=widget.id, customer=account.customer_id, account=added.id)
        t = self.t
        return await self._cabinet_notice(request, widget, session, [
            tags.p(t["account_added"], class_="notice"),
            tags.dl(tags.dt(t["login"]), tags.dd(added.login, id="new-login"),
                    tags.dt(t["password"]), tags.dd(password, id="new-password"),
                    class_="credentials")])

    async def _password_cabinet(self, request, widget, session) -> bytes:
        """
        Set the password of one of the customer's accounts; the logged-in
        account's current password is asked again (a session left open on a
        shared computer does not hand the accounts over).
        """
        account = await self._logged_in(session)
        if account is None:
            return await self._after(request, widget, session)
        new, again = self._arg(request, "new_password"), self._arg(request, "new_password2")
        target = self._arg(request, "account_id")
        if not 8 <= len(new) <= 256 or not hmac.compare_digest(new.encode(), again.encode()):
            raise Refusal(400, "passwords_differ")
        current = self._arg(request, "password")
        if not current or len(current) > 256 or                 await password_login(self.db, account.login, current) is None:
            raise Refusal(403, "bad_password")
        if not target.isdigit() or len(target) > 18:
            raise Refusal(400, "bad_input", why=self.t["account"])
        pw_hash = await self.thread(ledger.hash_password, new)
        if not await self.db.run(repo.set_account_password, account.customer_id, int(target),
                                 pw_hash):
            raise Refusal(400, "bad_input", why=self.t["account"])
        log.info("widget {widget}: password of account {target} changed by account {account}",
                 widget=widget.id, target=int(target), account=account.id)
        if int(target) == account.id:
            # Its own password: this session ends with the others; the one who
            # just gave the current password is logged in anew (a new sid).
            new = self.sessions.login(await self.db.run(ledger.get_account, account.id))
            self.sessions.write(request, new)
            session = evolve(new, in_page=session.in_page)
        return await self._cabinet_notice(request, widget, session, [
            tags.p(self.t["password_changed"], class_="notice", role="status")])

    async def _profile_cabinet(self, request, widget, session) -> bytes:
        account = await self._logged_in(session)
        if account is None:
            return await self._after(request, widget, session)
        phone = self._arg(request, "phone") or None
        email = self._arg(request, "email") or None
        self._check_contacts(phone, email)
        await self.db.run(repo.set_contacts, account.customer_id, phone, email)
        log.info("widget {widget}: customer {customer} changed the profile",
                 widget=widget.id, customer=account.customer_id)
        return await self._cabinet_notice(request, widget, session, [
            tags.p(self.t["profile_saved"], class_="notice", role="status")])

    async def _submit_cabinet(self, request, widget, session) -> bytes:
        login, password = self._arg(request, "login"), self._arg(request, "password")
        account = None
        if login and password and len(login) <= 64 and len(password) <= 256:
            account = await password_login(self.db, login, password)
        if account is None:
            raise Refusal(403, "bad_login")
        new = self.sessions.login(account)  # a new sid: no fixation
        self.sessions.write(request, new)
        return await self._after(request, widget, session, new)

    async def _logout_cabinet(self, request, widget, session) -> bytes:
        new = self.sessions.new()
        self.sessions.write(request, new)
        return await self._after(request, widget, session, new)

    async def _tariff_cabinet(self, request, widget, session) -> bytes:
        if await self._logged_in(session) is None:
            return await self._after(request, widget, session)
        tariff = self._arg(request, "tariff_id")
        action = self._arg(request, "action")
        offered = await self.db.run(repo.tariffs_with_channels, widget.tariff_ids)
        if not tariff.isdigit() or int(tariff) not in {o["id"] for o in offered} \
                or action not in ("connect", "disconnect"):
            raise Refusal(400, "tariff_failed")
        # The subscriber's own change, as on the device API: refused when the daemon
        # does not charge, and a tariff the money does not cover is not taken.
        change = engine.subscribe if action == "connect" else engine.unsubscribe
        try:
            await self.db.run(change, self.cfg.billing, session.account_id, int(tariff),
                              at=self.now())
        except engine.NotCovered:
            raise Refusal(400, "tariff_no_money")
        except ledger.LedgerError:
            raise Refusal(400, "tariff_failed")
        log.info("widget {widget}: account {account} {action}ed tariff {tariff}",
                 widget=widget.id, account=session.account_id, action=action, tariff=tariff)
        return await self._after(request, widget, session)

    # -- TV guide --------------------------------------------------------------------------------
    async def _show_epg(self, request, widget, session) -> list:
        now = self.now()

        async def look(tx):
            channel_ids = None
            if session is not None and session.account_id is not None:
                channel_ids = await catalog.account_channels(tx, session.account_id)
            elif widget.tariff_ids:
                channel_ids = await repo.tariff_channel_ids(tx, widget.tariff_ids)
            return await repo.guide(tx, channel_ids, now, now + timedelta(hours=6))

        guide = await self.db.run(look)
        if not guide:
            return [tags.p(self.t["no_guide"])]
        out = []
        for channel in guide:
            rows = []
            for p in channel["programmes"]:
                title = [p["title"]]
                if p["on_air"]:
                    title.append(tags.span(self.t["on_air"], class_="badge"))
                rows.append(tags.tr(
                    tags.td(p["start"].astimezone(timezone.utc).strftime("%H:%M")),
                    tags.td(*title), class_="onair" if p["on_air"] else ""))
            out.append(tags.section(tags.h2(channel["name"]), tags.table(rows),
                                    class_="guide"))
        return out

    # -- payment ---------------------------------------------------------------------------------
    def _methods(self) -> list[str]:
        return [m for m, s in (("assist", self.assist), ("payture", self.payture)) if s]

    async def _gateway_form(self, request, widget, session, form) -> bytes:
        """The ASSIST form the payer sends to the gateway's page (the whole window, not the frame)."""
        fields = [tags.input(type="hidden", name=k, value=v) for k, v in form.fields]
        body = [tags.form(*fields, tags.button(self.t["to_gateway"], type="submit"),
                          method="post", action=form.url, target="_top",
                          id="gateway", **{"accept-charset": form.charset})]
        return await self._html(request, 200, widget, session, body,
                                form_action=(_origin(server_url(self.assist.cfg)),))

    async def _earlier_order(self, number: str) -> orders.Order | None:
        """
        The seed's ``order_id``, "a transaction created earlier", is in our
        model an ASSIST gateway order created before the payer came: by
        ``smartyd-admin assist order`` (an operator's invoice), by ``POST
        /payments/assist/order`` (the operator's site or app) or by an
        earlier attempt in this widget.  It may be paid while the poll still
        watches it: not credited, not final, not authorised yet, and younger
        than the poll's window (an older one would never be credited).
        None: no such order, or it cannot be paid any more.
        """
        if self.assist is None or not number.isdigit() or len(number) > 18:
            return None
        order = await self.db.run(orders.get, "assist", number)
        if order is None or order.credited or order.status not in ("new", "declined", "unknown"):
            return None
        if order.created < self.now() - timedelta(days=ORDER_DAYS):
            return None
        return order

    async def _show_payment(self, request, widget, session) -> list:
        t = self.t
        methods = self._methods()
        wanted = self._arg(request, "payment_type")
        out = []
        if wanted in SEED_ONLY_METHODS:
            out.append(self._message("not_offered", kind=wanted))
        if not methods:
            return out + [self._message("no_methods")]
        number = self._arg(request, "order_id")
        if number:
            # The order's amount and client override the snippet's; it is paid by its gateway.
            order = await self._earlier_order(number)
            if order is None:
                return out + [self._message("no_transaction")]
            return out + [tags.form(
                self._csrf(session),
                tags.input(type="hidden", name="order_id", value=order.order_number),
                tags.input(type="hidden", name="payment_type", value="assist"),
                tags.p(t["order"].format(order=order.order_number,
                                         amount=f"{order.amount:.2f}"), id="order"),
                tags.button(t["pay"], type="submit"),
                method="post", action=f"/widgets/page/{widget.id}", id="payment")]
        out.append(tags.form(
            self._csrf(session),
            tags.label(t["amount"], tags.input(name="amount", value=self._arg(request, "amount"),
                                               inputmode="decimal", required="required")),
            tags.label(t["client_id"], tags.input(name="client_id",
                                                  value=self._arg(request, "client_id"),
                                                  inputmode="numeric", required="required")),
            tags.label(t["payment_type"], tags.select(
                [tags.option(m, value=m, **({"selected": "selected"} if m == wanted else {}))
                 for m in methods], name="payment_type")),
            tags.button(t["pay"], type="submit"),
            method="post", action=f"/widgets/page/{widget.id}", id="payment"))
        return out

    async def _submit_payment(self, request, widget, session) -> bytes:
        kind = self._arg(request, "payment_type")
        if kind not in self._methods():
            raise Refusal(400, "not_offered", kind=kind[:20] or "-")
        number = self._arg(request, "order_id")
        if number:
            order = await self._earlier_order(number)
            if order is None:
                raise Refusal(404, "no_transaction")
            log.info("widget {widget}: ASSIST order {order} paid again", widget=widget.id,
                     order=order.order_number)
            form = payment_form(self.assist.cfg, order.order_number, order.amount,
                                order.two_stage)
            return await self._gateway_form(request, widget, session, form)
        try:
            amount = Decimal(self._arg(request, "amount").replace(",", "."))
        except InvalidOperation:
            raise Refusal(400, "bad_input", why=self.t["amount"])
        if not amount.is_finite() or not 0 < amount <= MAX_AMOUNT \
                or amount.as_tuple().exponent < -2:
            raise Refusal(400, "bad_input", why=self.t["amount"])
        client = self._arg(request, "client_id")
        accounts = await self.db.run(ledger.customer_accounts, int(client)) \
            if client.isdigit() and len(client) < 19 else []
        if not accounts:
            raise Refusal(404, "no_customer")
        account = accounts[0]
        try:
            if kind == "assist":
                order, form = await self.assist.create_order(account.id, amount)
                return await self._gateway_form(request, widget, session, form)
            order, url = await self.payture.create_order(
                account.id, amount, client_ip(request, self.trusted_proxies))
        except orders.OrderError:
            raise Refusal(404, "no_customer")
        except PartnerError:
            raise Refusal(503, "gateway_down")
        return await self._html(request, 200, widget, session, [
            tags.p(tags.a(self.t["to_gateway"], href=url, target="_top", id="gateway"))])


def page_url(widget_id: int, **query: str) -> str:
    return f"/widgets/page/{widget_id}" + (f"?{urlencode(query)}" if query else "")
