"""
Every use of a Twisted private, in one place.

Each is a deliberate choice with a reason below; tests/test_util.py (test_twisted_privates_we_rely_on_still_exist)
fails loudly if a Twisted upgrade renames or removes one, instead of letting
the daemon silently lose the behaviour.
"""

from __future__ import annotations

from typing import Any

from twisted.application.internet import StreamServerEndpointService


def raise_listen_errors(service: StreamServerEndpointService) -> None:
    """
    Make ``privilegedStartService`` raise when the port cannot be bound
    (``_raiseSynchronously``), so a port in use is a one-line start-up error
    and a non-zero exit rather than a logged failure in a daemon that runs on
    without its HTTP listener.
    """
    if not hasattr(service, "_raiseSynchronously"):
        raise RuntimeError("StreamServerEndpointService._raiseSynchronously is gone")
    service._raiseSynchronously = True


def endpoint_port(endpoint: Any) -> int | None:
    """The port number a TCP server endpoint was parsed with (``_port``), if any."""
    port = getattr(endpoint, "_port", None)
    return port if isinstance(port, int) else None


def accept_one_per_read(port: Any) -> None:
    """
    Make ``tcp.Port.doRead`` accept one connection per readable event
    (``numberAccepts``), so that worker processes sharing one listening socket
    take turns instead of the first one to wake draining the backlog.
    """
    if not hasattr(port, "numberAccepts"):
        raise RuntimeError("tcp.Port.numberAccepts is gone")
    port.numberAccepts = 1
