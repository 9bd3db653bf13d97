"""
The stream token codec: format, round trips, every codec refusal, key
rotation, IP binding, and Hypothesis on the decoder (no input crashes it, no
altered token passes).
"""

import base64
import hashlib
import hmac
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smartyd.streams import tokens
from smartyd.streams.tokens import Claims, TokenCodec, derive_key, key_id, pack_ip

NOW = 1_700_000_000
EXPIRES = NOW + 3600
NONCE = b"\x01\x02\x03\x04\x05\x06\x07\x08"


def decode(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def test_round_trip_bound_token():
    codec = TokenCodec(["s3cret"], bind_ip=True)
    token = codec.mint(42, 7, EXPIRES, ip="203.0.113.9")
    assert len(token) == 74
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    reason, claims = codec.verify(token, "203.0.113.9", NOW)
    assert reason == "ok"
    assert (claims.account, claims.channel, claims.expires, claims.bound) == (42, 7, EXPIRES, True)


def test_round_trip_unbound_token_needs_no_ip():
    codec = TokenCodec(["s3cret"], bind_ip=False)
    token = codec.mint(42, 7, EXPIRES)
    assert len(token) == 52
    assert codec.verify(token, None, NOW)[0] == "ok"
    assert codec.verify(token, "198.51.100.1", NOW)[0] == "ok"


def test_64_bit_ids_use_the_wide_layout():
    codec = TokenCodec(["s3cret"], bind_ip=True)
    big = 2**63 - 1
    token = codec.mint(big, 2**40, EXPIRES, ip="10.0.0.1")
    assert len(token) == 84
    reason, claims = codec.verify(token, "10.0.0.1", NOW)
    assert reason == "ok" and claims.account == big and claims.channel == 2**40


def test_layout_matches_the_documented_format():
    """The module docstring is the spec: recompute a token from it by hand."""
    codec = TokenCodec(["s3cret"], bind_ip=True)
    token = codec.mint(42, 7, EXPIRES, ip="203.0.113.9", nonce=NONCE)
    key = hmac.digest(b"s3cret", b"smartyd stream token key", hashlib.sha256)
    kid = hashlib.sha256(key).digest()[0]
    header = struct.pack(">BBBIII", 1, kid, 0x02, EXPIRES, 42, 7) + NONCE
    mac = hmac.digest(key, header, hashlib.sha256)[:16]
    ip_tag = hmac.digest(key, b"ip" + header + mac + bytes([203, 0, 113, 9]), "sha256")[:16]
    assert decode(token) == header + mac + ip_tag
    assert "=" not in token


def test_every_codec_refusal_reason():
    codec = TokenCodec(["s3cret"], bind_ip=True)
    token = codec.mint(42, 7, EXPIRES, ip="203.0.113.9")
    assert codec.verify("", "203.0.113.9", NOW) == ("malformed", None)
    assert codec.verify("not a token", "203.0.113.9", NOW) == ("malformed", None)
    assert codec.verify(token[:-1] + "*", "203.0.113.9", NOW) == ("malformed", None)
    plus = token.replace("-", "+").replace("_", "/")
    if plus != token:  # standard base64 spelling of the same bytes
        assert codec.verify(plus, "203.0.113.9", NOW) == ("malformed", None)
    other = TokenCodec(["another key"], bind_ip=True)
    assert other.verify(token, "203.0.113.9", NOW) == ("unknown_key", None)
    raw = bytearray(decode(token))
    raw[8] ^= 0x01  # the account id
    forged = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    assert codec.verify(forged, "203.0.113.9", NOW) == ("bad_signature", None)
    reason, claims = codec.verify(token, "203.0.113.9", EXPIRES)
    assert reason == "expired" and claims.account == 42
    assert codec.verify(token, "203.0.113.9", EXPIRES - 1)[0] == "ok"
    assert codec.verify(token, "203.0.113.10", NOW)[0] == "ip_mismatch"
    assert codec.verify(token, None, NOW)[0] == "ip_mismatch"
    assert codec.verify(token, "not-an-ip", NOW)[0] == "malformed"


ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def lenient_decode(token: str) -> bytes:
    """What a forgiving base64 decoder makes of C{token} (junk and padding ignored)."""
    return base64.b64decode(token.replace("-", "+").replace("_", "/") + "==", validate=False)


@pytest.mark.parametrize("account,bind_ip,unused_bits", [
    (42, True, 4),      # 55 bytes in 74 characters: the common token
    (2**40, False, 2),  # 47 bytes in 63 characters
])
def test_only_the_canonical_spelling_verifies(account, bind_ip, unused_bits):
    """
    The last character's unused low bits must be zero: one token, one string,
    so anything keyed on the string (caches, limits, revocation) holds.
    """
    codec = TokenCodec(["s3cret"], bind_ip=bind_ip)
    ip = "203.0.113.9" if bind_ip else None
    token = codec.mint(account, 7, EXPIRES, ip=ip)
    spellings = [token[:-1] + c for c in ALPHABET
                 if lenient_decode(token[:-1] + c) == lenient_decode(token)]
    assert len(spellings) == 2**unused_bits and token in spellings
    for other in spellings:
        expected = "ok" if other == token else "malformed"
        assert codec.verify(other, ip, NOW)[0] == expected, other


def test_a_forged_token_is_bad_signature_not_ip_mismatch_from_any_ip():
    codec = TokenCodec(["s3cret"], bind_ip=True)
    raw = bytearray(decode(codec.mint(42, 7, EXPIRES, ip="203.0.113.9")))
    raw[20] ^= 0xFF  # the nonce
    forged = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    for ip in ("203.0.113.9", "192.0.2.1", None, "garbage"):
        assert codec.verify(forged, ip, NOW) == ("bad_signature", None)


def test_the_ip_tag_covers_the_mac():
    """Changing the MAC of a bound token breaks it even from the right IP."""
    codec = TokenCodec(["s3cret"], bind_ip=True)
    raw = bytearray(decode(codec.mint(42, 7, EXPIRES, ip="203.0.113.9")))
    raw[30] ^= 0x01  # inside the MAC
    altered = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    assert codec.verify(altered, "203.0.113.9", NOW)[0] == "bad_signature"


def test_key_rotation_newest_signs_all_verify():
    old = TokenCodec(["old"], bind_ip=False)
    rotated = TokenCodec(["new", "old"], bind_ip=False)
    retired = TokenCodec(["new"], bind_ip=False)
    old_token = old.mint(1, 2, EXPIRES)
    new_token = rotated.mint(1, 2, EXPIRES)
    assert rotated.verify(old_token, None, NOW)[0] == "ok"
    assert rotated.verify(new_token, None, NOW)[0] == "ok"
    assert retired.verify(new_token, None, NOW)[0] == "ok"  # signed by "new"
    assert retired.verify(old_token, None, NOW)[0] == "unknown_key"
    assert old.verify(new_token, None, NOW)[0] == "unknown_key"


def test_keys_sharing_a_key_id_are_both_tried():
    base = key_id(derive_key("k0"))
    twin = next(f"k{i}" for i in range(1, 10_000) if key_id(derive_key(f"k{i}")) == base)
    both = TokenCodec(["k0", twin], bind_ip=True)
    token = TokenCodec([twin], bind_ip=True).mint(5, 6, EXPIRES, ip="192.0.2.7")
    assert both.verify(token, "192.0.2.7", NOW)[0] == "ok"
    assert both.verify(token, "192.0.2.8", NOW)[0] == "ip_mismatch"


def test_ip_binding_ipv6_binds_the_64_and_mapped_ipv4_is_ipv4():
    codec = TokenCodec(["s3cret"], bind_ip=True)
    v6 = codec.mint(1, 2, EXPIRES, ip="2001:db8:1:2::10")
    assert codec.verify(v6, "2001:db8:1:2:aaaa:bbbb:cccc:dddd", NOW)[0] == "ok"
    assert codec.verify(v6, "2001:db8:1:3::10", NOW)[0] == "ip_mismatch"
    v4 = codec.mint(1, 2, EXPIRES, ip="192.0.2.1")
    assert codec.verify(v4, "::ffff:192.0.2.1", NOW)[0] == "ok"
    assert codec.verify(v4, "192.0.2.2", NOW)[0] == "ip_mismatch"
    assert pack_ip("192.0.2.1") == bytes([192, 0, 2, 1])
    assert pack_ip("fe80::1%eth0") is None and pack_ip("1.2.3") is None and pack_ip(None) is None


def test_mint_refuses_what_it_cannot_carry():
    codec = TokenCodec(["s3cret"], bind_ip=True)
    with pytest.raises(ValueError):
        codec.mint(1, 2, EXPIRES, ip=None)
    with pytest.raises(ValueError):
        codec.mint(1, 2, EXPIRES, ip="nope")
    with pytest.raises(ValueError):
        codec.mint(2**64, 2, EXPIRES, ip="192.0.2.1")
    with pytest.raises(ValueError):
        codec.mint(1, 2, 2**32, ip="192.0.2.1")
    with pytest.raises(ValueError):
        TokenCodec([])
    with pytest.raises(ValueError):
        TokenCodec([""])


def test_nonces_make_every_token_distinct():
    codec = TokenCodec(["s3cret"], bind_ip=False)
    assert len({codec.mint(1, 2, EXPIRES) for _ in range(100)}) == 100


# -- Hypothesis ------------------------------------------------------------------------------
CODEC = TokenCodec(["s3cret", "older"], bind_ip=True)
UNBOUND = TokenCodec(["s3cret", "older"], bind_ip=False)
ips = st.one_of(st.none(), st.text(max_size=50), st.ip_addresses().map(str))


@given(token=st.one_of(st.text(max_size=200), st.binary(max_size=200), st.integers(),
                       st.none(), st.lists(st.integers())),
       ip=st.one_of(ips, st.binary(max_size=20)), now=st.floats(allow_nan=True))
def test_decoder_never_raises_on_anything(token, ip, now):
    reason, claims = CODEC.verify(token, ip, now)
    assert reason in {"malformed", "unknown_key", "bad_signature", "expired", "ip_mismatch", "ok"}
    assert reason != "ok"


@given(raw=st.binary(min_size=30, max_size=70), ip=ips)
def test_random_bytes_of_token_length_never_verify(raw, ip):
    token = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    reason, _ = CODEC.verify(token, ip, NOW)
    assert reason != "ok"


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(account=st.integers(0, 2**64 - 1), channel=st.integers(0, 2**64 - 1),
       expires=st.integers(1, 2**32 - 1), ip=st.ip_addresses().map(str))
def test_round_trip_property(account, channel, expires, ip):
    token = CODEC.mint(account, channel, expires, ip=ip)
    reason, claims = CODEC.verify(token, ip, expires - 1)
    assert reason == "ok"
    assert claims == Claims(account, channel, expires, claims.nonce, True)


@given(data=st.data())
def test_any_single_change_to_a_token_is_refused(data):
    token = CODEC.mint(42, 7, EXPIRES, ip="203.0.113.9")
    position = data.draw(st.integers(0, len(token) - 1))
    char = data.draw(st.sampled_from(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+/=.~ %"))
    altered = token[:position] + char + token[position + 1:]
    if altered != token:
        assert CODEC.verify(altered, "203.0.113.9", NOW)[0] != "ok"


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(account=st.integers(0, 2**64 - 1), channel=st.integers(0, 2**64 - 1),
       bind_ip=st.booleans(), ip=st.ip_addresses().map(str), data=st.data())
def test_every_non_canonical_spelling_of_a_valid_token_is_refused(
        account, channel, bind_ip, ip, data):
    """
    Any other string that a forgiving decoder turns into the same bytes -- the
    last character's unused bits set, padding added, junk inserted -- is refused.
    """
    codec = CODEC if bind_ip else UNBOUND
    token = codec.mint(account, channel, EXPIRES, ip=ip)
    raw = lenient_decode(token)
    unused = len(token) * 6 - len(raw) * 8
    last = ALPHABET.index(token[-1])
    spelling = token[:-1] + ALPHABET[last | data.draw(st.integers(0, 2**unused - 1))]
    if data.draw(st.booleans()):
        at = data.draw(st.integers(0, len(spelling)))
        junk = data.draw(st.sampled_from([".", " ", "\n", "%", "~"]))
        spelling = spelling[:at] + junk + spelling[at:]
    spelling += data.draw(st.sampled_from(["", "=", "=="]))
    assert lenient_decode(spelling) == raw  # the same token, spelled differently
    if spelling == token:
        assert codec.verify(spelling, ip, NOW)[0] == "ok"
    else:
        assert codec.verify(spelling, ip, NOW) == ("malformed", None)


def test_codec_constants_are_the_documented_reasons():
    assert (tokens.MALFORMED, tokens.UNKNOWN_KEY, tokens.BAD_SIGNATURE, tokens.EXPIRED,
            tokens.IP_MISMATCH) == ("malformed", "unknown_key", "bad_signature", "expired",
                                    "ip_mismatch")


# -- held to precise vectors (bench/mutants.sh) ----------------------------------------------
def test_the_layouts_table():
    """Computed once at import: called here so that a change to it is seen."""
    every = frozenset(ALPHABET.encode())
    assert tokens._layouts() == {
        52: (39, tokens._NARROW, False, every),                       # no unused bits
        74: (55, tokens._NARROW, True, frozenset(b"AQgw")),           # 4 unused bits
        63: (47, tokens._WIDE, False, frozenset(ALPHABET[::4].encode())),  # 2
        84: (63, tokens._WIDE, True, every),
    }
    assert tokens._LAYOUTS == tokens._layouts()


def test_codecs_bind_to_the_ip_unless_told_not_to():
    codec = TokenCodec(["s3cret"])
    assert codec.bind_ip is True
    assert len(codec.mint(1, 2, EXPIRES, ip="192.0.2.1")) == 74


def test_refusals_of_mint_and_of_the_keys_say_why():
    codec = TokenCodec(["s3cret"], bind_ip=True)
    for call, message in [
        (lambda: TokenCodec([]), "at least one non-empty token secret is required"),
        (lambda: TokenCodec(["a", ""]), "at least one non-empty token secret is required"),
        (lambda: codec.mint(-1, 2, EXPIRES, ip="192.0.2.1"),
         "account and channel ids must be 0..2**64-1"),
        (lambda: codec.mint(1, 2**64, EXPIRES, ip="192.0.2.1"),
         "account and channel ids must be 0..2**64-1"),
        (lambda: codec.mint(1, 2, -1, ip="192.0.2.1"), "expiry out of range"),
        (lambda: codec.mint(1, 2, EXPIRES, ip="192.0.2.1", nonce=b"1234567"),
         "the nonce is 8 bytes"),
        (lambda: codec.mint(1, 2, EXPIRES, ip="nope"),
         "cannot bind a token to 'nope': not an IP address"),
    ]:
        with pytest.raises(ValueError) as caught:
            call()
        assert str(caught.value) == message


@pytest.mark.parametrize("account, channel, expires, length", [
    (0, 0, 0, 52), (tokens.MAX_U32, tokens.MAX_U32, tokens.MAX_U32, 52),
    (tokens.MAX_U32 + 1, 0, 1, 63), (0, tokens.MAX_U32 + 1, 1, 63),
    (tokens.MAX_U64, tokens.MAX_U64, tokens.MAX_U32, 63),
])
def test_the_extremes_each_layout_carries(account, channel, expires, length):
    codec = TokenCodec(["s3cret"], bind_ip=False)
    token = codec.mint(account, channel, expires, nonce=NONCE)
    assert len(token) == length
    claims = Claims(account, channel, expires, NONCE, False)
    assert codec.verify(token, None, expires - 1) == ("ok", claims)
    assert codec.verify(token, None, expires) == ("expired", claims)


def test_the_signer_and_its_twin_both_verify():
    base = key_id(derive_key("k0"))
    twin = next(f"k{i}" for i in range(1, 10_000) if key_id(derive_key(f"k{i}")) == base)
    for secrets in (["k0", twin], [twin, "k0"]):
        both = TokenCodec(secrets, bind_ip=False)
        for signer in ("k0", twin):
            token = TokenCodec([signer], bind_ip=False).mint(5, 6, EXPIRES)
            assert both.verify(token, None, NOW)[0] == "ok", (secrets, signer)


def sign_header(version=1, flags=0x02, layout=tokens._NARROW, bound=True) -> str:
    """A token with any header, signed with the right key (only the header is wrong)."""
    key = tokens._Key("s3cret")
    wide = layout is tokens._WIDE
    header = layout.pack(version, key.id, flags, EXPIRES, 42, 7, NONCE)
    mac = key.mac(header)
    raw = header + mac
    if bound:
        raw += key.mac(b"ip" + header + mac + bytes([203, 0, 113, 9]))
    assert len(raw) == (63 if wide else 55) - (0 if bound else 16)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_each_header_field_alone_makes_a_signed_token_malformed():
    codec = TokenCodec(["s3cret"], bind_ip=True)
    assert codec.verify(sign_header(), "203.0.113.9", NOW)[0] == "ok"
    for token in (sign_header(version=2), sign_header(version=0),
                  sign_header(flags=0x02 | 0x04), sign_header(flags=0x02 | 0x80),
                  sign_header(flags=0x03),                     # says wide, is narrow
                  sign_header(flags=0x00),                     # says unbound, is bound
                  sign_header(flags=0x02, layout=tokens._WIDE),  # says narrow, is wide
                  sign_header(flags=0x00 | 0x02, bound=False)):  # says bound, is not
        assert codec.verify(token, "203.0.113.9", NOW) == ("malformed", None), token


def test_the_claims_carry_the_nonce():
    codec = TokenCodec(["s3cret"], bind_ip=True)
    token = codec.mint(42, 7, EXPIRES, ip="203.0.113.9", nonce=NONCE)
    assert codec.verify(token, "203.0.113.9", NOW) == (
        "ok", Claims(42, 7, EXPIRES, NONCE, True))
    assert codec.verify(token, "192.0.2.1", NOW) == (
        "ip_mismatch", Claims(42, 7, EXPIRES, NONCE, True))
