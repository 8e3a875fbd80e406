"""The SVM's recorded frames made ready for the clients: TCP sequence numbers and timestamps
shifted into the spaces the clients know, checksums computed afresh.

What `colo_tap_in` (kernel/bpf/secondary.bpf.c) does to the SVM's output after a failover,
done in Python to frames the secondary recorded while they still went to the primary's
comparator (service.output_record): seq -= offset and TSval -= ts_offset for a connection
whose two handshakes were both seen. Frames are whole Ethernet frames as a packet socket
reads them on the SVM's tap; their TCP checksum may be a partial one (the guest's
checksum offload), so it is always computed again.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Mapping

from colo_proxy.wire.offset import Offset

ETH_IP4, ETH_IP6 = 0x0800, 0x86DD
TCP = 6
# Connection key as the SVM sends: (vm_ip, vm_port, peer_ip, peer_port), addresses in
# their compressed text form (Offset's).
Key = tuple[str, int, str, int]


def shifts_of(offsets: list[Offset]) -> dict[Key, Offset]:
    """The connections whose output needs shifting, by the key `shift_frame` looks up."""
    return {(o.vm_ip, o.vm_port, o.peer_ip, o.peer_port): o for o in offsets if o.shifts}


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    s: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def shift_frame(frame: bytes, shifts: Mapping[Key, Offset]) -> bytes | None:
    """`frame` as the clients must see it, or None when it is no TCP segment that can be
    replayed (another protocol, IPv6 extension headers, a truncated or fragmented packet).
    Shifted only when its connection is in `shifts`; the checksum is computed either way."""
    if len(frame) < 14:
        return None
    ethertype = int.from_bytes(frame[12:14], "big")
    l3 = 14
    if ethertype == ETH_IP4:
        if len(frame) < l3 + 20:
            return None
        ihl = (frame[l3] & 0x0F) * 4
        total = int.from_bytes(frame[l3 + 2:l3 + 4], "big")
        frag = int.from_bytes(frame[l3 + 6:l3 + 8], "big")
        if frame[l3 + 9] != TCP or ihl < 20 or frag & 0x3FFF or total < ihl + 20:
            return None
        src, dst = frame[l3 + 12:l3 + 16], frame[l3 + 16:l3 + 20]
        l4, end = l3 + ihl, l3 + total
        pseudo_tail = struct.pack("!BBH", 0, TCP, total - ihl)
    elif ethertype == ETH_IP6:
        if len(frame) < l3 + 40 or frame[l3 + 6] != TCP:
            return None
        plen = int.from_bytes(frame[l3 + 4:l3 + 6], "big")
        src, dst = frame[l3 + 8:l3 + 24], frame[l3 + 24:l3 + 40]
        l4, end = l3 + 40, l3 + 40 + plen
        pseudo_tail = struct.pack("!I3xB", plen, TCP)
    else:
        return None
    if end > len(frame) or end - l4 < 20:
        return None
    doff = (frame[l4 + 12] >> 4) * 4
    if doff < 20 or l4 + doff > end:
        return None
    out = bytearray(frame[:end])  # any Ethernet padding after the packet goes
    key = (str(ipaddress.ip_address(src)), int.from_bytes(frame[l4:l4 + 2], "big"),
           str(ipaddress.ip_address(dst)), int.from_bytes(frame[l4 + 2:l4 + 4], "big"))
    o = shifts.get(key)
    if o is not None:
        if o.offset:
            seq = int.from_bytes(out[l4 + 4:l4 + 8], "big")
            out[l4 + 4:l4 + 8] = ((seq - o.offset) & 0xFFFFFFFF).to_bytes(4, "big")
        pos = _tsval_at(out, l4 + 20, l4 + doff)
        if o.ts_offset and pos is not None:
            ts = int.from_bytes(out[pos:pos + 4], "big")
            out[pos:pos + 4] = ((ts - o.ts_offset) & 0xFFFFFFFF).to_bytes(4, "big")
    out[l4 + 16:l4 + 18] = b"\0\0"
    out[l4 + 16:l4 + 18] = checksum(src + dst + pseudo_tail + bytes(out[l4:end])).to_bytes(2, "big")
    return bytes(out)


def _tsval_at(seg: bytearray, start: int, end: int) -> int | None:
    """Where the timestamp option's TSval starts among the options in seg[start:end]."""
    i = start
    while i < end:
        kind = seg[i]
        if kind == 0:
            return None
        if kind == 1:
            i += 1
            continue
        if i + 1 >= end or seg[i + 1] < 2:
            return None
        if kind == 8 and seg[i + 1] == 10 and i + 10 <= end:
            return i + 2
        i += seg[i + 1]
    return None
