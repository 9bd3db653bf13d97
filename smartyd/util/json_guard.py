"""
JSON parsed with a guard against deep nesting: request bodies and partner
answers alike.

``json.loads`` recurses once per nesting level: a body of a few thousand
``[`` raises RecursionError, which no ``except ValueError`` catches (a 500 and
a traceback per request).  L{parse_json} measures the depth first.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

MAX_JSON_DEPTH = 32

# A JSON string (escapes included), or an unterminated one up to the end: always
# a match, never a backtrack, so cutting strings out is linear in the body.
_JSON_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+(?:"|\Z)', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_NESTING = tuple(1 if b in b"[{" else -1 if b in b"]}" else 0 for b in range(256))


class BadJSON(ValueError):
    """A body we refuse as JSON: nested too deep, not UTF-8 or not JSON (a 400)."""


class JSONTooLarge(BadJSON):
    """A body over the endpoint's own size cap (a 413)."""


def parse_json(data: bytes, max_depth: int = MAX_JSON_DEPTH, **loads: Any) -> Any:
    """
    ``data`` parsed as JSON, or L{BadJSON}.

    ``json.loads`` recurses once per nesting level: a body of a few thousand
    ``[`` raises RecursionError, which no ``except ValueError`` catches (a 500
    and a traceback per request).  So the depth is measured first, without
    recursion and at C speed: strings are cut out (their brackets are text),
    everything but brackets is dropped, and the running sum of +1 per opening
    and -1 per closing bracket is the depth.  Unbalanced input is left to
    ``json.loads`` to refuse.
    """
    structure = _JSON_STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    if structure and max(accumulate(map(_NESTING.__getitem__, structure))) > max_depth:
        raise BadJSON(f"JSON nested deeper than {max_depth} levels")
    try:
        return json.loads(data.decode("utf-8"), **loads)
    except UnicodeDecodeError:
        raise BadJSON("the body is not UTF-8")
    except RecursionError:  # not reached after the depth check; never a 500 though
        raise BadJSON(f"JSON nested deeper than {max_depth} levels")
    except ValueError:
        raise BadJSON("the body is not JSON")


