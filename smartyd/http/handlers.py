"""
What every Klein handler shares: errors mapped once, request metrics counted
once, JSON answers, and shielding of money-moving work from disconnects.

L{endpoint} is the one error handler (after Tahoe-LAFS's ``handle_errors``):

    BadRequest           -> 400 {"error": <why>}
    DatabaseUnavailable  -> 503 {"error": "temporarily unavailable, retry"}
    anything unexpected  -> 500 {"error": "internal error"}, logged once with its traceback

and it counts ``smartyd_http_requests{route, code}`` for the answer actually
sent, whatever path the handler took.  A handler that must answer in its
own protocol (OSMP's XML, an ASSIST push's codes) catches what it needs
first; the decorator then only counts.
"""

from __future__ import annotations

import functools
import json
from inspect import isawaitable
from typing import Any, Callable

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.web.server import Request

from smartyd.db import DatabaseUnavailable
from smartyd.http.fields import BadRequest
from smartyd.util.text import one_line

log = Logger()


def json_body(request: Request, status: int, payload: Any) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(payload).encode()


def endpoint(route: str) -> Callable:
    """
    Decorate a Klein handler method ``(self, request, ...)`` whose object has
    ``metrics`` (None: nothing counted): map its errors and count its answer
    under ``route``.
    """

    def decorate(handler: Callable) -> Callable:
        @functools.wraps(handler)
        async def wrapper(self, request: Request, *args: Any, **kwargs: Any) -> Any:
            try:
                result = handler(self, request, *args, **kwargs)
                if isawaitable(result):
                    result = await result
            except BadRequest as e:
                result = json_body(request, 400, {"error": str(e)})
            except DatabaseUnavailable as e:
                log.warn("{route}: database unavailable ({error}); answered 503",
                         route=route, error=one_line(e))
                result = json_body(request, 503, {"error": "temporarily unavailable, retry"})
            except CancelledError:
                raise  # the client left: Klein cancelled us, nobody to answer
            except Exception:
                log.failure("{route}: unexpected error; answered 500", route=route)
                result = json_body(request, 500, {"error": "internal error"})
            if self.metrics is not None:
                self.metrics.http_requests.labels(route, str(request.code)).inc()
            return result

        return wrapper

    return decorate


def shielded(coro, on_error_log: str = "shielded work failed") -> Deferred:
    """
    Run ``coro`` to completion even if the caller's Deferred is cancelled.

    Klein cancels a handler's Deferred when the client disconnects; work that
    moves money must then still finish (or roll back) as a whole.  The
    returned Deferred may be cancelled; the inner work goes on and its outcome
    is logged if nobody is left to receive it.
    """
    inner = ensureDeferred(coro)
    outer: Deferred = Deferred(lambda d: None)

    def deliver(result):
        if not outer.called:
            outer.callback(result)
        elif isinstance(result, Exception) or hasattr(result, "raiseException"):
            log.failure(on_error_log, result)
        return None

    inner.addBoth(deliver)
    return outer
