"""
The Smarty Billing API request signature (pure: no I/O).

    src = "".join(f"{key}:{value};" for key, value in sorted(params)) + api_key
    signature = md5_hex(base64(utf8(src)))

over every received parameter but ``signature`` -- blank values and
parameters the method does not know included -- with the values decoded
(``+`` -> space, ``%XX`` -> bytes, UTF-8 -> text) and otherwise exactly as
received (``150.50`` stays ``150.50``, ``True`` stays ``True``, the literal
``[1, 2, 3]`` stays one value).  Every public client signs this way
(../shared/BILLING_API.md §2).

A key sent several times (``allowed_device_groups=1&allowed_device_groups=3``)
contributes one ``key:value;`` per value.  The documentation sorts them by
key, then value; a client that sorts its parameters by key only keeps its
own order of the values.  Both orders are accepted (they coincide whenever
the values are sent sorted), each compared in constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Iterable

Params = Iterable[tuple[str, str]]


def sign_source(params: Params, api_key: str) -> str:
    """The text that is signed, with the pairs already in their signing order."""
    return "".join(f"{k}:{v};" for k, v in params) + api_key


def digest(source: str) -> str:
    return hashlib.md5(base64.b64encode(source.encode("utf-8"))).hexdigest()


def sign(params: Params, api_key: str) -> str:
    """What a client sends as ``signature`` for ``params`` (``signature`` itself left out)."""
    pairs = [(k, v) for k, v in params if k != "signature"]
    return digest(sign_source(sorted(pairs), api_key))


def verify(params: Params, api_key: str, signature: str) -> bool:
    """
    True when ``signature`` signs ``params`` (the received pairs, repeated keys
    in the order received) with ``api_key``.  Constant-time comparisons.
    """
    pairs = [(k, v) for k, v in params if k != "signature"]
    by_key_and_value = sorted(pairs)
    by_key = sorted(pairs, key=lambda kv: kv[0])  # stable: values in received order
    given = signature.strip().lower().encode("ascii", "replace")
    ok = False
    for order in (by_key_and_value, by_key) if by_key != by_key_and_value else (by_key,):
        # Both compared whatever the first gave: the time does not say which matched.
        ok |= hmac.compare_digest(digest(sign_source(order, api_key)).encode("ascii"), given)
    return ok
