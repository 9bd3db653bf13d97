"""What a TV Middleware method is given: who calls (L{Session}) and with what (L{Call})."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Mapping

from attrs import frozen


@frozen
class Session:
    """
    A logged-in device: the account (abonement) behind a valid ``authkey``.
    """

    account_id: int
    customer_id: int
    abonement: str          # the account's login
    device_uid: str         # "" when the device sent none
    device: str             # the spec's ``device`` type, e.g. "android_stb"
    ip: str                 # the address the session was opened from


@frozen
class Call:
    """
    One request to one method.

    @ivar params: the query parameters, decoded, one value per name (the last).
    @ivar session: the caller's session; None for methods that need none
        (``Login``, ``HealthCheck``).
    @ivar ip: the caller's address (trusted proxies applied).
    @ivar now: the request's time, timezone-aware UTC, from the injected clock.
    @ivar reactor: the clock/reactor (``seconds()``, ``callLater``).
    @ivar db: L{smartyd.db.Database}.
    @ivar cfg: L{smartyd.config.Config}, the whole validated configuration.
    @ivar metrics: L{smartyd.metrics.Metrics}.
    @ivar deps: feature handles a method may need, by name (e.g. ``"vod"``,
        ``"streams"``); a missing name means that feature is not enabled.
    """

    params: Mapping[str, str]
    session: Session | None
    ip: str
    now: datetime
    reactor: Any
    db: Any
    cfg: Any
    metrics: Any
    deps: Mapping[str, Any]
