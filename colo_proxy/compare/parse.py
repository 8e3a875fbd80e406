"""Locating the layer-4 part of an IPv4/IPv6 packet, without exceptions.

The comparator's hot path reads IPv4 TCP without options inline; everything else comes here.
"""

from __future__ import annotations

import struct

from colo_proxy.compare.events import Flow, flow_from_key

NON_IP = 0  # first nibble neither 4 nor 6
BAD = 1  # truncated or inconsistent header
FRAGMENT = 2
L4 = 3

FRAGMENT_PROTO = 44  # IPv6 Fragment header number; also names IPv4 fragment pseudo-flows
NO_PORTS = b"\0\0\0\0"

_V4 = struct.Struct("!BxHxxHxB")
_V6 = struct.Struct("!B3xHB")
_V6_EXT = frozenset((0, 43, 60))  # hop-by-hop, routing, destination options
_AH = 51

# (kind, protocol, source + destination address bytes, L4 offset, end of IP packet, extra)
# where extra is, for fragments, the bytes of offset and more-fragments flag (the IP
# identification differs between replicas and is left out).
Located = tuple[int, int, bytes, int, int, bytes]
_NONE: Located = (NON_IP, -1, b"", 0, 0, b"")
_BAD: Located = (BAD, -1, b"", 0, 0, b"")


def locate(pkt: bytes) -> Located:
    n = len(pkt)
    if n < 1:
        return _NONE
    version = pkt[0] >> 4
    if version == 4:
        if n < 20:
            return _BAD
        vihl, tot, frag, proto = _V4.unpack_from(pkt)
        l4 = (vihl & 0x0F) * 4
        if l4 < 20 or tot < l4 or tot > n:
            return _BAD
        if frag & 0x3FFF:
            return (FRAGMENT, FRAGMENT_PROTO, pkt[12:20], l4, tot, pkt[6:8])
        return (L4, proto, pkt[12:20], l4, tot, b"")
    if version != 6:
        return _NONE
    if n < 40:
        return _BAD
    _, plen, proto = _V6.unpack_from(pkt)
    tot = 40 + plen
    if plen == 0 or tot > n:  # jumbograms are not for us; truncated is unreadable
        return _BAD
    l4 = 40
    while proto in _V6_EXT or proto == _AH:
        if l4 + 8 > tot:
            return _BAD
        hlen = (pkt[l4 + 1] + 2) * 4 if proto == _AH else (pkt[l4 + 1] + 1) * 8
        proto = pkt[l4]
        l4 += hlen
    if proto == FRAGMENT_PROTO:
        if l4 + 8 > tot:
            return _BAD
        return (FRAGMENT, FRAGMENT_PROTO, pkt[8:40], l4 + 8, tot, pkt[l4 + 2 : l4 + 4])
    if l4 > tot:
        return _BAD
    return (L4, proto, pkt[8:40], l4, tot, b"")


def flow_of(ip_packet: bytes) -> Flow | None:
    """The flow the comparator files this packet under, or None if it is unparseable."""
    kind, proto, addrs, l4, tot, _ = locate(ip_packet)
    if kind == FRAGMENT:
        return flow_from_key(FRAGMENT_PROTO, addrs + NO_PORTS)
    if kind != L4:
        return None
    if proto in (6, 17):
        if tot - l4 < (20 if proto == 6 else 8):
            return None
        return flow_from_key(proto, addrs + ip_packet[l4 : l4 + 4])
    return flow_from_key(proto, addrs + NO_PORTS)
