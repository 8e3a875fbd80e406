"""The one packet builder of the tests: IPv4/IPv6 with TCP, UDP or ICMP, and Ethernet frames.

Every length and checksum is computed (so the kernel's programs and stacks take the packets
as real), unless a test passes its own to see that it is ignored or caught. Addresses
default to the lab's VM and client.
"""

from __future__ import annotations

import socket
import struct

from colo_lab.lab import VM_MAC
from colo_proxy.compare import Flow

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
VM4, CLIENT4 = "10.99.0.10", "10.99.0.100"
VM6, CLIENT6 = "fd99::10", "fd99::100"
# The lab VM's MAC address and a client's, as bytes.
VM_ETHER, CLIENT_ETHER = bytes.fromhex(VM_MAC.replace(":", "")), bytes.fromhex("02aabbccddee")
ETH_IP4, ETH_IP6, ETH_VLAN = 0x0800, 0x86DD, 0x8100
# One connection as its two replicas see it: the PVM's and the SVM's initial sequence
# numbers, and the client's.
PVM_ISN, SVM_ISN, CLIENT_ISN = 1_000_000, 3_000_000_000, 77_000


def csum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of `data`; 0 when `data` holds a right checksum."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _v6(addr: str) -> bool:
    return ":" in addr


def _packed(addr: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if _v6(addr) else socket.AF_INET, addr)


def _pseudo(src: str, dst: str, proto: int, length: int) -> bytes:
    """The pseudo header that TCP's and UDP's checksums cover."""
    if _v6(src):
        return _packed(src) + _packed(dst) + struct.pack("!I3xB", length, proto)
    return _packed(src) + _packed(dst) + struct.pack("!BBH", 0, proto, length)


def ip4(proto: int, l4: bytes, src: str = VM4, dst: str = CLIENT4, *, ident: int = 0,
        ttl: int = 64, frag: int = 0x4000, tos: int = 0, total: int | None = None) -> bytes:
    """An IPv4 packet; `total` overrides the total length (a header that lies)."""
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, tos, 20 + len(l4) if total is None else total,
                      ident, frag, ttl, proto, 0, _packed(src), _packed(dst))
    return hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:] + l4


def ip6(proto: int, l4: bytes, src: str = VM6, dst: str = CLIENT6, *, hop: int = 64,
        ext: bytes = b"") -> bytes:
    """An IPv6 packet; `ext`: one destination-options header (its first byte, the next
    header, is set to `proto`) between the fixed header and `l4`."""
    nh = proto
    if ext:
        nh, ext = 60, bytes([proto]) + ext[1:]
    return struct.pack("!IHBB16s16s", 6 << 28, len(ext) + len(l4), nh, hop, _packed(src),
                       _packed(dst)) + ext + l4


def ip(proto: int, l4: bytes, src: str, dst: str, **kw: int) -> bytes:
    """IPv4 or IPv6 by the addresses."""
    return ip6(proto, l4, src, dst, **kw) if _v6(src) else ip4(proto, l4, src, dst, **kw)


def tcp(seq: int, ack: int = 0, flags: int = ACK, data: bytes = b"", *, sport: int = 80,
        dport: int = 40000, window: int = 502, options: bytes = b"", v6: bool = False,
        src: str | None = None, dst: str | None = None, ext: bytes = b"",
        **ip_fields: int) -> bytes:
    """An IP packet with one TCP segment, from the VM to the client unless `src`/`dst` say
    otherwise (IPv6 when they are IPv6 addresses, or with `v6`)."""
    src = src or (VM6 if v6 else VM4)
    dst = dst or (CLIENT6 if v6 else CLIENT4)
    hdr = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                      (5 + len(options) // 4) << 4, flags, window, 0, 0) + options
    check = csum(_pseudo(src, dst, 6, len(hdr) + len(data)) + hdr + data)
    seg = hdr[:16] + struct.pack("!H", check) + hdr[18:] + data
    if _v6(src):
        return ip6(6, seg, src, dst, ext=ext, **ip_fields)
    return ip4(6, seg, src, dst, **ip_fields)


def udp(data: bytes, *, sport: int = 53, dport: int = 40000, v6: bool = False,
        src: str | None = None, dst: str | None = None, checksum: int | None = None,
        **ip_fields: int) -> bytes:
    """An IP packet with one UDP datagram; `checksum` replaces the computed one."""
    src = src or (VM6 if v6 else VM4)
    dst = dst or (CLIENT6 if v6 else CLIENT4)
    hdr = struct.pack("!HHHH", sport, dport, 8 + len(data), 0)
    if checksum is None:
        checksum = csum(_pseudo(src, dst, 17, len(hdr) + len(data)) + hdr + data)
    return ip(17, hdr[:6] + struct.pack("!H", checksum) + data, src, dst, **ip_fields)


def icmp_echo_reply(ident: int, seq: int, data: bytes, *, checksum: int | None = None) -> bytes:
    body = struct.pack("!BBHHH", 0, 0, 0, ident, seq) + data
    if checksum is None:
        checksum = csum(body)
    return ip4(1, body[:2] + struct.pack("!H", checksum) + body[4:])


def ether(packet: bytes, *, src: bytes = VM_ETHER, dst: bytes = CLIENT_ETHER,
          ethertype: int | None = None, vlan: int | None = None) -> bytes:
    """An Ethernet frame around `packet` (its type from the IP version unless given),
    802.1Q-tagged with `vlan`."""
    if ethertype is None:
        ethertype = ETH_IP6 if packet[:1] and packet[0] >> 4 == 6 else ETH_IP4
    tag = struct.pack("!HH", ETH_VLAN, vlan) if vlan is not None else b""
    return dst + src + tag + struct.pack("!H", ethertype) + packet


def tcp_flow(v6: bool = False, sport: int = 80, dport: int = 40000) -> Flow:
    """The comparator's key of `tcp()`'s default segments."""
    if v6:
        return Flow(6, VM6, sport, CLIENT6, dport)
    return Flow(6, VM4, sport, CLIENT4, dport)
