"""Packet builders for the comparator tests: IPv4/IPv6 TCP, UDP, ICMP, fragments."""

from __future__ import annotations

import ipaddress
import struct

from colo_proxy.compare import Flow

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
VM4, CLIENT4 = "10.0.0.1", "10.0.0.2"
VM6, CLIENT6 = "fd00::1", "fd00::2"


def ip4(
    proto: int,
    l4: bytes,
    src: str = VM4,
    dst: str = CLIENT4,
    ident: int = 0,
    ttl: int = 64,
    frag: int = 0x4000,
    tos: int = 0,
) -> bytes:
    return (
        struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            tos,
            20 + len(l4),
            ident,
            frag,
            ttl,
            proto,
            0xBEEF,
            ipaddress.IPv4Address(src).packed,
            ipaddress.IPv4Address(dst).packed,
        )
        + l4
    )


def ip6(proto: int, l4: bytes, src: str = VM6, dst: str = CLIENT6, hop: int = 64) -> bytes:
    return (
        struct.pack(
            "!IHBB16s16s",
            6 << 28,
            len(l4),
            proto,
            hop,
            ipaddress.IPv6Address(src).packed,
            ipaddress.IPv6Address(dst).packed,
        )
        + l4
    )


def tcp(
    seq: int,
    ack: int = 0,
    flags: int = ACK,
    data: bytes = b"",
    sport: int = 80,
    dport: int = 40000,
    window: int = 502,
    options: bytes = b"",
    v6: bool = False,
    **ip: int,
) -> bytes:
    hdr = (
        struct.pack(
            "!HHIIBBHHH",
            sport,
            dport,
            seq & 0xFFFFFFFF,
            ack & 0xFFFFFFFF,
            (5 + len(options) // 4) << 4,
            flags,
            window,
            0x1234,
            0,
        )
        + options
    )
    return ip6(6, hdr + data) if v6 else ip4(6, hdr + data, **ip)  # type: ignore[arg-type]


def udp(data: bytes, sport: int = 53, dport: int = 40000, csum: int = 0, v6: bool = False) -> bytes:
    hdr = struct.pack("!HHHH", sport, dport, 8 + len(data), csum)
    return ip6(17, hdr + data) if v6 else ip4(17, hdr + data)


def icmp_echo_reply(ident: int, seq: int, data: bytes, csum: int = 0) -> bytes:
    return ip4(1, struct.pack("!BBHHH", 0, 0, csum, ident, seq) + data)


def tcp_flow(v6: bool = False, sport: int = 80, dport: int = 40000) -> Flow:
    if v6:
        return Flow(6, VM6, sport, CLIENT6, dport)
    return Flow(6, VM4, sport, CLIENT4, dport)
