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
import tomllib
from decimal import Decimal, InvalidOperation
from typing import Any, Callable

import attrs
from attrs import field, frozen


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
        from twisted.internet.endpoints import serverFromString

        try:
            ep = serverFromString(None, v)
        except Exception as e:
            raise ValueError(f"bad endpoint string {v!r}: {e}")
        port = getattr(ep, "_port", None)
        if isinstance(port, int) and not 0 <= port <= 65535:
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


@frozen
class Tokens:
    secret: str = _c(string, "change-me", secret=True)
    secrets: tuple = _c(string_list, (), secret=True)
    ttl: int = _c(integer(1, 366 * 86400), 3600)
    bind_ip: bool = _c(boolean, True)
    fast_listen: str = _c(endpoint(optional=True), "tcp:8081:interface=127.0.0.1")
    workers: int = _c(integer(1, 64), 1)

    @property
    def keys(self) -> tuple[str, ...]:
        """Signing keys, newest first: ``secrets`` when given, else ``secret``."""
        return self.secrets or (self.secret,)


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


@frozen
class Payture:
    enabled: bool = _c(boolean, False)
    host: str = _c(url, "")
    merchant_pay_key: str = _c(string, "", secret=True)
    merchant_add_key: str = _c(string, "", secret=True)
    password: str = _c(string, "", secret=True)


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


@frozen
class Megogo:
    enabled: bool = _c(boolean, False)
    xml_url: str = _c(url, "")
    billing_url: str = _c(url, "https://billing.megogo.net")
    partner_id: str = _c(string, "")
    salt: str = _c(string, "", secret=True)
    tariff_id: int = _c(integer(0), 0)
    additional_tariff_ids: tuple = _c(int_list, ())
    sync_interval: int = _c(integer(60), 86400)


@frozen
class Tvzavr:
    enabled: bool = _c(boolean, False)
    api_url: str = _c(url, "")
    plf: str = _c(string, "")
    secret: str = _c(string, "", secret=True)
    tvzavr_tariff_id: int = _c(integer(0), 0)
    subscription_tariff_id: int = _c(integer(0), 0)
    sync_interval: int = _c(integer(60), 86400)


@frozen
class Irdeto:
    enabled: bool = _c(boolean, False)
    host: str = _c(url, "")
    nationality: str = _c(string, "RUS")
    region_tag: str = _c(string, "MO")


def billing_clients(v: Any) -> tuple:
    if not isinstance(v, list):
        raise ValueError("expected a list of {client_id, api_key} tables")
    out = []
    for i, item in enumerate(v):
        if not isinstance(item, dict) or set(item) != {"client_id", "api_key"}:
            raise ValueError(f"entry {i}: expected exactly client_id and api_key")
        out.append((string(item["client_id"]), string(item["api_key"])))
    return tuple(out)


@frozen
class BillingAPI:
    enabled: bool = _c(boolean, False)
    clients: tuple = _c(billing_clients, (), secret=True)
    mode: str = _c(one_of("full", "transactional", "reduced"), "full")


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
    "megogo": Megogo,
    "tvzavr": Tvzavr,
    "irdeto": Irdeto,
    "billing_api": BillingAPI,
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
    megogo: Megogo = Megogo()
    tvzavr: Tvzavr = Tvzavr()
    irdeto: Irdeto = Irdeto()
    billing_api: BillingAPI = BillingAPI()
    source: str = "<defaults>"

    def replace(self, **sections: Any) -> "Config":
        return attrs.evolve(self, **sections)


def _section(name: str, cls: type, raw: Any) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"[{name}]: expected a table")
    known = {f.name: f for f in attrs.fields(cls)}
    values = {}
    for key, value in raw.items():
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
    if name == "tokens" and not all(s.keys):
        raise ConfigError("[tokens] secret: must not be empty")
    if name == "dreamkas" and s.enabled and not s.token:
        raise ConfigError("[dreamkas] token: required when enabled")
    if name == "payture" and s.enabled and not s.host:
        raise ConfigError("[payture] host: required when enabled")
    if name == "assist" and s.enabled and not s.shop_id:
        raise ConfigError("[assist] shop_id: required when enabled")


def from_dict(raw: dict, source: str = "<dict>") -> Config:
    sections = {}
    for name, value in raw.items():
        if name not in _SECTIONS:
            raise ConfigError(f"[{name}]: unknown section")
        sections[name] = _section(name, _SECTIONS[name], value)
    return Config(source=source, **sections)


def load(path: str | None) -> Config:
    """The validated configuration from ``path``, or the defaults when None."""
    if path is None:
        return Config()
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file")
    except PermissionError:
        raise ConfigError(f"{path}: permission denied")
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}")
    return from_dict(raw, source=path)


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
