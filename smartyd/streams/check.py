"""
The token check, shared by the Klein route and the fast listener.

L{Checker.check} takes what a streamer sends -- query parameters and two
headers -- and answers from the token alone plus the in-memory entitlement
snapshot: no database, no I/O, no Deferreds.  It accepts three dialects:

- plain: C{token}, C{ip}, C{name} (the channel name) in the query;
- Flussonic's auth backend: C{name}, C{ip}, C{token}, C{session_id}, C{proto},
  C{referer} in the query (the last three are not needed to decide);
- nginx C{auth_request}: the viewer's original URI in C{X-Original-URI} (the
  token in its query string) and the viewer's address in C{X-Real-IP}; the
  channel name may be added to the subrequest's own query as C{name};
- Cesbo Astra's HTTP auth backend: the viewer's query copied (C{token}) and
  the headers C{X-Session-ID}, C{X-Channel-ID} (Astra's own channel id,
  matched against a channel's name or C{streamer_id}), C{X-Real-IP},
  C{X-Real-Path} (the viewer's path: the fallback for the channel),
  C{X-Real-UA}, C{X-Real-Host}; an allowed answer names the session with
  the account's login (C{X-Session-Name}).

Sources relied on (read, not copied): Flussonic's authorization backend API
(https://flussonic.com/doc/api/authorization -- the query parameters,
C{request_type} new_session/update_session, C{session_id}) and its session
limit page (https://flussonic.com/doc/limit-sessions-per-user/ -- C{X-UserId}
with C{X-Max-Sessions}, and that a banned session stays banned for
C{X-AuthDuration}); Cesbo's middleware authorization page
(https://help.cesbo.com/astra/delivery/http-hls-auth/middleware and
https://astra.cesbo.com/en/delivery/http/auth-backend -- the GET with the
viewer's query parameters, the C{X-Session-ID}, C{X-Channel-ID},
C{X-Real-IP}, C{X-Real-Path}, C{X-Real-UA}, C{X-Real-Host} headers, the
C{X-Session-Name} response header, 200 allows).

An account with a concurrent-session limit (L{entitlements.Snapshot.limits})
holds a lease per session (L{sessions.SessionLeases}); a new session past the
limit is refused with C{too_many_sessions}.  Allowed answers for such an
account carry C{X-Max-Sessions} (Flussonic enforces it too) and an
C{X-AuthDuration} of at most half the lease, so that re-checks renew it.

Before the first snapshot has loaded, C{[tokens] when_unavailable} decides:
C{deny} refuses every check (C{not_ready}), C{allow} lets through every token
whose signature, expiry and IP binding verify (C{entitlement_unknown}; no
session limit is known then either), never a bad token.

The viewer's address is the C{ip} parameter, else C{X-Real-IP}, else the
address of whoever asked (a viewer asking directly).  A request that names no
channel is checked against the channel the token was minted for.

Counting is part of the check: each outcome/reason pair has one pre-resolved
counter object with an C{inc()} method (a Prometheus child in the daemon, a
plain L{Tally} in a worker process), so the hot path does one attribute call.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping, NamedTuple
from urllib.parse import unquote_plus

from twisted.logger import Logger

from smartyd.streams import entitlements, tokens
from smartyd.streams.sessions import SessionLeases, session_key

log = Logger()

# -- outcomes and reasons ---------------------------------------------------------------
ALLOWED = "allowed"
DENIED = "denied"
UNAVAILABLE = "unavailable"

OK = tokens.OK
MALFORMED = tokens.MALFORMED
UNKNOWN_KEY = tokens.UNKNOWN_KEY
BAD_SIGNATURE = tokens.BAD_SIGNATURE
EXPIRED = tokens.EXPIRED
IP_MISMATCH = tokens.IP_MISMATCH
CHANNEL_MISMATCH = "channel_mismatch"
UNKNOWN_ACCOUNT = entitlements.UNKNOWN_ACCOUNT
BLOCKED = entitlements.BLOCKED
NOT_ENTITLED = entitlements.NOT_ENTITLED
NOT_READY = "not_ready"
TOO_MANY_SESSIONS = "too_many_sessions"
ENTITLEMENT_UNKNOWN = "entitlement_unknown"

#: Every reason a check can give, with its outcome (the metric labels).
REASONS: dict[str, str] = {
    OK: ALLOWED,
    MALFORMED: DENIED,
    UNKNOWN_KEY: DENIED,
    BAD_SIGNATURE: DENIED,
    EXPIRED: DENIED,
    IP_MISMATCH: DENIED,
    CHANNEL_MISMATCH: DENIED,
    UNKNOWN_ACCOUNT: DENIED,
    BLOCKED: DENIED,
    NOT_ENTITLED: DENIED,
    NOT_READY: UNAVAILABLE,
    TOO_MANY_SESSIONS: DENIED,
    ENTITLEMENT_UNKNOWN: ALLOWED,
}

#: Seconds a streamer may cache an allowed answer (X-AuthDuration): short, so
#: that a block reaches running sessions quickly; never past the token's expiry.
AUTH_DURATION = 60
#: Seconds a streamer may cache a refusal.
DENY_DURATION = 10


class Verdict(NamedTuple):
    """
    The answer to one check.

    @ivar allowed: play or not.
    @ivar account_id: the token's account once its signature is verified, else None.
    @ivar reason: C{"ok"} or the refusal reason (C{"not_ready"}: no snapshot yet).
    @ivar duration: seconds the streamer may cache this answer (X-AuthDuration).
    @ivar max_sessions: the account's session limit on an allowed answer (X-Max-Sessions).
    @ivar session_name: the account's login on an allowed Astra answer (X-Session-Name).
    """

    allowed: bool
    account_id: int | None
    reason: str
    duration: int
    max_sessions: int | None = None
    session_name: str | None = None


class Tally:
    """A plain counter with Prometheus' C{inc()} shape, for single-threaded hot paths."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        self.value += amount


class Tallies:
    """One L{Tally} per (outcome, reason); L{take} returns and resets what was counted."""

    def __init__(self) -> None:
        self.counts = {reason: Tally() for reason in REASONS}

    def __call__(self, outcome: str, reason: str) -> Tally:
        return self.counts[reason]

    def take(self) -> list[tuple[str, str, int]]:
        out = []
        for reason, tally in self.counts.items():
            if tally.value:
                out.append((REASONS[reason], reason, tally.value))
                tally.value = 0
        return out


def prometheus_counters(metrics: Any, listener: str) -> Callable[[str, str], Any]:
    """Counter children of C{smartyd_token_checks} for one listener label."""
    return lambda outcome, reason: metrics.token_checks.labels(listener, outcome, reason)


def add_counts(metrics: Any, listener: str, counts: Any) -> None:
    """
    Add C{[(outcome, reason, n), ...]} (from L{Tallies.take}, maybe from a
    worker process) to C{smartyd_token_checks}; anything malformed is ignored.
    """
    if not isinstance(counts, (list, tuple)):
        return
    for item in counts:
        if (
            isinstance(item, (list, tuple))
            and len(item) == 3
            and REASONS.get(item[1]) == item[0]
            and isinstance(item[2], int)
            and item[2] > 0
        ):
            metrics.token_checks.labels(listener, item[0], item[1]).inc(item[2])


# -- query strings ------------------------------------------------------------------------
def parse_query(query: str) -> dict[str, str]:
    """
    C{a=1&b=2} -> C{{"a": "1", "b": "2"}}: the first value of each name,
    percent-decoded only where needed.  Never raises on a string.
    """
    params: dict[str, str] = {}
    for pair in query.split("&"):
        name, _, value = pair.partition("=")
        if "%" in name or "+" in name:
            name = unquote_plus(name)
        if name in params:
            continue
        if "%" in value or "+" in value:
            value = unquote_plus(value)
        params[name] = value
    return params


def astra_channel(snapshot: entitlements.Snapshot, headers: Mapping[str, str]) -> int | None:
    """
    The channel an Astra request names: C{X-Channel-ID} as a channel name or
    C{streamer_id}, else the first segment of C{X-Real-Path} that is one
    (C{/ch1/index.m3u8}, C{/play/a014}); None when nothing matches.
    """
    astra_id = headers.get("x-channel-id")
    if astra_id:
        found = snapshot.channels.get(astra_id)
        if found is None:
            found = snapshot.streamer_ids.get(astra_id)
        if found is not None:
            return found
    path = headers.get("x-real-path")
    if path:
        path, _, _ = path.partition("?")
        for segment in path.split("/"):
            if segment:
                found = snapshot.channels.get(segment)
                if found is None:
                    found = snapshot.streamer_ids.get(segment)
                if found is not None:
                    return found
    return None


def token_from_uri(uri: str) -> str | None:
    """The C{token} query parameter of an original request URI (nginx C{auth_request})."""
    _, sep, query = uri.partition("?")
    if not sep:
        return None
    query, _, _ = query.partition("#")
    return parse_query(query).get("token")


# -- the check ----------------------------------------------------------------------------
# One check in this many is timed into smartyd_token_check_seconds.
TIMING_SAMPLE = 16


class Checker:
    """
    Decides token checks for one listener.

    @param codec: the L{tokens.TokenCodec}.
    @param holder: anything with a C{snapshot} attribute: an
        L{entitlements.Snapshot}, or None before the first load.
    @param clock: C{seconds()} is "now".
    @param counter: C{counter(outcome, reason)} -> an object with C{inc()}.
    @param listener: the listener's name, for the log.
    @param log_refusals: log each refusal at debug level (set it only when the
        log level is debug: the event costs even when it is filtered out).
    @param sessions: the process's L{SessionLeases} (shared with its other
        listener); by default one of this checker's own, never exchanged.
    @param when_unavailable: C{"deny"} or C{"allow"} before the first snapshot.
    @param durations: with C{observe(seconds)} (a L{smartyd.metrics.Durations}):
        the time of one check in C{sample_every} (the first, then every
        C{sample_every}-th), by C{timer} (a monotonic clock in seconds), for
        C{smartyd_token_check_seconds}; None measures nothing.  Sampled because
        timing every check cost the fast listener about 7 % of its rate
        (bench/tokens.sh); a sample of one in 16 at tens of thousands of checks
        a second still gives its quantiles.
    """

    def __init__(
        self,
        codec: tokens.TokenCodec,
        holder: Any,
        clock: Any,
        counter: Callable[[str, str], Any],
        listener: str = "http",
        log_refusals: bool = False,
        auth_duration: int = AUTH_DURATION,
        deny_duration: int = DENY_DURATION,
        sessions: SessionLeases | None = None,
        when_unavailable: str = "deny",
        durations: Any = None,
        timer: Callable[[], float] = time.perf_counter,
        sample_every: int = TIMING_SAMPLE,
    ):
        self._codec = codec
        self._holder = holder
        self._clock = clock
        self._counts = {reason: counter(outcome, reason) for reason, outcome in REASONS.items()}
        self._ok = self._counts[OK]
        self.listener = listener
        self._log_refusals = log_refusals
        self._auth_duration = auth_duration
        self._deny_duration = deny_duration
        self._not_ready = Verdict(False, None, NOT_READY, 0)
        self._sessions = sessions if sessions is not None else SessionLeases()
        # A limited account's allowed answer is cached at most half a lease,
        # so that the streamer's re-check renews the lease in time.
        self._limited_duration = max(1, min(auth_duration, int(self._sessions.lease // 2)))
        self._allow_unready = when_unavailable == "allow"
        if durations is not None:
            self._durations, self._timer = durations, timer
            self._every, self._countdown = sample_every, 1
            self.check = self._timed_check  # callers bind self.check once

    def _timed_check(self, params: Mapping[str, str], headers: Mapping[str, str],
                     peer: str | None = None) -> Verdict:
        self._countdown -= 1
        if self._countdown:
            return Checker.check(self, params, headers, peer)
        self._countdown = self._every
        started = self._timer()
        verdict = Checker.check(self, params, headers, peer)
        self._durations.observe(self._timer() - started)
        return verdict

    def check(
        self, params: Mapping[str, str], headers: Mapping[str, str], peer: str | None = None
    ) -> Verdict:
        """
        Decide one check.  C{params}: query parameters (first values);
        C{headers}: lower-case names -> values (only C{x-original-uri} and
        C{x-real-ip} are read); C{peer}: the caller's address.  Never raises
        on any input of these types.
        """
        snapshot = self._holder.snapshot
        if snapshot is None and not self._allow_unready:
            self._counts[NOT_READY].inc()
            return self._not_ready
        token = params.get("token")
        if not token:
            uri = headers.get("x-original-uri") or headers.get("x-real-path")
            token = token_from_uri(uri) if uri else None
        ip = params.get("ip") or headers.get("x-real-ip") or peer
        now = self._clock.seconds()
        reason, claims = self._codec.verify(token, ip, now)
        if reason == OK:
            left = claims.expires - now
            if snapshot is None:  # when_unavailable = "allow": the token is all we know
                self._counts[ENTITLEMENT_UNKNOWN].inc()
                return Verdict(True, claims.account, ENTITLEMENT_UNKNOWN,
                               max(1, min(self._deny_duration, int(left))))
            name = params.get("name")
            astra = "x-session-id" in headers or "x-channel-id" in headers
            if name:
                named = snapshot.channels.get(name)
            elif astra:
                named = astra_channel(snapshot, headers)
            else:
                named = None
            if (name or named is not None) and named != claims.channel:
                reason = CHANNEL_MISMATCH
            else:
                reason = snapshot.entitlement(claims.account, claims.channel)
            if reason == OK:
                limit = snapshot.limits.get(claims.account)
                if limit is None:
                    duration = self._auth_duration
                elif self._sessions.admit(claims.account, limit,
                                          session_key(params, headers, token), now):
                    duration = self._limited_duration
                else:
                    reason = TOO_MANY_SESSIONS
            if reason == OK:
                self._ok.inc()
                return Verdict(
                    True,
                    claims.account,
                    OK,
                    duration if left >= duration else max(1, int(left)),
                    limit,
                    snapshot.logins.get(claims.account) if astra else None,
                )
        self._counts[reason].inc()
        account_id = None if claims is None else claims.account
        if self._log_refusals:
            log.debug(
                "token check refused: {reason}",
                reason=reason,
                listener=self.listener,
                account=account_id,
                channel=None if claims is None else claims.channel,
                name=params.get("name"),
                ip=ip,
            )
        return Verdict(False, account_id, reason, self._deny_duration)
