"""
Stream tokens: compact, URL-safe, HMAC-SHA256-signed, verified without a database.

A token is the unpadded base64url encoding of::

    offset  size  field
    0       1     version (1)
    1       1     key id: names the signing key (see below)
    2       1     flags: bit 0 = 64-bit ids, bit 1 = bound to an IP
    3       4     expires, unix seconds (unsigned)
    7       4|8   account id
    11|15   4|8   channel id
    15|23   8     nonce (random)
    ...     16    MAC = HMAC-SHA256(key, all of the above)[:16]
    ...     16    IP tag = HMAC-SHA256(key, "ip" + all of the above + ip)[:16],
                  present only when the token is bound to an IP (it covers
                  the MAC too, so it authenticates the whole token)

All integers are big-endian.  Ids that fit in 32 bits use the narrow layout,
so a common token is 52 characters (74 when bound to an IP); 64-bit ids make
it 63 (84).  The encoding is canonical: only the string the encoder writes is
accepted (no padding, no other alphabet, and the unused low bits of the last
character zero), so a token has exactly one spelling.

The bound IP is covered by a MAC rather than carried: the token does not
disclose the viewer's address, and a checker that is told the viewer's address
verifies it.  It is a second MAC so that a token used from another address is
told apart (``ip_mismatch``) from a forged one (``bad_signature``).  IPv4
addresses bind exactly; IPv6 addresses bind their /64 (privacy extensions
rotate the interface identifier of one subscriber line within the /64), and
IPv4-mapped IPv6 addresses count as IPv4.

Keys: every configured secret is turned into a 32-byte HMAC key by
HMAC-SHA256(secret, "smartyd stream token key"), and its key id is the first
byte of SHA-256 over that key.  A key id rather than a position in the
configured list, because rotation prepends a new key and would shift the
positions of the old ones.  The newest key (the first) signs; every configured
key verifies; two keys sharing an id are both tried.

L{TokenCodec.verify} never raises: any input -- of any type, length or
content -- comes back as a refusal reason.  All MAC comparisons are
constant-time (L{hmac.compare_digest}).
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import os
import socket
import struct
from typing import Iterable, NamedTuple

VERSION = 1
MAC_SIZE = 16
NONCE_SIZE = 8
MAX_U32 = 2**32 - 1
MAX_U64 = 2**64 - 1

FLAG_WIDE = 0x01
FLAG_BOUND = 0x02
_KNOWN_FLAGS = FLAG_WIDE | FLAG_BOUND

# Refusal reasons of the codec (the checker adds the entitlement ones).
OK = "ok"
MALFORMED = "malformed"
UNKNOWN_KEY = "unknown_key"
BAD_SIGNATURE = "bad_signature"
EXPIRED = "expired"
IP_MISMATCH = "ip_mismatch"

_NARROW = struct.Struct(">BBBIII8s")
_WIDE = struct.Struct(">BBBIQQ8s")
_KEY_LABEL = b"smartyd stream token key"
_IP_LABEL = b"ip"
# base64url -> base64; "+" and "/" (not base64url) become "!", which the strict
# decoder refuses.
_FROM_URLSAFE = bytes.maketrans(b"-_+/", b"+/!!")
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")
_PADDING = {0: b"", 2: b"==", 3: b"="}
_V4_MAPPED = b"\x00" * 10 + b"\xff\xff"
_URLSAFE_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


class Claims(NamedTuple):
    """What a verified token says."""

    account: int
    channel: int
    expires: int
    nonce: bytes
    bound: bool


def _layouts() -> dict[int, tuple[int, struct.Struct, bool, frozenset[int]]]:
    """
    Encoded length in characters -> (raw length, header layout, bound, the
    characters the encoding may end with).

    The last character carries C{6 * chars - 8 * raw} bits beyond the data
    (4 in a common bound token, 2 in an unbound wide one).  The decoder ignores
    them, so only the characters with those bits zero -- the ones the encoder
    writes -- are accepted: without that a token would have up to 16
    spellings, and anything keyed on the token string (a streamer's cache, a
    rate limit, a revocation list) could be sidestepped by respelling it.
    """
    out = {}
    for layout in (_NARROW, _WIDE):
        for bound in (False, True):
            raw = layout.size + MAC_SIZE + (MAC_SIZE if bound else 0)
            chars = (raw * 8 + 5) // 6
            unused = chars * 6 - raw * 8
            last = frozenset(
                c for i, c in enumerate(_URLSAFE_ALPHABET) if i % (1 << unused) == 0
            )
            out[chars] = (raw, layout, bound, last)
    return out


_LAYOUTS = _layouts()


def pack_ip(ip: object) -> bytes | None:
    """
    The bytes an IP is bound by: 4 for IPv4 (also IPv4-mapped IPv6), the
    first 8 (the /64) for IPv6; None when C{ip} is not an address.
    """
    if not isinstance(ip, str):
        return None
    try:
        return socket.inet_pton(socket.AF_INET, ip)
    except (OSError, ValueError):
        pass
    try:
        packed = socket.inet_pton(socket.AF_INET6, ip)
    except (OSError, ValueError):
        return None
    if packed[:12] == _V4_MAPPED:
        return packed[12:]
    return packed[:8]


def derive_key(secret: str) -> bytes:
    """The 32-byte HMAC key of a configured secret."""
    return hmac.digest(secret.encode("utf-8"), _KEY_LABEL, hashlib.sha256)


def key_id(key: bytes) -> int:
    return hashlib.sha256(key).digest()[0]


class _Key:
    """One derived key, pre-keyed so each MAC costs one copy, not a key schedule."""

    __slots__ = ("id", "_hmac")

    def __init__(self, secret: str):
        key = derive_key(secret)
        self.id = key_id(key)
        self._hmac = hmac.new(key, digestmod=hashlib.sha256)

    def mac(self, data: bytes) -> bytes:
        h = self._hmac.copy()
        h.update(data)
        return h.digest()[:MAC_SIZE]


class TokenCodec:
    """
    Mints and verifies stream tokens with the configured keys.

    @param secrets: the signing secrets, newest first (C{cfg.tokens.keys}).
    @param bind_ip: whether minted tokens are bound to the viewer's IP.
    """

    def __init__(self, secrets: Iterable[str], bind_ip: bool = True):
        secrets = tuple(secrets)
        if not secrets or not all(secrets):
            raise ValueError("at least one non-empty token secret is required")
        keys = [_Key(s) for s in secrets]
        self.bind_ip = bind_ip
        self._signer = keys[0]
        by_id: dict[int, tuple[_Key, ...]] = {}
        for k in keys:
            by_id[k.id] = by_id.get(k.id, ()) + (k,)
        self._by_id = by_id

    # -- minting ---------------------------------------------------------------------
    def mint(
        self,
        account: int,
        channel: int,
        expires: int,
        ip: str | None = None,
        nonce: bytes | None = None,
    ) -> str:
        """
        A token for C{account} to watch C{channel} until C{expires}.

        With C{bind_ip} the token is bound to C{ip}, which must then be an
        address.  Raises L{ValueError} for values the layout cannot carry.
        """
        if not (0 <= account <= MAX_U64 and 0 <= channel <= MAX_U64):
            raise ValueError("account and channel ids must be 0..2**64-1")
        if not 0 <= expires <= MAX_U32:
            raise ValueError("expiry out of range")
        if nonce is None:
            nonce = os.urandom(NONCE_SIZE)
        elif len(nonce) != NONCE_SIZE:
            raise ValueError(f"the nonce is {NONCE_SIZE} bytes")
        flags = 0
        packed_ip = None
        if self.bind_ip:
            packed_ip = pack_ip(ip)
            if packed_ip is None:
                raise ValueError(f"cannot bind a token to {ip!r}: not an IP address")
            flags |= FLAG_BOUND
        layout = _NARROW
        if account > MAX_U32 or channel > MAX_U32:
            layout = _WIDE
            flags |= FLAG_WIDE
        key = self._signer
        header = layout.pack(VERSION, key.id, flags, expires, account, channel, nonce)
        mac = key.mac(header)
        raw = header + mac
        if packed_ip is not None:
            raw += key.mac(_IP_LABEL + header + mac + packed_ip)
        return binascii.b2a_base64(raw, newline=False).translate(_TO_URLSAFE).rstrip(
            b"="
        ).decode("ascii")

    # -- verifying ---------------------------------------------------------------------
    def verify(self, token: object, ip: object, now: float) -> tuple[str, Claims | None]:
        """
        Check C{token} for use from C{ip} (a string, or None when unknown) at
        C{now}; return C{("ok", claims)} or C{(reason, claims or None)}.

        The claims are returned with every reason after the signature has been
        verified (C{expired}, C{ip_mismatch}), so the caller can name the
        account; they are None for C{malformed}, C{unknown_key} and
        C{bad_signature}.  Never raises.
        """
        try:
            layout_of = _LAYOUTS.get(len(token))  # type: ignore[arg-type]
            if layout_of is None:
                return MALFORMED, None
            size, layout, bound, last = layout_of
            encoded = token.encode("ascii")  # type: ignore[union-attr]
            if encoded[-1] not in last:  # one spelling per token, see _layouts
                return MALFORMED, None
            raw = binascii.a2b_base64(
                encoded.translate(_FROM_URLSAFE) + _PADDING[len(encoded) % 4],
                strict_mode=True,
            )
        except (TypeError, AttributeError, LookupError, ValueError, binascii.Error):
            return MALFORMED, None
        if len(raw) != size:
            return MALFORMED, None
        hsize = layout.size
        header = raw[:hsize]
        version, kid, flags, expires, account, channel, nonce = layout.unpack(header)
        if (
            version != VERSION
            or flags & ~_KNOWN_FLAGS
            or bool(flags & FLAG_WIDE) is not (layout is _WIDE)
            or bool(flags & FLAG_BOUND) is not bound
        ):
            return MALFORMED, None
        keys = self._by_id.get(kid)
        if keys is None:
            return UNKNOWN_KEY, None
        mac = raw[hsize : hsize + MAC_SIZE]
        # A bound token's IP tag covers header and MAC: when it verifies, so
        # does the token (one HMAC on the common path).  Only when it does not
        # is the MAC checked alone, to tell another IP from a forgery.
        packed_ip = pack_ip(ip) if bound and ip is not None else None
        ip_ok = not bound
        for key in keys:
            if packed_ip is not None and hmac.compare_digest(
                key.mac(_IP_LABEL + header + mac + packed_ip), raw[hsize + MAC_SIZE :]
            ):
                ip_ok = True
                break
            if hmac.compare_digest(key.mac(header), mac):
                break
        else:
            return BAD_SIGNATURE, None
        claims = Claims(account, channel, expires, nonce, bound)
        if now >= expires:
            return EXPIRED, claims
        if not ip_ok:
            if ip is not None and packed_ip is None:
                return MALFORMED, claims
            return IP_MISMATCH, claims
        return OK, claims
