"""
The client's address: the peer, or -- behind a trusted proxy -- the nearest
untrusted hop of ``X-Forwarded-For``; allowlist membership; and how the
client reached us (``https`` or not, the ``Host`` it named).
"""

from __future__ import annotations

import ipaddress
import re

from twisted.web.server import Request


def peer_ip(request: Request) -> str:
    peer = request.getClientAddress()
    return getattr(peer, "host", None) or "0.0.0.0"


def client_ip(request: Request, trusted_proxies: tuple = ()) -> str:
    """
    The client's address: the peer, or -- when the peer is a trusted proxy --
    the nearest untrusted address in ``X-Forwarded-For``.
    """
    ip = peer_ip(request)
    if not trusted_proxies or not in_networks(ip, trusted_proxies):
        return ip
    header = request.getHeader(b"x-forwarded-for")
    if not header:
        return ip
    if isinstance(header, bytes):
        try:
            header = header.decode("ascii")
        except UnicodeDecodeError:
            return ip
    hops = [h.strip() for h in header.split(",") if h.strip()]
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return ip  # garbage in the header: do not trust any of it
        if not in_networks(hop, trusted_proxies):
            return hop
    return hops[0] if hops else ip


def in_networks(ip: str, networks: tuple) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr in net for net in networks if net.version == addr.version)




def secure(request: Request, trusted_proxies: tuple = ()) -> bool:
    """
    Whether the client reached us over TLS: our own, or -- when the peer is a
    trusted proxy -- the proxy's ``X-Forwarded-Proto: https``.
    """
    if request.isSecure():
        return True
    if trusted_proxies and in_networks(peer_ip(request), trusted_proxies):
        return (request.getHeader(b"x-forwarded-proto") or b"").lower() == b"https"
    return False


_HOST = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]{2,45}\])"
                   r"(?::[0-9]{1,5})?$")


def public_origin(request: Request, trusted_proxies: tuple = ()) -> str | None:
    """
    ``scheme://host[:port]`` as the client addressed us (its ``Host`` header,
    the scheme from L{secure}), for a link the client itself is to follow;
    None when the header is absent or not a plain host name / address.
    """
    raw = request.getHeader(b"host")
    if not raw:
        return None
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("ascii")
        except UnicodeDecodeError:
            return None
    if not _HOST.match(raw):
        return None
    return ("https://" if secure(request, trusted_proxies) else "http://") + raw.lower()
