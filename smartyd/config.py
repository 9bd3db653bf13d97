"""
The configuration: TOML, validated once into immutable objects.

Every key of ``etc/smartyd.example.toml`` is interface.  An unknown section or
key, a value of the wrong type, or a bad endpoint string raises L{ConfigError}
with one line naming the key (``[osmp] max_sum: ...``).  Without a file the
built-in defaults apply.

Any string value may be written ``"env:NAME"`` to take it from the
environment variable ``NAME`` (keep secrets out of the file that way).
"""

from __future__ import annotations

import ipaddress
import os
import re
import tempfile
import tomllib
from decimal import Decimal, InvalidOperation
from secrets import token_urlsafe
from typing import Any, Callable

import attrs
from attrs import field, frozen
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from smartyd.util.twisted_internals import endpoint_port

log = Logger()


class ConfigError(Exception):
    """The configuration is invalid; str() is one line naming the key."""


# -- value checkers: raw TOML value -> validated value, ValueError on bad ----------
def _env(v: Any) -> Any:
    if isinstance(v, str) and v.startswith("env:"):
        name = v[4:]
        if name not in os.environ:
            raise ValueError(f"environment variable {name} is not set")
        return os.environ[name]
    return v


def string(v: Any) -> str:
    v = _env(v)
    if not isinstance(v, str):
        raise ValueError(f"expected a string, got {type(v).__name__}")
    return v


def boolean(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"expected true or false, got {v!r}")
    return v


def integer(lo: int | None = None, hi: int | None = None) -> Callable[[Any], int]:
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"expected an integer, got {v!r}")
        if lo is not None and v < lo:
            raise ValueError(f"must be at least {lo}, got {v}")
        if hi is not None and v > hi:
            raise ValueError(f"must be at most {hi}, got {v}")
        return v

    return check


def number(lo: float | None = None) -> Callable[[Any], float]:
    def check(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"expected a number, got {v!r}")
        if lo is not None and v < lo:
            raise ValueError(f"must be at least {lo}, got {v}")
        return float(v)

    return check


def amount(v: Any) -> Decimal:
    v = _env(v)
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise ValueError(f'expected an amount as a string like "10.00", got {v!r}')
    try:
        d = Decimal(str(v))
    except InvalidOperation:
        raise ValueError(f"not an amount: {v!r}")
    if not d.is_finite() or d < 0 or d.as_tuple().exponent < -2:
        raise ValueError(f"not a non-negative amount with at most 2 decimals: {v!r}")
    return d


def one_of(*choices: str) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        v = string(v)
        if v not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}; got {v!r}")
        return v

    return check


def string_list(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ValueError("expected a list of strings")
    return tuple(_env(x) for x in v)


def int_list(v: Any) -> tuple[int, ...]:
    if not isinstance(v, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        raise ValueError("expected a list of integers")
    return tuple(v)


def networks(v: Any) -> tuple:
    out = []
    for item in string_list(v):
        try:
            out.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"not an address or CIDR network: {item!r}")
    return tuple(out)


def endpoint(optional: bool = False) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        v = string(v)
        if v == "" and optional:
            return v
        try:
            ep = serverFromString(None, v)
        except Exception as e:
            raise ValueError(f"bad endpoint string {v!r}: {e}")
        port = endpoint_port(ep)
        if port is not None and not 0 <= port <= 65535:
            raise ValueError(f"bad endpoint string {v!r}: port must be 0-65535")
        return v

    return check


def url(v: Any) -> str:
    v = string(v)
    if v and not (v.startswith("http://") or v.startswith("https://")):
        raise ValueError(f"expected an http(s) URL, got {v!r}")
    return v.rstrip("/")


def _c(check: Callable[[Any], Any], default: Any, secret: bool = False):
    """A config field: ``check`` validates the raw value; ``default`` when absent."""
    return field(default=default, metadata={"check": check, "secret": secret})


# -- sections -----------------------------------------------------------------------
@frozen
class HTTP:
    listen: str = _c(endpoint(), "tcp:8080:interface=127.0.0.1")
    trusted_proxies: tuple = _c(networks, ())
    max_body: int = _c(integer(1024, 64 * 1024 * 1024), 1024 * 1024)


@frozen
class DatabaseConfig:
    dsn: str = _c(string, "", secret=True)
    pool_size: int = _c(integer(1, 256), 8)
    timeout: float = _c(number(0.1), 15.0)
    # Seconds the daemon keeps trying to restart a dead embedded cluster
    # before it exits non-zero (and the service manager restarts it).
    embedded_restart_timeout: float = _c(number(1.0), 60.0)


@frozen
class State:
    dir: str = _c(string, "./var")


@frozen
class Log:
    file: str = _c(string, "./var/log/smartyd.jsonl")
    level: str = _c(one_of("debug", "info", "warn", "error", "critical"), "info")


# A secret anyone can read in a file or a tutorial is no secret: these (compared
# lower-cased, letters and digits only) and anything shorter than 16 bytes are
# refused.  "change-me" was the example configuration's value.
MIN_SECRET_BYTES = 16
PLACEHOLDER_SECRETS = frozenset({
    "changeme", "changemechangeme", "pleasechangeme", "changethis", "changeit", "replaceme",
    "secret", "s3cret", "secretkey", "mysecret", "yoursecret", "yoursecrethere",
    "yoursecretkey", "yoursecretkeyhere", "password", "passw0rd", "example", "examplesecret",
    "test", "testsecret", "default", "defaultsecret", "xxxxxxxxxxxxxxxx",
    "0123456789abcdef", "1234567890123456", "changemetoalongrandomstring",
    "replacewitharandomsecret", "replacewithalongrandomstring", "generatearandomsecret",
})
MAKE_A_SECRET = "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
TOKEN_SECRET_FILE = "token-secret"

# The key of a Config made without load() (built-in defaults in tests and tools
# that never see a state dir): random per process, so such a Config can mint and
# verify its own tokens but no token signed with a known value ever verifies.
_PROCESS_SECRET = token_urlsafe(32)


def secret_problem(value: str) -> str | None:
    """Why C{value} is unfit as a token secret (never quoting it), or None."""
    if re.sub(r"[^a-z0-9]", "", value.lower()) in PLACEHOLDER_SECRETS:
        return "a known placeholder"
    size = len(value.encode("utf-8"))
    if size < MIN_SECRET_BYTES:
        return f"too short ({size} bytes, at least {MIN_SECRET_BYTES})"
    return None


@frozen
class Tokens:
    # Empty: load() reads (first start: generates) <state dir>/token-secret.
    secret: str = _c(string, "", secret=True)
    secrets: tuple = _c(string_list, (), secret=True)
    ttl: int = _c(integer(1, 366 * 86400), 3600)
    bind_ip: bool = _c(boolean, True)
    fast_listen: str = _c(endpoint(optional=True), "tcp:8081:interface=127.0.0.1")
    workers: int = _c(integer(1, 64), 1)
    # Seconds a session's lease lasts (renewed by each re-check), for
    # accounts with a concurrent-session limit.
    session_lease: int = _c(integer(4, 3600), 30)
    # Before the entitlement snapshot has loaded: "deny" every check, or
    # "allow" every token whose signature, expiry and IP binding verify.
    when_unavailable: str = _c(one_of("deny", "allow"), "deny")

    @property
    def keys(self) -> tuple[str, ...]:
        """
        Signing keys, newest first: ``secrets`` when given, else ``secret``
        (which L{load} fills in from the state dir when empty; left empty
        outside load(), a random key of this process).
        """
        return self.secrets or (self.secret or _PROCESS_SECRET,)


@frozen
class OSMP:
    enabled: bool = _c(boolean, True)
    allow: tuple = _c(networks, tuple(networks(["127.0.0.0/8", "79.142.16.0/20", "91.232.230.0/23"])))
    username: str = _c(string, "osmp")
    password: str = _c(string, "", secret=True)
    account: str = _c(one_of("ppc", "id", "login"), "ppc")
    min_sum: Decimal = _c(amount, Decimal("1.00"))
    max_sum: Decimal = _c(amount, Decimal("15000.00"))
    max_txn_age: int = _c(integer(60, 30 * 86400), 86400)
    forbid_blocked: bool = _c(boolean, False)


@frozen
class Assist:
    enabled: bool = _c(boolean, False)
    generation: str = _c(one_of("legacy", "current"), "legacy")
    shop_id: str = _c(string, "")
    login: str = _c(string, "")
    password: str = _c(string, "", secret=True)
    secret: str = _c(string, "", secret=True)
    server: str = _c(url, "")
    test_mode: bool = _c(boolean, True)
    poll_interval: int = _c(integer(600), 600)
    return_url: str = _c(url, "")


PAYTURE_TEMPLATES = ("Payture", "", "Orsay")


@frozen
class Payture:
    """
    Payture (Smarty's PaytureMerchantData): the Pay key serves InPay and
    eWallet payments, the Add key the eWallet users and cards.  ``template``:
    the payment page template -- "Payture" (browser), "" (TV / set-top box
    with a remote control: Payture's default template) or "Orsay" (Samsung
    Orsay); a request may override it.  ``remember_card``: the "remember
    card" box shown unticked ("not_checked"), ticked ("checked"), or hidden
    and always on ("disable": every payment binds the card).  Autopayment
    charges at least ``autopay_min`` and is tried at most
    ``autopay_attempts`` times per billing period.
    """

    enabled: bool = _c(boolean, False)
    host: str = _c(url, "")
    merchant_pay_key: str = _c(string, "", secret=True)
    merchant_add_key: str = _c(string, "", secret=True)
    password: str = _c(string, "", secret=True)
    template: str = _c(one_of(*PAYTURE_TEMPLATES), "Payture")
    remember_card: str = _c(one_of("not_checked", "checked", "disable"), "not_checked")
    autopay_min: Decimal = _c(amount, Decimal("100.00"))
    autopay_attempts: int = _c(integer(1, 10), 3)

    @property
    def cards(self) -> bool:
        """True when cards can be bound (the eWallet Add merchant is configured)."""
        return bool(self.merchant_add_key)


@frozen
class Dreamkas:
    enabled: bool = _c(boolean, False)
    token: str = _c(string, "", secret=True)
    api_url: str = _c(url, "https://kabinet.dreamkas.ru/api")
    device_id: int = _c(integer(0), 0)
    tax_mode: str = _c(one_of("DEFAULT", "SIMPLE", "SIMPLE_WO", "ENVD", "PATENT"), "DEFAULT")
    always_fiscalize: bool = _c(boolean, True)
    cache_lifetime: int = _c(integer(1), 1800)
    webhook_secret: str = _c(string, "", secret=True)
    poll_interval: int = _c(integer(1), 30)
    stuck_after: int = _c(integer(60), 3600)


@frozen
class Billing:
    """
    The built-in billing.  ``mode``: builtin and transactional charge tariffs
    (the charging job runs every ``charge_interval`` seconds, once
    cluster-wide; in transactional mode the money comes as the Billing API's
    transactions, which settle the customer like a payment); full and reduced
    never charge (an external billing drives tariffs and account states;
    payments and transactions are bookkeeping).  The daemon lifts only the
    DEBT it declared, never one an external billing set.
    """

    mode: str = _c(one_of("builtin", "transactional", "full", "reduced"), "builtin")
    charge: str = _c(one_of("period", "daily"), "period")
    charge_interval: int = _c(integer(1, 86400), 3600)
    credit_limit: Decimal = _c(amount, Decimal("0.00"))
    promise_max: Decimal = _c(amount, Decimal("1000.00"))
    refund_unused: bool = _c(boolean, False)

    @property
    def charges(self) -> bool:
        """True when the daemon charges tariffs itself."""
        return self.mode in ("builtin", "transactional")


def partner_key(v: Any) -> str:
    """
    An identifier a partner issues (MEGOGO's ``partner_id``): any string; an
    integer (older configs wrote one) becomes its digits, and 0 -- the old
    "not set" -- becomes "" (still "not set").
    """
    v = _env(v)
    if isinstance(v, int) and not isinstance(v, bool):
        if v < 0:
            raise ValueError(f"expected a string (or a non-negative integer), got {v!r}")
        return str(v) if v else ""
    if not isinstance(v, str):
        raise ValueError(f"expected a string, got {type(v).__name__}")
    return v


def irdeto_products(v: Any) -> tuple[tuple[int, tuple[int, ...]], ...]:
    """``[{tariff_id = 5, product_ids = [101, 102]}, ...]``: a tariff's Irdeto products."""
    if not isinstance(v, list) or not all(isinstance(x, dict) for x in v):
        raise ValueError("expected a list of {tariff_id = N, product_ids = [..]} tables")
    out, seen = [], set()
    for i, entry in enumerate(v):
        if set(entry) != {"tariff_id", "product_ids"}:
            raise ValueError(f"entry {i}: expected exactly tariff_id and product_ids")
        tariff = integer(1)(entry["tariff_id"])
        ids = int_list(entry["product_ids"])
        if tariff in seen:
            raise ValueError(f"entry {i}: tariff {tariff} listed twice")
        seen.add(tariff)
        out.append((tariff, ids))
    return tuple(out)


@frozen
class Megogo:
    """
    MEGOGO: catalog sync from ``xml_url`` every ``sync_interval`` seconds and
    SVOD at MEGOGO's partner billing (``billing_url``) following the tariffs
    ``tariff_id`` and ``additional_tariffs_ids``.  Key names are the seed's.
    """

    enabled: bool = _c(boolean, False)
    xml_url: str = _c(url, "")
    partner_id: str = _c(partner_key, "")
    salt: str = _c(string, "", secret=True)
    svod_service_id: int = _c(integer(0), 0)
    tariff_id: int = _c(integer(0), 0)
    additional_tariffs_ids: tuple = _c(int_list, ())
    catalog_tariff_id: int = _c(integer(0), 0)
    billing_url: str = _c(url, "https://billing.megogo.net/partners")
    user_prefix: str = _c(string, "")
    reconcile: str = _c(one_of("log", "fix"), "log")
    sync_interval: int = _c(integer(60, 7 * 86400), 86400)
    # The MEGOGO apps' key pair per device class (the seed's names): handed to
    # devices by the TV Middleware API's VideoUrl (README, Partners).
    mobile_private_key: str = _c(string, "", secret=True)
    mobile_public_key: str = _c(string, "")
    smart_tv_private_key: str = _c(string, "", secret=True)
    smart_tv_public_key: str = _c(string, "")
    stb_private_key: str = _c(string, "", secret=True)
    stb_public_key: str = _c(string, "")

    @property
    def svod_tariffs(self) -> tuple[int, ...]:
        """The tariffs that carry the SVOD subscription."""
        return tuple(t for t in (self.tariff_id, *self.additional_tariffs_ids) if t)

    def device_keys(self, device_class: str) -> tuple[str, str] | None:
        """``(private, public)`` of ``mobile``, ``smart_tv`` or ``stb``; None when not set."""
        pair = (getattr(self, f"{device_class}_private_key", ""),
                getattr(self, f"{device_class}_public_key", ""))
        return pair if all(pair) else None


@frozen
class Tvzavr:
    """tvzavr: catalog sync and SVOD from ``subscription_tariff_id`` (seed names)."""

    enabled: bool = _c(boolean, False)
    api_url: str = _c(url, "")
    plf: str = _c(string, "")
    secret: str = _c(string, "", secret=True)
    tvzavr_tariff_id: int = _c(integer(0), 0)
    subscription_tariff_id: int = _c(integer(0), 0)
    catalog_tariff_id: int = _c(integer(0), 0)
    sync_interval: int = _c(integer(60, 7 * 86400), 86400)


@frozen
class Irdeto:
    """The Irdeto CAS: entitlements of the accounts' devices over SOAP at ``host``."""

    enabled: bool = _c(boolean, False)
    host: str = _c(url, "http://127.0.0.1:80")
    nationality: str = _c(string, "RUS")
    region_tag: str = _c(string, "MO")
    products: tuple = _c(irdeto_products, ())

    def product_ids(self, tariff_id: int) -> tuple[int, ...]:
        return dict(self.products).get(tariff_id, ())


# The Smarty Billing API methods smartyd answers (``/billing/api/<method>``);
# ``[billing_api] methods`` names a subset of them for the ``reduced`` mode.
BILLING_API_METHODS = (
    "customer/create", "customer/modify", "customer/info", "customer/delete", "customer/list",
    "customer/tariff/assign", "customer/tariff/remove",
    "account/create", "account/modify", "account/info", "account/delete", "account/activate",
    "account/deactivate", "account/list", "account/tariff/assign", "account/tariff/remove",
    "account/device/create", "account/device/modify", "account/device/delete",
    "account/message/create",
    "tariff/list", "tariff/basic/list", "tariff/additional/list",
    "transaction/create", "transaction/delete",
)


@frozen
class BillingAPIClient:
    """
    One external billing: its ``client_id`` and ``api_key`` (the signing
    key), ``allow`` (when set, the only networks it may call from) and
    ``shared`` (it sees every customer, not only those it created).
    """

    client_id: str
    api_key: str = field(repr=False)
    allow: tuple = ()
    shared: bool = False


_CLIENT_KEYS = {"client_id", "api_key", "allow", "shared"}


def client_tables(v: Any, keys: set, extra: dict) -> list[tuple]:
    """
    A list of operator tables ``{client_id, api_key, ...}`` (the Billing API's
    and the device API's ``clients``): each table's ``(client_id, api_key,
    *extra values)``, ``extra`` naming the other keys and their parsers with
    their defaults, in order.  One-line errors name the entry.
    """
    if not isinstance(v, list) or not all(isinstance(x, dict) for x in v):
        raise ValueError("expected a list of tables {%s}" % ", ".join(
            ["client_id", "api_key", *extra]))
    out, seen = [], set()
    for i, raw in enumerate(v):
        unknown = set(raw) - keys
        if unknown:
            raise ValueError(f"entry {i}: unknown key {sorted(unknown)[0]}")
        cid = raw.get("client_id")
        if isinstance(cid, int) and not isinstance(cid, bool):
            cid = str(cid)
        try:
            cid = string(cid if cid is not None else "")
            key = string(raw.get("api_key", ""))
            values = [parse(raw.get(name, default)) for name, (parse, default) in extra.items()]
        except ValueError as e:
            raise ValueError(f"entry {i}: {e}")
        if not cid or len(cid) > 64 or not cid.isprintable() or cid != cid.strip():
            raise ValueError(f"entry {i}: client_id must be 1-64 printable characters")
        if not key:
            # Not held to the token-secret rules: the key is the one the
            # operator's billing or apps already use (only the URL changes).
            raise ValueError(f"entry {i}: api_key is empty")
        if cid in seen:
            raise ValueError(f"entry {i}: client_id {cid!r} appears twice")
        seen.add(cid)
        out.append((cid, key, *values))
    return out


def api_clients(v: Any) -> tuple[BillingAPIClient, ...]:
    rows = client_tables(v, _CLIENT_KEYS, {"allow": (networks, []), "shared": (boolean, False)})
    return tuple(BillingAPIClient(*row) for row in rows)


def api_methods(v: Any) -> tuple[str, ...]:
    names = string_list(v)
    for name in names:
        if name.strip("/") not in BILLING_API_METHODS:
            raise ValueError(f"unknown Billing API method {name!r}")
    return tuple(n.strip("/") for n in names)


@frozen
class BillingAPI:
    """
    The Smarty Billing API (``/billing/api/<method>``) for external billings.
    ``methods``: what the ``reduced`` billing mode answers (every method in
    the other modes).
    """

    enabled: bool = _c(boolean, False)
    clients: tuple = _c(api_clients, (), secret=True)
    methods: tuple = _c(api_methods, ())


_ORIGIN_RE = re.compile(r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$")


def origins(v: Any) -> tuple[str, ...]:
    """Web origins (``https://isp.example``, no path): where widgets may be framed."""
    out = string_list(v)
    for item in out:
        if not _ORIGIN_RE.match(item):
            raise ValueError(f"not an origin like https://isp.example: {item!r}")
    return out


@frozen
class Widgets:
    """
    The website widgets (``/widgets``, ``/captcha``): framed only by
    ``allowed_origins`` (the CSP's ``frame-ancestors``); texts in
    ``language``; the sign-up form asks a text ``captcha`` and accepts at
    most ``signup_limit`` sign-ups per client address an hour.
    """

    enabled: bool = _c(boolean, False)
    allowed_origins: tuple = _c(origins, ())
    language: str = _c(one_of("ru", "en"), "ru")
    captcha: bool = _c(boolean, True)
    signup_limit: int = _c(integer(1, 1000), 3)


@frozen
class EPG:
    """The TV guide: an XMLTV feed imported every ``sync_interval`` seconds."""

    xmltv_url: str = _c(url, "")
    sync_interval: int = _c(integer(60, 7 * 86400), 3600)


# -- [tvmw]: the TV Middleware API for devices (DESIGN §11) ------------------------------
@frozen
class TvmwClient:
    """
    One operator as the device apps name it: ``client_id`` and ``api_key``
    (sent by ``Login``); ``shared = true``: its devices may log in any
    account, else only accounts of customers the client created through the
    Billing API (``customers.client_id``), as in ``[billing_api]``.
    """

    client_id: str
    api_key: str = field(repr=False)
    shared: bool = False


_TVMW_CLIENT_KEYS = {"client_id", "api_key", "shared"}


def tvmw_clients(v: Any) -> tuple[TvmwClient, ...]:
    rows = client_tables(v, _TVMW_CLIENT_KEYS, {"shared": (boolean, False)})
    return tuple(TvmwClient(*row) for row in rows)


_DEVICE_RE = re.compile(r"^[a-z0-9_]{1,32}$")


def device_types(v: Any) -> tuple[str, ...]:
    out = string_list(v)
    for item in out:
        if not _DEVICE_RE.match(item):
            raise ValueError(f"not a device type like android_stb: {item!r}")
    return out


#: The set-top box types answered in XML by default (Smarty's system names).
XML_DEVICES = ("android_stb", "mag", "dune", "eltex", "tvip", "stb")


@frozen
class Tvmw:
    """
    Smarty's TV Middleware API (``/tvmiddleware/api/<method>/``) for
    set-top boxes, Smart TVs and apps: sessions idle for ``session_ttl``
    seconds end; ``login_by_device``: a bound device_uid logs in alone;
    ``xml_devices``: the ``device`` types answered in XML.
    """

    enabled: bool = _c(boolean, False)
    clients: tuple = _c(tvmw_clients, (), secret=True)
    session_ttl: int = _c(integer(60, 366 * 86400), 30 * 86400)
    login_by_device: bool = _c(boolean, False)
    xml_devices: tuple = _c(device_types, XML_DEVICES)


@frozen
class Console:
    """
    The operator console (DESIGN.md section 12): its own listener, meant to be
    put behind the operator's HTTPS proxy; ``secure_cookies`` marks the
    session cookie ``Secure`` (set it whenever the browser sees HTTPS).
    """

    enabled: bool = _c(boolean, False)
    listen: str = _c(endpoint(), "tcp:8090:interface=127.0.0.1")
    secure_cookies: bool = _c(boolean, False)


_SECTIONS = {
    "http": HTTP,
    "database": DatabaseConfig,
    "state": State,
    "log": Log,
    "tokens": Tokens,
    "osmp": OSMP,
    "assist": Assist,
    "payture": Payture,
    "dreamkas": Dreamkas,
    "billing": Billing,
    "megogo": Megogo,
    "tvzavr": Tvzavr,
    "irdeto": Irdeto,
    "billing_api": BillingAPI,
    "widgets": Widgets,
    "epg": EPG,
    "tvmw": Tvmw,
    "console": Console,
}


@frozen
class Config:
    http: HTTP = HTTP()
    database: DatabaseConfig = DatabaseConfig()
    state: State = State()
    log: Log = Log()
    tokens: Tokens = Tokens()
    osmp: OSMP = OSMP()
    assist: Assist = Assist()
    payture: Payture = Payture()
    dreamkas: Dreamkas = Dreamkas()
    billing: Billing = Billing()
    megogo: Megogo = Megogo()
    tvzavr: Tvzavr = Tvzavr()
    irdeto: Irdeto = Irdeto()
    billing_api: BillingAPI = BillingAPI()
    widgets: Widgets = Widgets()
    epg: EPG = EPG()
    tvmw: Tvmw = Tvmw()
    console: Console = Console()
    source: str = "<defaults>"

    def replace(self, **sections: Any) -> "Config":
        return attrs.evolve(self, **sections)


# MEGOGO's device classes: each has a key pair ([megogo] <class>_private_key,
# <class>_public_key), the one the MEGOGO apps sign their api.megogo.net calls
# with (sign = md5(params + private key) + public key).  smartyd uses a pair in
# the TV Middleware API's VideoUrl only (smartyd.tvmw.films): the public key is
# the answer's ext_apikey, the private key signs its uri.
MEGOGO_DEVICE_CLASSES = ("mobile", "smart_tv", "stb")

# Keys of the seed that smartyd refuses on purpose (not silently ignored), and why.
# available_tvod_collection_id names a collection of MEGOGO's own content API
# (api.megogo.net, the apps'); smartyd reads none: a title is sold individually
# when all_mgg.xml says vod="tvod" with a price, and the grant names the title.
_NOT_USED = {("megogo", "available_tvod_collection_id"): (
    "a collection of the MEGOGO apps' api.megogo.net; what is sold individually is each"
    " title's vod=\"tvod\" and price in all_mgg.xml")}


def _section(name: str, cls: type, raw: Any) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"[{name}]: expected a table")
    known = {f.name: f for f in attrs.fields(cls)}
    values = {}
    for key, value in raw.items():
        if (name, key) in _NOT_USED:
            raise ConfigError(f"[{name}] {key}: not used by smartyd ({_NOT_USED[name, key]});"
                              " remove it (README, Partners)")
        if key not in known:
            raise ConfigError(f"[{name}] {key}: unknown key")
        try:
            values[key] = known[key].metadata["check"](value)
        except ValueError as e:
            raise ConfigError(f"[{name}] {key}: {e}")
    section = cls(**values)
    _cross_check(name, section)
    return section


def _cross_check(name: str, s: Any) -> None:
    if name == "osmp" and s.min_sum > s.max_sum:
        raise ConfigError(f"[osmp] min_sum: {s.min_sum} is above max_sum {s.max_sum}")
    if name == "tokens":
        _check_token_secrets(s)
    if name == "dreamkas" and s.enabled and not s.token:
        raise ConfigError("[dreamkas] token: required when enabled = true")
    if name == "dreamkas" and s.stuck_after <= s.poll_interval:
        raise ConfigError(f"[dreamkas] stuck_after: {s.stuck_after} is not above poll_interval"
                          f" {s.poll_interval} (a job is looked at once per poll)")
    if name == "payture" and s.enabled:
        _required(name, s, "host", "merchant_pay_key")
        if s.remember_card != "not_checked" and not s.merchant_add_key:
            # A ticked or hidden box binds cards: that needs the Add merchant.
            raise ConfigError(f"[payture] merchant_add_key: required when remember_card ="
                              f" {s.remember_card!r}")
    if name == "assist" and s.enabled:
        _required(name, s, "shop_id", "login", "password")
    if name == "megogo" and s.enabled:
        _required(name, s, "xml_url", "partner_id", "salt", "svod_service_id", "tariff_id",
                  "catalog_tariff_id")
    if name == "megogo":
        for device in MEGOGO_DEVICE_CLASSES:
            private, public = (getattr(s, f"{device}_{k}_key") for k in ("private", "public"))
            if bool(private) != bool(public):
                missing = "public" if private else "private"
                raise ConfigError(f"[megogo] {device}_{missing}_key: a key pair, set both or"
                                  " neither")
    if name == "megogo" and s.tariff_id and s.tariff_id in s.additional_tariffs_ids:
        raise ConfigError(f"[megogo] additional_tariffs_ids: lists tariff_id {s.tariff_id}")
    if name == "tvzavr" and s.enabled:
        _required(name, s, "api_url", "plf", "secret", "tvzavr_tariff_id",
                  "subscription_tariff_id", "catalog_tariff_id")
    if name == "billing_api" and s.enabled:
        _required(name, s, "clients")
    if name == "tvmw" and s.enabled:
        _required(name, s, "clients")
    if name == "widgets" and s.enabled:
        # No origin named: no site could frame them; say so rather than serve nothing.
        _required(name, s, "allowed_origins")


def _required(name: str, section: Any, *keys: str) -> None:
    """An enabled feature refuses to start without what it needs."""
    for key in keys:
        if not getattr(section, key):
            raise ConfigError(f"[{name}] {key}: required when enabled = true")


def _check_token_secrets(s: Tokens) -> None:
    how = f"; make one with: {MAKE_A_SECRET}"
    problem = s.secret and secret_problem(s.secret)
    if problem:
        raise ConfigError(f"[tokens] secret: {problem}{how}")
    for i, entry in enumerate(s.secrets):
        problem = secret_problem(entry) if entry else "empty"
        if problem:
            raise ConfigError(f"[tokens] secrets: entry {i} is {problem}{how}")


def _with_token_secret(cfg: Config) -> Config:
    """
    C{cfg} with an empty C{[tokens] secret} (and no C{secrets}) replaced by
    the one kept in C{<state dir>/token-secret}, generated on first start.

    So a fresh checkout runs with the example configuration, yet never with a
    secret anyone else knows.  The file is local to one machine: instances
    sharing one database must all verify each other's tokens, so they need the
    same secret set explicitly (the warning says so).
    """
    if cfg.tokens.secrets or cfg.tokens.secret:
        return cfg
    path = os.path.join(cfg.state.dir, TOKEN_SECRET_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            secret = f.read().strip()
    except FileNotFoundError:
        secret = _create_token_secret(path)
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"[tokens] secret: cannot read {path}: {_why(e)}")
    problem = secret_problem(secret)
    if problem:
        raise ConfigError(f"[tokens] secret: {path}: {problem}; make one with: {MAKE_A_SECRET}")
    return cfg.replace(tokens=attrs.evolve(cfg.tokens, secret=secret))


def _create_token_secret(path: str) -> str:
    """
    Write a new secret to C{path} atomically (a complete file or none, mode
    0600) and return it; if another process got there first, return theirs.
    """
    directory = os.path.dirname(path) or "."
    secret = token_urlsafe(32)
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{TOKEN_SECRET_FILE}.", dir=directory)  # 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(secret + "\n")
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)  # unlike rename, never replaces a secret in use
            except FileExistsError:
                with open(path, encoding="utf-8") as f:
                    return f.read().strip()
        finally:
            os.unlink(tmp)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as e:
        raise ConfigError(f"[tokens] secret: cannot create {path}: {_why(e)}")
    log.warn(
        "[tokens] secret is empty: generated a stream token secret in {path}, reused on every"
        " start; several instances sharing one database must set the same [tokens] secret"
        " explicitly",
        path=path,
    )
    return secret


def _why(e: BaseException) -> str:
    return getattr(e, "strerror", None) or str(e).splitlines()[0] or type(e).__name__


def from_dict(raw: dict, source: str = "<dict>") -> Config:
    sections = {}
    for name, value in raw.items():
        if name not in _SECTIONS:
            raise ConfigError(f"[{name}]: unknown section")
        sections[name] = _section(name, _SECTIONS[name], value)
    cfg = Config(source=source, **sections)
    if cfg.billing_api.enabled and cfg.billing.mode == "reduced" and not cfg.billing_api.methods:
        raise ConfigError("[billing_api] methods: required when [billing] mode = \"reduced\""
                          " (the methods the reduced mode answers)")
    if cfg.console.enabled and cfg.console.listen == cfg.http.listen:
        raise ConfigError("[console] listen: the console has a listener of its own;"
                          " it must differ from [http] listen")
    return cfg


def load(path: str | None) -> Config:
    """
    The validated configuration from ``path``, or the defaults when None, with
    an empty token secret taken from the state dir (see L{_with_token_secret}).
    """
    if path is None:
        return _with_token_secret(Config())
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file")
    except PermissionError:
        raise ConfigError(f"{path}: permission denied")
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}")
    return _with_token_secret(from_dict(raw, source=path))


def redacted(cfg: Config) -> dict:
    """The configuration as a dict with every secret replaced, fit for a log."""
    out = {}
    for name, cls in _SECTIONS.items():
        section = getattr(cfg, name)
        out[name] = {
            f.name: ("***" if f.metadata.get("secret") and getattr(section, f.name) else
                     _plain(getattr(section, f.name)))
            for f in attrs.fields(cls)
        }
    return out


def _plain(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    if isinstance(v, (Decimal, ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return str(v)
    return v
