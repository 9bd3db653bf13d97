"""
The client's address: the peer, or -- behind a trusted proxy -- the nearest
untrusted hop of ``X-Forwarded-For``; and allowlist membership.
"""

from __future__ import annotations

import ipaddress

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


